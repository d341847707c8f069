"""Reptile (Nichol, Achiam & Schulman, 2018): move the initialisation towards task solutions.

Inner loop: `inner_iters` steps of Adam (fresh state per task; betas (0, 0.999) as in Nichol
et al.'s code) on minibatches of the task's support set, giving adapted weights φ; the shared
`inner_loop` in detached mode, so no gradient flows through it. The outer update
θ ← θ + ε·mean_i(φ_i − θ) is expressed through the shared trainer: `task_loss` returns the
surrogate ½‖θ − φ.detach()‖², whose gradient is θ − φ, so plain SGD (momentum 0) with lr ε on
the meta-batch mean is exactly Reptile (`train.optimizer: sgd`, `train.momentum: 0`,
`train.lr_schedule: linear` anneals ε to 0 as in the paper).

Minibatches cycle through a shuffled support set, reshuffled after each pass (Nichol's
`_mini_batches` without replacement). The shuffle is seeded by the episode's content, so a
task gives the same φ in every engine and after a resume. Nichol's code keeps Adam's second
moment across tasks (the optimiser is not reset); here each task starts fresh, which keeps a
task a pure function of (θ, data).

Classification support sets are first ordered stably by label (a no-op on the samplers'
class-major episodes), so a user's shuffled or unbalanced support set is mini-batched as the
class-major one would be: only the order within each class matters (`order_invariant` False).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ...data.episode import Episode
from ...registry import LEARNERS
from ..base import Learner, by_label, parse_args, require
from .inner_loop import SGD, Adam, Params, inner_loop
from .maml import has_running_stats


def minibatch_indices(n: int, batch: int, iters: int, seed: int) -> list[torch.Tensor]:
    """`iters` batches of `batch` indices from range(n), cycling through reshuffled passes."""
    g = torch.Generator().manual_seed(seed)
    order: list[int] = []
    while len(order) < batch * iters:
        order += torch.randperm(n, generator=g).tolist()
    return [torch.tensor(order[i * batch : (i + 1) * batch]) for i in range(iters)]


@LEARNERS.register("reptile")
class Reptile(Learner):
    needs_head = True
    order_invariant = False  # mini-batches of the support set (see the module docstring)

    @dataclass
    class Args:
        inner_iters: int = 5  # inner optimiser steps per task during meta-training
        inner_batch: int = 10  # support examples per inner step (mini-batches cycle through the support)
        inner_lr: float = 0.001  # the inner optimiser's step size
        eval_inner_iters: int = 50  # inner steps at evaluation
        eval_inner_batch: int = 5  # support examples per inner step at evaluation
        inner_optimizer: Literal["adam", "sgd"] = "adam"  # adam: fresh state per task, as Nichol et al.
        betas: tuple[float, ...] = (0.0, 0.999)  # the inner Adam's (beta1, beta2)

        def __post_init__(self):
            for key in ("inner_iters", "inner_batch", "eval_inner_iters", "eval_inner_batch"):
                require(getattr(self, key) >= 1, key, getattr(self, key), ">= 1")
            require(self.inner_lr > 0, "inner_lr", self.inner_lr, "> 0")
            require(
                len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
                "betas",
                list(self.betas),
                "two numbers in [0, 1)",
            )

    def __init__(self, model: nn.Module, *, problem: str = "classification", **kwargs):
        super().__init__()
        args = parse_args(self.Args, kwargs)
        inner_iters, inner_batch, inner_lr = args.inner_iters, args.inner_batch, args.inner_lr
        eval_inner_iters, eval_inner_batch = args.eval_inner_iters, args.eval_inner_batch
        inner_optimizer, betas = args.inner_optimizer, args.betas
        self.model = model
        self.inner_iters, self.inner_batch, self.inner_lr = inner_iters, inner_batch, inner_lr
        self.eval_inner_steps, self.eval_inner_batch = eval_inner_iters, eval_inner_batch
        self.inner_optimizer, self.betas = inner_optimizer, tuple(betas)
        self.problem = problem
        self.loss_fn = F.cross_entropy if problem == "classification" else F.mse_loss
        self.stateless = not has_running_stats(model)

    @classmethod
    def build(cls, backbone: nn.Module, ways: int | None, **kwargs) -> Reptile:
        return cls(backbone, problem="classification" if ways else "regression", **kwargs)

    def adapt(self, x: torch.Tensor, y: torch.Tensor, iters: int, batch: int) -> Params:
        """φ: `iters` optimiser steps on minibatches of (x, y), starting from θ; no graph kept."""
        if self.problem == "classification":
            x, y = by_label(x, y)
        seed = zlib.crc32(x.detach().cpu().numpy().tobytes())
        indices = minibatch_indices(len(x), min(batch, len(x)), iters, seed)
        batches = [(x[i], y[i]) for i in (idx.to(x.device) for idx in indices)]

        rule = SGD(self.inner_lr) if self.inner_optimizer == "sgd" else Adam(self.inner_lr, self.betas)
        return inner_loop(
            lambda params, k: self.loss_fn(functional_call(self.model, params, (batches[k][0],)), batches[k][1]),
            dict(self.model.named_parameters()),
            iters,
            rule,  # a fresh state per task
            detached=True,
        )

    def task_loss(self, episode: Episode):
        """The surrogate (its gradient is θ − φ); the metrics are the adapted model's query loss
        and accuracy, which is what the training log shows."""
        phi = self.adapt(episode.support_x, episode.support_y, self.inner_iters, self.inner_batch)
        theta = dict(self.model.named_parameters())
        surrogate = 0.5 * sum(((theta[n] - phi[n]) ** 2).sum() for n in theta)
        with torch.no_grad():  # metrics only: the adapted model on the task's query set
            prediction = functional_call(self.model, phi, (episode.query_x,))
            metrics = {"loss": self.loss_fn(prediction, episode.query_y).item()}
            if self.problem == "classification":
                metrics["accuracy"] = (prediction.argmax(-1) == episode.query_y).float().mean().item()
        return surrogate, metrics

    def predict(self, episode: Episode) -> torch.Tensor:
        phi = self.adapt(episode.support_x, episode.support_y, self.eval_inner_steps, self.eval_inner_batch)
        with torch.no_grad():  # transductive BN: the whole query set in one batch, as Nichol et al.
            return functional_call(self.model, phi, (episode.query_x,))

    def describe(self) -> dict:
        return {
            "bn_mode": getattr(self.model, "bn", "none"),
            "inner_iters": self.inner_iters,
            "inner_batch": self.inner_batch,
            "inner_lr": self.inner_lr,
            "inner_optimizer": self.inner_optimizer,
            "betas": list(self.betas),
            "eval_inner_iters": self.eval_inner_steps,
            "eval_inner_batch": self.eval_inner_batch,
        }
