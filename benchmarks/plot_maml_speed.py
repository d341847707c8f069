"""Plot tasks/s against meta-batch size, fastadapt against its peers, from a `maml_speed.py`
JSON-lines file: one panel per (algorithm, inner steps).

    .venv/bin/python benchmarks/plot_maml_speed.py benchmarks/maml_speed.jsonl --out benchmarks/maml_speed.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from table import IMPLS, load  # noqa: E402

STYLE = {
    "higher": ("tab:gray", "o", "--"),
    "torchopt": ("tab:olive", "s", "--"),
    "fastadapt-auto": ("tab:blue", "o", "-"),
    "fastadapt-serial": ("tab:cyan", "^", "-"),
    "fastadapt-serial-ckpt": ("tab:purple", "v", ":"),
    "fastadapt-vmap": ("tab:red", "D", "-"),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("jsonl", type=Path)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("maml_speed.png"))
    args = parser.parse_args()
    rows = {k: r for k, r in load(args.jsonl).items() if "tasks_per_s" in r}
    panels = sorted(
        {k[:2] for k in rows},
        key=lambda p: (
            ["maml", "fomaml", "anil", "metasgd"].index(p[0]) if p[0] in ("maml", "fomaml", "anil", "metasgd") else 9,
            p[1],
        ),
    )
    steps = sorted({p[1] for p in panels})
    algos = list(dict.fromkeys(p[0] for p in panels))
    fig, axes = plt.subplots(len(steps), len(algos), figsize=(3.2 * len(algos), 2.8 * len(steps)), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for algo, inner in panels:
        ax = axes[steps.index(inner)][algos.index(algo)]
        ax.set_visible(True)
        for impl in IMPLS:
            points = sorted(
                (k[2], r["tasks_per_s"]) for k, r in rows.items() if k[:2] == (algo, inner) and k[3] == impl
            )
            if points:
                color, marker, line = STYLE[impl]
                ax.plot(*zip(*points), color=color, marker=marker, linestyle=line, label=impl)
        ax.set_title(f"{algo}, {inner} inner step{'s' if inner > 1 else ''}", fontsize=10)
        ax.set_xticks(sorted({k[2] for k in rows if k[:2] == (algo, inner)}))
        ax.set_xlabel("meta-batch (tasks)")
        ax.set_ylabel("tasks/s")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    first = next(r for r in rows.values())
    legend = {}  # every implementation that appears in any panel (serial-ckpt only in the 5-step ones)
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    handles, labels = list(legend.values()), list(legend)
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle(
        f"MAML-family meta-training, Conv-4, {first['ways']}-way {first['shots']}-shot\n"
        f"{first['device']} ({first['cores']} cores, {first['threads']} threads), torch {first['torch']}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.06, 1, 0.92))
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
