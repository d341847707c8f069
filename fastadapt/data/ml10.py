"""Meta-World ML10 (Yu et al. 2019, section 4.3; the `metaworld` 3.x package, v3 environments) as an
RL suite: meta-train on 10 manipulation environments, meta-test on 5 held-out ones, each with
its own 50 tasks (object and goal positions).

Task `index` of the training stream is a pure function of (config.seed, index): the environment
uniform over the 10 training environments, then one of its 50 tasks (so every one of the 500
training tasks is equally likely). Test tasks are the test environments' tasks in a fixed,
interleaved order, task i = environment i mod 5, its task (i div 5) mod 50, so any
`eval.episodes` that is a multiple of 5 weighs the 5 environments equally (250 covers them all).
The task lists come from `metaworld.ML10(seed=data.args.benchmark_seed)`, seeded explicitly
because Meta-World ignores `reset(seed=...)`; score: Meta-World's protocol, a rollout succeeds if
`info["success"]` is 1 at any step (`success_rate_after_<k>`), horizon 500. Environments are
built and pooled by `fastadapt.rl.metaworld_env`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..registry import DATASETS
from ..rl.envs import ENV_BUILDERS, BatchedEnv, RLTask, derive_seed
from .rl_tasks import FixedRLTasks, MetaWorldArgs, RLSuite

TRAIN_ENVIRONMENTS = 10  # reach, push, pick-place, door-open, drawer-close, button-press-topdown, ...
TEST_ENVIRONMENTS = 5  # drawer-open, door-close, shelf-place, sweep-into, lever-pull
TASKS_PER_ENVIRONMENT = 50  # Meta-World's goals per environment


def _metaworld(tasks: Sequence[RLTask], per_task: int) -> BatchedEnv:
    from ..rl.metaworld_env import MetaWorldTasks  # imports metaworld only when used

    return MetaWorldTasks(tasks, per_task)


ENV_BUILDERS.setdefault("ml10", _metaworld)  # the family registers its batched environment


@DATASETS.register("ml10")
class ML10Suite(RLSuite):
    """Meta-World ML10: training tasks from the 10 training environments' 500 tasks, test tasks from
    the 5 test environments' 250 (cycled when eval.episodes > 250). No validation split."""

    family = "ml10"
    observation_dim = 39
    action_dim = 4
    required_modules = ("metaworld",)
    splits = ("train", "test")
    test_only = {"test": "the benchmark's 5 held-out environments"}

    Args = MetaWorldArgs  # benchmark_seed fixes the 500 + 250 tasks; horizon

    def env_args(self):
        return (("benchmark_seed", int(self.args.benchmark_seed)),)

    def task_params(self, rng: np.random.Generator, split: str) -> tuple[float, ...]:
        """(0: the training set, environment position, task index within that environment)."""
        return (0.0, float(rng.integers(TRAIN_ENVIRONMENTS)), float(rng.integers(TASKS_PER_ENVIRONMENT)))

    def fixed_set(self, split: str, ways, shots: int, queries: int, episodes: int, seed: int) -> FixedRLTasks:
        if split != "test":
            return super().fixed_set(split, ways, shots, queries, episodes, seed)
        tasks = [
            RLTask(
                self.family,
                (1.0, float(i % TEST_ENVIRONMENTS), float((i // TEST_ENVIRONMENTS) % TASKS_PER_ENVIRONMENT)),
                derive_seed(seed, i, "task"),
                self.args.horizon,
                shots,
                queries,
                self.env_args(),
            )
            for i in range(episodes)
        ]
        return FixedRLTasks(tasks, seed)
