"""HalfCheetah task families of the MAML paper (Finn et al. 2017, section 5.3) over Gymnasium's
HalfCheetah-v5 (MuJoCo), batched with a Gymnasium synchronous vector environment.

Rewards, as in the authors' code (cbfinn/maml_rl, rllab `half_cheetah_env_rand{,_direc}.py`),
with v the forward velocity and a the action clipped to the action box [-1, 1]⁶:
- direction (`cheetah-dir`, d = ±1): d·v - 0.05·|a|²;
- velocity (`cheetah-vel`, target u ~ U[0, 2]): -|v - u| - 0.05·|a|².
v is Gymnasium's `x_velocity` (the root's x displacement over dt = 0.05 s); rllab read the
torso's centre-of-mass velocity, the same body's. Observations are Gymnasium's 17 numbers
(rllab's had 20: it added the torso's centre of mass). Horizon 200 (the paper's).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import FastAdaptError
from .envs import RLTask

CTRL_WEIGHT = 0.05  # rllab: 0.5 * 1e-1 * sum(a²)
_CACHE: dict[int, object] = {}  # one vector environment per size, reused: reset(seed) restores every state


def cheetah_reward(family: str, param: np.ndarray, x_velocity: np.ndarray, action: np.ndarray) -> np.ndarray:
    """The MAML paper's reward of a HalfCheetah task: param (...,), x_velocity (...,) in m/s,
    action (..., 6) (already clipped) -> reward (...,)."""
    ctrl = CTRL_WEIGHT * np.square(action).sum(-1)
    if family == "cheetah-dir":
        return param * x_velocity - ctrl
    if family == "cheetah-vel":
        return -np.abs(x_velocity - param) - ctrl
    raise FastAdaptError(f"unknown HalfCheetah task family {family!r}; choose cheetah-dir or cheetah-vel")


def vector_env(num_envs: int):
    """A synchronous vector of `num_envs` HalfCheetah-v5 environments (cached per size)."""
    try:
        import gymnasium as gym
    except ImportError:
        raise FastAdaptError("HalfCheetah tasks need gymnasium and mujoco: pip install 'fastadapt[rl]'") from None
    if num_envs not in _CACHE:
        if len(_CACHE) >= 2:  # bound the memory: training and test batches have two sizes
            _CACHE.pop(next(iter(_CACHE))).close()
        _CACHE[num_envs] = gym.make_vec("HalfCheetah-v5", num_envs=num_envs, vectorization_mode="sync")
    return _CACHE[num_envs]


class HalfCheetahTasks:
    """K HalfCheetah tasks x N rollouts in one vector environment (the `BatchedEnv` interface)."""

    observation_dim = 17
    action_dim = 6

    def __init__(self, tasks: Sequence[RLTask], per_task: int):
        self.family = tasks[0].family
        self.shape = (len(tasks), per_task)
        self.params = np.array([t.params[0] for t in tasks], dtype=np.float64).reshape(-1, 1)  # (K, 1)
        self.env = vector_env(len(tasks) * per_task)

    def reset(self, seeds: np.ndarray) -> np.ndarray:
        obs, _ = self.env.reset(seed=[int(s) for s in np.asarray(seeds).reshape(-1)])
        return obs.reshape(*self.shape, -1).astype(np.float32)

    def step(self, actions: np.ndarray):
        a = np.clip(np.asarray(actions, dtype=np.float64), -1.0, 1.0).reshape(-1, self.action_dim)
        obs, _, terminated, _, info = self.env.step(a)
        velocity = np.asarray(info["x_velocity"]).reshape(self.shape)
        reward = cheetah_reward(self.family, self.params, velocity, a.reshape(*self.shape, -1))
        # HalfCheetah never terminates; the horizon (200) is far below Gymnasium's 1000-step limit.
        return obs.reshape(*self.shape, -1).astype(np.float32), reward, np.asarray(terminated).reshape(self.shape)

    def close(self) -> None:
        """The vector environment is cached for the next batch of this size."""
