"""Meta-RL results: return against adaptation steps, as a Markdown table and a plot, from the
`eval.json` files of RL runs (`other_metrics`: mean ± 95% CI over the fixed test tasks after each
of 0..k adaptation steps), next to the paper's values (the preset's `reference`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..results import by_episode, trained_steps
from ..utils import atomic_write

__all__ = ["by_episode", "rl_plot", "rl_records", "rl_table", "steps_of", "success_table"]


def rl_records(run_dirs: list[str | Path]) -> list[dict]:
    """The eval.json of every run folder whose result is an RL return with per-step figures, each
    followed by the run's test-split evals with changed test-time settings (`fastadapt eval --set
    learner.args.eval_later_lr_factor=...`), labelled with the settings, and by its evals under the
    paper's own test where the preset names one (`reference.test`: they carry the reference)."""
    records = []
    for run in run_dirs:
        path = Path(run) / "eval.json"
        if not path.is_file():
            continue
        record = json.loads(path.read_text())
        if record.get("metric") == "return" and record.get("other_metrics"):
            records.append({**record, "run": str(run), "label": Path(run).name})
            for other in sorted(Path(run).glob("eval-*.json")):
                variant = json.loads(other.read_text())
                settings = variant.get("test_settings") or {}
                same = all(variant.get(k) == record.get(k) for k in ("split", "episodes", "seed", "shots"))
                # the paper's figures on another test than the run's own: the one `reference.test` names
                paper_test = bool(variant.get("reference")) and not record.get("reference")
                if ((settings and same) or paper_test) and variant.get("other_metrics"):
                    shown = [f"{k} {v}" for k, v in settings.items()]
                    if paper_test:
                        shown.insert(0, f"{variant['split']} tasks, {variant['shots']} rollouts/step")
                    label = f"{Path(run).name} ({', '.join(shown)})"
                    records.append({**variant, "run": str(run), "label": label, "paper_test": paper_test})
    return records


def _task(record: dict) -> str:
    """The task family, with the Meta-World environment where there is one ("ml1 reach-v3")."""
    env = (record.get("data_args") or {}).get("env_name")
    return f"{record['dataset']} {env}" if env else record["dataset"]


def steps_of(record: dict, prefix: str = "return") -> list[tuple[int, float, float]]:
    """[(k, mean, ci95)] after k adaptation steps, in order of k."""
    pattern = re.compile(rf"{prefix}_after_(\d+)$")
    out = [
        (int(m.group(1)), v["mean"], v["ci95"]) for k, v in record["other_metrics"].items() if (m := pattern.match(k))
    ]
    return sorted(out)


def _columns(width: int, episodes: bool, prefix: str = "") -> str:
    names = [f"episode {k + 1}" if episodes else f"after {k} step{'s' if k != 1 else ''}" for k in range(width)]
    return " | ".join(prefix + n for n in names)


def _paper_row(record: dict, width: int) -> str:
    """The paper's row for `record`'s reference ("" when it has none for these steps)."""
    reference = record.get("reference") or {}
    paper = [reference.get(f"return_after_{k}") for k in range(width)]
    if all(v is None for v in paper):
        return ""
    cells = " | ".join("–" if v is None else f"{v}" for v in paper)
    return f"| paper | {reference.get('paper', '')} | | | | {cells} |"


def rl_table(records: list[dict], episodes: bool = False) -> str:
    """Markdown: one row per run, return ± 95% CI after 0, 1, 2, ... steps (`episodes`: in episode
    1, 2, ... of a trial); the paper's row beneath, once under consecutive runs that share it (a
    run, its test-setting variants, its other seeds)."""
    width = max((len(steps_of(r)) for r in records), default=0)
    head = "| run | method | task | train iterations | train min | " + _columns(width, episodes)
    rows = [head + " |", "|" + " --- |" * (5 + width)]
    papers = [_paper_row(r, width) for r in records] + [""]
    for i, r in enumerate(records):
        cells = [f"{mean:.1f} ± {ci:.1f}" for _, mean, ci in steps_of(r)]
        cells += ["–"] * (width - len(cells))  # fewer test-time steps than the widest run
        minutes = (r.get("train_seconds") or 0) / 60
        rows.append(
            f"| {r.get('label', Path(r['run']).name)} | {r['method']} | {_task(r)} ({r['episodes']} test tasks) | "
            f"{trained_steps(r)} | {minutes:.0f} | " + " | ".join(cells) + " |"
        )
        if papers[i] and papers[i] != papers[i + 1]:
            rows.append(papers[i])
    return "\n".join(rows)


def success_table(records: list[dict], episodes: bool = False) -> str:
    """Markdown for the runs with a success signal (Meta-World): success rate (%, Meta-World's
    protocol: success at any step of a rollout) ± 95% CI over the test tasks after 0, 1, ... steps
    (`episodes`: in episode 1, 2, ... of a trial). Empty when no run has one."""
    records = [r for r in records if steps_of(r, "success_rate")]
    if not records:
        return ""
    width = max(len(steps_of(r, "success_rate")) for r in records)
    rows = [
        "| run | method | task | train iterations | train min | " + _columns(width, episodes, "success % ") + " |",
        "|" + " --- |" * (5 + width),
    ]
    for r in records:
        cells = [f"{100 * mean:.1f} ± {100 * ci:.1f}" for _, mean, ci in steps_of(r, "success_rate")]
        cells += ["–"] * (width - len(cells))
        rows.append(
            f"| {r.get('label', Path(r['run']).name)} | {r['method']} | {_task(r)} "
            f"({r['episodes']} test tasks) | {trained_steps(r)} | "
            f"{(r.get('train_seconds') or 0) / 60:.0f} | " + " | ".join(cells) + " |"
        )
    return "\n".join(rows)


def rl_plot(records: list[dict], path: str | Path) -> None:
    """Return against adaptation steps, one line per run with its 95% CI band, per task family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r["dataset"] for r in records})
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        drawn = set()  # each paper curve once per panel, however many runs carry it
        for r in (r for r in records if r["dataset"] == dataset):
            k, mean, ci = zip(*steps_of(r))
            ax.plot(k, mean, marker="o", label=f"{r.get('label', Path(r['run']).name)} ({r['train_steps']} it.)")
            ax.fill_between(k, [m - c for m, c in zip(mean, ci)], [m + c for m, c in zip(mean, ci)], alpha=0.2)
            reference = r.get("reference") or {}
            paper = [(j, reference[f"return_after_{j}"]) for j in k if f"return_after_{j}" in reference]
            if paper and tuple(paper) not in drawn:
                drawn.add(tuple(paper))
                ax.plot(*zip(*paper), linestyle="--", color="gray", marker="x", label="paper (MAML)")
        ax.set(
            xlabel="adaptation steps (RL²: episodes already seen)",
            ylabel="return (95% CI over test tasks)",
            title=dataset,
        )
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(Path(path), lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
