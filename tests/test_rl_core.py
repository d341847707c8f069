"""The RL plumbing against hand computations and math: returns, GAE, the linear baseline, the
2D-navigation dynamics and reward, seeded rollouts, conjugate gradient, and the unbiasedness of
the policy-gradient estimator on a bandit with a closed-form gradient."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from fastadapt.rl import policy as pi
from fastadapt.rl.envs import Point2DNav, RLTask
from fastadapt.rl.objectives import inner_loss
from fastadapt.rl.returns import (
    advantages,
    discounted_returns,
    fit_linear_baseline,
    gae,
    linear_baseline_values,
    normalize,
    undiscounted_returns,
)
from fastadapt.rl.rollouts import Batch, collect
from fastadapt.rl.trpo import conjugate_gradient


def column(*values):
    return torch.tensor(values, dtype=torch.float64).unsqueeze(-1)  # (T, 1)


def test_returns_and_gae_against_hand_computation():
    # One rollout of 4 steps that ends after step 3 (mask 0 at t = 3), gamma = 0.5.
    r, m = column(1.0, 2.0, 4.0, 100.0), column(1.0, 1.0, 1.0, 0.0)
    assert undiscounted_returns(r, m).item() == 7.0
    torch.testing.assert_close(discounted_returns(r, m, 0.5), column(1 + 0.5 * 2 + 0.25 * 4, 2 + 0.5 * 4, 4.0, 0.0))
    v = column(0.5, 1.0, 2.0, 9.0)  # the value after the end is never used
    # deltas: r_t + 0.5 V_{t+1} - V_t, with V = 0 past the end
    d = [1 + 0.5 * 1.0 - 0.5, 2 + 0.5 * 2.0 - 1.0, 4 + 0.0 - 2.0]
    lam = 0.5  # gamma * lambda = 0.25
    expected = column(d[0] + 0.25 * d[1] + 0.0625 * d[2], d[1] + 0.25 * d[2], d[2], 0.0)
    torch.testing.assert_close(gae(r, v, m, 0.5, lam), expected)
    # lambda = 1: Monte-Carlo return minus the value; lambda = 0: the one-step TD error.
    torch.testing.assert_close(gae(r, v, m, 0.5, 1.0), (discounted_returns(r, m, 0.5) - v) * m)
    torch.testing.assert_close(gae(r, v, m, 0.5, 0.0), column(*d, 0.0))


def test_gae_treats_each_rollout_and_leading_dimension_independently():
    g = torch.Generator().manual_seed(0)
    r, v = torch.randn(3, 6, 4, generator=g), torch.randn(3, 6, 4, generator=g)
    m = torch.ones(3, 6, 4)
    m[1, 4:, 2] = 0
    batched = gae(r, v, m, 0.9, 0.8)
    for k in range(3):
        for n in range(4):
            alone = gae(r[k, :, n : n + 1], v[k, :, n : n + 1], m[k, :, n : n + 1], 0.9, 0.8)
            torch.testing.assert_close(batched[k, :, n : n + 1], alone)


def test_normalize_gives_zero_mean_unit_std_on_alive_steps():
    a, m = torch.tensor([[1.0, 5.0], [3.0, 7.0], [100.0, 2.0]]), torch.tensor([[1.0, 1.0], [1.0, 1.0], [0.0, 1.0]])
    out = normalize(a, m)
    alive = out[m.bool()]
    assert out[2, 0] == 0 and abs(alive.mean()) < 1e-6
    assert alive.pow(2).mean().sqrt() == pytest.approx(1.0, abs=1e-6)  # population std, as rllab


def test_linear_baseline_reproduces_returns_linear_in_its_features():
    # returns = 2 + 3 o - o² + 4 t/100 on random observations: in the feature span, so the fit is exact.
    g = torch.Generator().manual_seed(1)
    obs = torch.rand(30, 5, 1, generator=g, dtype=torch.float64)
    t = torch.arange(30, dtype=torch.float64).view(30, 1) / 100
    returns = 2 + 3 * obs[..., 0] - obs[..., 0] ** 2 + 4 * t
    mask = torch.ones(30, 5, dtype=torch.float64)
    w = fit_linear_baseline(obs, returns, mask, reg=0.0)
    torch.testing.assert_close(linear_baseline_values(obs, w), returns, rtol=1e-7, atol=1e-7)


def test_point2d_dynamics_and_reward_for_a_known_state():
    env = Point2DNav(np.array([[0.3, -0.4]]), per_task=2, action_scale=0.1)
    env.reset(np.zeros((1, 2)))
    obs, reward, done = env.step(np.array([[[0.5, -0.5], [10.0, -10.0]]]))
    # rollout 0 moves by 0.1·a = (0.05, -0.05); rollout 1's move is clipped to (0.1, -0.1)
    np.testing.assert_allclose(obs[0], [[0.05, -0.05], [0.1, -0.1]], rtol=1e-6)
    np.testing.assert_allclose(reward[0], [-math.hypot(0.25, 0.35), -math.hypot(0.2, 0.3)])
    assert not done.any()
    env.state[:] = [[0.295, -0.395]]  # within 0.01 of the goal on both axes after a zero move
    _, reward, done = env.step(np.zeros((1, 2, 2)))
    assert done.all() and reward[0, 0] == pytest.approx(-math.hypot(0.005, 0.005))


def _point_tasks(n: int, shots: int = 3, horizon: int = 5) -> list[RLTask]:
    rng = np.random.default_rng(0)
    return [
        RLTask("point2d", tuple(rng.uniform(-0.5, 0.5, 2)), 1000 + i, horizon, shots, shots, (("action_scale", 0.1),))
        for i in range(n)
    ]


def _random_policy(obs: torch.Tensor, generators) -> torch.Tensor:
    return torch.stack([torch.randn(obs.shape[1], 2, generator=g) for g in generators])


def test_seeded_rollouts_are_identical_alone_or_in_a_batch_and_differ_across_phases():
    tasks = _point_tasks(3)
    a, b = collect(tasks, _random_policy, 3, "support-0"), collect(tasks, _random_policy, 3, "support-0")
    for x, y in zip((a.observations, a.actions, a.rewards, a.mask), (b.observations, b.actions, b.rewards, b.mask)):
        assert torch.equal(x, y)
    alone = collect(tasks[1:2], _random_policy, 3, "support-0")
    assert torch.equal(alone.actions[0], a.actions[1]) and torch.equal(alone.rewards[0], a.rewards[1])
    other = collect(tasks, _random_policy, 3, "query")
    assert not torch.equal(other.actions, a.actions)


def test_rollouts_stop_counting_after_the_goal_is_reached():
    task = RLTask("point2d", (0.1, 0.0), 7, 5, 1, 1, (("action_scale", 0.1),))
    right = collect([task], lambda obs, g: torch.tensor([[[1.0, 0.0]]]), 1, "q")  # reaches (0.1, 0) at step 0
    assert right.mask[0, :, 0].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert right.returns().item() == pytest.approx(0.0, abs=1e-6)


def test_conjugate_gradient_solves_a_positive_definite_system():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(6, 6, generator=g, dtype=torch.float64)
    a = a @ a.T + 0.5 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    torch.testing.assert_close(conjugate_gradient(lambda v: a @ v, b, iters=6), torch.linalg.solve(a, b))


@pytest.mark.parametrize("with_baseline", [False, True])
def test_policy_gradient_estimator_is_unbiased_on_a_bandit(with_baseline):
    """One-step bandit, a ~ N(μ, σ²), reward -(a - c)²: J = -(μ - c)² - σ², so ∂J/∂μ = -2(μ - c) and
    ∂J/∂log σ = -2σ². The gradient of `inner_loss` (REINFORCE, here with a constant baseline, which
    adds no bias) must match -∇J within 4 standard errors of the per-sample estimates."""
    mu, sigma, c, n = 0.3, 0.7, -0.5, 40_000
    net = nn.Linear(1, 1)
    with torch.no_grad():
        net.weight.zero_(), net.bias.fill_(mu)
    params = {f"mean.{k}": v.double() for k, v in net.named_parameters()}
    params["log_std"] = torch.full((1,), math.log(sigma), dtype=torch.float64, requires_grad=True)
    params["mean.bias"].requires_grad_(True)
    net.double()
    g = torch.Generator().manual_seed(3)
    a = mu + sigma * torch.randn(n, 1, generator=g, dtype=torch.float64)
    reward = -((a[:, 0] - c) ** 2)
    adv = reward - (reward.mean() if with_baseline else 0.0)  # a constant baseline (leave-in mean: O(1/n))
    batch = Batch(torch.zeros(1, 1, n, 1, dtype=torch.float64), a.view(1, 1, n, 1), reward.view(1, 1, n), None)
    batch.mask = torch.ones(1, 1, n, dtype=torch.float64)
    loss = inner_loss(net, params, batch, adv.view(1, 1, n), stacked=False).sum()
    g_mu, g_log_std = torch.autograd.grad(loss, [params["mean.bias"], params["log_std"]])
    # per-sample score-function terms, for the standard error
    z = (a[:, 0] - params["mean.bias"].item()) / sigma  # the float32 bias, as the network holds it
    per_mu, per_ls = z / sigma * adv, (z**2 - 1) * adv
    for estimate, per_sample, exact in (
        (-g_mu.item(), per_mu, -2 * (mu - c)),
        (-g_log_std.item(), per_ls, -2 * sigma**2),
    ):
        se = per_sample.std().item() / math.sqrt(n)
        assert abs(estimate - per_sample.mean().item()) < 1e-9  # autograd = the score-function average
        assert abs(estimate - exact) < 4 * se, (estimate, exact, se)


def test_gaussian_log_prob_and_kl_closed_forms():
    net = nn.Linear(2, 2).double()
    params = pi.init_params(net, 2, 0.5)
    params = {k: v.double() for k, v in params.items()}
    obs, act = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    mu = net(obs)
    normal = torch.distributions.Normal(mu, 0.5)
    torch.testing.assert_close(pi.log_prob(net, params, obs, act), normal.log_prob(act).sum(-1))
    other = dict(params, log_std=torch.tensor([0.1, -0.3], dtype=torch.float64))
    expected = torch.distributions.kl_divergence(normal, torch.distributions.Normal(mu, other["log_std"].exp()))
    torch.testing.assert_close(pi.kl(net, params, other, obs), expected.sum(-1))


def test_advantages_are_fitted_per_task():
    g = torch.Generator().manual_seed(4)
    obs, rew = torch.randn(2, 7, 3, 2, generator=g), torch.randn(2, 7, 3, generator=g)
    mask = torch.ones(2, 7, 3)
    both = advantages(obs, rew, mask, 0.99, 1.0)
    torch.testing.assert_close(both[1], advantages(obs[1], rew[1], mask[1], 0.99, 1.0))


def test_paper_split_is_the_maml_authors_forty_test_goals():
    """Split `paper` of point2d-nav: the goals of maml_rl's test_maml_point.py, `np.random.seed(1)`
    then `np.random.uniform(-0.5, 0.5, size=(40, 2))`, in order, each task with its own rollout seed."""
    from fastadapt.config import load_config
    from fastadapt.data import build_suite
    from fastadapt.errors import FastAdaptError

    state = np.random.get_state()
    try:
        np.random.seed(1)
        authors = np.random.uniform(-0.5, 0.5, size=(40, 2))  # their script's two lines
    finally:
        np.random.set_state(state)
    suite = build_suite(load_config("maml-trpo-point2d"))
    tasks = suite.fixed_set("paper", None, 20, 20, 40, 1234).tasks
    np.testing.assert_array_equal(np.array([t.params for t in tasks]), authors)
    assert len({t.seed for t in tasks}) == 40 and tasks[0].horizon == 100
    assert [t.params for t in suite.fixed_set("paper", None, 20, 20, 5, 99).tasks] == [t.params for t in tasks[:5]]
    assert tasks[0].seed != suite.fixed_set("paper", None, 20, 20, 1, 99).tasks[0].seed  # the seed moves rollouts
    with pytest.raises(FastAdaptError, match=r"at most 40 tasks \(--episodes 40\), got 41"):
        suite.fixed_set("paper", None, 20, 20, 41, 1234)
    with pytest.raises(FastAdaptError, match="at most 40 tasks"):  # the test after training: checked before it
        build_suite(load_config("maml-trpo-point2d", ["data.test_split=paper", "eval.episodes=50"])).check()
    for key, use in (("train_split", "train"), ("val_split", "val")):  # never trained or selected on
        with pytest.raises(FastAdaptError, match=f"data.{key}: 'paper' .* for testing only .*; use {use}"):
            build_suite(load_config("maml-trpo-point2d", [f"data.{key}=paper"])).check()
