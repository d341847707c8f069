"""Meta-World ML1 (Yu et al. 2019; the `metaworld` 3.x package, v3 environments) as batched RL tasks.

A benchmark `metaworld.ML1(env_name, seed=s)` fixes its 50 training and 50 test tasks (goal and
object positions) from `s`: the task sampler is seeded explicitly, because Meta-World ignores
`reset(seed=...)` (its resets are a deterministic function of the task). A fastadapt task is
(set, index) into those lists: training tasks draw the index from (config seed, task index),
test tasks are the benchmark's test list. Score: Meta-World's protocol, a rollout succeeds if
`info["success"]` is 1 at any step; horizon 500 (`max_path_length`). Building a MuJoCo
environment costs about a second, so instances are pooled per environment name and re-tasked
with `set_task` for every batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from ..errors import FastAdaptError
from .envs import RLTask

_POOL: dict[str, list] = {}  # env_name -> environment instances, reused across batches


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


def instances(env_name: str, seed: int, count: int) -> list:
    pool = _POOL.setdefault(env_name, [])
    benchmark = ml1(env_name, seed)
    while len(pool) < count:
        pool.append(benchmark.train_classes[env_name]())
    return pool[:count]


class MetaWorldTasks:
    """K ML1 tasks x N rollouts (the `BatchedEnv` interface); `success` (K, N): succeeded at any step."""

    action_dim = 4

    def __init__(self, tasks: Sequence[RLTask], per_task: int):
        args = dict(tasks[0].env_args)
        name, seed = str(args["env_name"]), int(args["benchmark_seed"])
        benchmark = ml1(name, seed)
        self.shape = (len(tasks), per_task)
        self.envs = instances(name, seed, len(tasks) * per_task)
        sets = {0: benchmark.train_tasks, 1: benchmark.test_tasks}
        for i, env in enumerate(self.envs):
            which, index = tasks[i // per_task].params
            env.set_task(sets[int(which)][int(index)])
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
