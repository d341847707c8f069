"""A Gaussian policy as pure functions of a parameter dict, so adaptation needs no module cloning.

The policy is N(μ_θ(s), diag(exp(log_std)²)): `mean_net` (any module, e.g. the `mlp` backbone:
the MAML paper's 2×100 ReLU network) gives μ, and a state-independent `log_std` vector (rllab's
`GaussianMLPPolicy`, initial std 1) gives the spread. Parameters are a flat dict
{"mean.<name>": tensor, ..., "log_std": tensor}; every function takes it explicitly, and parameters
with a leading task dimension (one adapted copy per task) are applied with `torch.func.vmap`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap

Params = dict[str, torch.Tensor]
LOG_2PI = math.log(2 * math.pi)


def split(params: Params) -> tuple[Params, torch.Tensor]:
    """(the mean network's own parameters, log_std)."""
    return {k[5:]: v for k, v in params.items() if k.startswith("mean.")}, params["log_std"]


def mean_of(mean_net: nn.Module, params: Params, observations: torch.Tensor) -> torch.Tensor:
    """μ_θ(s): (..., D) -> (..., A) for one parameter set."""
    net_params, _ = split(params)
    shape = observations.shape
    out = functional_call(mean_net, net_params, (observations.reshape(-1, shape[-1]),))
    return out.reshape(*shape[:-1], out.shape[-1])


def log_prob(mean_net: nn.Module, params: Params, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """log π_θ(a | s) of a diagonal Gaussian: (..., D), (..., A) -> (...)."""
    mu, log_std = mean_of(mean_net, params, observations), params["log_std"]
    z = (actions - mu) * torch.exp(-log_std)
    return -0.5 * (z * z).sum(-1) - log_std.sum() - 0.5 * mu.shape[-1] * LOG_2PI


def kl(mean_net: nn.Module, old: Params, new: Params, observations: torch.Tensor) -> torch.Tensor:
    """KL(π_old(·|s) ‖ π_new(·|s)) per state, closed form for diagonal Gaussians: (..., D) -> (...)."""
    mu0, mu1 = mean_of(mean_net, old, observations), mean_of(mean_net, new, observations)
    ls0, ls1 = old["log_std"], new["log_std"]
    var0, var1 = torch.exp(2 * ls0), torch.exp(2 * ls1)
    return (ls1 - ls0 + (var0 + (mu0 - mu1) ** 2) / (2 * var1) - 0.5).sum(-1)


def per_task(fn, mean_net: nn.Module, params: Params, *data: torch.Tensor, stacked: bool) -> torch.Tensor:
    """`fn(mean_net, params, *data)` for every task k: data with a leading task axis (K, ...);
    `stacked` parameters hold one copy per task (K, ...) (after adaptation), else one shared set."""
    return vmap(lambda p, *d: fn(mean_net, p, *d), in_dims=(0 if stacked else None,) + (0,) * len(data))(params, *data)


def sample(
    mean_net: nn.Module,
    params: Params,
    observations: torch.Tensor,
    generators: Sequence[torch.Generator],
    stacked: bool,
) -> torch.Tensor:
    """Actions a = μ_θ(s) + exp(log_std)·ε, ε ~ N(0, I), task k's noise from `generators[k]` (so a
    task's rollouts are a pure function of its seed, whatever else is in the batch): observations
    (K, N, D) for K tasks -> (K, N, A), no graph."""
    with torch.no_grad():
        mu = per_task(mean_of, mean_net, params, observations, stacked=stacked)
        log_std = params["log_std"]
        std = torch.exp(log_std.unsqueeze(1) if stacked else log_std)
        noise = torch.stack([torch.randn(mu.shape[1:], generator=g, dtype=mu.dtype) for g in generators])
        return mu + std * noise.to(mu.device)


def init_params(mean_net: nn.Module, action_dim: int, init_std: float = 1.0) -> Params:
    """The policy's parameters from a mean network's current weights and an initial std."""
    params = {f"mean.{k}": v for k, v in mean_net.named_parameters()}
    params["log_std"] = torch.full((action_dim,), math.log(init_std))
    return params
