"""Pieces of the inner loop shared by the MAML family and Reptile, all pure functions of tensors.

One gradient-descent step is written once and differentiated two ways: with `torch.autograd`
(the per-task path, optionally gradient-checkpointed) or with `torch.func.grad` (the vmapped
path, where the tasks of a meta-batch run as one batched computation). Either way the outer
`.backward()` differentiates through the inner gradients unless they are detached (first order).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils.checkpoint import checkpoint

Params = dict[str, torch.Tensor]
LossOf = Callable[[Params], torch.Tensor]


def autograd_grads(loss_of: LossOf, params: Params, second_order: bool) -> Params:
    """d loss / d params with torch.autograd; the graph is kept only for second order."""
    loss = loss_of(params)
    grads = torch.autograd.grad(loss, tuple(params.values()), create_graph=second_order)
    return dict(zip(params, grads))


def func_grads(loss_of: LossOf, params: Params, second_order: bool) -> Params:
    """d loss / d params with torch.func.grad (works under vmap); the result stays differentiable
    by the outer autograd unless detached (first order: the inner gradients are constants)."""
    grads = torch.func.grad(loss_of)(params)
    return grads if second_order else {n: g.detach() for n, g in grads.items()}


def sgd_step(
    loss_of: LossOf,
    params: Params,
    lrs: dict[str, torch.Tensor | float],
    second_order: bool,
    use_func: bool = False,
    checkpointed: bool = False,
) -> Params:
    """params - lr * grad. `checkpointed` (autograd path, second order) keeps only the step's
    inputs and recomputes the step, inner gradient included, during the outer backward: the
    memory of a k-step unroll drops from k forward+backward graphs to one at a time."""
    grad_of = func_grads if use_func else autograd_grads
    names = tuple(params)

    def step(*values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        current = dict(zip(names, values))
        grads = grad_of(loss_of, current, second_order)
        return tuple(current[n] - lrs[n] * grads[n] for n in names)

    if checkpointed and second_order and not use_func:
        values = checkpoint(step, *params.values(), use_reentrant=False)
    else:
        values = step(*params.values())
    return dict(zip(names, values))


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


def adam_steps(
    loss_of: LossOf, params: Params, batches: list, lr: float, betas: tuple[float, float], eps: float = 1e-8
) -> tuple[Params, torch.Tensor, torch.Tensor]:
    """Adam (Kingma & Ba, bias-corrected) from a fresh state, one step per batch; no graph kept.
    `loss_of(params, batch)` returns (loss, prediction). Returns the final parameters and the
    loss/prediction of the last batch (before its step)."""
    beta1, beta2 = betas
    params = {n: p.detach() for n, p in params.items()}
    m = {n: torch.zeros_like(p) for n, p in params.items()}
    v = {n: torch.zeros_like(p) for n, p in params.items()}
    loss = prediction = None
    for t, batch in enumerate(batches, start=1):
        current = {n: p.requires_grad_() for n, p in params.items()}
        with torch.enable_grad():
            loss, prediction = loss_of(current, batch)
            grads = torch.autograd.grad(loss, tuple(current.values()))
        with torch.no_grad():
            updated = {}
            for (n, p), g in zip(current.items(), grads):
                m[n] = beta1 * m[n] + (1 - beta1) * g
                v[n] = beta2 * v[n] + (1 - beta2) * g * g
                m_hat, v_hat = m[n] / (1 - beta1**t), v[n] / (1 - beta2**t)
                updated[n] = p - lr * m_hat / (v_hat.sqrt() + eps)
        params = updated
    return params, loss.detach(), prediction.detach()


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
