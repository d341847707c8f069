"""Multi-task pretraining, then fine-tuning a new head (the "multi-task" transfer baseline).

The training classes are split once (seeded) into fixed groups of `group_size` classes; each
group is one fixed task with its own linear head on a shared Conv-4. A training episode's
examples are routed to the head of their class's group and classified among that group's
classes. At test time a new head is trained on the frozen backbone's support embeddings,
exactly as Baseline does (`fastadapt.learners.transfer.baseline`).

What it isolates against meta-learning: like MAML or ProtoNet it learns from many small
classification tasks, but the tasks are a *fixed* set seen again and again (labels keep their
meaning across steps, so features need not be reusable for novel label assignments), and the
objective never simulates learning from a support set. Against Baseline, it replaces one
all-class softmax by many small ones, i.e. fewer negatives per example.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...data.episode import Episode
from ...errors import FastAdaptError
from ...registry import LEARNERS
from ..base import parse_args, require
from .baseline import TransferLearner, global_labels


@LEARNERS.register("multitask")
class MultiTask(TransferLearner):
    @dataclass
    class Args(TransferLearner.Args):
        group_size: int = 5  # training classes per fixed pretraining task (one head each)
        group_seed: int = 0  # seeds the split of the training classes into groups

        def __post_init__(self):
            super().__post_init__()
            require(self.group_size >= 2, "group_size", self.group_size, ">= 2 (and <= the training classes)")

    def __init__(self, backbone: nn.Module, num_train_classes: int, **kwargs):
        super().__init__(backbone, **kwargs)
        args = parse_args(self.Args, kwargs)
        group_size, group_seed = args.group_size, args.group_seed
        require(
            group_size <= num_train_classes,
            "group_size",
            group_size,
            f"in [2, {num_train_classes}] (the number of training classes)",
        )
        self.group_size = group_size
        groups = math.ceil(num_train_classes / group_size)
        order = np.random.default_rng(group_seed).permutation(num_train_classes)
        position = np.empty(num_train_classes, dtype=np.int64)
        position[order] = np.arange(num_train_classes)
        # Class c belongs to group position[c] // group_size, at slot position[c] % group_size.
        self.register_buffer("group_of", torch.from_numpy(position // group_size), persistent=False)
        self.register_buffer("slot_of", torch.from_numpy(position % group_size), persistent=False)
        # The last group may be short: its missing slots are masked out of the softmax.
        valid = torch.arange(groups * group_size) < num_train_classes
        self.register_buffer("slot_valid", valid.view(groups, group_size), persistent=False)
        dim = backbone.embedding_dim
        bound = 1 / math.sqrt(dim)
        self.head_weight = nn.Parameter(torch.empty(groups, group_size, dim).uniform_(-bound, bound))
        self.head_bias = nn.Parameter(torch.empty(groups, group_size).uniform_(-bound, bound))

    @classmethod
    def build(cls, backbone: nn.Module, ways: int | None, num_train_classes: int | None = None, **kwargs):
        if not num_train_classes:
            raise FastAdaptError(
                "learner 'multitask' splits the training classes into tasks and needs a "
                "classification dataset with a class pool (e.g. omniglot)"
            )
        return cls(backbone, num_train_classes, **kwargs)

    def group_logits(self, z: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each example's logits over its own group's classes, and its target slot."""
        groups = self.group_of[classes]
        logits = torch.einsum("bd,bkd->bk", z, self.head_weight[groups]) + self.head_bias[groups]
        logits = logits.masked_fill(~self.slot_valid[groups], float("-inf"))
        return logits, self.slot_of[classes]

    def task_loss(self, episode: Episode):
        x, classes = global_labels(episode)
        logits, targets = self.group_logits(self.backbone(x), classes)
        loss = F.cross_entropy(logits, targets)
        return loss, {"loss": loss.item(), "accuracy": (logits.argmax(-1) == targets).float().mean().item()}

    def describe(self) -> dict:
        return dict(super().describe(), group_size=self.group_size, tasks=int(self.head_weight.shape[0]))
