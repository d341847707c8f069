"""Run-folder outputs a person reads: metrics.csv and the learning-curve plot."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from .utils import atomic_write, atomic_write_text

COLUMNS = ["step", "lr", "train_loss", "train_metric", "val_metric", "val_ci95", "elapsed_s"]


def write_metrics_csv(path: Path, history: list[dict]) -> None:
    buffer = io.StringIO()
    # then any other validation metrics the learner reports (val_return_after_1, ...), in first-seen order
    extra = list(dict.fromkeys(k for row in history for k in row if k.startswith("val_") and k not in COLUMNS))
    columns = COLUMNS + extra
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns})
    atomic_write_text(path, buffer.getvalue())


def plot_learning_curve(path: Path, history: list[dict], metric: str, title: str, train_label: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in history if r.get("train_loss") is not None]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_loss.plot(steps, [r["train_loss"] for r in history if r.get("train_loss") is not None])
    positive = all(r["train_loss"] > 0 for r in history if r.get("train_loss") is not None)
    # a log scale for losses that are positive (cross-entropy, MSE); RL surrogates can be <= 0
    ax_loss.set(
        xlabel="meta-training step", ylabel="training loss", yscale="log" if positive else "linear", title="loss"
    )
    train = [(r["step"], r["train_metric"]) for r in history if r.get("train_metric") is not None]
    val = [(r["step"], r["val_metric"], r["val_ci95"]) for r in history if r.get("val_metric") is not None]
    if train:
        ax_metric.plot(*zip(*train), label=f"train {metric} {train_label}".strip(), alpha=0.7)
    if val:
        s, m, c = zip(*val)
        ax_metric.errorbar(s, m, yerr=c, marker="o", capsize=3, label=f"validation {metric} (95% CI)")
    ax_metric.set(xlabel="meta-training step", ylabel=metric, title=metric)
    ax_metric.legend(loc="best")
    for ax in (ax_loss, ax_metric):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
