"""Meta-SGD (Li et al., 2017): MAML with a learned inner learning rate for every parameter entry.

The inner step is θ - α ∘ ∇L_support(θ), with α a tensor of θ's shape, meta-learned with θ by
the same outer loss: the update's direction as well as its size is learned. Li et al. use one
inner step. α is initialised at `inner_lr` (the paper draws it at random in a small range).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...registry import LEARNERS
from ..base import require
from .maml import MAML, _key


@LEARNERS.register("metasgd")
class MetaSGD(MAML):
    @dataclass
    class Args(MAML.Args):
        """MAML's settings; inner_lr is the initial value of every entry of the learned lr."""

        def __post_init__(self):
            super().__post_init__()
            for key in ("lslr", "learn_inner_lr"):  # metasgd learns a per-entry inner lr already
                require(not getattr(self, key), key, getattr(self, key), "false for metasgd (it learns a per-entry lr)")

    def __init__(self, model: nn.Module, **kwargs):
        super().__init__(model, **kwargs)
        self.lrs = nn.ParameterDict(
            {
                _key(n): nn.Parameter(torch.full_like(p, float(self.inner_lr)))
                for n, p in self.model.named_parameters()
                if n in set(self.adapted_names())
            }
        )

    def inner_lr_of(self, name: str, step: int) -> torch.Tensor:
        return self.lrs[_key(name)]

    def describe(self) -> dict:
        return {**super().describe(), "inner_lr": "learned per entry", "inner_lr_init": float(self.inner_lr)}
