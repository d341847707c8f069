"""The full-way K-shot text results table (markdown) and plot (accuracy against K), generated
from the JSON files that `benchmarks/text_fewshot.py` writes under results/text/.

    .venv/bin/python benchmarks/text_table.py results/text     # writes table.md and accuracy_vs_shots.png there

Every cell is the mean ± sample standard deviation over its seeds; a cell with fewer than 5 seeds
is marked as shortened, with the number of seeds, and any note the run recorded.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

from fastadapt.text.fullway import SHOTS
from fastadapt.utils import atomic_write, atomic_write_text

TITLES = {
    "banking77": "Banking77 (77 intents, 3,080 test sentences)",
    "clinc150": "CLINC150 (150 intents, 4,500 in-scope test sentences)",
}
# "+names": the intent names added to the support set (`text_fewshot.py --label-names`)
ORDER = (
    "frozen-ncm",
    "frozen-logreg",
    "frozen-logreg+names",
    "contrastive-finetune",
    "encoder-finetune",
    "encoder-finetune+names",
    "setfit",
)
FULL_SEEDS = 5


def read_cells(folder: Path) -> list[dict]:
    """Every result file of the folder (sorted by name); an unreadable file is skipped with a warning."""
    cells = []
    for path in sorted(folder.glob("*shot.json")):
        try:
            cells.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            print(f"warning: skipping {path} ({exc})", file=sys.stderr)
    return cells


def _cell_text(cell: dict | None, key: str = "accuracy") -> str:
    if cell is None:
        return "—"
    s = cell["summary"][key]
    n = len(cell["runs"])
    text = f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}" if n > 1 else f"{100 * s['mean']:.2f}"
    return text + ("" if n >= FULL_SEEDS else f" ({n} seed{'s' if n > 1 else ''}†)")


def _seconds(cell: dict | None) -> str:
    if cell is None:
        return "—"
    s = cell["summary"]
    key = "adapt_seconds" if "adapt_seconds" in s else "seconds"
    load = s.get("load", {}).get("mean")
    cpu = s.get("adapt_cpu_seconds", {}).get("mean")
    return (
        f"{s[key]['mean']:.0f}"
        + (f" ({cpu:.0f} CPU)" if cpu is not None else "")
        + (f" (load {load:.1f})" if load is not None else "")
    )


def _time_ratio(mine: dict, peer: str = "setfit", ours: str = "encoder-finetune", shots: int = 10) -> list[str]:
    """The peer's adaptation wall time over ours on the seeds both cells ran (K = `shots`), with the
    1-minute load of each, since the two may have been timed under different loads."""
    a, b = mine.get((peer, shots)), mine.get((ours, shots))
    if a is None or b is None:
        return []
    runs_a, runs_b = ({r["seed"]: r for r in c["runs"] if "adapt_seconds" in r} for c in (a, b))
    seeds = sorted(set(runs_a) & set(runs_b))
    if not seeds:
        return []

    def mean(runs: dict, key: str) -> float:
        return sum(runs[s][key] for s in seeds) / len(seeds)

    ta, tb = mean(runs_a, "adapt_seconds"), mean(runs_b, "adapt_seconds")
    line = (
        f"Adaptation time, {shots}-shot, seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}: "
        f"{peer} {ta:.0f} s (load {mean(runs_a, 'load'):.1f}) / {ours} {tb:.0f} s "
        f"(load {mean(runs_b, 'load'):.1f}) = {ta / tb:.2f}× wall"
    )
    if all("adapt_cpu_seconds" in runs[s] for runs in (runs_a, runs_b) for s in seeds):
        ca, cb = mean(runs_a, "adapt_cpu_seconds"), mean(runs_b, "adapt_cpu_seconds")
        line += f"; {ca:.0f} / {cb:.0f} CPU s = {ca / cb:.2f}× CPU"
    return ["", line + "."]


def table(cells: list[dict]) -> str:
    """Markdown: per dataset, one row per method, accuracy (%) at each K, and adaptation time at 10-shot."""
    out = []
    for dataset in sorted({c["dataset"] for c in cells}):
        mine = {(c["method"], c["shots"]): c for c in cells if c["dataset"] == dataset}
        methods = [m for m in ORDER if any(k[0] == m for k in mine)]
        methods += sorted({m for m, _ in mine} - set(methods))
        out.append(f"### {TITLES.get(dataset, dataset)}\n")
        header = "| method | " + " | ".join(f"{k}-shot" for k in SHOTS) + " | adapt s, 10-shot |"
        out += [header, "|" + " --- |" * (len(SHOTS) + 2)]
        for m in methods:
            row = [_cell_text(mine.get((m, k))) for k in SHOTS]
            out.append(f"| {m} | " + " | ".join(row) + f" | {_seconds(mine.get((m, 10)))} |")
        oos = [(m, c) for (m, k), c in sorted(mine.items()) if k == 10 and "oos_recall" in c["summary"]]
        if oos:
            out += [
                "",
                "Out-of-scope detection, 10-shot (threshold on max softmax probability, chosen on val + oos_val):",
                "",
                "| method | in-scope accuracy (rejections count as errors) | out-of-scope recall |",
                "| --- | --- | --- |",
            ]
            for m, c in oos:
                out.append(
                    f"| {m} | {_cell_text(c, 'inscope_accuracy_with_rejection')} | {_cell_text(c, 'oos_recall')} |"
                )
        out += _time_ratio(mine)
        notes = sorted({c["note"] for c in mine.values() if c.get("note")})
        if notes:
            out += [""] + [f"- {n}" for n in notes]
        out.append("")
    out.append(
        f"Accuracy in % on the whole official test set, mean ± sample std over seeds 0-{FULL_SEEDS - 1}; "
        f"† = shortened (fewer than {FULL_SEEDS} seeds, to fit the time available). Times: mean wall seconds "
        "of adaptation per seed on this 2-core CPU, the process's CPU seconds where recorded, and the "
        "1-minute load average (the machine was shared). +names: the same support set plus copies of each "
        "intent's name as extra labelled sentences (`text_fewshot.py --label-names`, with the copies recorded "
        "in each cell's JSON; 3, chosen on held-out train sentences)."
    )
    return "\n".join(out) + "\n"


def plot(cells: list[dict], path: Path) -> None:
    """Accuracy (%) against K per method, one panel per dataset, error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({c["dataset"] for c in cells})
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        mine = [c for c in cells if c["dataset"] == dataset]
        for m in [m for m in ORDER if any(c["method"] == m for c in mine)]:
            points = sorted((c["shots"], c["summary"]["accuracy"]) for c in mine if c["method"] == m)
            ks = [k for k, _ in points]
            ax.errorbar(
                ks,
                [100 * s["mean"] for _, s in points],
                yerr=[100 * s["std"] for _, s in points],
                marker="o" if len(ks) > 1 else "*",
                markersize=5 if len(ks) > 1 else 12,
                capsize=3,
                label=m,
            )
        ax.set_xscale("log")
        ax.set_xticks(list(SHOTS), [str(k) for k in SHOTS])
        ax.set_xlabel("training sentences per intent (K)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(TITLES.get(dataset, dataset), fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, nargs="?", default=Path("results/text"))
    args = parser.parse_args(argv)
    cells = read_cells(args.folder)
    if not cells:
        sys.exit(f"no *shot.json result files in {args.folder}; run benchmarks/text_fewshot.py first")
    atomic_write_text(args.folder / "table.md", table(cells))
    plot(cells, args.folder / "accuracy_vs_shots.png")
    print(json.dumps({"cells": len(cells), "table": str(args.folder / "table.md")}))


if __name__ == "__main__":
    main()
