"""The MAML paper's Figure 2 for our runs: adapted sinusoid curves against the ground truth.

    python scripts/sinusoid_figure.py runs/maml-sinusoid-5shot runs/pretrained-sinusoid-5shot \
        --out RESULTS-sinusoid.png

For a few fixed test tasks (the run's eval seed, so the same tasks as its eval.json), each
run's model is shown before adaptation and after 1 and 10 gradient steps on the K support
points, over the whole input range [-5, 5].
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from fastadapt.data.sinusoid import sinusoid  # noqa: E402
from fastadapt.errors import FastAdaptError  # noqa: E402
from fastadapt.trainer import load_run  # noqa: E402
from fastadapt.utils import atomic_write  # noqa: E402


def curves(run_dir: Path, tasks: int, steps: tuple[int, ...], grid: torch.Tensor):
    """(label, test episodes, {steps: predictions on grid}) for a regression run with test-time steps."""
    trainer = load_run(run_dir)
    learner, config = trainer.learner, trainer.config
    if not hasattr(learner, "eval_inner_steps"):
        raise FastAdaptError(f"{run_dir}: learner {config.learner.name!r} takes no test-time gradient steps")
    test = trainer.suite.fixed_set(
        config.data.test_split, None, config.eval.shots, config.eval.queries, tasks, config.eval.seed
    )
    learner.eval()
    predictions = {}
    for k in steps:
        learner.eval_inner_steps = k
        predictions[k] = [learner.predict(replace(task, query_x=grid)).squeeze(-1).numpy() for task in test]
    return f"{config.learner.name} ({run_dir.name})", list(test), predictions


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", type=Path, nargs="+")
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    grid = torch.linspace(-5, 5, 200).unsqueeze(-1)
    runs = [curves(d, args.tasks, tuple(args.steps), grid) for d in args.run_dirs]
    fig, axes = plt.subplots(len(runs), args.tasks, figsize=(4 * args.tasks, 3.2 * len(runs)), squeeze=False)
    x = grid.squeeze(-1).numpy()
    for row, (label, tasks, predictions) in zip(axes, runs):
        for col, (ax, task) in enumerate(zip(row, tasks)):
            ax.plot(x, sinusoid(x, task.info["amplitude"], task.info["phase"]), color="tab:red", label="ground truth")
            for shade, k in zip(np.linspace(0.45, 0.9, len(args.steps)), args.steps):
                ax.plot(
                    x,
                    predictions[k][col],
                    color=plt.cm.Blues(shade),
                    linestyle="--",
                    label=f"after {k} step{'s' if k != 1 else ''}",
                )
            ax.scatter(
                task.support_x.squeeze(-1),
                task.support_y.squeeze(-1),
                color="k",
                marker="^",
                zorder=3,
                label=f"{len(task.support_x)} support points",
            )
            ax.set_title(f"{label}, task {col}", fontsize=9)
            ax.set_ylim(-6, 6)
            if col == 0:
                ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    atomic_write(args.out, lambda f: fig.savefig(f, format="png", dpi=100))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
