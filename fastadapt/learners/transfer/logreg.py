"""Logistic regression on the support set: the linear-probe baseline of few-shot classification
on frozen features (Tian et al. 2020, "Rethinking Few-Shot Image Classification: a Good
Embedding Is All You Need"; for sentence embeddings, the SetFit paper's and issue 11's
baseline). Nothing is meta-trained: each task fits scikit-learn's multinomial
`LogisticRegression` (L-BFGS, L2 penalty of strength 1/C) on the support features and scores
the queries with its log-probabilities.

The features are the backbone's output, `raw-input` for frozen sentence embeddings (the
backbone is used as it is and never trained here). L-BFGS minimises a convex objective, so the
fit does not depend on the order of the support set beyond rounding. scikit-learn runs on the
CPU in float64; the (Q, ways) scores come back as float32 on the episode's device.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...data.episode import Episode
from ...errors import FastAdaptError
from ...registry import LEARNERS
from ..base import Learner, parse_args, require


def fit_logreg(features: np.ndarray, labels: np.ndarray, ways: int, c: float, max_iter: int):
    """A fitted sklearn LogisticRegression on (S, D) float64 features and (S,) labels in 0..ways-1.
    Raises FastAdaptError when scikit-learn is missing or a class has no support example."""
    try:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        raise FastAdaptError("learner logreg needs scikit-learn: pip install 'fastadapt[text]'") from None
    present = np.unique(labels)
    if len(present) != ways:
        raise FastAdaptError(f"logreg needs a support example of every class; got {len(present)} of {ways} classes")
    model = LogisticRegression(C=c, max_iter=max_iter)
    with warnings.catch_warnings():
        # A separable support set (the usual case: few points in many dimensions) converges only
        # as far as the L2 penalty lets it; the capped iterations are a choice, not a failure.
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(features, labels)
    return model


@LEARNERS.register("logreg")
class LogisticRegressionProbe(Learner):
    @dataclass
    class Args:
        c: float = 10.0  # inverse L2 strength (sklearn's C); larger fits the support set more closely
        max_iter: int = 1000  # L-BFGS iterations per task
        standardize: bool = False  # scale each feature to zero mean, unit variance over the support first

        def __post_init__(self):
            require(0 < self.c <= 1e6, "c", self.c, "in (0, 1e6]")
            require(self.max_iter >= 1, "max_iter", self.max_iter, ">= 1")

    def __init__(self, backbone: nn.Module, c: float = 10.0, max_iter: int = 1000, standardize: bool = False):
        super().__init__()
        self.Args(c=c, max_iter=max_iter, standardize=standardize)  # the range checks
        self.backbone, self.c, self.max_iter, self.standardize = backbone, float(c), max_iter, standardize
        self.backbone.requires_grad_(False)  # a fixed feature map: nothing here is meta-trained
        self.stateless = not any(getattr(m, "track_running_stats", False) for m in backbone.modules())

    @classmethod
    def build(cls, backbone: nn.Module, ways: int | None, **kwargs) -> LogisticRegressionProbe:
        args = parse_args(cls.Args, kwargs)
        return cls(backbone, args.c, args.max_iter, args.standardize)

    def _log_proba(self, episode: Episode) -> torch.Tensor:
        with torch.no_grad():
            n = episode.support_x.shape[0]
            z = self.backbone(torch.cat([episode.support_x, episode.query_x])).flatten(1).double().cpu().numpy()
        support, query = z[:n], z[n:]
        if self.standardize:
            mean, std = support.mean(0), support.std(0)
            std[std < 1e-12] = 1.0  # a constant feature carries no information; leave it centred
            support, query = (support - mean) / std, (query - mean) / std
        model = fit_logreg(support, episode.support_y.cpu().numpy(), episode.ways, self.c, self.max_iter)
        return torch.from_numpy(model.predict_log_proba(query)).float().to(episode.support_x.device)

    def task_loss(self, episode: Episode):
        """The query cross-entropy of the probe fitted to the support set. There is nothing to
        meta-train, so the loss carries no gradient (the trainer skips meta-training for learners
        without trainable parameters); it is here for diagnostics."""
        log_proba = self._log_proba(episode)
        loss = F.nll_loss(log_proba, episode.query_y)
        accuracy = (log_proba.argmax(-1) == episode.query_y).float().mean()
        return loss, {"loss": loss.item(), "accuracy": accuracy.item()}

    def predict(self, episode: Episode) -> torch.Tensor:
        return self._log_proba(episode)

    def describe(self) -> dict:
        return {
            "bn_mode": getattr(self.backbone, "bn", "none"),
            "c": self.c,
            "max_iter": self.max_iter,
            "standardize": self.standardize,
        }
