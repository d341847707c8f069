"""Meta-SGD (Li et al., 2017): MAML with a learned inner learning rate for every parameter entry.

The inner step is θ - α ∘ ∇L_support(θ), with α a tensor of θ's shape, meta-learned with θ by
the same outer loss: the update's direction as well as its size is learned. Li et al. use one
inner step. α is initialised at `inner_lr` (the paper draws it at random in a small range).
"""
from __future__ import annotations

import torch
from torch import nn

from ...errors import FastAdaptError
from ...registry import LEARNERS
from .maml import MAML, _key


@LEARNERS.register("metasgd")
class MetaSGD(MAML):
    def __init__(self, model: nn.Module, **kwargs):
        if kwargs.get("lslr") or kwargs.get("learn_inner_lr"):
            raise FastAdaptError("metasgd learns a per-entry inner lr already; drop lslr / learn_inner_lr from learner.args")
        super().__init__(model, **kwargs)
        self.lrs = nn.ParameterDict({_key(n): nn.Parameter(torch.full_like(p, float(self.inner_lr)))
                                     for n, p in self.model.named_parameters() if n in set(self.adapted_names())})

    def inner_lr_of(self, name: str, step: int) -> torch.Tensor:
        return self.lrs[_key(name)]

    def describe(self) -> dict:
        return {**super().describe(), "inner_lr": "learned per entry", "inner_lr_init": float(self.inner_lr)}
