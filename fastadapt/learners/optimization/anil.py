"""ANIL, Almost No Inner Loop (Raghu et al., 2020): MAML where only the head adapts.

Raghu et al. found that MAML's inner loop barely changes the body's features, so they adapt
only the final linear layer. The body's features of the support and query sets are computed
once per task; the inner loop runs on the head alone, which is cheap (a linear model), and the
body receives its meta-gradient only through those features (through the adapted head and,
second order, through the inner gradients, which depend on the support features).
Every MAML option that concerns the adapted network (multi-step loss, LSLR, derivative-order
annealing, checkpointing, first order) applies to the head; per-step BN does not (the head has
no BatchNorm).
"""

from __future__ import annotations

import torch
from torch import nn

from ...errors import FastAdaptError
from ...registry import LEARNERS
from .maml import MAML, has_running_stats


def split_head(backbone: nn.Module) -> tuple[nn.Module, nn.Linear]:
    """(body, head) of a backbone built with a linear head: Conv-4's `head`, or an MLP's last layer."""
    head = getattr(backbone, "head", None)
    if isinstance(head, nn.Linear):
        backbone.head = None  # the backbone now returns its embedding
        return backbone, head
    net = getattr(backbone, "net", None)
    if isinstance(net, nn.Sequential) and isinstance(net[-1], nn.Linear):
        return nn.Sequential(*net[:-1]), net[-1]
    raise FastAdaptError(f"anil needs a backbone ending in a linear head (conv4 or mlp), got {type(backbone).__name__}")


@LEARNERS.register("anil")
class ANIL(MAML):
    def __init__(self, model: nn.Module, **kwargs):
        body, head = split_head(model)
        super().__init__(head, **kwargs)
        self.body = body
        self.stateless = not has_running_stats(body)

    def inputs(self, support_x: torch.Tensor, query_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Two forwards, as MAML does: with transductive BN each set is normalised by its own statistics.
        return self.body(support_x), self.body(query_x)

    def describe(self) -> dict:
        return {**super().describe(), "bn_mode": getattr(self.body, "bn", "none"), "adapted": "head"}
