"""Seeded, batched rollouts: K tasks x N rollouts each, stepped together, recorded time-major.

`collect(tasks, act, per_task, phase)` runs `per_task` rollouts of every task for its horizon in
one batched environment (`fastadapt.rl.envs.make_env`) and returns a `Batch`. The seeds of a
phase's rollouts (action noise and environment resets) come from (task seed, phase), so the same
task and phase always give the same rollouts, alone or in any batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .envs import RLTask, derive_seed, make_env

#: act(observations (K, N, D), generators) -> actions (K, N, A): the policy, sampling with task k's generator.
Act = Callable[[torch.Tensor, Sequence[torch.Generator]], torch.Tensor]


@dataclass
class Batch:
    """Rollouts of K tasks: observations (K, T, N, D), actions (K, T, N, A), rewards (K, T, N) and
    mask (K, T, N) (1 while the rollout is alive at step t, i.e. step t's reward counts), float32;
    `success` (K, N): 1 where the rollout succeeded at any step (Meta-World), else None."""

    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    mask: torch.Tensor
    success: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
        moved = (t.to(device) for t in (self.observations, self.actions, self.rewards, self.mask))
        return Batch(*moved, None if self.success is None else self.success.to(device))

    @property
    def steps(self) -> int:
        """Environment steps taken (alive steps over all rollouts)."""
        return int(self.mask.sum().item())

    def returns(self) -> torch.Tensor:
        """Undiscounted return of each rollout: (K, N)."""
        return (self.rewards * self.mask).sum(1)


def collect(tasks: Sequence[RLTask], act: Act, per_task: int, phase: str) -> Batch:
    """`per_task` rollouts of each task (one batched environment), for the tasks' horizon.
    Rollouts stop at a terminal state (mask 0 afterwards); the loop ends early when all have."""
    env = make_env(tasks, per_task)
    try:
        seeds = [t.rollout_seed(phase) for t in tasks]
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        reset_seeds = np.array([[derive_seed(s, j) % 2**31 for j in range(per_task)] for s in seeds])
        obs = torch.from_numpy(env.reset(reset_seeds))
        k, horizon = len(tasks), tasks[0].horizon
        record_obs = torch.zeros(k, horizon, per_task, env.observation_dim)
        record_act = torch.zeros(k, horizon, per_task, env.action_dim)
        rewards, mask = torch.zeros(k, horizon, per_task), torch.zeros(k, horizon, per_task)
        alive = np.ones((k, per_task), dtype=bool)
        for t in range(horizon):
            actions = act(obs, generators)
            next_obs, reward, done = env.step(actions.numpy())
            record_obs[:, t], record_act[:, t] = obs, actions
            rewards[:, t] = torch.from_numpy(np.where(alive, reward, 0.0).astype(np.float32))
            mask[:, t] = torch.from_numpy(alive.astype(np.float32))
            alive &= ~np.asarray(done, dtype=bool)
            if not alive.any():
                break
            obs = torch.from_numpy(np.asarray(next_obs, dtype=np.float32))
        success = getattr(env, "success", None)
        success = None if success is None else torch.from_numpy(np.asarray(success, dtype=np.float32))
        return Batch(record_obs, record_act, rewards, mask, success)
    finally:
        env.close()
