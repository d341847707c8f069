"""Policy-gradient objectives of meta-RL, as pure functions of (params, rollouts): the inner loss
(vanilla REINFORCE or ProMP's LVC), one differentiable inner step, and PPO's clipped surrogate.
Shapes: K tasks, T steps, N rollouts; params are dicts of tensors, stacked (K, ...) after
adaptation or shared. The learners in `fastadapt.learners.rl` compose them."""

from __future__ import annotations

import torch
from torch import nn

from . import policy as pi
from .rollouts import Batch

Params = dict[str, torch.Tensor]


def masked_task_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each task's alive steps: (K, T, N) -> (K,)."""
    return (values * mask).sum((1, 2)) / mask.sum((1, 2)).clamp_min(1)


def inner_loss(
    mean_net: nn.Module,
    params: Params,
    batch: Batch,
    adv: torch.Tensor,
    stacked: bool,
    behaviour: Params | None = None,
) -> torch.Tensor:
    """The inner loss of each task: (K,). Without `behaviour`, the vanilla policy-gradient loss
    -mean_t log π(a_t|s_t) Â_t, whose gradient is the REINFORCE estimate of -∇ E[return] with a
    baseline (Williams 1992). With `behaviour` (the stacked params of the policy that collected
    `batch`), ProMP's LVC loss -mean_t π(a_t|s_t)/π_b(a_t|s_t) Â_t: the same gradient where
    params == behaviour, a Hessian with the +∇log π ∇log πᵀ Â term (Rothfuss et al. 2019, eq. 9)."""
    logp = pi.per_task(pi.log_prob, mean_net, params, batch.observations, batch.actions, stacked=stacked)
    if behaviour is None:
        return -masked_task_mean(logp * adv, batch.mask)
    with torch.no_grad():
        logp_b = pi.per_task(pi.log_prob, mean_net, behaviour, batch.observations, batch.actions, stacked=True)
    return -masked_task_mean(torch.exp(logp - logp_b) * adv, batch.mask)


def adapt_step(
    mean_net: nn.Module,
    params: Params,
    batch: Batch,
    adv: torch.Tensor,
    lr: float,
    stacked: bool,
    create_graph: bool,
    behaviour: Params | None = None,
) -> Params:
    """One inner step for each of K tasks: θ'_k = θ_k - lr ∇ L_k(θ_k), a pure function of (params, data).
    Shared params (`stacked` False) are first expanded to one copy per task, so each task's gradient
    is its own. `create_graph`: keep the graph of the gradient (second-order MAML); otherwise the
    gradient is a constant and dθ'/dθ = I (first order). `behaviour`: LVC's inner loss (see
    `inner_loss`) instead of the vanilla one. Returns stacked params (K, ...)."""
    params = expand(params, batch.observations.shape[0], stacked)
    loss = inner_loss(mean_net, params, batch, adv, stacked=True, behaviour=behaviour).sum()
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
    return {name: v - lr * g for (name, v), g in zip(params.items(), grads)}


def expand(params: Params, k: int, stacked: bool) -> Params:
    """Shared params as K stacked copies (views); stacked params unchanged."""
    return params if stacked else {name: v.unsqueeze(0).expand(k, *v.shape) for name, v in params.items()}


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, clip: float) -> torch.Tensor:
    """PPO's clipped objective per step (Schulman et al. 2017, eq. 7), to maximise:
    min(r Â, clip(r, 1 - clip, 1 + clip) Â) with r = π/π_old = exp(logp - old_logp); all (...) -> (...).
    Where r has left [1 - clip, 1 + clip] in the direction of Â (r > 1 + clip with Â > 0, r < 1 - clip
    with Â < 0) the clipped branch is the minimum and constant: that step's gradient is zero."""
    ratio = torch.exp(logp - old_logp)
    return torch.minimum(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
