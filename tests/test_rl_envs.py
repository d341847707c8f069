"""The HalfCheetah task families (MAML paper rewards over Gymnasium's HalfCheetah-v5) for a known
state, their task distributions, and seeded MuJoCo rollouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("gymnasium")
pytest.importorskip("mujoco")

from fastadapt.config import load_config  # noqa: E402
from fastadapt.data import build_suite  # noqa: E402
from fastadapt.rl.envs import RLTask  # noqa: E402
from fastadapt.rl.mujoco import HalfCheetahTasks, cheetah_reward  # noqa: E402
from fastadapt.rl.rollouts import collect  # noqa: E402


@pytest.mark.parametrize("family,param", [("cheetah-dir", -1.0), ("cheetah-dir", 1.0), ("cheetah-vel", 1.5)])
def test_cheetah_reward_for_a_known_state(family, param):
    env = HalfCheetahTasks([RLTask(family, (param,), 0, 200, 1, 1)], 1)
    env.reset(np.array([[0]]))
    sim = env.env.envs[0].unwrapped
    qpos, qvel = sim.init_qpos.copy(), sim.init_qvel.copy()
    qvel[0] = 2.0  # moving forward at 2 m/s
    sim.set_state(qpos, qvel)
    action = np.array([[[0.5, -0.5, 3.0, 0.0, 0.2, -2.0]]])  # two entries beyond the box: clipped to ±1
    x_before = sim.data.qpos[0]
    _, reward, done = env.step(action)
    velocity = (sim.data.qpos[0] - x_before) / sim.dt
    ctrl = 0.05 * (0.25 + 0.25 + 1.0 + 0.0 + 0.04 + 1.0)
    expected = param * velocity - ctrl if family == "cheetah-dir" else -abs(velocity - param) - ctrl
    assert reward[0, 0] == pytest.approx(expected, rel=1e-9) and not done.any()
    assert velocity > 0.5  # the state was really set: the cheetah moves forward


def test_cheetah_reward_closed_forms():
    v, a = np.array([1.0, -0.5]), np.array([[0.0] * 6, [1.0] * 6])
    np.testing.assert_allclose(cheetah_reward("cheetah-dir", np.array([1.0, -1.0]), v, a), [1.0, 0.5 - 0.3])
    np.testing.assert_allclose(cheetah_reward("cheetah-vel", np.array([2.0, 0.0]), v, a), [-1.0, -0.5 - 0.3])


@pytest.mark.parametrize("dataset", ["cheetah-dir", "cheetah-vel"])
def test_cheetah_task_distributions(dataset):
    config = load_config("maml-trpo-point2d", [f"data.dataset={dataset}", "data.args={}"])
    suite = build_suite(config)
    suite.check()
    params = np.array([suite.train_task(i).params[0] for i in range(200)])
    if dataset == "cheetah-dir":
        assert set(params) == {-1.0, 1.0} and 0.35 < (params > 0).mean() < 0.65
    else:
        assert params.min() >= 0 and params.max() <= 2 and abs(params.mean() - 1) < 0.15
    assert suite.train_task(7) == suite.train_task(7) and suite.train_task(7).horizon == 200
    assert suite.input_shape == (17,) and suite.action_dim == 6


def test_seeded_cheetah_rollouts_repeat():
    tasks = [RLTask("cheetah-vel", (1.0,), 11, 10, 2, 2), RLTask("cheetah-vel", (0.3,), 12, 10, 2, 2)]

    def policy(obs, generators):
        return torch.stack([torch.randn(obs.shape[1], 6, generator=g) for g in generators])

    a, b = collect(tasks, policy, 2, "support-0"), collect(tasks, policy, 2, "support-0")
    assert torch.equal(a.observations, b.observations) and torch.equal(a.rewards, b.rewards)
    alone = collect(tasks[1:], policy, 2, "support-0")
    torch.testing.assert_close(alone.rewards[0], a.rewards[1])


def test_metaworld_ml1_tasks_are_seeded_and_rewards_are_metaworlds_own():
    pytest.importorskip("metaworld")
    from fastadapt.rl.metaworld_env import MetaWorldTasks, ml1

    config = load_config(
        "maml-trpo-point2d",
        ["data.dataset=ml1", "data.val_split=null", "data.args={horizon: 5}", "model.backbone_args.hidden=[8]"],
    )
    suite = build_suite(config)
    suite.check()
    train, test = suite.train_task(3), suite.fixed_set("test", None, 1, 1, 2, 1234)[1]
    assert train == suite.train_task(3) and train.params[0] == 0.0 and test.params == (1.0, 1.0)
    benchmark_tasks = ml1("reach-v3", 0)
    assert {t.data for t in benchmark_tasks.train_tasks}.isdisjoint(t.data for t in benchmark_tasks.test_tasks)
    env = MetaWorldTasks([test], 1)
    benchmark = ml1("reach-v3", 0)
    own = benchmark.train_classes["reach-v3"]()
    own.set_task(benchmark.test_tasks[1])
    obs = env.reset(np.zeros((1, 1)))
    np.testing.assert_allclose(obs[0, 0], own.reset()[0], rtol=1e-6)
    np.testing.assert_allclose(env.envs[0]._target_pos, own._target_pos)  # the test task's own goal
    rng = np.random.default_rng(0)
    for _ in range(3):
        action = rng.uniform(-1, 1, size=(1, 1, 4))
        _, reward, _ = env.step(action)
        _, expected, _, _, _ = own.step(action[0, 0])
        assert reward[0, 0] == pytest.approx(expected)
    assert env.success.shape == (1, 1)


def test_rl_splits_are_checked():
    from fastadapt.errors import FastAdaptError

    # a misspelt split is refused before training, and at test time, instead of silently drawing goals
    suite = build_suite(load_config("maml-trpo-point2d", ["data.val_split=vall"]))
    with pytest.raises(
        FastAdaptError, match="^data.val_split: point2d-nav has no split 'vall'; valid splits: train, val"
    ):
        suite.check()
    with pytest.raises(FastAdaptError, match="point2d-nav has no split 'nosuch'"):
        suite.fixed_set("nosuch", None, 2, 2, 3, 0)
    # Meta-World ML1 has its own train and test tasks only: no validation split to draw from
    ml1 = build_suite(load_config("maml-trpo-point2d", ["data.dataset=ml1", "data.args={}", "data.val_split=val"]))
    with pytest.raises(FastAdaptError, match="data.val_split: ml1 has no split 'val'; valid splits: train, test"):
        ml1.check()


def test_meta_world_test_tasks_are_never_trained_or_selected_on_and_env_names_are_checked():
    pytest.importorskip("metaworld")
    from fastadapt.errors import FastAdaptError

    for preset, what in (("maml-trpo-ml1-reach", "the benchmark's 50 test tasks"), ("maml-trpo-ml10", "the bench")):
        for key, fix in (("train_split", "use train"), ("val_split", "set it to null")):
            suite = build_suite(load_config(preset, [f"data.{key}=test"]))
            with pytest.raises(FastAdaptError, match=f"data.{key}: 'test' is {what}.*for testing only.*{fix}"):
                suite.check()
    with pytest.raises(FastAdaptError, match="no ML1 environment 'reach'; did you mean reach-v3\\? valid: assembly-v3"):
        build_suite(load_config("maml-trpo-ml1-reach", ["data.args.env_name=reach"]))
    with pytest.raises(FastAdaptError, match=r"data.args.benchmark_seed must be in 0..4294967295, got 4294967296"):
        build_suite(load_config("maml-trpo-ml10", ["data.args.benchmark_seed=4294967296"]))
