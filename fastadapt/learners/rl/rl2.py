"""RL² (Duan et al. 2016, "RL²: Fast reinforcement learning via slow reinforcement learning"),
trained with PPO (Schulman et al. 2017), as Meta-World's RL² baseline is.

The policy is a GRU whose input at step t is [s_t, a_{t-1}, r_{t-1}, d_{t-1}] (d: the previous
step ended an episode); its hidden state is the learning algorithm's memory, so it is reset only
at task boundaries: a *trial* is `episodes_per_trial` episodes of one task, and the hidden state
runs through the environment resets between them. Steps after an episode's end (padding) leave
the hidden state unchanged. The action is Gaussian: mean from a linear head on the hidden state,
a state-independent log std. Training: each task of the meta-batch runs `queries` trials;
advantages by GAE against the linear feature baseline over the whole trial; then `ppo_epochs`
clipped-surrogate updates with the trainer's optimiser (its state is checkpointed). Test time:
one trial per query rollout, no gradient step: `return_after_<k>` is the return of episode k
(after k episodes of experience in the task), `return` the last episode's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ...errors import FastAdaptError
from ...registry import LEARNERS
from ...rl.envs import RLTask, derive_seed, make_env
from ...rl.objectives import masked_task_mean
from ...rl.returns import advantages
from ..base import Learner, parse_args, require
from .maml_rl import require_single_process


@dataclass
class Trials:
    """K tasks x N trials of L = episodes x horizon steps: inputs (K, L, N, D + A + 2), actions
    (K, L, N, A), rewards / mask (K, L, N), observations (K, L, N, D), hidden (K, L, N, H): the
    state each step's action was drawn from; episode_returns (K, E, N); episode_success (K, E, N):
    1 where the episode succeeded at any step (Meta-World's protocol), NaN without a signal."""

    inputs: torch.Tensor
    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    mask: torch.Tensor
    hidden: torch.Tensor
    episode_returns: torch.Tensor
    episode_success: torch.Tensor


@LEARNERS.register("rl2")
class RL2(Learner):
    """RL² (see the module docstring): a GRU Gaussian policy over observation_dim + action_dim + 2
    inputs; `outer_step` is the PPO update, `predict(task)` the return of each episode of a trial."""

    problem = "rl"
    needs_head = True  # the backbone's input and output widths give the observation and action sizes
    no_support = True  # it adapts within its trials (`queries` of them): shots are unused

    @dataclass
    class Args:
        hidden: int = 64  # GRU hidden units (the policy's memory)
        episodes_per_trial: int = 2  # episodes of one task the hidden state runs through
        gamma: float = 0.99  # discount over the whole trial (later episodes' rewards reach earlier actions)
        gae_lambda: float = 0.95  # GAE λ
        clip: float = 0.2  # PPO's ratio clip ε
        ppo_epochs: int = 5  # optimiser steps on each batch of trials
        init_std: float = 1.0  # initial standard deviation of the Gaussian policy

        def __post_init__(self):
            require(self.hidden >= 1, "hidden", self.hidden, ">= 1")
            require(self.episodes_per_trial >= 1, "episodes_per_trial", self.episodes_per_trial, ">= 1")
            require(0 < self.gamma <= 1, "gamma", self.gamma, "in (0, 1]")
            require(0 <= self.gae_lambda <= 1, "gae_lambda", self.gae_lambda, "in [0, 1]")
            require(0 < self.clip < 1, "clip", self.clip, "in (0, 1)")
            require(self.ppo_epochs >= 1, "ppo_epochs", self.ppo_epochs, ">= 1")
            require(self.init_std > 0, "init_std", self.init_std, "> 0")

    def __init__(self, observation_dim: int, action_dim: int, **kwargs):
        super().__init__()
        self.args = args = parse_args(self.Args, kwargs)
        self.cell = nn.GRUCell(observation_dim + action_dim + 2, args.hidden)
        self.head = nn.Linear(args.hidden, action_dim)
        self.log_std = nn.Parameter(torch.full((action_dim,), math.log(args.init_std)))

    @classmethod
    def unused_settings(cls, args) -> dict[str, str]:
        """Settings RL² never reads (see fastadapt.config_checks.unused_settings)."""
        return {"model.backbone_args.hidden": "the policy is the GRU, learner.args.hidden; the mlp gives only sizes"}

    @classmethod
    def build(cls, backbone: nn.Module, ways: int | None, **kwargs) -> RL2:
        """The GRU policy's sizes from the backbone's input and output widths (its layers are not used)."""
        first = next((m for m in backbone.modules() if isinstance(m, nn.Linear)), None)
        if first is None:
            raise FastAdaptError(
                f"rl2 reads its observation and action sizes from an mlp backbone; {type(backbone).__name__} has "
                f"no linear layer: set model.backbone=mlp"
            )
        return cls(first.in_features, int(backbone.embedding_dim), **kwargs)

    @property
    def primary_metric(self) -> str:
        return "return"

    @classmethod
    def selectable_metrics(cls, args) -> tuple[str, ...]:
        return ("return",) + tuple(f"return_after_{k}" for k in range(args.episodes_per_trial))

    @classmethod
    def single_process_reason(cls, args) -> str | None:
        return "RL2 trains with PPO on the whole meta-batch in one process; run it without torchrun / --nproc"

    def step(self, x: torch.Tensor, h: torch.Tensor, alive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One GRU step on (B, D_in) inputs; rows that are not alive keep their hidden state.
        Returns (new hidden (B, H), action mean (B, A))."""
        h = torch.where(alive.unsqueeze(-1), self.cell(x, h), h)
        return h, self.head(h)

    def run_trials(self, tasks: Sequence[RLTask], n: int, phase: str) -> Trials:
        """`n` trials of each task; the hidden state starts at zero (a task boundary) and runs
        through the episode resets. Seeded by (task seed, phase) like every rollout."""
        k, horizon, episodes = len(tasks), tasks[0].horizon, self.args.episodes_per_trial
        env = make_env(tasks, n)
        a_dim = self.head.out_features
        generators = [torch.Generator().manual_seed(t.rollout_seed(phase)) for t in tasks]
        h = torch.zeros(k * n, self.args.hidden)
        prev_a, prev_r, ended = torch.zeros(k * n, a_dim), torch.zeros(k * n), torch.zeros(k * n)
        record = {name: [] for name in ("inputs", "observations", "actions", "rewards", "mask", "hidden")}
        episode_returns, episode_success = torch.zeros(k, episodes, n), torch.full((k, episodes, n), float("nan"))
        try:
            with torch.no_grad():
                for e in range(episodes):
                    seeds = np.array(
                        [[derive_seed(t.rollout_seed(phase), e, j) % 2**31 for j in range(n)] for t in tasks]
                    )
                    obs = torch.from_numpy(env.reset(seeds)).reshape(k * n, -1)
                    alive = np.ones(k * n, dtype=bool)
                    for _ in range(horizon):
                        x = torch.cat([obs, prev_a, prev_r.unsqueeze(-1), ended.unsqueeze(-1)], -1)
                        live = torch.from_numpy(alive.copy())
                        record["hidden"].append(h)
                        h, mu = self.step(x, h, live)
                        noise = torch.cat([torch.randn(n, a_dim, generator=g) for g in generators])
                        action = mu + self.log_std.exp() * noise
                        next_obs, reward, done = env.step(action.reshape(k, n, -1).numpy())
                        reward = torch.from_numpy(np.where(alive, np.asarray(reward).reshape(-1), 0.0)).float()
                        for name, value in (("inputs", x), ("observations", obs), ("actions", action)):
                            record[name].append(value)
                        record["rewards"].append(reward), record["mask"].append(live.float())
                        episode_returns[:, e] += reward.view(k, n)
                        prev_a = torch.where(live.unsqueeze(-1), action, prev_a)
                        prev_r, ended = torch.where(live, reward, prev_r), torch.zeros(k * n)
                        alive &= ~np.asarray(done, dtype=bool).reshape(-1)
                        obs = torch.from_numpy(np.asarray(next_obs, dtype=np.float32)).reshape(k * n, -1)
                    ended = torch.ones(k * n)  # the next step starts a new episode of the same task
                    if getattr(env, "success", None) is not None:  # reset with the episode: this one's
                        episode_success[:, e] = torch.from_numpy(np.asarray(env.success, dtype=np.float32))
        finally:
            env.close()

        def stack(values):  # L x (K*N, ...) -> (K, L, N, ...)
            out = torch.stack(values)
            return out.reshape(out.shape[0], k, n, *out.shape[2:]).transpose(0, 1)

        stacked = {name: stack(v) for name, v in record.items()}
        return Trials(**stacked, episode_returns=episode_returns, episode_success=episode_success)

    def log_prob(self, trials: Trials) -> torch.Tensor:
        """log π(a_t | history) of recorded trials, recomputing the hidden states from zero with
        the current weights (the same masked steps as the collection): (K, L, N)."""
        k, length, n = trials.mask.shape
        x, alive = (
            trials.inputs.transpose(0, 1).reshape(length, k * n, -1),
            trials.mask.transpose(0, 1).reshape(length, -1),
        )
        h, means = torch.zeros(k * n, self.args.hidden), []
        for t in range(length):
            h, mu = self.step(x[t], h, alive[t].bool())
            means.append(mu)
        mu = torch.stack(means).reshape(length, k, n, -1).transpose(0, 1)
        z = (trials.actions - mu) * torch.exp(-self.log_std)
        return -0.5 * (z * z).sum(-1) - self.log_std.sum() - 0.5 * mu.shape[-1] * math.log(2 * math.pi)

    def _advantages(self, trials: Trials) -> torch.Tensor:
        obs = trials.observations
        return advantages(obs, trials.rewards, trials.mask, self.args.gamma, self.args.gae_lambda)

    def task_loss(self, task: RLTask):
        """The policy-gradient loss of one task's trials (for `fastadapt` engines; training uses PPO)."""
        trials = self.run_trials([task], task.queries, "trial")
        loss = -masked_task_mean(self.log_prob(trials) * self._advantages(trials), trials.mask).mean()
        return loss, {"loss": loss.item(), "return": trials.episode_returns[:, -1].mean().item()}

    def outer_step(
        self, tasks: Sequence[RLTask], progress: tuple[int, int], optimizer: torch.optim.Optimizer | None = None
    ) -> list[dict[str, float]] | None:
        """PPO on `queries` trials of each task: `ppo_epochs` clipped-surrogate steps of `optimizer`."""
        require_single_process("ppo")
        trials = self.run_trials(tasks, tasks[0].queries, "trial")
        adv = self._advantages(trials)
        with torch.no_grad():
            old = self.log_prob(trials)
        eps = self.args.clip
        for _ in range(self.args.ppo_epochs):
            ratio = torch.exp(self.log_prob(trials) - old)
            surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv)
            loss = -masked_task_mean(surrogate, trials.mask).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        last = trials.episode_returns[:, -1].mean(-1)
        return [{"loss": loss.item(), "return": float(r)} for r in last]

    def predict(self, task: RLTask) -> torch.Tensor:
        """Mean return of each episode of `queries` trials (no gradient step: the GRU adapts):
        row 0, returns (episodes_per_trial,); row 1, the success rate of each episode (NaN for
        tasks without a success signal): (2, episodes_per_trial)."""
        trials = self.run_trials([task], task.queries, "query-trial")
        return torch.stack([trials.episode_returns[0].mean(-1), trials.episode_success[0].mean(-1)])

    def query_metrics(self, prediction: torch.Tensor, task: RLTask) -> dict[str, float]:
        metrics = {"return": float(prediction[0, -1])}
        metrics.update({f"return_after_{k}": float(v) for k, v in enumerate(prediction[0])})
        if not torch.isnan(prediction[1]).any():
            metrics.update({f"success_rate_after_{k}": float(v) for k, v in enumerate(prediction[1])})
        return metrics

    def describe(self) -> dict:
        a = self.args
        return {
            "hidden": a.hidden,
            "episodes_per_trial": a.episodes_per_trial,
            "test_time": "GRU memory, no gradient step",
        }
