"""Baseline and Baseline++ (Chen et al., 2019, "A Closer Look at Few-shot Classification").

Transfer learning without episodes in the objective: pretrain a backbone with one classifier
over *all* training classes, then, for each test task, train a NEW classifier on the support
embeddings of the frozen backbone and classify the queries. Chen et al. showed that this,
done carefully, is competitive with meta-learning on standard benchmarks.

- Pretraining step: a training episode's support and query images form a batch, labelled with
  their global class ids `episode.info["classes"][y]`; loss = cross-entropy.
- "baseline": linear classifier. "baseline++": cosine classifier, logits = s * cos(z, w_c)
  with s = 2 for <= 200 classes and 10 otherwise (Chen's code), which reduces intra-class
  variation of the features.
- Test time (Chen's code): 100 epochs over the support set in mini-batches of 4, SGD lr 0.01,
  momentum 0.9, dampening 0.9, weight decay 0.001, from a seeded initialisation, so
  evaluation is deterministic. `finetune_backbone: true` also fine-tunes a copy of the backbone
  weights (through `functional_call`; the module itself is never changed). The support set is
  first ordered stably by label (a no-op on the samplers' class-major episodes), so a shuffled
  support set is mini-batched as the class-major one would be; any number of shots per class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ...data.episode import Episode
from ...errors import FastAdaptError
from ...registry import LEARNERS
from ..base import Learner, by_label, parse_args, require
from ..optimization.inner_loop import MomentumSGD, inner_loop


def cosine_scale(classes: int) -> float:
    """Chen et al.'s scale factor of the cosine classifier."""
    return 2.0 if classes <= 200 else 10.0


def cosine_logits(z: torch.Tensor, weight: torch.Tensor, scale: float) -> torch.Tensor:
    """scale * cos(z_i, w_c): (B, D), (C, D) -> (B, C)."""
    return scale * F.normalize(z, dim=-1, eps=1e-5) @ F.normalize(weight, dim=-1, eps=1e-5).T


def head_logits(z: torch.Tensor, head: dict[str, torch.Tensor], cosine: bool) -> torch.Tensor:
    if cosine:
        return cosine_logits(z, head["weight"], cosine_scale(len(head["weight"])))
    return F.linear(z, head["weight"], head["bias"])


def new_head(dim: int, classes: int, cosine: bool, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A freshly initialised head, nn.Linear's default distribution U(-1/sqrt(dim), 1/sqrt(dim))."""
    bound = 1 / math.sqrt(dim)
    head = {"weight": (torch.rand(classes, dim, generator=generator) * 2 - 1) * bound}
    if not cosine:
        head["bias"] = (torch.rand(classes, generator=generator) * 2 - 1) * bound
    return head


def fine_tune(
    backbone: nn.Module,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    ways: int,
    *,
    cosine: bool,
    finetune_backbone: bool,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Train a new head (and, optionally, a copy of the backbone weights) on the support set:
    `epochs` passes in seeded mini-batches of `batch_size`, torch.optim.SGD's rule with Chen et
    al.'s settings (`inner_loop.MomentumSGD`), run by the shared inner loop with no graph.
    support_x: (N, ...) inputs, support_y: (N,) labels in [0, ways). Returns (head, backbone
    parameters to use), name -> tensor; neither the module nor its weights change."""
    generator = torch.Generator().manual_seed(seed)
    device = support_x.device
    with torch.no_grad():
        frozen = backbone(support_x)
    head = {k: v.to(device, frozen.dtype) for k, v in new_head(frozen.shape[-1], ways, cosine, generator).items()}
    weights = {n: p.detach() for n, p in backbone.named_parameters()}
    n = len(support_x)
    batches = []  # drawn up front: the generator gives the same orders as drawing one per epoch
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(device)
        batches += [order[start : start + batch_size] for start in range(0, n, batch_size)]

    def loss_of(params: dict[str, torch.Tensor], step: int) -> torch.Tensor:
        batch = batches[step]
        if finetune_backbone:
            tuned = {name: params[f"backbone.{name}"] for name in weights}
            z = functional_call(backbone, tuned, (support_x[batch],))
        else:
            z = frozen[batch]
        trained_head = {k: params[f"head.{k}"] for k in head}
        return F.cross_entropy(head_logits(z, trained_head, cosine), support_y[batch])

    params = {f"head.{k}": v for k, v in head.items()}
    if finetune_backbone:
        params.update({f"backbone.{name}": p for name, p in weights.items()})
    # Chen et al.'s optimiser for the new classifier (dampening 0.9 included).
    rule = MomentumSGD(lr, momentum=0.9, dampening=0.9, weight_decay=0.001)
    params = inner_loop(loss_of, params, len(batches), rule, detached=True)
    if finetune_backbone:
        weights = {name: params[f"backbone.{name}"] for name in weights}
    return {k: params[f"head.{k}"] for k in head}, weights


def global_labels(episode: Episode) -> tuple[torch.Tensor, torch.Tensor]:
    """Support and query images as one batch with their training-pool class ids."""
    if "classes" not in episode.info:
        raise FastAdaptError(
            "transfer baselines need episodes with info['classes'] (global class ids); "
            "use a classification dataset such as omniglot"
        )
    classes = torch.as_tensor(np.asarray(episode.info["classes"]), device=episode.support_y.device)
    return (torch.cat([episode.support_x, episode.query_x]), classes[torch.cat([episode.support_y, episode.query_y])])


class TransferLearner(Learner):
    """Shared test-time procedure: frozen (or copied) backbone + new head trained on the support."""

    cosine_finetune = False
    order_invariant = False  # mini-batches of the support set (see the module docstring)

    @dataclass
    class Args:
        finetune_backbone: bool = False  # also fine-tune a copy of the backbone weights at test time
        finetune_epochs: int = 100  # passes over the support set when training the new head
        finetune_batch: int = 4  # support examples per fine-tuning step
        finetune_lr: float = 0.01  # SGD step size of the fine-tuning (momentum 0.9, dampening 0.9)
        finetune_seed: int = 0  # seeds the new head's initialisation and the mini-batch order

        def __post_init__(self):
            require(self.finetune_epochs >= 1, "finetune_epochs", self.finetune_epochs, ">= 1")
            require(self.finetune_batch >= 1, "finetune_batch", self.finetune_batch, ">= 1")
            require(self.finetune_lr > 0, "finetune_lr", self.finetune_lr, "> 0")

    def __init__(self, backbone: nn.Module, **kwargs):
        super().__init__()
        args = parse_args(self.Args, kwargs)
        self.backbone = backbone
        self.finetune_backbone = args.finetune_backbone
        self.finetune_epochs, self.finetune_batch = args.finetune_epochs, args.finetune_batch
        self.finetune_lr, self.finetune_seed = args.finetune_lr, args.finetune_seed
        self.stateless = not any(getattr(m, "track_running_stats", False) for m in backbone.modules())

    def predict(self, episode: Episode) -> torch.Tensor:
        support_x, support_y = by_label(episode.support_x, episode.support_y)
        head, weights = fine_tune(
            self.backbone,
            support_x,
            support_y,
            episode.ways,
            cosine=self.cosine_finetune,
            finetune_backbone=self.finetune_backbone,
            epochs=self.finetune_epochs,
            batch_size=self.finetune_batch,
            lr=self.finetune_lr,
            seed=self.finetune_seed,
        )
        with torch.no_grad():
            return head_logits(functional_call(self.backbone, weights, (episode.query_x,)), head, self.cosine_finetune)

    def describe(self) -> dict:
        return {
            "bn_mode": getattr(self.backbone, "bn", "none"),
            "finetune_backbone": self.finetune_backbone,
            "finetune_epochs": self.finetune_epochs,
            "finetune_batch": self.finetune_batch,
            "finetune_lr": self.finetune_lr,
            "cosine_head": self.cosine_finetune,
        }


@LEARNERS.register("baseline")
class Baseline(TransferLearner):
    cosine = False

    def __init__(self, backbone: nn.Module, num_train_classes: int, **kwargs):
        super().__init__(backbone, **kwargs)
        self.cosine_finetune = self.cosine
        dim = backbone.embedding_dim
        self.classifier = nn.Linear(dim, num_train_classes, bias=not self.cosine)

    @classmethod
    def build(cls, backbone: nn.Module, ways: int | None, num_train_classes: int | None = None, **kwargs):
        if not num_train_classes:
            raise FastAdaptError(
                f"learner {cls.__name__.lower()!r} pretrains a classifier over the training "
                "classes and needs a classification dataset with a class pool (e.g. omniglot)"
            )
        return cls(backbone, num_train_classes, **kwargs)

    def task_loss(self, episode: Episode):
        x, y = global_labels(episode)
        z = self.backbone(x)
        if self.cosine:
            logits = cosine_logits(z, self.classifier.weight, cosine_scale(self.classifier.out_features))
        else:
            logits = self.classifier(z)
        loss = F.cross_entropy(logits, y)
        return loss, {"loss": loss.item(), "accuracy": (logits.argmax(-1) == y).float().mean().item()}


@LEARNERS.register("baseline++")
class BaselinePlusPlus(Baseline):
    cosine = True
