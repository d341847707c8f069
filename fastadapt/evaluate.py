"""Evaluation on fixed episode sets, with 95% confidence intervals.

The interval is the one the few-shot literature reports: mean +- 1.96 * s / sqrt(n), with s the
sample standard deviation (ddof=1) of the per-episode metric over the n fixed test episodes.
"""
from __future__ import annotations

import math
import time
from typing import Iterable, Sequence

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


def evaluate(learner: Learner, episodes: Iterable[Episode], device: torch.device,
             progress=None) -> dict:
    """Mean and 95% CI of the learner's query metric over `episodes` (in eval mode)."""
    was_training = learner.training
    learner.eval()
    values: list[float] = []
    started = time.perf_counter()
    try:
        for episode in episodes:
            episode = episode.to(device)
            prediction = learner.predict(episode)
            values.append(learner.query_metrics(prediction, episode)[learner.primary_metric])
            if progress is not None:
                progress()
    finally:
        learner.train(was_training)
    # A diverged adaptation (e.g. more test-time steps than a learned step size tolerates) gives
    # a non-finite metric; the mean then stays non-finite, and the count says how many diverged.
    nonfinite = int(np.sum(~np.isfinite(values)))
    return {"metric": learner.primary_metric, "mean": float(np.mean(values)), "ci95": ci95(values),
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else float("nan"),
            "episodes": len(values), "nonfinite": nonfinite, "seconds": time.perf_counter() - started}


def better(metric: str, new: float, old: float | None) -> bool:
    """Is `new` an improvement? Accuracy goes up, errors go down."""
    if old is None:
        return True
    return new > old if metric == "accuracy" else new < old
