"""Divergence checks for the trainer: training stops at the first non-finite loss, gradient or
weight, before anything non-finite is applied or written over a good checkpoint (issue 14, 3)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from .errors import FastAdaptError


def all_finite(tensors: Iterable[torch.Tensor | None]) -> bool:
    """True when every element of the floating-point `tensors` is finite: one fused norm per
    tensor and one check of their stack (a NaN or inf anywhere makes its tensor's norm non-finite)."""
    tensors = [t.detach() for t in tensors if t is not None and t.is_floating_point()]
    if not tensors:
        return True
    norms = (
        torch._foreach_norm(tensors)
        if hasattr(torch, "_foreach_norm")
        else [torch.linalg.vector_norm(t) for t in tensors]
    )
    return bool(torch.isfinite(torch.stack([n.float().to(norms[0].device) for n in norms])).all())


NEW_OUT = "then re-run with a new --out"  # the folder holds the diverged run's files


class DivergedError(FastAdaptError):
    """Training produced a non-finite loss, gradient or weight; nothing non-finite was saved."""


def lr_fix(lr: float) -> str:
    """What to change after a divergence, for learners stepped by the trainer's optimiser."""
    return f"lower train.lr (now {lr:g})"


def diverged(step: int, what: str, last_checkpoint: int | None, run_dir, fix: str) -> DivergedError:
    """The one-line error: where it diverged, what is kept, and what to change (`fix`: the
    learner's `divergence_fix`, else lr_fix)."""
    kept = (
        f"the last good checkpoint (step {last_checkpoint}) is kept in {run_dir}/checkpoints"
        if last_checkpoint is not None
        else "no checkpoint had been written yet"
    )
    return DivergedError(f"training diverged at step {step} (non-finite {what}); {kept}; {fix}; {NEW_OUT}")


def check_losses(task_metrics: list[dict]) -> bool:
    """True when every task's reported loss is finite."""
    return all(math.isfinite(m["loss"]) for m in task_metrics)


def check_step(learner: torch.nn.Module, run_dir, fix: str, step: int, task_metrics: list[dict] | None = None) -> None:
    """With `task_metrics` (before the optimiser step): the tasks' losses and the gradients; without
    (after it): the weights. Non-finite: a DivergedError naming `step` and the newest checkpoint."""
    if task_metrics is None:
        ok, what = all_finite(learner.parameters()), "weights after the update"
    else:
        ok = check_losses(task_metrics) and all_finite(p.grad for p in learner.parameters())
        what = "loss/gradient"
    if not ok:
        from .checkpoint import latest_step

        raise diverged(step, what, latest_step(run_dir), run_dir, fix)


def require_finite_weights(module: torch.nn.Module, path) -> None:
    """Refuse to write non-finite weights to `path` (second line of defence behind the per-step
    checks): the file already there, a good checkpoint or best.safetensors, is kept."""
    if not all_finite(module.state_dict().values()):
        raise DivergedError(
            f"the model's weights are not finite, so {path} was not written (the previous "
            f"file is kept); lower train.lr and re-run with a new --out"
        )


def save_finite_weights(path, module: torch.nn.Module, metadata: dict) -> None:
    """`checkpoint.save_weights`, refusing non-finite weights (see require_finite_weights)."""
    from .checkpoint import save_weights

    require_finite_weights(module, path)
    save_weights(path, module, metadata)
