"""The MAML paper's "pretrained" regression baseline (Finn et al. 2017, section 5.1).

One network is trained on all tasks jointly (MSE on the support and query points of every
training task, with no adaptation in the loss), then fine-tuned at test time with plain SGD on
the support set. It isolates what meta-learning adds: the same architecture, data and
test-time procedure as MAML, but a training objective that ignores the test-time steps. On
sinusoids the joint optimum is close to the zero function (the mean over random phases), from
which a few steps on 5 points barely move (paper, K=5: MSE 2.41 / 2.23 / 2.19 after 1 / 5 / 10
steps, against 0.67 for MAML after one).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ...data.episode import Episode
from ...registry import LEARNERS
from ..base import Learner, parse_args, require
from ..optimization.inner_loop import SGD, inner_loop


@LEARNERS.register("pretrained")
class Pretrained(Learner):
    needs_head = True

    @dataclass
    class Args:
        eval_inner_steps: int = 1  # full-batch SGD steps on the support set at test time
        inner_lr: float = 0.01  # the test-time SGD step size

        def __post_init__(self):
            require(self.eval_inner_steps >= 1, "eval_inner_steps", self.eval_inner_steps, ">= 1")
            require(self.inner_lr > 0, "inner_lr", self.inner_lr, "> 0")

    def __init__(self, model: nn.Module, *, problem: str = "regression", **kwargs):
        super().__init__()
        args = parse_args(self.Args, kwargs)
        self.model = model
        self.eval_inner_steps = args.eval_inner_steps
        self.inner_lr = float(args.inner_lr)
        self.problem = problem
        self.loss_fn = F.cross_entropy if problem == "classification" else F.mse_loss
        self.stateless = not any(getattr(m, "track_running_stats", False) for m in model.modules())

    @classmethod
    def build(cls, backbone: nn.Module, ways: int | None, **kwargs) -> Pretrained:
        return cls(backbone, problem="classification" if ways else "regression", **kwargs)

    def forward_with(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, params, (x,))

    def task_loss(self, episode: Episode):
        x = torch.cat([episode.support_x, episode.query_x])
        y = torch.cat([episode.support_y, episode.query_y])
        prediction = self.model(x)
        loss = self.loss_fn(prediction, y)
        metrics = {"loss": loss.item()}
        if self.problem == "regression":
            metrics["mse"] = loss.item()
        else:
            metrics["accuracy"] = (prediction.argmax(-1) == y).float().mean().item()
        return loss, metrics

    def predict(self, episode: Episode) -> torch.Tensor:
        """Fine-tune a copy of the weights (a dict of tensors, the module is untouched) with
        `eval_inner_steps` SGD steps on the support set, then predict the queries."""
        params = inner_loop(
            lambda p, _: self.loss_fn(self.forward_with(p, episode.support_x), episode.support_y),
            dict(self.model.named_parameters()),
            self.eval_inner_steps,
            SGD(self.inner_lr),
            detached=True,
        )
        with torch.no_grad():
            return self.forward_with(params, episode.query_x)

    def describe(self) -> dict:
        return {
            "bn_mode": getattr(self.model, "bn", "none"),
            "eval_inner_steps": self.eval_inner_steps,
            "inner_lr": self.inner_lr,
            "test_time": "SGD on the support set, all weights",
        }
