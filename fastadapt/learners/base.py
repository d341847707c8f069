"""What every learner provides, so one trainer and one evaluator serve all of them.

A learner never owns the data loop: it is handed one `Episode` at a time and returns a
differentiable loss (`task_loss`) or query predictions (`predict`). The trainer decides how the
tasks of a meta-batch are spread over threads, processes or ranks (see `fastadapt.engine`).

The contract (checked for every registered learner by tests/test_learner_contract.py):
- `predict` never sees query labels: the evaluator and `fastadapt predict` hand it
  `episode.without_query_labels()` (`query_y` is None). Only `task_loss` reads `query_y`.
- The support set may be unbalanced (any number of shots per class, `episode.shots` None) and
  in any order: learners group the support by `support_y` (per-class means by label, never a
  reshape to (ways, shots, ...)). Classification `predict` returns (n_query, ways) scores.
  Learners that mini-batch the support (fine-tuning, Reptile) first order it stably by label,
  so their result depends only on each class's own item order (`order_invariant = False`).
- Each learner declares the metric it is judged by with `primary_metric`; its direction (higher
  or lower is better) is declared in `fastadapt.evaluate.METRICS`.
- A learner's settings (`learner.args`) are its `Args` dataclass: every key typed, defaulted and
  commented, range checks in `Args.__post_init__`. `build_learner` parses the config into it,
  so a typo or a bad value is a one-line FastAdaptError naming `learner.args.<key>`.
"""

from __future__ import annotations

import abc
import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ..data.episode import Episode
from ..divergence import lr_fix
from ..errors import FastAdaptError
from ..models import parse_settings


def classification_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy of query logits (or log-probabilities) and the (loss, accuracy) metrics that
    every classification learner reports from `task_loss`."""
    loss = F.cross_entropy(logits, targets)
    accuracy = (logits.argmax(-1) == targets).float().mean()
    return loss, {"loss": loss.item(), "accuracy": accuracy.item()}


def class_means(values: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
    """Mean of `values` per label, for any order and any number of items per label:
    (S, D), (S,) -> (ways, D). A one-hot matmul: deterministic on every device (index_add_ uses
    atomics on CUDA), and on CPU bitwise equal to the old class-major reshape mean (checked in
    tests/test_learner_contract.py)."""
    onehot = F.one_hot(labels, ways).to(values.dtype)  # (S, ways)
    return onehot.T @ values / onehot.sum(0).unsqueeze(-1)


def by_label(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The support set stably sorted by label: the identity (same tensors) for the samplers'
    class-major episodes, so results there are unchanged; for mini-batching learners."""
    order = torch.argsort(y, stable=True)
    if torch.equal(order, torch.arange(len(y), device=y.device)):
        return x, y
    return x[order], y[order]


def require(ok: bool, key: str, value, allowed: str) -> None:
    """The one-line error of a learner setting outside its range."""
    if not ok:
        raise FastAdaptError(f"learner.args.{key} = {value!r} is out of range; it must be {allowed}")


def parse_args(args_cls: type, values: dict):
    """`args_cls(**values)` for Python callers and configs alike: unknown keys and wrong types are
    one-line FastAdaptErrors naming `learner.args.<key>` (and the valid keys)."""
    return parse_settings(args_cls, values, "learner.args")


def fields_of(args) -> dict:
    """The settings as keyword arguments (shallow, unlike dataclasses.asdict)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(args)}


class Learner(nn.Module, metaclass=abc.ABCMeta):
    #: True when `task_loss` never mutates module state (no BatchNorm running averages), so the
    #: tasks of a meta-batch may run in any order, in any process, and give the same gradient.
    stateless: bool = True
    #: True: the backbone ends in a linear layer with one unit per way (one for regression).
    needs_head: bool = False
    #: "classification" (metric: accuracy, higher is better) or "regression" (metric: mse).
    problem: str = "classification"
    #: False for learners that mini-batch the support set: their predictions do not depend on how
    #: the classes are interleaved, only on each class's own item order (see `by_label`).
    order_invariant: bool = True

    #: The learner's settings (`learner.args`), a dataclass: every key typed, defaulted and
    #: commented. None only for third-party learners, whose `build` then gets the raw mapping.
    Args: type | None = None
    #: `Args` fields that act only at test time and shape no weight (e.g. a test-time step size):
    #: `fastadapt eval RUN --set learner.args.<field>=value` may change them for one test, and the
    #: eval JSON records the change (`test_settings`). Everything else needs retraining.
    test_time_args: tuple[str, ...] = ()

    @classmethod
    def single_process_reason(cls, args) -> str | None:
        """Why this learner with these settings (`args`: its parsed `Args`, None for learners
        without) cannot train on several torchrun ranks: a one-line error naming the setting to
        change, or None. Checked before any rank starts (`fastadapt.config_checks.check_ranks`): a
        custom outer update that needs the whole meta-batch (TRPO, PPO) returns a reason."""
        return None

    #: True for learners that read no support set and adapt within their own rollouts (RL²'s
    #: trials): `fastadapt eval --shots` is refused for them.
    no_support: bool = False

    @classmethod
    def unused_settings(cls, args) -> dict[str, str]:
        """{config key: why} for the settings this learner with these `args` never reads (e.g.
        train.lr under MAML-RL's TRPO outer step): check_config warns when the user sets one, and
        `fastadapt tune` refuses to search one. Default: none."""
        return {}

    def divergence_fix(self, lr: float) -> str:
        """What the divergence message tells the user to change (`lr`: train.lr). Default: the lr."""
        return lr_fix(lr)

    @classmethod
    def selectable_metrics(cls, args) -> tuple[str, ...]:
        """Validation metrics other than the main one that may pick the best weights
        (`train.select_metric`), given the parsed `args`; checked before any data is loaded.
        Default: none (checkpoints are selected on `primary_metric`)."""
        return ()

    @abc.abstractmethod
    def task_loss(self, episode: Episode) -> tuple[torch.Tensor, dict[str, float]]:
        """Meta-training loss of one task (differentiable w.r.t. `self.parameters()`) and metrics."""

    @abc.abstractmethod
    def predict(self, episode: Episode) -> torch.Tensor:
        """Predictions for the query set after learning from the support set (logits or values).
        Never reads `episode.query_y` (it is None here)."""

    def query_metrics(self, prediction: torch.Tensor, episode: Episode) -> dict[str, float]:
        """Metrics of one episode's query predictions: accuracy for classification, mse for regression.
        A diverged classification episode (a NaN or +inf score, or a query without any finite
        score) has accuracy NaN, never the accuracy of an arbitrary argmax (1/ways for all-NaN)."""
        if self.problem == "classification":
            broken = (prediction.isnan() | prediction.isposinf()).any(-1) | ~prediction.isfinite().any(-1)
            if bool(broken.any()):
                return {"accuracy": float("nan")}
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
