"""ProMP (Rothfuss et al. 2019) against math: the LVC inner loss has the vanilla policy gradient
at the collecting policy and a Hessian that differs from the vanilla surrogate's by exactly
-mean_t Â ∇log π ∇log πᵀ (per-sample gradients, by hand); its meta-gradient through the inner
step matches central finite differences; ProMP's first PPO step is `outer: adam`'s LVC
meta-gradient (the KL penalty is 0 with a zero gradient there) and differs from the vanilla one
at second order only; the penalty grows once the policy moves; a tiny run resumes bitwise."""

from __future__ import annotations

import pytest
import torch
from helpers import RL_TINY as TINY
from helpers import straight_and_resumed

from fastadapt.config import load_config
from fastadapt.data import build_suite
from fastadapt.errors import FastAdaptError
from fastadapt.learners import build_learner
from fastadapt.models.backbones import MLP
from fastadapt.rl import policy as pi
from fastadapt.rl.objectives import adapt_step, expand, inner_loss
from fastadapt.rl.rollouts import Batch
from fastadapt.rl.trpo import flat, unflat

SMALL = ["model.backbone_args.hidden=[8]", "data.args.horizon=6", "train.episodes.shots=3", "train.episodes.queries=4"]


def _linear_problem(seed: int):
    """One task: a linear-Gaussian policy (mean W s + b, learned log std) and rollouts (T=4, N=3)."""
    torch.manual_seed(seed)
    net = MLP(in_features=2, hidden=(), out_features=2).double()
    params = {k: v.double().detach() for k, v in pi.init_params(net, 2, 0.7).items()}
    g = torch.Generator().manual_seed(seed)
    t, n = 4, 3
    mask = torch.ones(1, t, n, dtype=torch.float64)
    mask[0, 3:, 0] = 0  # one rollout ended early
    batch = Batch(
        torch.randn(1, t, n, 2, generator=g, dtype=torch.float64),
        torch.randn(1, t, n, 2, generator=g, dtype=torch.float64),
        torch.zeros(1, t, n, dtype=torch.float64),
        mask,
    )
    return net, params, batch, torch.randn(1, t, n, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("seed", [0, 1])
def test_lvc_has_the_vanilla_gradient_and_the_extra_curvature_term(seed):
    net, params, batch, adv = _linear_problem(seed)
    names, like = list(params), list(params.values())
    behaviour = expand(params, 1, stacked=False)
    theta = flat(like)

    def as_params(vector):
        return dict(zip(names, unflat(vector, like)))

    def vpg(vector):
        return inner_loss(net, as_params(vector), batch, adv, stacked=False).sum()

    def lvc(vector):
        return inner_loss(net, as_params(vector), batch, adv, stacked=False, behaviour=behaviour).sum()

    grad_vpg = torch.autograd.functional.jacobian(vpg, theta)
    torch.testing.assert_close(torch.autograd.functional.jacobian(lvc, theta), grad_vpg)
    difference = torch.autograd.functional.hessian(lvc, theta) - torch.autograd.functional.hessian(vpg, theta)
    # by hand: -Σ_{t,n alive} Â ∇log π ∇log πᵀ / (number of alive steps), per-sample gradients
    expected = torch.zeros(len(theta), len(theta), dtype=torch.float64)
    for t, n in batch.mask[0].nonzero().tolist():

        def logp(vector, t=t, n=n):
            return pi.log_prob(net, as_params(vector), batch.observations[0, t, n], batch.actions[0, t, n])

        g = torch.autograd.functional.jacobian(logp, theta)
        expected -= adv[0, t, n] * torch.outer(g, g) / batch.mask.sum()
    torch.testing.assert_close(difference, expected, rtol=1e-9, atol=1e-12)
    assert expected.abs().max() > 1e-2  # the term is there to be missed


def test_meta_gradient_through_the_lvc_step_matches_finite_differences():
    net, params, support, adv = _linear_problem(3)
    _, _, query, query_adv = _linear_problem(4)
    names, like = list(params), list(params.values())
    behaviour = expand(params, 1, stacked=False)  # the collecting policy: a constant

    def objective(vector):
        adapted = adapt_step(net, dict(zip(names, unflat(vector, like))), support, adv, 0.3, False, True, behaviour)
        return inner_loss(net, adapted, query, query_adv, stacked=True).sum()

    theta, eps = flat(like).requires_grad_(True), 1e-6
    (grad,) = torch.autograd.grad(objective(theta), theta)
    eye = torch.eye(len(theta), dtype=theta.dtype)
    numeric = torch.stack([(objective(theta + eps * e) - objective(theta - eps * e)) / (2 * eps) for e in eye])
    torch.testing.assert_close(grad, numeric.detach(), rtol=1e-6, atol=1e-8)


def _learner(*overrides: str):
    config = load_config("promp-point2d", [*SMALL, *overrides])
    torch.manual_seed(0)
    return build_learner(config, (2,)), [build_suite(config).train_task(i) for i in range(3)]


def _adam_gradient(learner, tasks):
    params = list(learner.parameters())
    total = [torch.zeros_like(p) for p in params]
    for task in tasks:
        grads = torch.autograd.grad(learner.task_loss(task)[0], params)
        total = [s + g / len(tasks) for s, g in zip(total, grads)]
    return total


@pytest.mark.parametrize("first_order", [False, True])
def test_first_promp_step_is_the_lvc_meta_gradient_and_the_penalty_starts_flat(first_order):
    order = f"learner.args.first_order={str(first_order).lower()}"
    learner, tasks = _learner(order, "learner.args.ppo_epochs=1", "learner.args.inner_kl_penalty=0.5")
    expected = _adam_gradient(learner, tasks)
    vanilla, _ = _learner(order, "learner.args.inner_estimator=vpg")
    vanilla_gradient = _adam_gradient(vanilla, tasks)
    params = list(learner.parameters())
    info = learner.outer_step(tasks, (0, 1), torch.optim.SGD(params, lr=0.5))[0]
    assert info["ratio_deviation"] == 0.0 and info["inner_kl"] == 0.0
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-5, atol=1e-7)
    gap = max((a - b).abs().max().item() for a, b in zip(expected, vanilla_gradient))
    if first_order:  # the inner gradient is held constant: LVC and vanilla agree exactly
        assert gap < 1e-6
    else:  # the curvature term changes the meta-gradient
        assert gap > 1e-4


def test_penalty_grows_once_the_pre_update_policy_moves():
    learner, tasks = _learner("learner.args.ppo_epochs=3", "learner.args.inner_kl_penalty=0.5")
    info = learner.outer_step(tasks, (0, 1), torch.optim.SGD(learner.parameters(), lr=0.05))[0]
    assert info["inner_kl"] > 0


def test_promp_settings_are_checked_and_a_tiny_run_resumes_bitwise(tmp_path):
    with pytest.raises(FastAdaptError, match="inner_kl_penalty = 0.1 is out of range; it must be 0 unless outer"):
        _learner("learner.args.outer=trpo", "learner.args.inner_kl_penalty=0.1")
    straight_and_resumed(load_config("promp-point2d", [*TINY[:-1], "learner.args.ppo_epochs=2"]), tmp_path)
