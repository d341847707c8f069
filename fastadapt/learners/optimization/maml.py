"""MAML (Finn et al., 2017), first-order MAML and the MAML++ options (Antoniou et al., 2019),
with adaptation as a pure function of (parameters, support set).

The model is only ever called through `torch.func.functional_call`, so the same code runs
under any engine (loop, worker processes, DDP ranks, vmap) and never clones modules. Second
order: the inner gradients keep their graph, so the meta-gradient differentiates through them.
First order: they are constants, so d(adapted)/d(params) = I.

MAML++ options, each a constructor argument (so ANIL and Meta-SGD inherit them):
- `multi_step_loss`: the query loss after every inner step, weighted uniformly at first and
  annealed towards the last step over the first `msl_fraction` of training (stabilises the
  early, deep unrolls; see `inner_loop.msl_weights`).
- `lslr`: a learned inner lr per parameter tensor and per step (initialised at `inner_lr`).
- `per_step_bn`: a BatchNorm gamma/beta per inner step, meta-learned and not adapted in the
  inner loop (the features' statistics change after each step; transductive BN only).
- `first_order_fraction`: first order for that fraction of training, second order afterwards
  (derivative-order annealing: cheap early steps, exact gradients later).
- `checkpoint_inner`: recompute each inner step in the backward pass instead of storing it,
  so 5-10 second-order steps fit in memory (about one extra forward+backward per step).
Progress-dependent options are driven by `on_step(step, total)`.

The inner loop (`inner_loop.inner_loop_steps` with its `SGD` rule, shared with Reptile and the
fine-tuning baselines) takes full-batch steps on the whole support set (a mean loss over it), so
it needs no particular order or balance of the support set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ...data.episode import Episode
from ...errors import FastAdaptError
from ...registry import LEARNERS
from ..base import Learner, parse_args, require
from .inner_loop import SGD, CompositeBatchNorm, Params, inner_loop, inner_loop_steps, msl_weights


def adapt(
    forward: Callable[[Params, torch.Tensor], torch.Tensor],
    params: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable,
    steps: int,
    lr: torch.Tensor | float,
    second_order: bool,
) -> Params:
    """`steps` steps of gradient descent θ - lr·∇ on loss_fn(forward(θ, x), y); returns the new
    params (name -> tensor, shapes of `params`). Differentiable: second order through the inner
    gradients, otherwise with the gradients as constants. `inner_loop.inner_loop` with `SGD`."""
    return inner_loop(lambda p, _: loss_fn(forward(p, x), y), params, steps, SGD(lr), second_order=second_order)


def _key(name: str) -> str:
    """Parameter names contain dots, which nn.ParameterDict keys may not."""
    return name.replace(".", "-")


def has_running_stats(module: nn.Module) -> bool:
    return any(getattr(m, "track_running_stats", False) for m in module.modules())


@LEARNERS.register("maml")
class MAML(Learner):
    needs_head = True

    @dataclass
    class Args:
        inner_steps: int = 1  # inner-loop gradient steps on the support set during meta-training
        inner_lr: float = 0.4  # inner-loop step size (the initial value when learned)
        learn_inner_lr: bool = False  # meta-learn one scalar inner lr
        first_order: bool = False  # treat the inner gradients as constants (FOMAML)
        eval_inner_steps: int | None = None  # inner steps at evaluation; None: inner_steps
        multi_step_loss: bool = False  # MAML++: weight the query loss after every inner step
        msl_fraction: float = 0.1  # MAML++: fraction of training over which those weights anneal
        lslr: bool = False  # MAML++: learned inner lr per parameter tensor and per step
        per_step_bn: bool = False  # MAML++: BatchNorm gamma/beta per inner step (transductive BN)
        first_order_fraction: float = 0.0  # MAML++: first order for this fraction of training
        checkpoint_inner: bool = False  # recompute inner steps in the backward pass (saves memory)

        def __post_init__(self):
            require(self.inner_steps >= 1, "inner_steps", self.inner_steps, ">= 1")
            require(
                self.eval_inner_steps is None or self.eval_inner_steps >= 1,
                "eval_inner_steps",
                self.eval_inner_steps,
                ">= 1 (or null for inner_steps)",
            )
            require(self.inner_lr > 0, "inner_lr", self.inner_lr, "> 0")
            require(0.0 <= self.msl_fraction <= 1.0, "msl_fraction", self.msl_fraction, "in [0, 1]")
            require(
                0.0 <= self.first_order_fraction <= 1.0, "first_order_fraction", self.first_order_fraction, "in [0, 1]"
            )
            require(
                not (self.lslr and self.learn_inner_lr),
                "learn_inner_lr",
                self.learn_inner_lr,
                "false when lslr is true (per-layer, per-step lrs replace the single learned lr)",
            )

    def __init__(self, model: nn.Module, *, problem: str = "classification", **kwargs):
        super().__init__()
        args = parse_args(self.Args, kwargs)
        inner_steps, eval_inner_steps, inner_lr = args.inner_steps, args.eval_inner_steps, args.inner_lr
        first_order, learn_inner_lr, lslr = args.first_order, args.learn_inner_lr, args.lslr
        multi_step_loss, msl_fraction = args.multi_step_loss, args.msl_fraction
        first_order_fraction, checkpoint_inner = args.first_order_fraction, args.checkpoint_inner
        self.model = model
        self.inner_steps = inner_steps
        self.eval_inner_steps = eval_inner_steps or inner_steps
        self.first_order = first_order
        self.problem = problem
        self.multi_step_loss, self.msl_fraction = multi_step_loss, msl_fraction
        self.first_order_fraction = first_order_fraction
        self.checkpoint_inner = checkpoint_inner
        self.progress = 1.0  # fraction of training done; 1.0 (final settings) until on_step says otherwise
        lr = torch.tensor(float(inner_lr))
        if learn_inner_lr:
            self.inner_lr = nn.Parameter(lr)
        else:
            self.register_buffer("inner_lr", lr)
        self.loss_fn = F.cross_entropy if problem == "classification" else F.mse_loss
        # Only transductive (batch-statistics) BatchNorm keeps the forward pure.
        self.stateless = not has_running_stats(model)
        self.bn_steps = nn.ParameterDict()
        if args.per_step_bn:
            self._init_per_step_bn()
        self.lslr = nn.ParameterDict()
        if lslr:
            self.lslr.update(
                {_key(n): nn.Parameter(torch.full((inner_steps,), float(inner_lr))) for n in self.adapted_names()}
            )

    def _init_per_step_bn(self) -> None:
        norms = [(name, m) for name, m in self.model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not norms or any(m.track_running_stats for _, m in norms):
            raise FastAdaptError(
                "learner.args.per_step_bn needs BatchNorm layers in the adapted network "
                "with transductive statistics; set model.backbone_args.bn=transductive "
                "or per_step_bn=false"
            )
        for name, m in norms:
            for kind in ("weight", "bias"):
                source = getattr(m, kind)
                self.bn_steps[_key(f"{name}.{kind}")] = nn.Parameter(source.detach().repeat(self.inner_steps, 1))
                source.requires_grad_(False)  # replaced by the per-step copies

    @classmethod
    def build(cls, backbone: nn.Module, ways: int | None, **kwargs) -> MAML:
        return cls(backbone, problem="classification" if ways else "regression", **kwargs)

    # -- the inner loop, written once ------------------------------------------------------
    def on_step(self, step: int, total_steps: int) -> None:
        self.progress = step / max(1, total_steps)

    def second_order_now(self) -> bool:
        return not self.first_order and self.progress >= self.first_order_fraction

    def adapted_names(self) -> list[str]:
        return [n for n, p in self.model.named_parameters() if p.requires_grad]

    def inner_lr_of(self, name: str, step: int) -> torch.Tensor:
        if len(self.lslr):
            lrs = self.lslr[_key(name)]
            return lrs[min(step, len(lrs) - 1)]  # extra test-time steps reuse the last lr
        return self.inner_lr

    def forward_with(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, params, (x,))

    def forward_at(self, params: Params, x: torch.Tensor, step: int) -> torch.Tensor:
        """The model with (adapted) `params` and, with per-step BN, the BN affine of `step`."""
        if len(self.bn_steps):
            k = min(step, self.inner_steps - 1)
            params = {**params, **{n: self.bn_steps[_key(n)][k] for n in self._bn_names()}}
        return functional_call(self.model, params, (x,))

    def _bn_names(self) -> list[str]:
        return [k.replace("-", ".") for k in self.bn_steps.keys()]

    def inputs(self, support_x: torch.Tensor, query_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the adapted network sees (ANIL: the body's features, computed once)."""
        return support_x, query_x

    def unrolled_loss(
        self,
        support_x,
        support_y,
        query_x,
        query_y,
        steps: int,
        second_order: bool,
        use_func: bool = False,
        training: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, Params]:
        """Meta-loss of one task (multi-step weighted when enabled; None when `query_y` is None),
        final query prediction and adapted parameters. `use_func`: inner gradients by
        torch.func.grad (for vmap)."""
        s_in, q_in = self.inputs(support_x, query_x)
        weights = (
            msl_weights(steps, self.progress, self.msl_fraction)
            if (self.multi_step_loss and training)
            else [0.0] * (steps - 1) + [1.0]
        )
        adapted = set(self.adapted_names())
        fast = {n: p for n, p in self.model.named_parameters() if n in adapted}
        trajectory = inner_loop_steps(
            lambda p, k: self.loss_fn(self.forward_at(p, s_in, k), support_y),
            fast,
            steps,
            SGD(self.inner_lr_of),  # lr per parameter tensor and step (LSLR), per entry (Meta-SGD) or one
            second_order=second_order,
            use_func=use_func,
            checkpointed=self.checkpoint_inner and training,
        )
        loss = prediction = None
        for k, fast in enumerate(trajectory):
            if weights[k] > 0:
                prediction = self.forward_at(fast, q_in, k)
                if query_y is None:  # prediction only: the query labels are never looked at
                    continue
                term = weights[k] * self.loss_fn(prediction, query_y)
                loss = term if loss is None else loss + term
        return loss, prediction, fast

    # -- Learner interface -----------------------------------------------------------------
    def task_loss(self, episode: Episode):
        loss, prediction, _ = self.unrolled_loss(
            episode.support_x,
            episode.support_y,
            episode.query_x,
            episode.query_y,
            self.inner_steps,
            self.second_order_now(),
        )
        metrics = {"loss": loss.item()}
        if self.problem == "classification":
            metrics["accuracy"] = (prediction.argmax(-1) == episode.query_y).float().mean().item()
        return loss, metrics

    def batched_task_loss(self, support_x, support_y, query_x, query_y) -> torch.Tensor:
        """Meta-losses (T,) of T tasks stacked along dim 0, computed as one vmapped function
        (inner gradients by torch.func.grad), for the GPU engine. Its mean's gradient equals the
        mean of the per-task `task_loss` gradients."""
        if has_running_stats(self):
            raise FastAdaptError(
                "batched_task_loss needs transductive BatchNorm (no running averages); "
                "set model.backbone_args.bn=transductive or use the serial engine"
            )
        if any(getattr(m, "channels_last", False) for m in self.modules()):
            raise FastAdaptError(
                "batched_task_loss cannot run NHWC (channels_last) backbones under vmap; "
                "set model.channels_last=false or use the serial/fork engine"
            )
        if self.checkpoint_inner:
            raise FastAdaptError(
                "learner.args.checkpoint_inner is not supported by the vmapped engine; "
                "set checkpoint_inner=false or use the serial engine"
            )
        second_order = self.second_order_now()

        def one_task(sx, sy, qx, qy):
            return self.unrolled_loss(sx, sy, qx, qy, self.inner_steps, second_order, use_func=True)[0]

        with CompositeBatchNorm():
            return torch.func.vmap(one_task)(support_x, support_y, query_x, query_y)

    def predict(self, episode: Episode) -> torch.Tensor:
        with torch.enable_grad():  # evaluation may run under no_grad; adaptation needs gradients
            _, prediction, _ = self.unrolled_loss(
                episode.support_x,
                episode.support_y,
                episode.query_x,
                None,
                self.eval_inner_steps,
                False,
                training=False,
            )
        return prediction.detach()

    def fast_weights(self, episode: Episode, steps: int, second_order: bool) -> Params:
        return self.unrolled_loss(
            episode.support_x, episode.support_y, episode.query_x, episode.query_y, steps, second_order, training=False
        )[2]

    def describe(self) -> dict:
        bn = getattr(self.model, "bn", "none")
        return {
            "bn_mode": bn,
            "inner_steps": self.inner_steps,
            "eval_inner_steps": self.eval_inner_steps,
            "inner_lr": float(self.inner_lr.detach()),
            "first_order": self.first_order,
            "learn_inner_lr": isinstance(self.inner_lr, nn.Parameter),
            "multi_step_loss": self.multi_step_loss,
            "msl_fraction": self.msl_fraction,
            "lslr": bool(len(self.lslr)),
            "per_step_bn": bool(len(self.bn_steps)),
            "first_order_fraction": self.first_order_fraction,
            "checkpoint_inner": self.checkpoint_inner,
        }


@LEARNERS.register("fomaml")
class FOMAML(MAML):
    """First-order MAML: MAML with the inner gradients treated as constants."""

    def __init__(self, model: nn.Module, **kwargs):
        kwargs["first_order"] = True
        super().__init__(model, **kwargs)
