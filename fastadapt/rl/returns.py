"""Returns, advantages and the linear feature baseline, as small pure functions of tensors.

Layout: time-major batches, `rewards` and `mask` of shape (T, N) for N rollouts of horizon T
(or (..., T, N) with leading batch dimensions); `mask[t, n]` is 1 while rollout n is alive at
step t and 0 after it ended (a terminal state), so steps after the end never contribute.

Sources: the discounted return and GAE(γ, λ) of Schulman et al. 2016 ("High-dimensional
continuous control using generalized advantage estimation"); the linear feature baseline of
Duan et al. 2016 (rllab, `LinearFeatureBaseline`), which MAML-RL (Finn et al. 2017) uses.
"""

from __future__ import annotations

import torch


def undiscounted_returns(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of the rewards of each rollout: (..., T, N) -> (..., N). What the MAML paper reports."""
    return (rewards * mask).sum(-2)


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """Reward-to-go G_t = sum_{k >= t} γ^(k - t) r_k of every step, zero after a rollout ended:
    (..., T, N) -> (..., T, N). A rollout cut by the horizon is not bootstrapped (rllab, MAML)."""
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0, :])
    for t in range(rewards.shape[-2] - 1, -1, -1):
        running = (rewards[..., t, :] + gamma * running) * mask[..., t, :]
        out[..., t, :] = running
    return out


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """Generalised advantage estimates A_t = sum_k (γλ)^k δ_{t+k}, δ_t = r_t + γ V(s_{t+1}) - V(s_t),
    with V = 0 after a rollout's end and past the horizon: (..., T, N) -> (..., T, N).
    λ = 1 gives G_t - V(s_t) (MAML-RL's setting); λ = 0 the one-step TD error."""
    next_values = torch.cat([values[..., 1:, :] * mask[..., 1:, :], torch.zeros_like(values[..., :1, :])], dim=-2)
    deltas = (rewards + gamma * next_values - values) * mask
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0, :])
    for t in range(rewards.shape[-2] - 1, -1, -1):
        running = (deltas[..., t, :] + gamma * lam * running) * mask[..., t, :]
        out[..., t, :] = running
    return out


def normalize(advantages: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Zero mean, unit standard deviation over the alive steps of each batch (rllab's `center_adv`,
    used by MAML-RL in both loops): (..., T, N) -> (..., T, N), zero where `mask` is zero."""
    n = mask.sum((-2, -1), keepdim=True).clamp_min(1)
    mean = (advantages * mask).sum((-2, -1), keepdim=True) / n
    var = (((advantages - mean) * mask) ** 2).sum((-2, -1), keepdim=True) / n
    return (advantages - mean) / (var.sqrt() + eps) * mask


def baseline_features(observations: torch.Tensor) -> torch.Tensor:
    """rllab's features of a state at step t: [o, o², t/100, (t/100)², (t/100)³, 1], with o clipped to
    [-10, 10]: (..., T, N, D) -> (..., T, N, 2D + 4)."""
    o = observations.clamp(-10, 10)
    steps = o.shape[-3]
    t = (torch.arange(steps, dtype=o.dtype, device=o.device) / 100.0).view(steps, 1, 1).expand(*o.shape[:-1], 1)
    return torch.cat([o, o * o, t, t * t, t**3, torch.ones_like(t)], dim=-1)


def fit_linear_baseline(
    observations: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, reg: float = 1e-5
) -> torch.Tensor:
    """Least-squares weights w of returns ≈ features · w over the alive steps, one fit per batch
    (rllab: ridge term `reg`·I, multiplied by 10 while the solution is not finite):
    (..., T, N, D), (..., T, N), (..., T, N) -> (..., 2D + 4). Fitted in float64: the features'
    powers make the normal equations ill-conditioned."""
    f = baseline_features(observations.double()) * mask.double().unsqueeze(-1)
    f = f.reshape(*f.shape[:-3], -1, f.shape[-1])  # (..., T*N, F)
    y = (returns.double() * mask.double()).reshape(*f.shape[:-1], 1)
    gram, rhs = f.transpose(-1, -2) @ f, f.transpose(-1, -2) @ y
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    for _ in range(5):
        w = torch.linalg.solve(gram + reg * eye, rhs)
        if torch.isfinite(w).all():
            break
        reg *= 10
    return w.squeeze(-1)


def linear_baseline_values(observations: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """V(s_t) = features(s_t) · w: (..., T, N, D), (..., F) -> (..., T, N), in the observations' dtype."""
    features = baseline_features(observations.double())
    return (features @ weights.unsqueeze(-1).unsqueeze(-3)).squeeze(-1).to(observations.dtype)


def advantages(
    observations: torch.Tensor,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
    normalize_advantages: bool = True,
) -> torch.Tensor:
    """The advantages of each task's batch, as MAML-RL computes them: fit the linear baseline to the
    discounted returns of these rollouts, GAE(γ, λ) against it, then (optionally) normalise.
    (..., T, N, D), (..., T, N), (..., T, N) -> (..., T, N), no graph; leading dimensions (tasks)
    are independent fits."""
    with torch.no_grad():
        weights = fit_linear_baseline(observations, discounted_returns(rewards, mask, gamma), mask)
        values = linear_baseline_values(observations, weights) * mask
        adv = gae(rewards, values, mask, gamma, lam)
        return normalize(adv, mask) if normalize_advantages else adv
