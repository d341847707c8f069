"""Meta-World ML10 (Yu et al. 2019): task i is a pure function of (seed, i); the training and test
environments are Meta-World's and disjoint; a batch mixing environments gives each task its own
benchmark task; seeded rollouts repeat, alone or in any batch; a tiny MAML-TRPO run end to end."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
import torch

pytest.importorskip("metaworld")

from fastadapt.config import load_config  # noqa: E402
from fastadapt.data import build_suite  # noqa: E402
from fastadapt.rl.metaworld_env import MetaWorldTasks, benchmark_task, ml10, ml10_env_names  # noqa: E402
from fastadapt.rl.rollouts import collect  # noqa: E402
from fastadapt.scoring import applicable_reference  # noqa: E402
from fastadapt.trainer import Trainer  # noqa: E402

# The Meta-World paper's ML10 split (section 4.3 and its appendix), in v3 names.
PAPER_TRAIN = (
    "reach-v3",
    "push-v3",
    "pick-place-v3",
    "door-open-v3",
    "drawer-close-v3",
    "button-press-topdown-v3",
    "peg-insert-side-v3",
    "window-open-v3",
    "sweep-v3",
    "basketball-v3",
)
PAPER_TEST = ("drawer-open-v3", "door-close-v3", "shelf-place-v3", "sweep-into-v3", "lever-pull-v3")
SMALL = ["data.args.horizon=5", "model.backbone_args.hidden=[8]"]


def _suite(*overrides: str):
    return build_suite(load_config("maml-trpo-ml10", [*SMALL, *overrides]))


def test_task_i_is_a_pure_function_of_seed_and_i_and_test_tasks_are_a_fixed_interleaved_list():
    """No benchmark is built here: the specs are (set, environment, index), resolved at rollout time."""
    suite = _suite()
    tasks = [suite.train_task(i) for i in range(400)]
    assert [_suite().train_task(i) for i in (399, 7, 3, 7)] == [tasks[399], tasks[7], tasks[3], tasks[7]]
    reseeded = _suite("seed=1")
    other = [reseeded.train_task(i) for i in range(400)]
    assert sum(a.params == b.params for a, b in zip(tasks, other)) < 20  # ~400/500 equal by chance
    assert len({t.seed for t in tasks} | {t.seed for t in other}) == 800
    assert all(t.family == "ml10" and t.params[0] == 0.0 and 0 <= t.params[2] < 50 for t in tasks)
    per_env = Counter(int(t.params[1]) for t in tasks)  # uniform over the 10 training environments
    assert sorted(per_env) == list(range(10)) and min(per_env.values()) >= 20
    test = suite.fixed_set("test", None, 2, 2, 12, 1234)
    assert [t.params for t in test] == [(1.0, float(i % 5), float(i // 5)) for i in range(12)]
    assert test.tasks == suite.fixed_set("test", None, 2, 2, 12, 1234).tasks
    assert suite.fixed_set("test", None, 2, 2, 251, 1234)[250].params == (1.0, 0.0, 0.0)  # cycled after 250


def test_environments_are_metaworlds_disjoint_and_each_task_is_the_benchmarks_own():
    train, test = ml10_env_names()
    assert train == PAPER_TRAIN and test == PAPER_TEST and not set(train) & set(test)
    benchmark = ml10(0)
    assert tuple(benchmark.train_classes) == train and tuple(benchmark.test_classes) == test
    assert Counter(t.env_name for t in benchmark.train_tasks) == dict.fromkeys(train, 50)
    assert Counter(t.env_name for t in benchmark.test_tasks) == dict.fromkeys(test, 50)
    suite = _suite()
    specs = [suite.train_task(i) for i in range(3)] + [suite.fixed_set("test", None, 1, 1, 7, 1234)[6]]
    env = MetaWorldTasks(specs, 1)  # one batch, several environment names
    for spec, instance in zip(specs, env.envs):
        name, task = benchmark_task(spec)
        which, position, index = (int(v) for v in spec.params)
        assert name == (train, test)[which][position]
        assert task is [t for t in (benchmark.train_tasks, benchmark.test_tasks)[which] if t.env_name == name][index]
        own = (benchmark.train_classes, benchmark.test_classes)[which][name]()
        own.set_task(task)
        assert type(instance) is type(own)
        np.testing.assert_allclose(instance.reset()[0], own.reset()[0], rtol=1e-6)
        np.testing.assert_allclose(instance._target_pos, own._target_pos)  # the task's own goal


def _random_policy(obs, generators):
    return torch.stack([torch.randn(obs.shape[1], 4, generator=g) for g in generators])


def test_seeded_rollouts_repeat_alone_or_in_any_batch():
    suite = _suite()
    train = [suite.train_task(i) for i in range(40)]
    first = train[0]
    same_env = next(t for t in train[1:] if t.params[1] == first.params[1] and t.params != first.params)
    test = suite.fixed_set("test", None, 2, 2, 3, 1234)[2]
    batch = [first, same_env, test]
    a, b = collect(batch, _random_policy, 2, "support-0"), collect(batch, _random_policy, 2, "support-0")
    for x, y in zip((a.observations, a.rewards, a.mask, a.success), (b.observations, b.rewards, b.mask, b.success)):
        assert torch.equal(x, y)
    # alone, `same_env` runs on other pooled instances than in the batch (which gave it the 3rd and 4th)
    alone = collect([same_env], _random_policy, 2, "support-0")
    assert torch.equal(alone.observations[0], a.observations[1]) and torch.equal(alone.rewards[0], a.rewards[1])
    assert not torch.equal(a.rewards[0], a.rewards[1])  # two tasks, two reward streams


def test_tiny_maml_trpo_run_on_ml10_end_to_end(tmp_path):
    tiny = [
        "train.steps=1",
        "train.meta_batch=2",
        "train.episodes.shots=2",
        "train.episodes.queries=2",
        "eval.episodes=2",
        "eval.shots=2",
        "eval.queries=2",
        "learner.args.cg_iters=3",
    ]
    result = Trainer(load_config("maml-trpo-ml10", SMALL + tiny), tmp_path, quiet=True).fit()
    record = json.loads((tmp_path / "eval.json").read_text())
    assert record["dataset"] == "ml10" and record["metric"] == "return" and math.isfinite(result["return"])
    steps = record["other_metrics"]
    assert sorted(steps) == ["return_after_0", "return_after_1", "success_rate_after_0", "success_rate_after_1"]
    assert all(0.0 <= steps[f"success_rate_after_{k}"]["mean"] <= 1.0 for k in (0, 1))
    assert record["reference"] == {}  # a 5-step horizon is another task: the paper's figure does not apply
    from fastadapt.rl.report import rl_records, success_table

    table = success_table(rl_records([tmp_path])).splitlines()  # the generated Meta-World section
    assert len(table) == 3 and table[0].endswith("| success % after 0 steps | success % after 1 step |")
    shown = f"{100 * steps['success_rate_after_1']['mean']:.1f} ± {100 * steps['success_rate_after_1']['ci95']:.1f}"
    assert table[2].endswith(f"| {shown} |") and "ml10" in table[2]
    full = load_config("maml-trpo-ml10")
    assert applicable_reference(full, None, 10, queries=10, episodes=50)["success_rate_after_1"] == 0.316
    # fewer than the 5 test environments, or unequal weights: another measurement, no paper figure
    assert applicable_reference(full, None, 10, queries=10, episodes=3) == {}
    assert applicable_reference(full, None, 10, queries=10, episodes=52) == {}
    assert applicable_reference(full, None, 10, queries=3, episodes=50) == {}


def test_the_instance_pool_is_bounded_and_never_drops_the_current_batchs(monkeypatch):
    from fastadapt.rl import metaworld_env

    class Instance:
        closed = False

        def close(self):
            self.closed = True

    pool = {"reach-v3": [Instance() for _ in range(6)], "push-v3": [Instance() for _ in range(5)]}
    kept = {name: list(instances) for name, instances in pool.items()}
    monkeypatch.setattr(metaworld_env, "_POOL", pool)
    metaworld_env.trim_pool({"push-v3": 4}, limit=7)  # 11 pooled, 4 push in use: drop 4, reach first
    assert [len(pool["reach-v3"]), len(pool["push-v3"])] == [2, 5]
    assert [i.closed for i in kept["reach-v3"]] == [False] * 2 + [True] * 4
    metaworld_env.trim_pool({"reach-v3": 2}, limit=3)  # reach's 2 are in use: push keeps 1
    assert [len(pool["reach-v3"]), len(pool["push-v3"])] == [2, 1] and not any(i.closed for i in pool["push-v3"])
    metaworld_env.trim_pool({}, limit=10)  # under the limit: nothing closed
    assert sum(len(p) for p in pool.values()) == 3
