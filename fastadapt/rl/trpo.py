"""Trust-region policy optimisation's update (Schulman et al. 2015), on a list of parameter tensors.

The step maximises the linearised objective under a quadratic (Fisher) model of the KL
constraint: solve F s = -g by conjugate gradient with Fisher-vector products (+ damping · v), scale s to the trust region (½ sᵀF s = max_kl), then backtrack until the
surrogate loss improves and the KL is within `max_kl`. Settings follow rllab's
`ConjugateGradientOptimizer` (cg_iters 10, reg_coeff 1e-5, backtrack_ratio 0.8, 15 backtracks),
which MAML-TRPO (Finn et al. 2017) uses. For MAML the objective re-runs the inner loop, so F
and g are taken through the adaptation (the meta-gradient).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


def conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iters: int = 10, tol: float = 1e-10
) -> torch.Tensor:
    """Approximate x = A⁻¹ b for a symmetric positive-definite A given only x -> A x
    (Hestenes & Stiefel 1952): `iters` iterations from x = 0, stopping when |r|² < tol. (P,) -> (P,)."""
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rr = r @ r
    for _ in range(iters):
        if rr < tol:
            break
        ap = matvec(p)
        alpha = rr / (p @ ap)
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unflat(vector: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    out, i = [], 0
    for t in like:
        out.append(vector[i : i + t.numel()].view_as(t))
        i += t.numel()
    return out


@dataclass(frozen=True)
class TRPOSettings:
    """max_kl: the trust region δ (mean KL per state); the rest as rllab's optimiser."""

    max_kl: float = 0.01
    cg_iters: int = 10
    damping: float = 1e-5
    backtrack_ratio: float = 0.8
    max_backtracks: int = 15


def fisher_vector_product(
    params: list[torch.Tensor],
    adapted: list[torch.Tensor],
    kl_of: Callable[[list[torch.Tensor]], torch.Tensor],
    damping: float = 0.0,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """v -> (Jᵀ H J + damping·I) v, with J = ∂adapted/∂params (the graph of `adapted`) and H the
    Hessian of `kl_of` at `adapted`: the Hessian of kl_of(adapted(params)) wherever the KL's
    gradient in `adapted` is zero (at the data-collecting policy). Flat (P,) -> (P,)."""
    leaves = [a.detach().requires_grad_(True) for a in adapted]
    kl_grad = flat(torch.autograd.grad(kl_of(leaves), leaves, create_graph=True))
    dummies = [torch.zeros_like(a, requires_grad=True) for a in adapted]
    jt_dummies = flat(torch.autograd.grad(adapted, params, grad_outputs=dummies, create_graph=True))

    def fisher(v: torch.Tensor) -> torch.Tensor:
        jv = flat(torch.autograd.grad(jt_dummies @ v, dummies, retain_graph=True))  # J v: linear in the dummies
        hjv = torch.autograd.grad(kl_grad @ jv, leaves, retain_graph=True)
        jthjv = torch.autograd.grad(adapted, params, grad_outputs=hjv, retain_graph=True)
        return flat(jthjv).detach() + damping * v

    return fisher


def trpo_step(
    adapt: Callable[[list[torch.Tensor]], list[torch.Tensor]],
    loss_and_kl: Callable[[list[torch.Tensor]], tuple[torch.Tensor, torch.Tensor]],
    params: Sequence[torch.Tensor],
    settings: TRPOSettings,
) -> dict[str, float]:
    """One TRPO update of `params` in place, for an objective composed as
    params -> φ = adapt(params) -> (surrogate loss to minimise, mean KL from the policy that
    collected the data) = loss_and_kl(φ), both differentiable. Plain TRPO: `adapt` is the
    identity; MAML-TRPO: `adapt` is the inner loop, so the step is taken on the meta-objective.

    The Fisher-vector product is the KL's Hessian at the current parameters, computed as
    Jᵀ H J v with J = ∂φ/∂params and H the KL's Hessian in φ: exact there because the KL's
    gradient in φ vanishes at its minimum (the data-collecting policy), so the term with φ's
    second derivative drops out. This needs no third derivatives of the inner loss: J v by the
    double-backward trick, H u on the policy alone, Jᵀ w by one backward.

    Returns the loss and KL before and after, the step fraction taken (0: every backtrack
    failed and the parameters are unchanged) and the expected improvement."""
    params = list(params)
    adapted = adapt(params)
    loss, kl = loss_and_kl(adapted)
    g = flat(torch.autograd.grad(loss, params, retain_graph=True)).detach()
    fisher = fisher_vector_product(params, adapted, lambda values: loss_and_kl(values)[1], settings.damping)
    direction = conjugate_gradient(fisher, -g, settings.cg_iters)
    shs = direction @ fisher(direction)
    step = direction * torch.sqrt(2 * settings.max_kl / shs.clamp_min(1e-12))
    expected = float(-(g @ step))
    old = [p.detach().clone() for p in params]
    loss_before, kl_before = float(loss.detach()), float(kl.detach())
    del fisher, adapted, loss, kl
    fraction, loss_after, kl_after = 0.0, loss_before, kl_before
    with torch.no_grad():
        for i in range(settings.max_backtracks):
            frac = settings.backtrack_ratio**i
            for p, p0, s in zip(params, old, unflat(step, old)):
                p.copy_(p0 + frac * s)
            with torch.enable_grad():  # `adapt` may take gradients inside (MAML's inner step)
                new_loss, new_kl = loss_and_kl([a.detach() for a in adapt(params)])
            new_loss, new_kl = float(new_loss), float(new_kl)
            if new_loss < loss_before and new_kl <= settings.max_kl:
                fraction, loss_after, kl_after = frac, new_loss, new_kl
                break
        else:
            for p, p0 in zip(params, old):
                p.copy_(p0)
    return {
        "surrogate_before": loss_before,
        "surrogate_after": loss_after,
        "kl_after": kl_after,
        "step_fraction": fraction,
        "expected_improvement": expected,
    }
