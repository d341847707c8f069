"""Prototypical Networks (Snell et al., 2017): classify queries by their distance to the mean
embedding (prototype) of each class's support examples.

`distance: squared_euclidean` (the paper's) or `cosine`: logits = scale * cos(q, c), the
nearest-class-mean rule on directions that suits sentence embeddings (trained with a cosine
objective; Reimers & Gurevych 2019) and the cosine-similarity variants of Gidaris & Komodakis
(2018) and Chen et al. (2019). The scale only sharpens the softmax (it never changes the argmax);
it matters for the meta-training loss, where cosines in [-1, 1] alone give a nearly flat softmax.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ...data.episode import Episode
from ...registry import LEARNERS
from ..base import Learner, class_means, classification_loss, parse_args, require


def prototypes(support_embeddings: torch.Tensor, support_y: torch.Tensor, ways: int) -> torch.Tensor:
    """Class means by label, for support sets in any order and with any number of shots per
    class: (S, D), (S,) -> (ways, D). On a balanced class-major support set this is bitwise the
    former `view(ways, shots, D).mean(1)` (tests/test_learner_contract.py)."""
    return class_means(support_embeddings, support_y, ways)


def squared_euclidean_logits(queries: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """-||q - c||^2 for every query/prototype pair: (Q, D), (N, D) -> (Q, N). Written as a
    difference, not via cdist/expansion, so close points do not lose precision."""
    return -(queries.unsqueeze(1) - protos.unsqueeze(0)).pow(2).sum(-1)


def cosine_logits(queries: torch.Tensor, protos: torch.Tensor, scale: float) -> torch.Tensor:
    """scale * cos(q, c) for every query/prototype pair: (Q, D), (N, D) -> (Q, N); a zero vector
    has cosine 0 with everything (the norms are clamped at 1e-8)."""
    return scale * F.normalize(queries, dim=-1, eps=1e-8) @ F.normalize(protos, dim=-1, eps=1e-8).T


@LEARNERS.register("protonet")
class ProtoNet(Learner):
    @dataclass
    class Args:
        """protonet's settings (the backbone's are in model.backbone_args)."""

        distance: Literal["squared_euclidean", "cosine"] = "squared_euclidean"  # query-to-prototype comparison
        scale: float = 10.0  # cosine only: logits = scale * cos (the softmax temperature's inverse)

        def __post_init__(self):
            require(0 < self.scale <= 1e4, "scale", self.scale, "in (0, 10000]")

    def __init__(self, backbone: nn.Module, distance: str = "squared_euclidean", scale: float = 10.0):
        super().__init__()
        self.Args(distance=distance, scale=scale)  # the range checks, for Python callers too
        self.backbone, self.distance, self.scale = backbone, distance, float(scale)
        # Running BatchNorm averages are module state that a forward pass mutates.
        self.stateless = not any(getattr(m, "track_running_stats", False) for m in backbone.modules())

    @classmethod
    def build(cls, backbone: nn.Module, ways: int | None, **kwargs) -> ProtoNet:
        args = parse_args(cls.Args, kwargs)
        return cls(backbone, args.distance, args.scale)

    def logits(self, episode: Episode) -> torch.Tensor:
        # One forward over support and query together, as in the reference implementation.
        n_support = episode.support_x.shape[0]
        z = self.backbone(torch.cat([episode.support_x, episode.query_x]))
        protos = prototypes(z[:n_support], episode.support_y, episode.ways)
        if self.distance == "cosine":
            return cosine_logits(z[n_support:], protos, self.scale)
        return squared_euclidean_logits(z[n_support:], protos)

    def task_loss(self, episode: Episode):
        return classification_loss(self.logits(episode), episode.query_y)

    def predict(self, episode: Episode) -> torch.Tensor:
        with torch.no_grad():
            return self.logits(episode)

    def describe(self) -> dict:
        scale = {"scale": self.scale} if self.distance == "cosine" else {}
        return {"bn_mode": getattr(self.backbone, "bn", "none"), "distance": self.distance, **scale}
