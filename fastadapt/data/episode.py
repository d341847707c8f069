"""The unit of work every learner sees: one task, split into support and query sets."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch


@dataclass
class Episode:
    """One few-shot task.

    Classification: `support_y`/`query_y` hold episode-local labels 0..ways-1 (long), and the
    support set is ordered class-major (all shots of class 0, then class 1, ...).
    Regression: labels are float targets and `ways` is None.
    `info` carries task parameters that are not model inputs (e.g. sinusoid amplitude/phase,
    the source class ids) for plots and debugging.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    ways: int | None = None
    shots: int | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Episode":
        """The episode on `device` (tensors already there are not copied)."""
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return replace(self, support_x=move(self.support_x), support_y=move(self.support_y),
                       query_x=move(self.query_x), query_y=move(self.query_y))
