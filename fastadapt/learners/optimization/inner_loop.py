"""The inner loop, written once: gradient steps on a loss of parameters, as a pure function of
(parameters, data), for every learner that adapts by gradient descent.

`inner_loop(loss_of, params, steps, update, ...)` runs `steps` steps θ_{k+1} = update(θ_k, ∇L_k(θ_k))
of a pluggable update rule and returns the final parameters; `inner_loop_steps` yields the
parameters after every step (MAML++'s multi-step loss reads them). Who uses it:

- MAML / FOMAML / MAML++ / ANIL / Meta-SGD (`maml.py`): full-batch `SGD` with a learned lr per
  parameter and step (LSLR) or per entry (Meta-SGD), second or first order, differentiated by the
  outer loop, optionally vmapped (`use_func`) or gradient-checkpointed.
- `maml.adapt` and the "pretrained" baseline's test-time fine-tuning: full-batch `SGD`.
- Reptile (`reptile.py`): `Adam` or `SGD` on minibatches of the support set, with no graph.
- Baseline / Baseline++ / multi-task (`transfer/baseline.py`): `MomentumSGD` (torch.optim.SGD's
  rule: momentum, dampening, weight decay) on minibatches, with no graph.

The gradient of each step is taken in one of three ways:
- second order (`second_order=True`): `torch.autograd.grad(create_graph=True)`, so the outer
  `.backward()` differentiates through the inner gradients (Hessian-vector products);
- first order (default): the inner gradients are constants, the update itself stays
  differentiable, so d θ_k / d θ_0 = I (FOMAML) and a learned lr still gets its gradient;
- detached (`detached=True`): no graph at all, the result is a constant (test-time fine-tuning,
  Reptile's φ); each step's loss runs under `enable_grad` and its update under `no_grad`.
With `use_func=True` the gradients come from `torch.func.grad`, so the loop runs under `vmap`.

Update rules are per-tensor functions `rule(name, param, grad, state, step) -> (param, state)`
with `state` None before a tensor's first update, so a rule is a pure function of tensors and
the loop needs no module, optimizer object or hook. A parameter the loss does not use (autograd
gives no gradient) is left unchanged with its state, as torch.optim skips it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils.checkpoint import checkpoint

Params = dict[str, torch.Tensor]
LossOf = Callable[[Params], torch.Tensor]
StepLoss = Callable[[Params, int], torch.Tensor]  # (params, step index) -> scalar loss of that step
LR = float | torch.Tensor | Callable[[str, int], "float | torch.Tensor"]


class UpdateRule(Protocol):
    """One tensor's update: (name, θ, ∇L(θ), state or None, step index) -> (new θ, new state)."""

    def __call__(
        self, name: str, param: torch.Tensor, grad: torch.Tensor, state: Any, step: int
    ) -> tuple[torch.Tensor, Any]: ...


@dataclass(frozen=True)
class SGD:
    """θ - lr * g (plain gradient descent, MAML's inner step). `lr`: a number, a tensor (a
    learned scalar, or one of θ's shape: Meta-SGD's per-entry lr, Li et al. 2017), or
    `lr(name, step)` returning either (MAML++'s per-parameter, per-step lrs, Antoniou et al.
    2019). A tensor lr that requires grad receives the meta-gradient through the update."""

    lr: LR

    def __call__(self, name: str, param: torch.Tensor, grad: torch.Tensor, state: Any, step: int):
        lr = self.lr(name, step) if callable(self.lr) else self.lr
        return param - lr * grad, None


@dataclass(frozen=True)
class MomentumSGD:
    """torch.optim.SGD's update rule (single-tensor path, torch 2.x) on tensors: g += wd·θ;
    b = g on the first step, else b = μ·b + (1 - dampening)·g; g = g + μ·b (Nesterov) or b;
    θ -= lr·g. Same ops in the same order, so on CPU it equals torch.optim.SGD bitwise (tested);
    state: the momentum buffer b (shape of θ)."""

    lr: float
    momentum: float = 0.0
    dampening: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False

    def __call__(self, name: str, param: torch.Tensor, grad: torch.Tensor, buf: torch.Tensor | None, step: int):
        if self.weight_decay != 0:
            grad = grad.add(param, alpha=self.weight_decay)
        # torch.optim updates b and θ in place, which keeps their strides; an out-of-place result
        # may get other strides (e.g. a channels_last conv weight with one input channel), and the
        # strides of a conv weight choose the convolution kernel, whose rounding differs. So the
        # results are computed in place into fresh tensors (b·μ, a clone of θ): nothing is mutated.
        if self.momentum != 0:
            buf = grad.clone() if buf is None else buf.mul(self.momentum).add_(grad, alpha=1 - self.dampening)
            grad = grad.add(buf, alpha=self.momentum) if self.nesterov else buf
        return param.clone().add_(grad, alpha=-self.lr), buf


@dataclass(frozen=True)
class Adam:
    """Adam (Kingma & Ba 2015, Algorithm 1, bias-corrected) from a fresh state:
    m = β1·m + (1-β1)·g, v = β2·v + (1-β2)·g², θ -= lr·m̂ / (√v̂ + eps) with m̂ = m / (1-β1^t),
    v̂ = v / (1-β2^t). Equal to torch.optim.Adam up to rounding (torch folds the bias corrections
    into the step size and eps differently). State: (t, m, v), t the tensor's update count."""

    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def __call__(self, name: str, param: torch.Tensor, grad: torch.Tensor, state: Any, step: int):
        beta1, beta2 = self.betas
        t, m, v = state if state is not None else (0, torch.zeros_like(param), torch.zeros_like(param))
        t += 1
        m = beta1 * m + (1 - beta1) * grad
        v = beta2 * v + (1 - beta2) * grad * grad
        m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
        return param - self.lr * m_hat / (v_hat.sqrt() + self.eps), (t, m, v)


def autograd_grads(loss_of: LossOf, params: Params, second_order: bool) -> dict[str, torch.Tensor | None]:
    """d loss / d params with torch.autograd; the graph is kept only for second order. None for a
    parameter the loss does not use."""
    loss = loss_of(params)
    grads = torch.autograd.grad(loss, tuple(params.values()), create_graph=second_order, allow_unused=True)
    return dict(zip(params, grads))


def func_grads(loss_of: LossOf, params: Params, second_order: bool) -> Params:
    """d loss / d params with torch.func.grad (works under vmap); the result stays differentiable
    by the outer autograd unless detached (first order: the inner gradients are constants)."""
    grads = torch.func.grad(loss_of)(params)
    return grads if second_order else {n: g.detach() for n, g in grads.items()}


def _apply(update: UpdateRule, params: Params, grads: dict, state: dict, step: int) -> tuple[Params, dict]:
    new_params, new_state = {}, {}
    for name, param in params.items():
        grad = grads[name]
        if grad is None:  # unused by the loss: unchanged, as torch.optim skips a parameter without .grad
            new_params[name], new_state[name] = param, state[name]
        else:
            new_params[name], new_state[name] = update(name, param, grad, state[name], step)
    return new_params, new_state


def _step(loss_of: StepLoss, params: Params, state: dict, update: UpdateRule, step: int, second_order, use_func):
    grad_of = func_grads if use_func else autograd_grads
    grads = grad_of(lambda p: loss_of(p, step), params, second_order)
    return _apply(update, params, grads, state, step)


def _detached_step(loss_of: StepLoss, params: Params, state: dict, update: UpdateRule, step: int):
    current = {n: p.detach().requires_grad_() for n, p in params.items()}
    with torch.enable_grad():
        grads = autograd_grads(lambda p: loss_of(p, step), current, False)
    with torch.no_grad():
        return _apply(update, current, grads, state, step)


def inner_loop_steps(
    loss_of: StepLoss,
    params: Params,
    steps: int,
    update: UpdateRule,
    *,
    second_order: bool = False,
    detached: bool = False,
    use_func: bool = False,
    checkpointed: bool = False,
) -> Iterator[Params]:
    """Yields the parameters after each of `steps` steps θ_{k+1} = update(θ_k, ∇_θ loss_of(θ_k, k)).

    loss_of(params, k): the scalar loss of step k (k = 0..steps-1; a minibatch schedule or a
    per-step network reads k). params: name -> tensor, any shapes; not modified; unless
    `detached`, autograd differentiates with respect to them, so they must require grad. update: an
    `UpdateRule` (`SGD`, `MomentumSGD`, `Adam`), its state starting at None for every tensor.
    second_order / detached / use_func: how gradients are taken (module docstring).
    checkpointed (autograd, second order; ignored otherwise): each step keeps only its inputs
    and is recomputed, inner gradient included, during the outer backward, so the memory of a
    k-step unroll drops from k forward+backward graphs to one at a time.
    Raises ValueError for `detached` with `second_order` or `use_func` (a programming error).
    """
    if detached and (second_order or use_func):
        raise ValueError("inner_loop: detached adaptation keeps no graph; it excludes second_order and use_func")
    state: dict = dict.fromkeys(params)
    for k in range(steps):
        if detached:
            params, state = _detached_step(loss_of, params, state, update, k)
        elif checkpointed and second_order and not use_func:
            params, state = checkpoint(_step, loss_of, params, state, update, k, True, False, use_reentrant=False)
        else:
            params, state = _step(loss_of, params, state, update, k, second_order, use_func)
        yield params  # outside any grad-mode context: the caller runs in its own mode between steps


def inner_loop(
    loss_of: StepLoss,
    params: Params,
    steps: int,
    update: UpdateRule,
    *,
    second_order: bool = False,
    detached: bool = False,
    use_func: bool = False,
    checkpointed: bool = False,
) -> Params:
    """The parameters after `steps` steps of `inner_loop_steps` (same arguments); `params` itself
    when steps is 0."""
    trajectory = inner_loop_steps(
        loss_of,
        params,
        steps,
        update,
        second_order=second_order,
        detached=detached,
        use_func=use_func,
        checkpointed=checkpointed,
    )
    last = deque(trajectory, maxlen=1)  # only the final step's parameters are kept alive
    return last[0] if last else params


def msl_weights(steps: int, progress: float, msl_fraction: float) -> list[float]:
    """Per-step query-loss weights of MAML++'s multi-step loss (Antoniou et al. 2019, their
    `get_per_step_loss_importance_vector`): uniform at the start, the non-final weights decay
    linearly to 0.03/steps and the final one grows to take the rest over the first
    `msl_fraction` of training; afterwards only the final step's loss counts."""
    if steps == 1 or msl_fraction <= 0 or progress >= msl_fraction:
        return [0.0] * (steps - 1) + [1.0]
    done = progress / msl_fraction  # Antoniou's current_epoch / multi_step_loss_num_epochs
    floor = 0.03 / steps
    early = max(1.0 / steps - done / steps, floor)
    last = min(1.0 / steps + done * (steps - 1) / steps, 1.0 - (steps - 1) * floor)
    return [early] * (steps - 1) + [last]


def _composite_batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """Batch-statistics BatchNorm from elementary ops (what F.batch_norm computes without
    running averages)."""
    if running_mean is not None or running_var is not None:
        raise ValueError("composite batch norm supports batch statistics only")
    dims = [0, *range(2, x.dim())]
    shape = [1, -1] + [1] * (x.dim() - 2)
    mean, var = x.mean(dims, keepdim=True), x.var(dims, unbiased=False, keepdim=True)
    out = (x - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        out = out * weight.reshape(shape)
    return out + bias.reshape(shape) if bias is not None else out


class CompositeBatchNorm(TorchFunctionMode):
    """Within this context F.batch_norm runs as elementary ops. Why: under vmap, the second-
    order gradient of the fused batch-norm kernel is wrong when its weight is adapted per task
    (torch 2.13; measured in tests/test_optimization.py), the composite form is exact."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.batch_norm:
            return _composite_batch_norm(*args, **kwargs)
        return func(*args, **kwargs)
