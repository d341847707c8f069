"""1-D Gaussian-process regression tasks, the function family of the Neural Process papers.

Each task is one draw f ~ GP(0, k) with the RBF kernel k(x, x') = s^2 exp(-(x - x')^2 / (2 l^2)),
l = 0.4, s^2 = 1 (Garnelo et al. 2018a/b, 1-D experiments), observed at x ~ U[-2, 2]; a small
jitter on the diagonal keeps the Cholesky factor stable. Like sinusoid tasks, task `index` is a
pure function of (seed, index), so training needs no sampler state.

Training tasks (`variable_context=True`) draw their context size uniformly from [min(3, shots), shots],
as the NP papers do: a model trained with one context size only is not a model of "any context".
Evaluation tasks have exactly `shots` context points.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import FastAdaptError
from ..registry import DATASETS
from .base import RegressionSuite
from .episode import Episode


def rbf_kernel(a: np.ndarray, b: np.ndarray, lengthscale: float, signal_var: float) -> np.ndarray:
    """k(a_i, b_j) = signal_var * exp(-(a_i - b_j)^2 / (2 lengthscale^2)) for 1-D points (n,), (m,)."""
    return signal_var * np.exp(-0.5 * ((a[:, None] - b[None, :]) / lengthscale) ** 2)


class GPTasks:
    """Tasks with `shots` context and `queries` target points; x, y of shape (n, 1), float32."""

    def __init__(
        self,
        shots: int,
        queries: int,
        seed: int = 0,
        lengthscale: float = 0.4,
        signal_var: float = 1.0,
        jitter: float = 1e-4,
        x_range: tuple[float, float] = (-2.0, 2.0),
        variable_context: bool = False,
    ):
        for name, value in {"shots": shots, "queries": queries}.items():
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise FastAdaptError(f"gp1d {name} must be a positive integer, got {value!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise FastAdaptError(f"gp1d seed must be a non-negative integer, got {seed!r}")
        if lengthscale <= 0 or signal_var <= 0 or jitter < 0:
            raise FastAdaptError("gp1d lengthscale and signal_var must be > 0 and jitter >= 0")
        self.shots, self.queries, self.seed = int(shots), int(queries), int(seed)
        self.lengthscale, self.signal_var, self.jitter = float(lengthscale), float(signal_var), float(jitter)
        self.x_range = (float(x_range[0]), float(x_range[1]))
        self.variable_context = variable_context

    def task(self, index: int) -> Episode:
        """Task `index`: y = L eps with L L^T = K(x, x) + jitter I, computed in float64."""
        index = operator.index(index)
        if index < 0:
            raise IndexError(f"task index must be non-negative, got {index}")
        rng = np.random.default_rng([self.seed, index])
        shots = int(rng.integers(min(3, self.shots), self.shots + 1)) if self.variable_context else self.shots
        n = shots + self.queries
        x = rng.uniform(*self.x_range, size=n).astype(np.float32).astype(np.float64)
        cov = rbf_kernel(x, x, self.lengthscale, self.signal_var) + self.jitter * np.eye(n)
        y = np.linalg.cholesky(cov) @ rng.standard_normal(n)
        x = torch.from_numpy(x.astype(np.float32)).unsqueeze(-1)
        y = torch.from_numpy(y.astype(np.float32)).unsqueeze(-1)
        return Episode(
            x[:shots],
            y[:shots],
            x[shots:],
            y[shots:],
            ways=None,
            shots=shots,
            info={"lengthscale": self.lengthscale, "signal_var": self.signal_var},
        )

    __call__ = task

    def posterior(self, context_x: np.ndarray, context_y: np.ndarray, target_x: np.ndarray):
        """Exact GP predictive mean and std at target_x (of the noisy observation), the ideal
        against which NP predictions are judged in plots."""
        cx, cy, tx = (np.asarray(a, dtype=np.float64).reshape(-1) for a in (context_x, context_y, target_x))
        k_cc = rbf_kernel(cx, cx, self.lengthscale, self.signal_var) + self.jitter * np.eye(len(cx))
        k_tc = rbf_kernel(tx, cx, self.lengthscale, self.signal_var)
        chol = np.linalg.cholesky(k_cc)
        alpha = np.linalg.solve(chol.T, np.linalg.solve(chol, cy))
        v = np.linalg.solve(chol, k_tc.T)
        var = self.signal_var + self.jitter - (v**2).sum(0)
        return k_tc @ alpha, np.sqrt(np.maximum(var, 1e-12))

    def __repr__(self) -> str:
        return (
            f"GPTasks(shots={self.shots}, queries={self.queries}, seed={self.seed}, "
            f"lengthscale={self.lengthscale}, signal_var={self.signal_var}, jitter={self.jitter}, "
            f"variable_context={self.variable_context})"
        )


@DATASETS.register("gp1d")
class GP1DSuite(RegressionSuite):
    """1-D GP regression (Neural Process papers): RBF kernel, lengthscale 0.4, x in [-2, 2].
    Training tasks draw their context size in [min(3, shots), shots]; validation and test tasks
    have exactly `shots` context points."""

    @dataclass
    class Args:
        lengthscale: float = 0.4  # RBF kernel lengthscale l
        signal_var: float = 1.0  # kernel variance s^2
        jitter: float = 1e-4  # added to the covariance diagonal (observation noise variance)

    def source(self, shots: int, queries: int, seed: int, training: bool) -> GPTasks:
        a = self.args
        return GPTasks(
            shots,
            queries,
            seed=seed,
            lengthscale=a.lengthscale,
            signal_var=a.signal_var,
            jitter=a.jitter,
            variable_context=training,
        )
