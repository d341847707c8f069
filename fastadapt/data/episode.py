"""The unit of work every learner sees: one task, split into support and query sets."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch


@dataclass
class Episode:
    """One few-shot task.

    Classification: `support_y`/`query_y` hold episode-local labels 0..ways-1 (long). Samplers
    draw balanced, class-major support sets, but learners must not rely on that: a user's
    support set (`fastadapt predict`) may be unbalanced and in any order, so learners group the
    support by label. `shots` is the number of shots per class when balanced, else None.
    Regression: labels are float targets and `ways` is None.
    `query_y` is None in the episodes that the evaluator and `predict` hand to learners
    (`without_query_labels`): a prediction never sees the answers.
    `info` carries task parameters that are not model inputs (e.g. sinusoid amplitude/phase,
    the source class ids) for plots and debugging.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor | None
    ways: int | None = None
    shots: int | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Episode:
        """The episode on `device` (tensors already there are not copied)."""
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return replace(
            self,
            support_x=move(self.support_x),
            support_y=move(self.support_y),
            query_x=move(self.query_x),
            query_y=None if self.query_y is None else move(self.query_y),
        )

    def without_query_labels(self) -> Episode:
        """The same task with `query_y` removed: what `Learner.predict` is given."""
        return replace(self, query_y=None)
