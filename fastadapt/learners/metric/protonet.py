"""Prototypical Networks (Snell et al., 2017): classify queries by squared Euclidean distance
to the mean embedding (prototype) of each class's support examples."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...data.episode import Episode
from ...registry import LEARNERS
from ..base import Learner, class_means, classification_loss, parse_args


def prototypes(support_embeddings: torch.Tensor, support_y: torch.Tensor, ways: int) -> torch.Tensor:
    """Class means by label, for support sets in any order and with any number of shots per
    class: (S, D), (S,) -> (ways, D). On a balanced class-major support set this is bitwise the
    former `view(ways, shots, D).mean(1)` (tests/test_learner_contract.py)."""
    return class_means(support_embeddings, support_y, ways)


def squared_euclidean_logits(queries: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """-||q - c||^2 for every query/prototype pair: (Q, D), (N, D) -> (Q, N). Written as a
    difference, not via cdist/expansion, so close points do not lose precision."""
    return -(queries.unsqueeze(1) - protos.unsqueeze(0)).pow(2).sum(-1)


@LEARNERS.register("protonet")
class ProtoNet(Learner):
    @dataclass
    class Args:
        """protonet has no settings of its own (the backbone's are in model.backbone_args)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        # Running BatchNorm averages are module state that a forward pass mutates.
        self.stateless = not any(getattr(m, "track_running_stats", False) for m in backbone.modules())

    @classmethod
    def build(cls, backbone: nn.Module, ways: int | None, **kwargs) -> ProtoNet:
        parse_args(cls.Args, kwargs)
        return cls(backbone)

    def logits(self, episode: Episode) -> torch.Tensor:
        # One forward over support and query together, as in the reference implementation.
        n_support = episode.support_x.shape[0]
        z = self.backbone(torch.cat([episode.support_x, episode.query_x]))
        return squared_euclidean_logits(z[n_support:], prototypes(z[:n_support], episode.support_y, episode.ways))

    def task_loss(self, episode: Episode):
        return classification_loss(self.logits(episode), episode.query_y)

    def predict(self, episode: Episode) -> torch.Tensor:
        with torch.no_grad():
            return self.logits(episode)

    def describe(self) -> dict:
        return {"bn_mode": getattr(self.backbone, "bn", "none"), "distance": "squared_euclidean"}
