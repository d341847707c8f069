"""Meta-World ML1 (Yu et al. 2019; the `metaworld` 3.x package, v3 environments) as batched RL tasks.

A benchmark `metaworld.ML1(env_name, seed=s)` fixes its 50 training and 50 test tasks (goal and
object positions) from `s`: the task sampler is seeded explicitly, because Meta-World ignores
`reset(seed=...)` (its resets are a deterministic function of the task). A fastadapt task is
(set, index) into those lists: training tasks draw the index from (config seed, task index),
test tasks are the benchmark's test list. Score: Meta-World's protocol, a rollout succeeds if
`info["success"]` is 1 at any step; horizon 500 (`max_path_length`). Building a MuJoCo
environment costs about a second, so instances are pooled per environment name and re-tasked
with `set_task` for every batch.

ML10 (`fastadapt.data.ml10`): 10 training and 5 held-out test environments with 50 tasks each,
from `metaworld.ML10(seed=s)`; a task is (set, environment, index), so one batch holds several
environment names, each instance drawn from its own name's pool.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from ..errors import FastAdaptError
from .envs import RLTask

_POOL: dict[str, list] = {}  # env_name -> environment instances, reused across batches
_LARGEST = {"batch": 0}  # the most instances one batch has used: the pool's bound is 1.5x this


@lru_cache(maxsize=8)
def ml1(env_name: str, seed: int):
    """The ML1 benchmark of one environment, its task sets fixed by `seed`."""
    try:
        import metaworld
    except ImportError:
        raise FastAdaptError("Meta-World tasks need metaworld: pip install 'fastadapt[rl]'") from None
    try:
        return metaworld.ML1(env_name, seed=seed)
    except (KeyError, ValueError) as exc:
        raise FastAdaptError(f"data.args.env_name: Meta-World has no ML1 environment {env_name!r} ({exc})") from None


@lru_cache(maxsize=2)
def ml10(seed: int):
    """The ML10 benchmark, its training and test task sets fixed by `seed` (building it resets each
    of its 15 environments 50 times: about 15 s on one core, so it is cached)."""
    try:
        import metaworld
    except ImportError:
        raise FastAdaptError("Meta-World tasks need metaworld: pip install 'fastadapt[rl]'") from None
    return metaworld.ML10(seed=seed)


def ml10_env_names() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """ML10's (training, test) environment names in Meta-World's order, without building the benchmark."""
    from metaworld.env_dict import ML10_V3

    return tuple(ML10_V3["train"]), tuple(ML10_V3["test"])


@lru_cache(maxsize=2)
def _ml10_tasks(seed: int) -> tuple[dict[str, list], dict[str, list]]:
    """ML10's (training, test) tasks grouped by environment name, each list in the benchmark's order."""
    benchmark, out = ml10(seed), ({}, {})
    for grouped, tasks in zip(out, (benchmark.train_tasks, benchmark.test_tasks)):
        for t in tasks:
            grouped.setdefault(t.env_name, []).append(t)
    return out


def benchmark_task(task: RLTask) -> tuple[str, object]:
    """(environment name, Meta-World `Task`) of a fastadapt task. ML1: params (set, index) into the
    benchmark's training (0) or test (1) list; ML10: params (set, environment, index), the
    environment by its position in `ml10_env_names()`, the index into that environment's 50 tasks."""
    args = dict(task.env_args)
    seed = int(args["benchmark_seed"])
    if task.family == "ml10":
        which, env, index = (int(v) for v in task.params)
        name = ml10_env_names()[which][env]
        return name, _ml10_tasks(seed)[which][name][index]
    name = str(args["env_name"])
    benchmark, (which, index) = ml1(name, seed), task.params
    return name, (benchmark.train_tasks, benchmark.test_tasks)[int(which)][int(index)]


def instances(env_name: str, count: int) -> list:
    """`count` pooled instances of one Meta-World environment (created on first need, then reused)."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    pool = _POOL.setdefault(env_name, [])
    while len(pool) < count:
        pool.append(ALL_V3_ENVIRONMENTS[env_name]())
    return pool[:count]


def trim_pool(in_use: dict[str, int], limit: int) -> None:
    """Close pooled instances beyond `limit` in all, never the first `in_use[name]` of a name (the
    current batch's). An instance holds ~21 MiB; with one environment name (ML1) the pool never
    exceeds the largest batch, but batches that mix names (ML10) would otherwise keep the largest
    count each name ever had (several batches' worth)."""
    excess = sum(len(pool) for pool in _POOL.values()) - limit
    for name, pool in _POOL.items():
        drop = min(len(pool) - in_use.get(name, 0), excess)
        if drop > 0:
            for env in pool[-drop:]:
                env.close()
            del pool[-drop:]
            excess -= drop


class MetaWorldTasks:
    """K Meta-World tasks x N rollouts (the `BatchedEnv` interface); `success` (K, N): succeeded at
    any step. The tasks may name different environments (ML10); all have 39 observations, 4 actions."""

    action_dim = 4

    def __init__(self, tasks: Sequence[RLTask], per_task: int):
        resolved = [benchmark_task(t) for t in tasks]
        need = Counter(name for name, _ in resolved)
        pools = {name: iter(instances(name, n * per_task)) for name, n in need.items()}
        self.shape = (len(tasks), per_task)
        self.envs = []
        for name, mw_task in resolved:
            for _ in range(per_task):
                env = next(pools[name])
                env.set_task(mw_task)
                self.envs.append(env)
        _LARGEST["batch"] = max(_LARGEST["batch"], len(self.envs))
        trim_pool({name: n * per_task for name, n in need.items()}, _LARGEST["batch"] * 3 // 2)
        self.observation_dim = int(self.envs[0].observation_space.shape[0])
        self.success = np.zeros(self.shape, dtype=bool)

    def reset(self, seeds: np.ndarray) -> np.ndarray:
        self.success[:] = False  # resets are a function of the task (Meta-World ignores seeds)
        return np.stack([env.reset()[0] for env in self.envs]).reshape(*self.shape, -1).astype(np.float32)

    def step(self, actions: np.ndarray):
        actions = np.clip(np.asarray(actions, dtype=np.float64), -1.0, 1.0).reshape(len(self.envs), -1)
        results = [env.step(a) for env, a in zip(self.envs, actions)]  # (obs, reward, terminated, truncated, info)
        obs = np.stack([r[0] for r in results]).reshape(*self.shape, -1).astype(np.float32)
        rewards = np.array([r[1] for r in results], dtype=np.float64).reshape(self.shape)
        done = np.array([r[2] for r in results], dtype=bool).reshape(self.shape)
        self.success |= np.array([r[4].get("success", 0.0) > 0 for r in results]).reshape(self.shape)
        return obs, rewards, done

    def close(self) -> None:
        """Instances stay in the pool for the next batch."""
