"""Sinusoid regression tasks from the MAML paper (Finn et al., 2017, section 5.1).

Each task is y = A sin(x - phase) with A ~ U[0.1, 5], phase ~ U[0, pi] and x ~ U[-5, 5]; like
classification episodes, task `index` is a pure function of (seed, index).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import FastAdaptError
from ..registry import DATASETS
from .base import RegressionSuite
from .episode import Episode


def sinusoid(x, amplitude: float, phase: float):
    """amplitude * sin(x - phase), for numpy arrays, tensors or floats."""
    sin = torch.sin if isinstance(x, torch.Tensor) else np.sin
    return amplitude * sin(x - phase)


def _check_range(name: str, bounds: tuple[float, float]) -> tuple[float, float]:
    low, high = map(float, bounds)
    if not low <= high:
        raise FastAdaptError(f"sinusoid {name} range must be (low, high) with low <= high, got {bounds!r}")
    return low, high


class SinusoidTasks:
    """Tasks with `shots` support and `queries` query points, x of shape (n, 1), float32."""

    def __init__(
        self,
        shots: int,
        queries: int,
        seed: int = 0,
        amplitude: tuple[float, float] = (0.1, 5.0),
        phase: tuple[float, float] = (0.0, math.pi),
        x_range: tuple[float, float] = (-5.0, 5.0),
    ):
        for name, value in {"shots": shots, "queries": queries}.items():
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise FastAdaptError(f"sinusoid {name} must be a positive integer, got {value!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise FastAdaptError(f"sinusoid seed must be a non-negative integer, got {seed!r}")
        self.shots, self.queries, self.seed = int(shots), int(queries), int(seed)
        self.amplitude = _check_range("amplitude", amplitude)
        self.phase = _check_range("phase", phase)
        self.x_range = _check_range("x", x_range)

    def task(self, index: int) -> Episode:
        """Task `index`: info holds its amplitude and phase; y is computed from the stored float32 x."""
        index = operator.index(index)
        if index < 0:
            raise IndexError(f"task index must be non-negative, got {index}")
        rng = np.random.default_rng([self.seed, index])
        amplitude, phase = float(rng.uniform(*self.amplitude)), float(rng.uniform(*self.phase))
        x = rng.uniform(*self.x_range, size=(self.shots + self.queries, 1)).astype(np.float32)
        y = sinusoid(x.astype(np.float64), amplitude, phase).astype(np.float32)
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        s = self.shots
        return Episode(x[:s], y[:s], x[s:], y[s:], ways=None, shots=s, info={"amplitude": amplitude, "phase": phase})

    __call__ = task

    def __repr__(self) -> str:
        return (
            f"SinusoidTasks(shots={self.shots}, queries={self.queries}, seed={self.seed}, "
            f"amplitude={self.amplitude}, phase={self.phase}, x_range={self.x_range})"
        )


@DATASETS.register("sinusoid")
class SinusoidSuite(RegressionSuite):
    """Sinusoid regression (MAML paper): amplitude in [0.1, 5], phase in [0, pi], x in [-5, 5]."""

    @dataclass
    class Args:
        amplitude: tuple[float, ...] = (0.1, 5.0)  # (low, high) of the uniform amplitude
        phase: tuple[float, ...] = (0.0, math.pi)  # (low, high) of the uniform phase, radians
        x_range: tuple[float, ...] = (-5.0, 5.0)  # (low, high) of the uniform inputs

    def source(self, shots: int, queries: int, seed: int, training: bool) -> SinusoidTasks:
        a = self.args
        for name in ("amplitude", "phase", "x_range"):
            if len(getattr(a, name)) != 2:
                raise FastAdaptError(f"data.args.{name} must be [low, high], got {list(getattr(a, name))}")
        return SinusoidTasks(shots, queries, seed=seed, amplitude=a.amplitude, phase=a.phase, x_range=a.x_range)
