"""MAML (Finn et al., 2017) and first-order MAML, with adaptation as a pure function.

`adapt(forward, params, x, y, ...)` maps parameters and a support set to adapted parameters
without touching any module: the model is called through `torch.func.functional_call`, so
the same code runs under any engine (loop, worker processes, DDP ranks) and never clones
modules. Second order: the inner gradients are built with `create_graph=True`, so the
meta-gradient differentiates through them. First order: the inner gradients are constants,
so d(adapted)/d(params) = I and the meta-gradient is the query gradient at the adapted point.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ...data.episode import Episode
from ...registry import LEARNERS
from ..base import Learner

Params = dict[str, torch.Tensor]


def adapt(forward: Callable[[Params, torch.Tensor], torch.Tensor], params: Params, x: torch.Tensor,
          y: torch.Tensor, loss_fn: Callable, steps: int, lr: torch.Tensor | float,
          second_order: bool) -> Params:
    """`steps` steps of gradient descent on loss_fn(forward(params, x), y); returns new params."""
    for _ in range(steps):
        loss = loss_fn(forward(params, x), y)
        grads = torch.autograd.grad(loss, tuple(params.values()), create_graph=second_order)
        params = {name: p - lr * g for (name, p), g in zip(params.items(), grads)}
    return params


@LEARNERS.register("maml")
class MAML(Learner):
    needs_head = True

    def __init__(self, model: nn.Module, *, inner_steps: int = 1, inner_lr: float = 0.4,
                 learn_inner_lr: bool = False, first_order: bool = False,
                 eval_inner_steps: int | None = None, problem: str = "classification"):
        super().__init__()
        if inner_steps < 1 or (eval_inner_steps is not None and eval_inner_steps < 1):
            raise ValueError("inner_steps and eval_inner_steps must be >= 1")
        self.model = model
        self.inner_steps = inner_steps
        self.eval_inner_steps = eval_inner_steps or inner_steps
        self.first_order = first_order
        self.problem = problem
        lr = torch.tensor(float(inner_lr))
        if learn_inner_lr:
            self.inner_lr = nn.Parameter(lr)
        else:
            self.register_buffer("inner_lr", lr)
        self.loss_fn = F.cross_entropy if problem == "classification" else F.mse_loss
        # Only transductive (batch-statistics) BatchNorm keeps the forward pure.
        self.stateless = not any(getattr(m, "track_running_stats", False) for m in model.modules())

    @classmethod
    def build(cls, backbone: nn.Module, ways: int | None, **kwargs) -> "MAML":
        return cls(backbone, problem="classification" if ways else "regression", **kwargs)

    def forward_with(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, params, (x,))

    def fast_weights(self, episode: Episode, steps: int, second_order: bool) -> Params:
        params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        return adapt(self.forward_with, params, episode.support_x, episode.support_y, self.loss_fn,
                     steps, self.inner_lr, second_order)

    def task_loss(self, episode: Episode):
        fast = self.fast_weights(episode, self.inner_steps, second_order=not self.first_order)
        prediction = self.forward_with(fast, episode.query_x)
        loss = self.loss_fn(prediction, episode.query_y)
        metrics = {"loss": loss.item()}
        if self.problem == "classification":
            metrics["accuracy"] = (prediction.argmax(-1) == episode.query_y).float().mean().item()
        return loss, metrics

    def predict(self, episode: Episode) -> torch.Tensor:
        with torch.enable_grad():
            fast = self.fast_weights(episode, self.eval_inner_steps, second_order=False)
        with torch.no_grad():
            return self.forward_with({n: p.detach() for n, p in fast.items()}, episode.query_x)

    def describe(self) -> dict:
        bn = getattr(self.model, "bn", "none")
        return {"bn_mode": bn, "inner_steps": self.inner_steps, "eval_inner_steps": self.eval_inner_steps,
                "inner_lr": float(self.inner_lr), "first_order": self.first_order,
                "learn_inner_lr": isinstance(self.inner_lr, nn.Parameter)}


@LEARNERS.register("fomaml")
class FOMAML(MAML):
    """First-order MAML: MAML with the inner gradients treated as constants."""

    def __init__(self, model: nn.Module, **kwargs):
        kwargs["first_order"] = True
        super().__init__(model, **kwargs)
