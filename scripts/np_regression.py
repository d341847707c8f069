"""Neural-process regression against the number of context points (Garnelo et al. 2018a, Fig. 2).

    python scripts/np_regression.py runs/cnp-gp1d --context 1 2 5 10 20 50

For a trained CNP or NP run (gp1d or sinusoid), scores the predictive distribution on fixed,
seeded test tasks (the run's eval seed and test split) for each context size: the Gaussian
log-likelihood per target point and the MSE of the predictive mean, each with its 95% CI over
tasks. For an NP the prediction uses the mean of q(z | context) unless --samples S is given, in
which case the log-likelihood is the Monte-Carlo estimate log (1/S) sum_s p(y_T | z_s), z_s ~
q(z | context), divided by the number of targets (MSE still from the mean of z).
Writes np_regression.json and np_regression.png (mean +- 2 sigma against the ground truth:
the exact GP posterior for gp1d, the true curve for sinusoids) into the run folder.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from fastadapt.data.gp import GPTasks  # noqa: E402
from fastadapt.data.sinusoid import sinusoid  # noqa: E402
from fastadapt.errors import FastAdaptError  # noqa: E402
from fastadapt.evaluate import ci95  # noqa: E402
from fastadapt.learners.generative.cnp import gaussian_log_likelihood  # noqa: E402
from fastadapt.trainer import load_run  # noqa: E402
from fastadapt.utils import atomic_write, atomic_write_text  # noqa: E402

X_RANGE = {"gp1d": (-2.0, 2.0), "sinusoid": (-5.0, 5.0)}


def log_likelihood_per_point(learner, task, samples: int, generator: torch.Generator) -> float:
    if samples:
        mean, std = learner.predictive(
            task.support_x, task.support_y, task.query_x, samples=samples, generator=generator
        )
        joint = gaussian_log_likelihood(task.query_y, mean, std).sum((-1, -2))  # (S,)
        return float((torch.logsumexp(joint, 0) - math.log(samples)) / len(task.query_x))
    mean, std = learner.predictive(task.support_x, task.support_y, task.query_x)
    return float(gaussian_log_likelihood(task.query_y, mean, std).mean())


def score(learner, tasks, samples: int, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    lls, mses = [], []
    for task in tasks:
        mean = learner.predictive(task.support_x, task.support_y, task.query_x)[0]
        mses.append(float((mean - task.query_y).pow(2).mean()))
        lls.append(log_likelihood_per_point(learner, task, samples, generator))
    return {
        "log_likelihood": float(np.mean(lls)),
        "log_likelihood_ci95": ci95(lls),
        "mse": float(np.mean(mses)),
        "mse_ci95": ci95(mses),
        "tasks": len(tasks),
    }


def plot(path: Path, learner, dataset: str, suite_tasks: dict[int, list], title: str) -> None:
    low, high = X_RANGE[dataset]
    grid = torch.linspace(low, high, 200).unsqueeze(-1)
    rows = list(suite_tasks)
    columns = len(next(iter(suite_tasks.values())))
    fig, axes = plt.subplots(len(rows), columns, figsize=(4 * columns, 3 * len(rows)), squeeze=False)
    x = grid.squeeze(-1).numpy()
    truth_gp = GPTasks(1, 1)
    for row, n in zip(axes, rows):
        for ax, task in zip(row, suite_tasks[n]):
            mean, std = (t.squeeze(-1).numpy() for t in learner.predictive(task.support_x, task.support_y, grid))
            if dataset == "gp1d":
                true_mean, true_std = truth_gp.posterior(task.support_x.numpy(), task.support_y.numpy(), x)
                ax.plot(x, true_mean, color="tab:red", label="GP posterior (truth)")
                ax.fill_between(x, true_mean - 2 * true_std, true_mean + 2 * true_std, color="tab:red", alpha=0.12)
                ax.scatter(task.query_x.squeeze(-1), task.query_y.squeeze(-1), s=4, color="gray", label="targets")
            else:
                ax.plot(
                    x, sinusoid(x, task.info["amplitude"], task.info["phase"]), color="tab:red", label="ground truth"
                )
            ax.plot(x, mean, color="tab:blue", label="model mean")
            ax.fill_between(x, mean - 2 * std, mean + 2 * std, color="tab:blue", alpha=0.2, label="model +- 2 sigma")
            ax.scatter(
                task.support_x.squeeze(-1), task.support_y.squeeze(-1), color="k", marker="^", zorder=3, label="context"
            )
            ax.set_title(f"{n} context point{'s' if n != 1 else ''}", fontsize=9)
        row[0].legend(fontsize=6, loc="lower left")
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--context", type=int, nargs="+", default=[1, 2, 5, 10, 20, 50])
    parser.add_argument("--queries", type=int, help="target points per task (default: the run's eval.queries)")
    parser.add_argument("--episodes", type=int, help="test tasks per context size (default: the run's eval.episodes)")
    parser.add_argument("--samples", type=int, default=0, help="NP only: z samples for the log-likelihood (0: mean z)")
    parser.add_argument("--plot-tasks", type=int, default=3)
    args = parser.parse_args(argv)
    trainer = load_run(args.run_dir)
    learner, config = trainer.learner, trainer.config
    dataset = config.data.dataset
    if not hasattr(learner, "predictive") or dataset not in X_RANGE:
        raise FastAdaptError(
            f"{args.run_dir}: needs a cnp or np run on gp1d or sinusoid, got {config.learner.name!r} on {dataset!r}"
        )
    if args.samples and "samples" not in inspect.signature(learner.predictive).parameters:
        raise FastAdaptError(f"--samples needs a latent model (np); {config.learner.name!r} is deterministic")
    if min(args.context) < 1:
        raise FastAdaptError(f"--context sizes must be >= 1, got {args.context}")
    e = config.eval
    queries, episodes = args.queries or e.queries, args.episodes or e.episodes
    learner.eval()
    results, shown = [], {}
    started = time.perf_counter()
    with torch.no_grad():
        for n in args.context:
            tasks = trainer.suite.fixed_set(config.data.test_split, None, n, queries, episodes, e.seed)
            results.append({"context": n, **score(learner, tasks, args.samples, e.seed)})
            print(
                f"context {n:3d}: log-lik/point {results[-1]['log_likelihood']:.3f} +- "
                f"{results[-1]['log_likelihood_ci95']:.3f}, mse {results[-1]['mse']:.4f} +- {results[-1]['mse_ci95']:.4f}"
            )
        picks = sorted({args.context[0], args.context[len(args.context) // 2], args.context[-1]})
        for n in picks:
            shown[n] = list(trainer.suite.fixed_set(config.data.test_split, None, n, queries, args.plot_tasks, e.seed))
        plot(
            args.run_dir / "np_regression.png",
            learner,
            dataset,
            shown,
            f"{config.name} ({config.learner.name}), test tasks",
        )
    record = {
        "preset": config.name,
        "method": config.learner.name,
        "dataset": dataset,
        "split": config.data.test_split,
        "queries": queries,
        "episodes": episodes,
        "seed": e.seed,
        "z": f"{args.samples} samples"
        if args.samples
        else "mean of q(z | context)"
        if config.learner.name == "np"
        else None,
        "train_steps": trainer.state["step"],
        "selected_step": trainer.state["best_step"],
        "results": results,
        "seconds": round(time.perf_counter() - started, 2),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_text(args.run_dir / "np_regression.json", json.dumps(record, indent=2))
    print(f"wrote {args.run_dir / 'np_regression.json'} and np_regression.png")


if __name__ == "__main__":
    main()
