"""The MAML paper's "pretrained" RL baseline (Finn et al. 2017, section 5.3): one policy trained on
all tasks jointly (no adaptation in its objective), then fine-tuned at test time with the same
policy-gradient steps as MAML-RL.

Training: a TRPO step (the same settings as MAML-TRPO) on the mean over the meta-batch of each
task's surrogate -mean_t π_θ(a|s)/π_θold(a|s) Â on `queries` rollouts of the current policy;
`outer: adam` hands the plain policy-gradient loss to the trainer's optimiser instead. Test
time is MAML-RL's `predict` (returns after 0..eval_inner_steps steps), so the two differ only in
what they were trained for. Paper, HalfCheetah direction: -43.0 / -24.8 / -12.9 / 19.6 after
0 / 1 / 2 / 3 steps (MAML: -50.7 / 293.2 / 313.5 / 315.7).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...registry import LEARNERS
from ...rl import policy as pi
from ...rl.envs import RLTask
from ...rl.objectives import inner_loss, masked_task_mean
from ...rl.trpo import trpo_step
from .maml_rl import MAMLRL, require_single_process


@LEARNERS.register("pretrained-rl")
class PretrainedRL(MAMLRL):
    """MAML-RL's policy and test-time adaptation, trained without the inner step."""

    def task_loss(self, task: RLTask):
        """The policy-gradient loss of one task at the current policy (no adaptation)."""
        params = self.params()
        batch = self._collect([task], params, False, task.queries, "query")
        loss = inner_loss(self.mean_net, params, batch, self._advantages(batch), stacked=False).mean()
        return loss, {"loss": loss.item(), "return": batch.returns().mean().item()}

    def outer_step(
        self, tasks: Sequence[RLTask], progress: tuple[int, int], optimizer: torch.optim.Optimizer | None = None
    ) -> list[dict[str, float]] | None:
        """One joint TRPO step on all the meta-batch's tasks (None with `outer: adam`)."""
        if self.args.outer == "adam":
            return None
        require_single_process(self.args.outer)
        params = self.params()
        batch = self._collect(tasks, params, False, tasks[0].queries, "query")
        if self.args.outer == "none":
            return [{"loss": 0.0, "return": float(r)} for r in batch.returns().mean(1)]
        adv = self._advantages(batch)
        names, old = list(params), {k: v.detach().clone() for k, v in params.items()}  # not views: TRPO writes in place
        with torch.no_grad():
            old_logp = pi.log_prob(self.mean_net, old, batch.observations, batch.actions)  # one policy: no vmap

        def loss_and_kl(values: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            new = dict(zip(names, values))
            logp = pi.log_prob(self.mean_net, new, batch.observations, batch.actions)
            kl = pi.kl(self.mean_net, old, new, batch.observations)
            surrogate = -masked_task_mean(torch.exp(logp - old_logp) * adv, batch.mask)
            return surrogate.mean(), masked_task_mean(kl, batch.mask).mean()

        info = trpo_step(lambda values: values, loss_and_kl, list(params.values()), self.trpo)
        return [{"loss": info["surrogate_before"], "return": float(r), **info} for r in batch.returns().mean(1)]

    def describe(self) -> dict:
        return dict(super().describe(), training="joint on all tasks, no inner step (pretrained baseline)")
