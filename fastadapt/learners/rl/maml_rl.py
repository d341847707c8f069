"""MAML for reinforcement learning (Finn et al. 2017, section 5.3; the authors' code cbfinn/maml_rl).

Inner loop: one (or more) vanilla policy-gradient steps θ' = θ - α ∇_θ L(θ), with
L(θ) = -mean_t log π_θ(a_t|s_t) Â_t on `shots` fresh rollouts of the task per step, Â from GAE
against a linear feature baseline fitted to those rollouts (Duan et al. 2016), normalised.
Outer loop: TRPO (the paper's) on the post-adaptation surrogate -mean_t π_θ'(a|s)/π_θ'_old(a|s) Â
over `queries` rollouts of the adapted policy, with the KL trust region on the adapted policy;
gradients and Fisher-vector products are taken through the inner step (second order), or with
the inner gradient held constant (`first_order: true`). `outer: adam` instead hands the
surrogate's meta-gradient to the trainer's optimiser (a vanilla policy-gradient outer loop);
`outer: ppo` takes `ppo_epochs` steps of the trainer's optimiser on PPO's clipped surrogate
(Schulman et al. 2017) of the adapted policy, each through the inner step, the ratio against the
adapted policy that collected the query rollouts (as MAML-PPO in garage and ProMP's outer loop);
`outer: none` trains nothing: the random initial policy, adapted at test time (the paper's
"random" baseline).

ProMP (Rothfuss et al. 2019, "ProMP: Proximal Meta-Policy Search") is `outer: ppo` with two
options: `inner_estimator: lvc`, its low-variance curvature estimator, the inner loss
-mean_t π_θ(a|s)/π_b(a|s) Â with π_b the policy that collected the rollouts (a constant), whose
gradient at θ = b is the vanilla one but whose Hessian keeps the +∇log π ∇log πᵀ Â term the
vanilla surrogate drops; and `inner_kl_penalty` η, the outer loss's η Σ_i KL(π_b_i ‖ π_θ_i) on
each inner step's rollouts, which keeps the pre-update policies near the ones that collected
them over the `ppo_epochs` steps. The `promp-point2d` preset has the authors' settings.

Adaptation is a pure function of (parameters, rollouts): the policy is a dict of tensors applied
with `torch.func.functional_call`, one adapted copy per task stacked on a leading axis and run
under `torch.func.vmap`; nothing is cloned and the module is never modified by adaptation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ...errors import FastAdaptError
from ...registry import LEARNERS
from ...rl import policy as pi
from ...rl.envs import RLTask
from ...rl.objectives import Params, adapt_step, clipped_surrogate, expand, inner_loss, masked_task_mean
from ...rl.returns import advantages
from ...rl.rollouts import Batch, collect
from ...rl.trpo import TRPOSettings, trpo_step
from ..base import Learner, parse_args, require

# (rollouts, advantages, the stacked detached params of the policy that collected them) per inner step
Data = list[tuple[Batch, torch.Tensor, Params]]


def single_process_message(outer: str) -> str:
    """A TRPO (or PPO) step needs the whole meta-batch's data in one process; under torchrun each
    rank would only see its shard (and the ranks' weights would drift apart)."""
    return f"learner.args.outer = {outer!r} runs in one process; with --nproc or torchrun use learner.args.outer=adam"


def require_single_process(outer: str) -> None:
    """The same check at the update itself, for code that calls `outer_step` outside the trainer
    (the trainer refuses such a run before training, through `single_process_reason`)."""
    if (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    ):
        raise FastAdaptError(single_process_message(outer))


@LEARNERS.register("maml-rl")
class MAMLRL(Learner):
    """MAML-RL (see the module docstring): `mean_net` maps observations (..., D) to action means
    (..., A); `outer_step` is the trainer's hook for the TRPO / PPO update; `predict(task)` gives the
    returns after 0..eval_inner_steps adaptation steps."""

    problem = "rl"
    needs_head = True  # the mean network's last layer has one unit per action dimension
    # The test-time steps' sizes: chosen per run on training tasks (`eval --split train`), e.g.
    # when the trained policy's std has shrunk and the paper's halving overshoots at later steps.
    test_time_args = ("inner_lr", "eval_later_lr_factor")

    @dataclass
    class Args:
        inner_lr: float = 0.1  # α of the policy-gradient inner step (MAML paper, 2D navigation: 0.1)
        inner_steps: int = 1  # inner steps in meta-training, each on fresh rollouts (paper: 1)
        eval_inner_steps: int = 3  # test-time steps; the returns after 0..this many are all reported
        eval_later_lr_factor: float = 0.5  # later test-time steps: inner_lr x this (paper A.2: 0.1, then 0.05)
        first_order: bool = False  # hold the inner gradient constant (no second-order terms)
        # none: no meta-training, the random initial policy adapted at test time (a baseline)
        outer: Literal["trpo", "adam", "ppo", "none"] = "trpo"  # trpo (the paper's), adam / ppo (trainer's optimiser)
        gamma: float = 0.99  # discount of the returns the baseline and advantages use
        gae_lambda: float = 1.0  # GAE λ (1: Monte-Carlo returns minus the baseline, as the paper)
        normalize_advantages: bool = True  # zero mean, unit std per task batch (rllab's center_adv)
        max_kl: float = 0.01  # TRPO trust region: mean KL of the adapted policy per step
        cg_iters: int = 10  # conjugate-gradient iterations for the natural-gradient direction
        cg_damping: float = 1e-5  # added to the Fisher-vector products (rllab's reg_coeff)
        backtrack_ratio: float = 0.8  # line-search shrink factor
        max_backtracks: int = 15  # line-search tries before the step is rejected
        init_std: float = 1.0  # initial standard deviation of the Gaussian policy
        ppo_epochs: int = 5  # outer: ppo: optimiser steps on each meta-batch's query rollouts
        clip: float = 0.2  # outer: ppo: the ratio clip ε (Schulman et al. 2017: 0.2; ProMP: 0.3)
        inner_estimator: Literal["vpg", "lvc"] = "vpg"  # vpg: vanilla inner loss; lvc: ProMP's low-variance one
        inner_kl_penalty: float = 0.0  # outer: ppo: η of ProMP's inner-step KL penalty (ProMP: 5e-4)

        def __post_init__(self):
            require(self.inner_lr > 0, "inner_lr", self.inner_lr, "> 0")
            require(self.inner_steps >= 1, "inner_steps", self.inner_steps, ">= 1")
            require(self.eval_inner_steps >= 0, "eval_inner_steps", self.eval_inner_steps, ">= 0")
            require(self.eval_later_lr_factor > 0, "eval_later_lr_factor", self.eval_later_lr_factor, "> 0")
            require(0 < self.gamma <= 1, "gamma", self.gamma, "in (0, 1]")
            require(0 <= self.gae_lambda <= 1, "gae_lambda", self.gae_lambda, "in [0, 1]")
            require(self.max_kl > 0, "max_kl", self.max_kl, "> 0")
            require(self.cg_iters >= 1, "cg_iters", self.cg_iters, ">= 1")
            require(self.cg_damping >= 0, "cg_damping", self.cg_damping, ">= 0")
            require(0 < self.backtrack_ratio < 1, "backtrack_ratio", self.backtrack_ratio, "in (0, 1)")
            require(self.max_backtracks >= 1, "max_backtracks", self.max_backtracks, ">= 1")
            require(self.init_std > 0, "init_std", self.init_std, "> 0")
            require(self.ppo_epochs >= 1, "ppo_epochs", self.ppo_epochs, ">= 1")
            require(0 < self.clip < 1, "clip", self.clip, "in (0, 1)")
            require(self.inner_kl_penalty >= 0, "inner_kl_penalty", self.inner_kl_penalty, ">= 0")
            require(
                self.inner_kl_penalty == 0 or self.outer == "ppo",
                "inner_kl_penalty",
                self.inner_kl_penalty,
                "0 unless outer is ppo (it is a term of ProMP's PPO loss)",
            )

    def __init__(self, mean_net: nn.Module, action_dim: int, **kwargs):
        super().__init__()
        args = parse_args(self.Args, kwargs)
        self.args = args
        self.mean_net = mean_net
        self.log_std = nn.Parameter(torch.full((action_dim,), math.log(args.init_std)))
        self.eval_inner_steps = args.eval_inner_steps
        self.trpo = TRPOSettings(args.max_kl, args.cg_iters, args.cg_damping, args.backtrack_ratio, args.max_backtracks)
        if args.outer == "ppo" and type(self).outer_step is not MAMLRL.outer_step:  # e.g. pretrained-rl
            raise FastAdaptError(
                f"learner.args.outer: 'ppo' is MAML-RL's; {type(self).__name__} takes trpo, adam or none"
            )

    @classmethod
    def build(cls, backbone: nn.Module, ways: int | None, **kwargs) -> MAMLRL:
        return cls(backbone, int(backbone.embedding_dim), **kwargs)

    @property
    def primary_metric(self) -> str:
        return "return"

    @classmethod
    def single_process_reason(cls, args) -> str | None:
        if args.outer == "adam":
            return None
        penalty = " and learner.args.inner_kl_penalty=0" if args.inner_kl_penalty else ""  # ProMP's is PPO's
        return single_process_message(args.outer) + penalty

    @classmethod
    def unused_settings(cls, args) -> dict[str, str]:
        """Settings this outer loop never reads, each with why (check_config warns when one is set;
        `fastadapt tune` refuses to search one: its trials would all be the same run)."""
        optimiser = ("optimizer", "lr", "momentum", "lr_schedule", "lr_min", "lr_step", "lr_gamma")
        trpo = ("max_kl", "cg_iters", "cg_damping", "backtrack_ratio", "max_backtracks")
        unused: dict[str, str] = {}
        if args.outer in ("trpo", "none"):  # no step of the trainer's optimiser
            why = "outer: trpo steps by learner.args.max_kl" if args.outer == "trpo" else "outer: none takes no step"
            unused.update({f"train.{key}": why for key in optimiser})
        if args.outer != "trpo":
            unused.update({f"learner.args.{key}": f"TRPO's, and outer is {args.outer}" for key in trpo})
        if args.outer != "ppo":
            unused.update(
                {f"learner.args.{key}": f"PPO's, and outer is {args.outer}" for key in ("ppo_epochs", "clip")}
            )
        return unused

    def divergence_fix(self, lr: float) -> str:
        """What a divergence message says to change (TRPO's step is set by max_kl, not an lr)."""
        a = self.args
        outer = f"learner.args.max_kl (now {a.max_kl:g})" if a.outer == "trpo" else f"train.lr (now {lr:g})"
        return (
            f"lower {outer} or learner.args.inner_lr (now {a.inner_lr:g}), and check that data.args keep the "
            f"rewards at a sane scale"
        )

    @classmethod
    def selectable_metrics(cls, args) -> tuple[str, ...]:
        # e.g. return_after_1: the paper's "best average return during training" is after one step
        return ("return",) + tuple(f"return_after_{k}" for k in range(args.eval_inner_steps + 1))

    # -- pieces --------------------------------------------------------------------------------
    def params(self) -> Params:
        """The policy's live parameters as the dict the pure functions of `fastadapt.rl.policy` take."""
        out = {f"mean.{k}": v for k, v in self.mean_net.named_parameters()}
        out["log_std"] = self.log_std
        return out

    def _collect(self, tasks: Sequence[RLTask], params: Params, stacked: bool, n: int, phase: str) -> Batch:
        params = {k: v.detach() for k, v in params.items()}
        device = params["log_std"].device

        def act(obs: torch.Tensor, generators) -> torch.Tensor:
            return pi.sample(self.mean_net, params, obs.to(device), generators, stacked).cpu()

        return collect(tasks, act, n, phase).to(device)

    def _advantages(self, batch: Batch) -> torch.Tensor:
        a = self.args
        return advantages(batch.observations, batch.rewards, batch.mask, a.gamma, a.gae_lambda, a.normalize_advantages)

    def adapt_online(
        self,
        tasks: Sequence[RLTask],
        params: Params,
        steps: int,
        graph: bool,
        phase: str = "support",
        stacked: bool = False,
        lr: float | None = None,
    ) -> tuple[Params, Data]:
        """`steps` inner steps, each on `shots` fresh rollouts of the current adapted policy.
        `graph`: differentiable w.r.t. `params` (second order unless `first_order`); otherwise
        values only. `stacked`: `params` already hold one copy per task; `lr`: the step size
        (default inner_lr). Returns the adapted (stacked) params and the data of each step."""
        current, data = params, []
        for s in range(steps):
            batch = self._collect(tasks, current, stacked, tasks[0].shots, f"{phase}-{s}")
            adv = self._advantages(batch)
            # a copy: the live parameters change in place under the optimiser, the collector did not
            behaviour = expand({k: v.detach().clone() for k, v in current.items()}, len(tasks), stacked)
            data.append((batch, adv, behaviour))
            if not graph:
                current = {k: v.detach().requires_grad_(True) for k, v in current.items()}
            with torch.enable_grad():
                current = adapt_step(
                    self.mean_net,
                    current,
                    batch,
                    adv,
                    self.args.inner_lr if lr is None else lr,
                    stacked,
                    graph and not self.args.first_order,
                    behaviour if self.args.inner_estimator == "lvc" else None,
                )
            stacked = True
        return current, data

    def replay(self, params: Params, data: Data) -> Params:
        """The inner steps again on stored rollouts: the adapted params as a function of `params`."""
        return self.replay_steps(params, data)[-1]

    def replay_steps(self, params: Params, data: Data) -> list[Params]:
        """`replay`, keeping the params before each inner step too: len(data) + 1 entries."""
        steps, stacked = [params], False
        lvc = self.args.inner_estimator == "lvc"
        for batch, adv, behaviour in data:
            steps.append(
                adapt_step(
                    self.mean_net,
                    steps[-1],
                    batch,
                    adv,
                    self.args.inner_lr,
                    stacked,
                    not self.args.first_order,
                    behaviour if lvc else None,
                )
            )
            stacked = True
        return steps

    def inner_kl(self, steps: list[Params], data: Data) -> torch.Tensor:
        """ProMP's penalty term: Σ_i mean KL(π_b_i ‖ π_θ_i) over inner step i's rollouts (alive steps,
        then tasks), π_b_i the policy that collected them and π_θ_i its replay from the live params."""
        terms = []
        for i, (current, (batch, _, behaviour)) in enumerate(zip(steps, data)):
            current = expand(current, batch.observations.shape[0], stacked=i > 0)
            kl = pi.per_task(pi.kl, self.mean_net, behaviour, current, batch.observations, stacked=True)
            terms.append(masked_task_mean(kl, batch.mask).mean())
        return torch.stack(terms).sum()

    def _surrogate(self, adapted: Params, query: Batch, adv: torch.Tensor, old_logp: torch.Tensor) -> torch.Tensor:
        logp = pi.per_task(pi.log_prob, self.mean_net, adapted, query.observations, query.actions, stacked=True)
        return -masked_task_mean(torch.exp(logp - old_logp) * adv, query.mask)

    # -- training --------------------------------------------------------------------------------
    def task_loss(self, task: RLTask):
        """The meta-objective of one task for the trainer's optimiser (`outer: adam`): the
        post-adaptation policy-gradient surrogate, differentiable through the inner step(s)."""
        adapted, _ = self.adapt_online([task], self.params(), self.args.inner_steps, graph=True)
        query = self._collect([task], adapted, True, task.queries, "query")
        adv = self._advantages(query)
        loss = inner_loss(self.mean_net, adapted, query, adv, stacked=True).mean()
        return loss, {"loss": loss.item(), "return": query.returns().mean().item()}

    def outer_step(
        self, tasks: Sequence[RLTask], progress: tuple[int, int], optimizer: torch.optim.Optimizer | None = None
    ) -> list[dict[str, float]] | None:
        """The trainer's hook for a custom outer update: one MAML-TRPO step (or `ppo_epochs` MAML-PPO
        steps of `optimizer`) on the meta-batch (None with `outer: adam`, which uses the trainer's
        backward + optimiser step instead)."""
        if self.args.outer == "adam":
            return None
        require_single_process(self.args.outer)
        if self.args.outer == "none":  # the random-initialisation baseline: report returns, change nothing
            returns = self._collect(tasks, self.params(), False, tasks[0].queries, "query").returns().mean(1)
            return [{"loss": 0.0, "return": float(r)} for r in returns]
        params = self.params()
        adapted, data = self.adapt_online(tasks, params, self.args.inner_steps, graph=False)
        old = {k: v.detach() for k, v in adapted.items()}
        query = self._collect(tasks, old, True, tasks[0].queries, "query")
        adv = self._advantages(query)
        with torch.no_grad():
            old_logp = pi.per_task(pi.log_prob, self.mean_net, old, query.observations, query.actions, stacked=True)

        if self.args.outer == "ppo":
            info = self._ppo(data, query, adv, old_logp, optimizer)
        else:
            info = self._trpo(params, data, old, query, adv, old_logp)
        before, after = data[0][0].returns().mean(1), query.returns().mean(1)
        return [
            {"loss": info["surrogate_before"], "return": float(after[k]), "return_before": float(before[k]), **info}
            for k in range(len(tasks))
        ]

    def _trpo(
        self, params: Params, data: Data, old: Params, query: Batch, adv: torch.Tensor, old_logp: torch.Tensor
    ) -> dict:
        """One TRPO step of `params` in place on the post-adaptation surrogate, through the inner step."""
        names = list(params)

        def adapt(values: list[torch.Tensor]) -> list[torch.Tensor]:
            return list(self.replay(dict(zip(names, values)), data).values())

        def loss_and_kl(values: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            new = dict(zip(names, values))
            kl = pi.per_task(pi.kl, self.mean_net, old, new, query.observations, stacked=True)
            return self._surrogate(new, query, adv, old_logp).mean(), masked_task_mean(kl, query.mask).mean()

        return trpo_step(adapt, loss_and_kl, list(params.values()), self.trpo)

    def _ppo(self, data: Data, query: Batch, adv: torch.Tensor, old_logp: torch.Tensor, optimizer) -> dict:
        """`ppo_epochs` steps of `optimizer` on -mean clipped_surrogate of the adapted policy, re-adapted
        from the live parameters on the stored support rollouts at every step (so each gradient goes
        through the inner step); `old_logp` is the collecting (adapted) policy's. Returns the first
        step's surrogate, the largest |ratio - 1| there (0: the replay reproduces the collecting
        policy) and the fraction of alive query steps clipped at the last step."""
        if optimizer is None:
            raise FastAdaptError("learner.args.outer = 'ppo' needs the trainer's optimiser; call outer_step with one")
        eps, mask, first, eta = self.args.clip, query.mask, {}, self.args.inner_kl_penalty
        for epoch in range(self.args.ppo_epochs):
            steps = self.replay_steps(self.params(), data)
            logp = pi.per_task(pi.log_prob, self.mean_net, steps[-1], query.observations, query.actions, stacked=True)
            loss = -masked_task_mean(clipped_surrogate(logp, old_logp, adv, eps), mask).mean()
            if eta > 0:  # ProMP: keep the pre-update policies near those that collected the rollouts
                kl = self.inner_kl(steps[:-1], data)
                loss = loss + eta * kl
                last_kl = kl.item()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                deviation = ((logp - old_logp).exp() - 1).abs()
                if epoch == 0:
                    first = {"surrogate_before": loss.item(), "ratio_deviation": float((deviation * mask).max())}
        clipped = float(((deviation > eps).float() * mask).sum() / mask.sum().clamp_min(1))
        return {**first, "clip_fraction": clipped, **({"inner_kl": last_kl} if eta > 0 else {})}

    # -- evaluation ------------------------------------------------------------------------------
    def predict(self, task: RLTask) -> torch.Tensor:
        """After 0, 1, ..., eval_inner_steps adaptation steps (each on `shots` rollouts of the current
        policy; step size inner_lr, then inner_lr x eval_later_lr_factor, as the paper's appendix
        A.2): row 0, the mean undiscounted return of `queries` fresh rollouts; row 1, their success
        rate (NaN for tasks without a success signal): (2, eval_inner_steps + 1)."""
        current: Params = {k: v.detach() for k, v in self.params().items()}
        stacked, returns, success = False, [], []
        for s in range(self.eval_inner_steps + 1):
            query = self._collect([task], current, stacked, task.queries, f"query-{s}")
            returns.append(query.returns().mean())
            success.append(query.success.mean() if query.success is not None else torch.tensor(float("nan")))
            if s == self.eval_inner_steps:
                break
            lr = self.args.inner_lr * (1.0 if s == 0 else self.args.eval_later_lr_factor)
            current, _ = self.adapt_online([task], current, 1, False, f"support-{s}", stacked, lr)
            current, stacked = {k: v.detach() for k, v in current.items()}, True
        return torch.stack([torch.stack(returns), torch.stack(success).to(returns[0])])

    def query_metrics(self, prediction: torch.Tensor, task: RLTask) -> dict[str, float]:
        """`return`: after `eval_inner_steps` steps; `return_after_<k>`: after k steps; and
        `success_rate_after_<k>` where the task has a success signal (Meta-World's protocol)."""
        metrics = {"return": float(prediction[0, -1])}
        metrics.update({f"return_after_{k}": float(v) for k, v in enumerate(prediction[0])})
        if not torch.isnan(prediction[1]).any():
            metrics.update({f"success_rate_after_{k}": float(v) for k, v in enumerate(prediction[1])})
        return metrics

    def describe(self) -> dict:
        a = self.args
        return {
            "eval_inner_steps": self.eval_inner_steps,
            "inner_lr": a.inner_lr,
            "order": "first" if a.first_order else "second",
            "outer": a.outer,
            "inner_estimator": a.inner_estimator,
            **(
                {"ppo_epochs": a.ppo_epochs, "clip": a.clip, "inner_kl_penalty": a.inner_kl_penalty}
                if a.outer == "ppo"
                else {}
            ),
            "test_time": "vanilla policy-gradient steps, shots rollouts each; returns on queries rollouts",
        }
