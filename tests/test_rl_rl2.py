"""RL²: the GRU's hidden state is reset only at task boundaries (trial starts), runs through the
episode resets within a trial, and the training-time recomputation of the policy reproduces the
collection exactly; a tiny PPO run end to end."""

from __future__ import annotations

import math

import pytest
import torch

from fastadapt.config import load_config
from fastadapt.data import build_suite
from fastadapt.learners import build_learner
from fastadapt.trainer import Trainer

SMALL = ["learner.name=rl2", "learner.args={hidden: 6, episodes_per_trial: 2, ppo_epochs: 2}", "data.args.horizon=4"]


def _learner_and_tasks():
    config = load_config("maml-trpo-point2d", SMALL)
    torch.manual_seed(0)
    learner = build_learner(config, (2,))
    suite = build_suite(config)
    return learner, [suite.train_task(i) for i in range(2)]


def test_hidden_state_resets_only_at_task_boundaries():
    learner, tasks = _learner_and_tasks()
    trials = learner.run_trials(tasks, 3, "trial")
    horizon = tasks[0].horizon
    assert trials.hidden.shape == (2, 2 * horizon, 3, 6)
    assert torch.equal(trials.hidden[:, 0], torch.zeros(2, 3, 6))  # a new task: the memory is empty
    assert (trials.hidden[:, horizon].abs().sum(-1) > 0).all()  # the second episode remembers the first
    ended = trials.inputs[..., -1]  # the "previous step ended an episode" input
    assert ended[:, horizon].eq(1).all() and ended.sum() == ended[:, horizon].sum()
    # The recorded state before the second episode is the one after the first episode's last step.
    x, alive = trials.inputs[:, horizon - 1].reshape(6, -1), trials.mask[:, horizon - 1].reshape(-1).bool()
    h_after, _ = learner.step(x, trials.hidden[:, horizon - 1].reshape(6, -1), alive)
    torch.testing.assert_close(trials.hidden[:, horizon].reshape(6, -1), h_after)
    again = learner.run_trials(tasks, 3, "trial")  # another trial (task boundary): from zero again, same seeds
    assert torch.equal(again.hidden, trials.hidden) and torch.equal(again.actions, trials.actions)


def test_recomputed_policy_reproduces_the_collection_noise():
    """(a - μ(history)) / σ recomputed over the whole trial from a zero state equals the Gaussian
    noise drawn at collection, step for step: the recomputation carries the state exactly as the
    collection did, through the episode reset."""
    learner, tasks = _learner_and_tasks()
    trials = learner.run_trials(tasks, 3, "trial")
    log_p = learner.log_prob(trials)
    generators = [torch.Generator().manual_seed(t.rollout_seed("trial")) for t in tasks]
    noise = torch.stack(
        [torch.stack([torch.randn(3, 2, generator=g) for g in generators]) for _ in range(trials.mask.shape[1])], 1
    )  # (K, L, N, A)
    expected = -0.5 * (noise**2).sum(-1) - learner.log_std.sum() - math.log(2 * math.pi)
    torch.testing.assert_close(log_p, expected.detach(), rtol=1e-5, atol=1e-5)


def test_tiny_rl2_ppo_run(tmp_path, capsys):
    overrides = [
        *SMALL,
        "train.steps=2",
        "train.meta_batch=2",
        "train.episodes.queries=3",
        "train.lr=0.003",
        "eval.episodes=2",
        "eval.queries=2",
    ]
    config = load_config("maml-trpo-point2d", overrides)
    before = None
    trainer = Trainer(config, tmp_path / "run", quiet=True)
    before = [p.detach().clone() for p in trainer.learner.parameters()]
    result = trainer.fit()
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.learner.parameters()))
    assert sorted(result["other_metrics"]) == ["return_after_0", "return_after_1"]
    assert math.isfinite(result["return"]) and result["return"] == result["other_metrics"]["return_after_1"]["mean"]
    # the generated results table names RL²'s columns by episode, not by gradient step
    from fastadapt.rl.report import by_episode, rl_records, rl_table

    records = rl_records([tmp_path / "run"])
    assert len(records) == 1 and by_episode(records[0])
    table = rl_table(records, episodes=True).splitlines()
    assert table[0].endswith("| episode 1 | episode 2 |") and "after" not in table[0]
    last = result["other_metrics"]["return_after_1"]
    assert table[2].endswith(f"| {last['mean']:.1f} ± {last['ci95']:.1f} |")
    from fastadapt.results import print_result

    print_result(records[0])  # the CLI's line: episodes and trials, not gradient steps and rollouts
    line = capsys.readouterr().out
    assert "in episode 2 of each trial" in line and "2 trials scored" in line and "rollouts" not in line
    from fastadapt.cli import main
    from fastadapt.results import results_table

    row = next(line for line in results_table([tmp_path / "run"]).splitlines() if "meta-RL" in line)
    assert "point2d-nav meta-RL, 2 trials of 2 episodes (2 ep.)" in row and "rollouts" not in row
    # RL² has no support rollouts: --shots would change nothing but the result file's name
    assert main(["eval", str(tmp_path / "run"), "--shots", "7"]) == 2
    assert "rl2 adapts within its trials, with no support rollouts: drop --shots" in capsys.readouterr().err
    # PPO needs the whole meta-batch in one process: on 2 ranks the trainer refuses before training
    from fastadapt.distributed import Context
    from fastadapt.errors import FastAdaptError

    refused = Trainer(config, tmp_path / "ranks", quiet=True)
    refused.dist = Context(rank=0, world_size=2, local_rank=0, local_world_size=2, active=False)
    with pytest.raises(FastAdaptError, match="RL2 trains with PPO on the whole meta-batch in one process"):
        refused.fit()
    assert not (tmp_path / "ranks" / "config.yaml").exists()


def test_meta_world_success_is_recorded_per_episode_and_reset_with_each_episode():
    """On Meta-World, each episode of a trial has its own success flag (success at any step since
    that episode's reset); the test metrics are their means. 2D navigation has none (NaN, no metric)."""
    pytest.importorskip("metaworld")
    config = load_config("rl2-ml1-reach", ["learner.args={hidden: 6, episodes_per_trial: 2}", "data.args.horizon=5"])
    torch.manual_seed(0)
    suite = build_suite(config)
    learner = build_learner(config, suite.input_shape)
    task = suite.train_task(0)
    trials = learner.run_trials([task], 3, "query-trial")
    assert trials.episode_success.shape == (1, 2, 3) and set(trials.episode_success.unique().tolist()) <= {0.0, 1.0}
    prediction = learner.predict(task)
    torch.testing.assert_close(prediction[1], trials.episode_success[0].mean(-1))  # same seeds, same trials
    metrics = learner.query_metrics(prediction, task)
    assert [metrics[f"success_rate_after_{k}"] for k in (0, 1)] == prediction[1].tolist()
    point, tasks = _learner_and_tasks()
    assert point.run_trials(tasks, 2, "t").episode_success.isnan().all()


def test_rl2_needs_an_mlp_backbone_for_its_sizes(tmp_path):
    from fastadapt.errors import FastAdaptError

    config = load_config("rl2-point2d", ["model.backbone=raw-input", "model.backbone_args={}"])
    with pytest.raises(FastAdaptError, match="rl2 reads its observation and action sizes from an mlp backbone"):
        Trainer(config, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()
