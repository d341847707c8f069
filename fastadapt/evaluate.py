"""Evaluation on fixed episode sets, with 95% confidence intervals.

The interval is the one the few-shot literature reports: mean +- 1.96 * s / sqrt(n), with s the
sample standard deviation (ddof=1) of the per-episode metric over the n fixed test episodes.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from .data.episode import Episode
from .learners.base import Learner


def ci95(values: Sequence[float]) -> float:
    """Half-width of the normal-approximation 95% confidence interval of the mean."""
    values = np.asarray(values, dtype=np.float64)
    if values.size < 2:
        return float("nan")
    return float(1.96 * values.std(ddof=1) / math.sqrt(values.size))


def evaluate(learner: Learner, episodes: Iterable[Episode], device: torch.device, progress=None) -> dict:
    """Mean and 95% CI of the learner's query metric over `episodes` (in eval mode); `others`: the
    same for every other metric its `query_metrics` reports (e.g. RL returns after k steps)."""
    was_training = learner.training
    learner.eval()
    values: list[float] = []
    others: dict[str, list[float]] = {}  # the other metrics learners report (RL: return after k steps)
    started = time.perf_counter()
    try:
        for episode in episodes:
            episode = episode.to(device)
            prediction = learner.predict(episode.without_query_labels())  # predictions never see answers
            metrics = learner.query_metrics(prediction, episode)
            values.append(metrics[learner.primary_metric])
            for key, value in metrics.items():
                if key != learner.primary_metric:
                    others.setdefault(key, []).append(value)
            if progress is not None:
                progress()
    finally:
        learner.train(was_training)
    # A diverged adaptation (e.g. more test-time steps than a learned step size tolerates) gives
    # a non-finite metric; the mean then stays non-finite, and the count says how many diverged.
    nonfinite = int(np.sum(~np.isfinite(values)))
    return {
        "metric": learner.primary_metric,
        "mean": float(np.mean(values)),
        "ci95": ci95(values),
        "std": float(np.std(values, ddof=1)) if len(values) > 1 else float("nan"),
        "episodes": len(values),
        "nonfinite": nonfinite,
        "seconds": time.perf_counter() - started,
        "others": {k: {"mean": float(np.mean(v)), "ci95": ci95(v)} for k, v in others.items()},
    }


#: Every metric a learner may report as its primary one, and whether higher is better. Checkpoint
#: selection, the results table and the CLI read the direction from here.
METRICS: dict[str, bool] = {
    "accuracy": True,
    "mse": False,
    "return": True,
    "f1": True,
    "log_likelihood": True,
    "success_rate": True,
}


def higher_is_better(metric: str) -> bool:
    """The declared direction of `metric`; `<metric>_after_<k>` (after k adaptation steps) shares it."""
    try:
        return METRICS[re.sub(r"_after_\d+$", "", metric)]
    except KeyError:
        raise ValueError(f"unknown metric {metric!r}; declare its direction in fastadapt.evaluate.METRICS") from None


def better(metric: str, new: float, old: float | None) -> bool:
    """Is `new` an improvement over `old` in the metric's declared direction? A non-finite score
    never is, and any finite score beats a non-finite (or missing) old one."""
    if not math.isfinite(new):
        return False
    if old is None or not math.isfinite(old):
        return True
    return new > old if higher_is_better(metric) else new < old
