"""RL task distributions as suites: the dataset contract of `base.py` for meta-reinforcement learning.

An RL suite's `train_task(index)` returns a `fastadapt.rl.RLTask` (a frozen spec: family, task
parameters, seed, horizon, support and query rollout counts), a pure function of
(config.seed, index); `fixed_set` returns a fixed, seeded list of test tasks with `save(path)`.
`train.episodes.shots` / `queries` are the rollouts per task for the inner step / the outer loss
(MAML-RL's `fast_batch_size`), `eval.episodes` the number of test tasks; `ways` is null.

`point2d-nav`: 2D navigation of the MAML paper (Finn et al. 2017, section 5.3): goals uniform in
[-0.5, 0.5]², horizon 100 (see `fastadapt.rl.envs.Point2DNav`). `cheetah-dir` / `cheetah-vel`:
the paper's HalfCheetah direction (±1, equally likely) and velocity (target U[0, 2]) tasks over
Gymnasium's HalfCheetah-v5, horizon 200 (see `fastadapt.rl.mujoco`; the `rl` extra). `ml1`:
Meta-World ML1 (`data.args.env_name`, e.g. reach-v3) with its own 50 training and 50 test tasks
(see `fastadapt.rl.metaworld_env`).
"""

from __future__ import annotations

import abc
import difflib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..errors import FastAdaptError
from ..registry import DATASETS
from ..rl.envs import RLTask, derive_seed
from ..utils import atomic_write
from .base import REGRESSION_SPLIT_OFFSETS, FixedTasks, TaskSuite


class FixedRLTasks(FixedTasks):
    """A fixed list of RL test tasks (`FixedTasks`' sequence); saved as their parameters and seeds (npz)."""

    tasks: list[RLTask]

    def save(self, path: str | Path) -> None:
        arrays = {
            "params": np.array([t.params for t in self.tasks], dtype=np.float64),
            "task_seeds": np.array([t.seed for t in self.tasks], dtype=np.uint64),
            "family": np.array(self.tasks[0].family),
            "horizon": self.tasks[0].horizon,
            "shots": self.tasks[0].shots,
            "queries": self.tasks[0].queries,
        }
        atomic_write(Path(path), lambda f: np.savez_compressed(f, seed=self.seed, **arrays))


class RLSuite(TaskSuite):
    """Base of RL suites: subclasses set `family`, `observation_dim`, `action_dim`, `Args` (with a
    `horizon`) and implement `task_params(rng, split)`; `required_modules` are checked by `check`."""

    problem = "rl"
    family: str = ""
    observation_dim: int = 0
    action_dim: int = 0
    required_modules: tuple[str, ...] = ()
    splits: tuple[str, ...] = ("train", "val", "test")
    #: splits holding a benchmark's own test tasks (what the paper is compared on), with what they
    #: are: refused for training and for selection, which would be testing on them
    test_only: ClassVar[dict[str, str]] = {}

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.observation_dim,)

    def env_args(self) -> tuple[tuple[str, float], ...]:
        """The environment settings every task of this suite carries (sorted key, value pairs)."""
        return ()

    @abc.abstractmethod
    def task_params(self, rng: np.random.Generator, split: str) -> tuple[float, ...]:
        """One task's parameters, drawn from `rng` (a pure function of the seed and index)."""

    def task(self, seed: int, index: int, split: str, shots: int, queries: int) -> RLTask:
        """Task `index` of the stream `seed`: parameters from default_rng([seed, index]), its own seed derived."""
        if index < 0:
            raise IndexError(f"task index must be non-negative, got {index}")
        return self.task_with(
            self.task_params(np.random.default_rng([seed, index]), split), seed, index, shots, queries
        )

    def task_with(self, params, seed: int, index: int, shots: int, queries: int) -> RLTask:
        """The task with these parameters at `index` of the stream `seed` (its rollout seed derived)."""
        params = tuple(float(v) for v in params)
        return RLTask(
            self.family, params, derive_seed(seed, index, "task"), self.args.horizon, shots, queries, self.env_args()
        )

    def check(self) -> None:
        missing = [m for m in self.required_modules if importlib.util.find_spec(m) is None]
        if missing:
            raise FastAdaptError(
                f"dataset {self.config.data.dataset!r} needs {', '.join(missing)}; install the RL extra: "
                f"pip install 'fastadapt[rl]'"
            )
        if self.config.train.episodes.ways is not None:
            raise FastAdaptError(f"train.episodes.ways must be null for the RL dataset {self.config.data.dataset}")
        self.require_config_splits()
        for key in ("train_split", "val_split"):
            split = getattr(self.config.data, key)
            if split in self.test_only:
                wanted = "train" if key == "train_split" else "val"
                fix = f"use {wanted}" if wanted in self.splits else "set it to null (the last iterate is tested)"
                raise FastAdaptError(
                    f"data.{key}: {split!r} is {self.test_only[split]}, for testing only (training or selecting "
                    f"on them would be testing on them); {fix}"
                )

    def train_task(self, index: int) -> RLTask:
        e = self.config.train.episodes
        return self.task(self.config.seed, index, self.config.data.train_split, e.shots, e.queries)

    def fixed_set(self, split: str, ways, shots: int, queries: int, episodes: int, seed: int) -> FixedRLTasks:
        self.require_split(split)
        stream = seed + REGRESSION_SPLIT_OFFSETS.get(split, 3_000_017)  # disjoint from training's stream
        return FixedRLTasks([self.task(stream, i, split, shots, queries) for i in range(episodes)], seed)


@DATASETS.register("point2d-nav")
class Point2DNavSuite(RLSuite):
    """2D navigation (MAML paper): a point moves towards a goal uniform in a square; reward -distance."""

    family = "point2d"
    observation_dim = 2
    action_dim = 2
    # "paper": the MAML authors' own 40 test goals (maml_rl's maml_examples/test_maml_point.py:
    # np.random.seed(1); np.random.uniform(-0.5, 0.5, size=(40, 2))), so a result can be set
    # beside the paper's on the same goals rather than on another sample of the same square
    splits = ("train", "val", "test", "paper")
    test_only = {"paper": "the MAML authors' 40 test goals"}
    PAPER_GOALS = 40

    @dataclass
    class Args:
        horizon: int = 100  # steps per rollout (MAML paper: 100)
        goal_low: float = -0.5  # goals are uniform in [goal_low, goal_high]^2
        goal_high: float = 0.5  # (MAML paper: [-0.5, 0.5]^2)
        action_scale: float = 0.1  # move = clip(action_scale * action, -0.1, 0.1); 0.1 = rllab's normalize

        def __post_init__(self):
            if self.horizon < 1:
                raise FastAdaptError(f"data.args.horizon must be >= 1, got {self.horizon}")
            if not self.goal_low < self.goal_high:
                raise FastAdaptError(
                    f"data.args.goal_low must be < goal_high, got {self.goal_low} and {self.goal_high}"
                )
            if not self.action_scale > 0:
                raise FastAdaptError(f"data.args.action_scale must be > 0, got {self.action_scale}")

    def env_args(self):
        return (("action_scale", float(self.args.action_scale)),)

    def task_params(self, rng: np.random.Generator, split: str) -> tuple[float, ...]:
        return tuple(rng.uniform(self.args.goal_low, self.args.goal_high, size=2))

    @classmethod
    def paper_goals(cls) -> np.ndarray:
        """The MAML authors' test goals, (40, 2): the legacy global generator seeded 1, as their script."""
        return np.random.RandomState(1).uniform(-0.5, 0.5, size=(cls.PAPER_GOALS, 2))

    def check(self) -> None:
        super().check()
        if self.config.data.test_split == "paper":  # the test after training: its size checked before
            self._require_paper_size(self.config.eval.episodes)

    def _require_paper_size(self, episodes: int) -> None:
        if episodes > self.PAPER_GOALS:
            raise FastAdaptError(
                f"split 'paper' holds the MAML authors' {self.PAPER_GOALS} test goals; ask for at most "
                f"{self.PAPER_GOALS} tasks (--episodes {self.PAPER_GOALS}), got {episodes} (--episodes, "
                f"or the run's eval.episodes)"
            )

    def fixed_set(self, split: str, ways, shots: int, queries: int, episodes: int, seed: int) -> FixedRLTasks:
        if split != "paper":
            return super().fixed_set(split, ways, shots, queries, episodes, seed)
        self._require_paper_size(episodes)
        stream = seed + 4_000_037  # the rollouts' seeds: apart from every other split's
        goals = self.paper_goals()[:episodes]
        return FixedRLTasks([self.task_with(goal, stream, i, shots, queries) for i, goal in enumerate(goals)], seed)


@dataclass
class CheetahArgs:
    horizon: int = 200  # steps per rollout (MAML paper: 200)
    velocity_low: float = 0.0  # cheetah-vel: target velocities are uniform in [velocity_low, velocity_high] m/s
    velocity_high: float = 2.0  # (MAML paper: [0, 2])

    def __post_init__(self):
        if self.horizon < 1:
            raise FastAdaptError(f"data.args.horizon must be >= 1, got {self.horizon}")
        if not self.velocity_low <= self.velocity_high:
            raise FastAdaptError(
                f"data.args.velocity_low must be <= velocity_high, got {self.velocity_low} and {self.velocity_high}"
            )


class _CheetahSuite(RLSuite):
    observation_dim = 17
    action_dim = 6
    required_modules = ("gymnasium", "mujoco")
    Args = CheetahArgs


@DATASETS.register("cheetah-dir")
class CheetahDirectionSuite(_CheetahSuite):
    """HalfCheetah forward / backward (MAML paper): the direction is +1 or -1 with probability 1/2."""

    family = "cheetah-dir"

    def task_params(self, rng: np.random.Generator, split: str) -> tuple[float, ...]:
        return (float(rng.choice([-1.0, 1.0])),)


@DATASETS.register("cheetah-vel")
class CheetahVelocitySuite(_CheetahSuite):
    """HalfCheetah target velocity (MAML paper): the target is uniform in [0, 2] m/s."""

    family = "cheetah-vel"

    def task_params(self, rng: np.random.Generator, split: str) -> tuple[float, ...]:
        return (float(rng.uniform(self.args.velocity_low, self.args.velocity_high)),)


@dataclass
class MetaWorldArgs:
    """The settings every Meta-World suite (ml1, ml10) takes."""

    benchmark_seed: int = 0  # seeds Meta-World's task sampler (metaworld.ML1 / ML10): fixes the task lists
    horizon: int = 500  # steps per rollout (Meta-World's max_path_length: 500)

    def __post_init__(self):
        if not 1 <= self.horizon <= 500:
            raise FastAdaptError(f"data.args.horizon must be in 1..500 (Meta-World's limit), got {self.horizon}")
        if not 0 <= self.benchmark_seed <= 2**32 - 1:  # Meta-World seeds numpy's legacy generator
            raise FastAdaptError(f"data.args.benchmark_seed must be in 0..4294967295, got {self.benchmark_seed}")


@DATASETS.register("ml1")
class ML1Suite(RLSuite):
    """Meta-World ML1: training tasks drawn from the benchmark's 50 training tasks, test tasks its 50
    test tasks in order (cycled when eval.episodes > 50). No validation split."""

    family = "ml1"
    observation_dim = 39
    action_dim = 4
    required_modules = ("metaworld",)
    splits = ("train", "test")
    test_only = {"test": "the benchmark's 50 test tasks"}

    @dataclass
    class Args(MetaWorldArgs):
        env_name: str = "reach-v3"  # the ML1 environment (reach-v3, push-v3, pick-place-v3, ...)

        def __post_init__(self):
            super().__post_init__()
            if importlib.util.find_spec("metaworld") is None:
                return  # the suite's check says how to install it
            import metaworld  # about 0.6 s, for ML1 configs only: a bad name fails before training or testing

            names = sorted(metaworld.ML1.ENV_NAMES)
            if self.env_name not in names:
                close = difflib.get_close_matches(self.env_name, names, n=1)
                raise FastAdaptError(
                    f"data.args.env_name: Meta-World has no ML1 environment {self.env_name!r}; "
                    f"{f'did you mean {close[0]}? ' if close else ''}valid: {', '.join(names)}"
                )

    def env_args(self):
        return (("benchmark_seed", int(self.args.benchmark_seed)), ("env_name", self.args.env_name))

    def task_params(self, rng: np.random.Generator, split: str) -> tuple[float, ...]:
        return (0.0, float(rng.integers(50)))  # (0: the training set, index)

    def fixed_set(self, split: str, ways, shots: int, queries: int, episodes: int, seed: int) -> FixedRLTasks:
        if split != "test":
            return super().fixed_set(split, ways, shots, queries, episodes, seed)
        return FixedRLTasks([self.task_with((1.0, i % 50), seed, i, shots, queries) for i in range(episodes)], seed)
