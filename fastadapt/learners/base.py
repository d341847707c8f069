"""What every learner provides, so one trainer and one evaluator serve all of them.

A learner never owns the data loop: it is handed one `Episode` at a time and returns a
differentiable loss (`task_loss`) or query predictions (`predict`). The trainer decides how the
tasks of a meta-batch are spread over threads, processes or ranks (see `fastadapt.engine`).
"""
from __future__ import annotations

import abc

import torch
from torch import nn
import torch.nn.functional as F

from ..data.episode import Episode


def classification_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy of query logits (or log-probabilities) and the (loss, accuracy) metrics that
    every classification learner reports from `task_loss`."""
    loss = F.cross_entropy(logits, targets)
    accuracy = (logits.argmax(-1) == targets).float().mean()
    return loss, {"loss": loss.item(), "accuracy": accuracy.item()}


class Learner(nn.Module, metaclass=abc.ABCMeta):
    #: True when `task_loss` never mutates module state (no BatchNorm running averages), so the
    #: tasks of a meta-batch may run in any order, in any process, and give the same gradient.
    stateless: bool = True
    #: True: the backbone ends in a linear layer with one unit per way (one for regression).
    needs_head: bool = False
    #: "classification" (metric: accuracy, higher is better) or "regression" (metric: mse).
    problem: str = "classification"
    #: The learner's settings (`learner.args`), a dataclass: every key typed and documented.
    Args: type | None = None

    @abc.abstractmethod
    def task_loss(self, episode: Episode) -> tuple[torch.Tensor, dict[str, float]]:
        """Meta-training loss of one task (differentiable w.r.t. `self.parameters()`) and metrics."""

    @abc.abstractmethod
    def predict(self, episode: Episode) -> torch.Tensor:
        """Predictions for the query set after learning from the support set (logits or values)."""

    def query_metrics(self, prediction: torch.Tensor, episode: Episode) -> dict[str, float]:
        """Metrics of one episode's query predictions: accuracy for classification, mse for regression."""
        if self.problem == "classification":
            return {"accuracy": (prediction.argmax(-1) == episode.query_y).float().mean().item()}
        return {"mse": F.mse_loss(prediction, episode.query_y).item()}

    @property
    def primary_metric(self) -> str:
        """The metric results are reported and checkpoints selected by; its direction (higher or
        lower is better) is declared in `fastadapt.evaluate.METRICS`."""
        return "accuracy" if self.problem == "classification" else "mse"

    def on_step(self, step: int, total_steps: int) -> None:
        """Called before each meta-training step (in every engine worker too), for learners whose
        loss depends on training progress (MAML++ annealing schedules). Default: nothing."""

    def describe(self) -> dict:
        """Settings that change results and must be recorded with them (e.g. BatchNorm mode)."""
        return {}
