"""MAML-RL's PPO outer loop (`learner.args.outer: ppo`) against math: at the first step the ratio
is exactly 1 and the PPO gradient equals the vanilla policy-gradient meta-gradient (`outer: adam`'s
`task_loss`), second and first order; the clip zeroes the gradient of the steps whose ratio left
[1 - ε, 1 + ε] in the direction of their advantage (a hand-built case); a tiny run trains and
resumes bitwise; the update is refused on several ranks, and by learners that override it."""

from __future__ import annotations

import pytest
import torch
from helpers import RL_TINY as TINY
from helpers import straight_and_resumed

from fastadapt.config import load_config
from fastadapt.data import build_suite
from fastadapt.errors import FastAdaptError
from fastadapt.learners import build_learner
from fastadapt.rl.objectives import clipped_surrogate, masked_task_mean
from fastadapt.trainer import Trainer

SMALL = ["model.backbone_args.hidden=[8]", "data.args.horizon=6", "train.episodes.shots=3", "train.episodes.queries=4"]


def _learner(*overrides: str):
    config = load_config("maml-trpo-point2d", [*SMALL, *overrides])
    torch.manual_seed(0)
    return build_learner(config, (2,)), [build_suite(config).train_task(i) for i in range(3)]


@pytest.mark.parametrize("first_order", [False, True])
def test_first_ppo_step_is_the_vanilla_policy_gradient_meta_gradient(first_order):
    """At the first step π_θ'(θ) is the collecting policy, so r = 1, nothing is clipped and
    ∇ -mean min(r Â, clip(r) Â) = -mean Â ∇ log π_θ'(θ): the meta-gradient `outer: adam` takes."""
    args = f"learner.args={{outer: ppo, ppo_epochs: 1, first_order: {str(first_order).lower()}}}"
    learner, tasks = _learner(args)
    params = list(learner.parameters())
    expected = [torch.zeros_like(p) for p in params]
    for task in tasks:  # the trainer's `outer: adam` objective: the mean of the tasks' task_loss
        grads = torch.autograd.grad(learner.task_loss(task)[0], params)
        expected = [e + g / len(tasks) for e, g in zip(expected, grads)]
    before = [p.detach().clone() for p in params]
    info = learner.outer_step(tasks, (0, 1), torch.optim.SGD(params, lr=0.5))[0]
    assert info["ratio_deviation"] == 0.0 and info["clip_fraction"] == 0.0
    for p, p0, e in zip(params, before, expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(p.detach(), p0 - 0.5 * e, rtol=1e-5, atol=1e-7)  # one SGD step on it
    assert any(e.abs().sum() > 1e-3 for e in expected)  # a real gradient, not zero against zero


def test_clip_zeroes_the_gradient_of_ratios_beyond_the_range_in_the_advantages_direction():
    eps = 0.2
    ratio = torch.tensor([[1.5, 1.5, 0.5, 0.5, 1.1, 0.9]], dtype=torch.float64)  # (K=1, T=6) x N=1
    adv = torch.tensor([[2.0, -2.0, -3.0, 3.0, 1.0, -1.0]], dtype=torch.float64)
    old = torch.zeros(1, 6, 1, dtype=torch.float64)
    logp = ratio.log().unsqueeze(-1).requires_grad_(True)
    mask = torch.ones(1, 6, 1, dtype=torch.float64)
    objective = clipped_surrogate(logp, old, adv.unsqueeze(-1), eps)
    torch.testing.assert_close(  # min(r A, clip(r) A), by hand
        objective.flatten(), torch.tensor([1.2 * 2, 1.5 * -2, 0.8 * -3, 0.5 * 3, 1.1, -0.9], dtype=torch.float64)
    )
    (grad,) = torch.autograd.grad(-masked_task_mean(objective, mask).sum(), logp)
    # d(r A)/d log π = r A where the unclipped branch is the minimum; 0 where the ratio left the
    # range in the advantage's direction (r > 1 + ε with A > 0, r < 1 - ε with A < 0).
    active = torch.tensor([0.0, 1.0, 0.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(grad.flatten(), -(ratio * adv).flatten() * active / 6)


def test_tiny_ppo_run_trains_and_resumes_bitwise(tmp_path):
    tiny = [*TINY[:-1], "train.lr=0.01", "learner.args={outer: ppo, ppo_epochs: 2}"]  # TINY[-1]: TRPO's cg_iters
    config = load_config("maml-trpo-point2d", tiny)
    initial = {
        k: v.detach().clone() for k, v in Trainer(config, tmp_path / "c", quiet=True).learner.state_dict().items()
    }
    straight, a = straight_and_resumed(config, tmp_path)
    trained = {k.split("/", 1)[-1]: v for k, v in a.items()}
    shared = initial.keys() & trained.keys()
    assert shared and any(not torch.equal(initial[k], trained[k]) for k in shared)  # the steps moved the policy


def test_ppo_is_refused_on_several_ranks_and_by_learners_with_their_own_update():
    learner, _ = _learner("learner.args.outer=ppo")
    assert "'ppo'" in type(learner).single_process_reason(learner.args)
    with pytest.raises(FastAdaptError, match="learner.args.outer: 'ppo' is MAML-RL's"):
        _learner("learner.name=pretrained-rl", "learner.args.outer=ppo")
