"""The tuning demo's section of RESULTS.md, generated from result files only:

    python scripts/tune_summary.py results/tune-maml-sinusoid-best results/tune-maml-sinusoid-default \
        --full results/maml-sinusoid-5shot --best-full results/tune-maml-sinusoid-best-full

reads BEST/study/{study.json,trials.csv,wall_time.txt} (the study's report, copied by
scripts/reproduce.sh job tune-maml-sinusoid), BEST/eval*.json (the full run from the best trial)
and DEFAULT/eval*.json (the preset's default, same schedule and test tasks), and writes
BEST/tune-summary.md, which scripts/results_md.py puts into RESULTS.md.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from fastadapt.utils import atomic_write_text


def _evals(run: Path) -> dict[int, dict]:
    """{test-time steps: eval record} of a run folder's own test set (1000/600 tasks, its seed)."""
    found = {}
    for path in sorted(run.glob("eval*.json")):
        record = json.loads(path.read_text())
        found[record.get("adapt_steps") or 1] = record
    return found


def _cell(record: dict | None) -> str:
    if record is None:
        return "–"
    metric = record.get("metric") or ("accuracy" if "accuracy" in record else "mse")  # older files lack it
    return f"{record[metric]:.3f} ± {record['ci95']:.3f}"


def _steps(evals: dict) -> str:
    return str(next(iter(evals.values()))["train_steps"]) if evals else "?"


def _tasks(evals: dict) -> str:
    return str(next(iter(evals.values()))["episodes"]) if evals else "?"


def _param(text: str) -> str:
    try:
        return f"{float(text):.3g}" if "." in text or "e" in text else text
    except ValueError:
        return text


def summary(best: Path, default: Path, full: Path | None = None, best_full: Path | None = None) -> str:
    study = best / "study"
    record = json.loads((study / "study.json").read_text())
    with (study / "trials.csv").open() as f:
        trials = list(csv.DictReader(f))
    metric, direction = record["metric"], record["direction"]
    states: dict[str, int] = {}
    for t in trials:
        states[t["state"]] = states.get(t["state"], 0) + 1
    complete = [t for t in trials if t["state"] == "complete"]
    sign = 1 if direction == "minimize" else -1
    top = min(complete, key=lambda t: sign * float(t["value"]))
    preset = next((t for t in trials if t["preset_default"] == "True"), None)
    params = list(record["space"]["params"])
    wall = "?"
    if (study / "wall_time.txt").exists():  # "tuning: N s", written by the job
        seconds = int((study / "wall_time.txt").read_text().split()[1])
        wall = f"{seconds} s ({seconds / 60:.0f} min) of wall time"
    best_evals, default_evals = _evals(best), _evals(default)
    steps = record["space"].get("trial_settings", {}).get("train.steps")
    lines = [
        "## Hyper-parameter search: MAML on sinusoid regression (K=5)",
        "",
        f"`bash scripts/reproduce.sh run tune-maml-sinusoid`: two `fastadapt tune` processes (one thread "
        f"each) sharing one Optuna study in a throwaway PostgreSQL server; {len(trials)} trials "
        f"({', '.join(f'{n} {s}' for s, n in sorted(states.items()))}) of {steps} meta-batches each, "
        f"median pruning, TPE; {wall} on the shared 2-core machine. Objective: validation {metric} "
        f"({direction}) on the {record['config']['train']['val_episodes']} fixed validation tasks. "
        f"The space is [study/tune_sinusoid_space.yaml](results/{best.name}/study/tune_sinusoid_space.yaml); "
        f"all trials: [study/results.md](results/{best.name}/study/results.md).",
        "",
        "| | " + " | ".join(params) + f" | validation {metric} ({steps} steps) |",
        "| --- |" + " --- |" * (len(params) + 1),
    ]
    for label, t in (("preset default (trial %s)", preset), ("best (trial %s)", top)):
        if t is not None:
            cells = [_param(t.get(f"param:{k}", "")) for k in params]
            lines.append(f"| {label % t['trial']} | " + " | ".join(cells) + f" | {float(t['value']):.4f} |")
    lines += [
        "",
        f"Then a run from the best trial's settings (`fastadapt train --from-study`) and one with the "
        f"preset's default, {_steps(best_evals)} meta-batches each (the preset: "
        f"{record['config']['train']['steps']}), test {metric} ± 95% CI on the same "
        f"{_tasks(best_evals)} fixed test tasks after 1 / 5 / 10 steps:",
        "",
        "| run | 1 step | 5 steps | 10 steps |",
        "| --- | --- | --- | --- |",
    ]
    rows = [("preset default", default_evals), ("best trial's settings", best_evals)]
    if full is not None:
        rows.append((f"preset default, full schedule (`{full.name}`)", _evals(full)))
    if best_full is not None:
        rows.append((f"best trial's settings, full schedule (`{best_full.name}`)", _evals(best_full)))
    for label, evals in rows:
        lines.append(
            f"| {label}, {_steps(evals)} steps | " + " | ".join(_cell(evals.get(k)) for k in (1, 5, 10)) + " |"
        )
    lines += [
        "",
        f"Plots: [history](results/{best.name}/study/history.png), "
        f"[parameter importance](results/{best.name}/study/importance.png), "
        f"[parallel coordinates](results/{best.name}/study/parallel.png), "
        f"[validation curves and pruning](results/{best.name}/study/intermediate.png).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("best", type=Path)
    parser.add_argument("default", type=Path)
    parser.add_argument("--full", type=Path, help="the preset's default at its full schedule, for reference")
    parser.add_argument("--best-full", type=Path, help="`train --from-study` at the preset's full schedule")
    args = parser.parse_args()
    atomic_write_text(args.best / "tune-summary.md", summary(args.best, args.default, args.full, args.best_full))
    print(f"wrote {args.best / 'tune-summary.md'}")


if __name__ == "__main__":
    main()
