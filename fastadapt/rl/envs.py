"""RL task distributions: a task is a small, frozen spec; environments are built from specs in batches.

A `RLTask` is what `suite.train_task(index)` returns for RL suites (the role `Episode` plays for
supervised few-shot learning): the family, the task's parameters (a goal, a direction, a target
velocity) and the task's own seed, all a pure function of (suite seed, index). Every random draw
of a rollout (action noise, environment resets) comes from generators seeded by (task seed,
phase), so a task's rollouts do not depend on which other tasks share its batch, on the global
RNGs, or on how many steps ran before: resume and sharding need no environment RNG state.

`make_env(tasks, per_task)` builds one batched environment running `per_task` rollouts of every
task at once: observations (K, N, D) for K tasks and N rollouts each.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..errors import FastAdaptError


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from a tuple of ints and strings (strings by CRC32: stable across runs and
    Python processes, unlike `hash`)."""
    words = [p if isinstance(p, int) else zlib.crc32(p.encode()) for p in parts]
    return int(np.random.SeedSequence(words).generate_state(2, np.uint32).view(np.uint64)[0] >> np.uint64(1))


@dataclass(frozen=True)
class RLTask:
    """One RL task. `params`: the task's parameters (e.g. the goal (x, y)); `seed`: the task's own
    seed; `horizon`: steps per rollout; `shots`: rollouts per adaptation step (the support set);
    `queries`: rollouts that score the adapted policy (the query set); `env_args`: the family's
    settings as sorted (key, value) pairs. `to` and `without_query_labels` return the task itself,
    so the trainer and evaluator handle RL tasks as they handle episodes."""

    family: str
    params: tuple[float, ...]
    seed: int
    horizon: int
    shots: int
    queries: int
    env_args: tuple[tuple[str, float | str], ...] = field(default=())

    def to(self, device, non_blocking: bool = False) -> RLTask:
        return self

    def without_query_labels(self) -> RLTask:
        return self

    def rollout_seed(self, phase: str) -> int:
        """The seed of one phase's rollouts ("support-0", "support-1", ..., "query")."""
        return derive_seed(self.seed, phase)


class BatchedEnv(Protocol):
    """K tasks x N rollouts stepped together. `reset(seeds)` (one seed per rollout, K x N) ->
    observations (K, N, D) float32; `step(actions (K, N, A))` -> (observations, rewards (K, N),
    terminated (K, N) bool); `close()` releases simulator resources."""

    observation_dim: int
    action_dim: int

    def reset(self, seeds: np.ndarray) -> np.ndarray: ...

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...

    def close(self) -> None: ...


class Point2DNav:
    """2D navigation of the MAML paper (Finn et al. 2017, section 5.3; rllab `PointEnvRandGoal`).

    The agent starts at the origin; its observation is its position; the action moves it by
    clip(action_scale · a, -0.1, 0.1) per axis; the reward is minus the Euclidean distance to
    the goal after the move; a rollout ends when both coordinates are within 0.01 of the goal.
    `action_scale` = 0.1 is rllab's `normalize` wrapper that the MAML code wraps the environment
    in (the policy's [-1, 1] mapped onto the action box [-0.1, 0.1], then clipped); 1.0 clips the
    raw action (pytorch-maml-rl's environment).
    """

    observation_dim = 2
    action_dim = 2
    bound = 0.1  # the action box, per axis
    tolerance = 0.01  # the goal region, per axis

    def __init__(self, goals: np.ndarray, per_task: int, action_scale: float = 0.1):
        self.goals = np.asarray(goals, dtype=np.float64).reshape(-1, 1, 2)  # (K, 1, 2)
        self.per_task, self.action_scale = per_task, float(action_scale)
        self.state = np.zeros((len(self.goals), per_task, 2))

    def reset(self, seeds: np.ndarray) -> np.ndarray:
        self.state = np.zeros((len(self.goals), self.per_task, 2))  # deterministic start: seeds unused
        return self.state.astype(np.float32)

    def step(self, actions: np.ndarray):
        move = np.clip(self.action_scale * np.asarray(actions, dtype=np.float64), -self.bound, self.bound)
        self.state = self.state + move
        offset = self.state - self.goals
        reward = -np.sqrt((offset**2).sum(-1))
        done = (np.abs(offset) < self.tolerance).all(-1)
        return self.state.astype(np.float32), reward, done

    def close(self) -> None:
        pass


def _point2d(tasks: Sequence[RLTask], per_task: int) -> Point2DNav:
    args = dict(tasks[0].env_args)
    return Point2DNav(np.array([t.params for t in tasks]), per_task, action_scale=args.get("action_scale", 0.1))


def _cheetah(tasks: Sequence[RLTask], per_task: int) -> BatchedEnv:
    from .mujoco import HalfCheetahTasks  # imports gymnasium and mujoco only when used

    return HalfCheetahTasks(tasks, per_task)


def _metaworld(tasks: Sequence[RLTask], per_task: int) -> BatchedEnv:
    from .metaworld_env import MetaWorldTasks  # imports metaworld only when used

    return MetaWorldTasks(tasks, per_task)


#: family -> builder(tasks, per_task) of a batched environment.
ENV_BUILDERS: dict[str, Callable[[Sequence[RLTask], int], BatchedEnv]] = {
    "point2d": _point2d,
    "cheetah-dir": _cheetah,
    "cheetah-vel": _cheetah,
    "ml1": _metaworld,
}


def make_env(tasks: Sequence[RLTask], per_task: int) -> BatchedEnv:
    """One batched environment for `per_task` rollouts of each task (all of one family and horizon)."""
    families = {(t.family, t.horizon, t.env_args) for t in tasks}
    if len(families) != 1:
        raise FastAdaptError(f"tasks of one batch must share family, horizon and settings; got {sorted(families)}")
    family = tasks[0].family
    if family not in ENV_BUILDERS:
        raise FastAdaptError(f"unknown RL task family {family!r}; known: {', '.join(sorted(ENV_BUILDERS))}")
    return ENV_BUILDERS[family](tasks, per_task)
