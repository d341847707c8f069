"""Relation Network (Sung et al., 2018): learn the similarity itself. A relation module scores
each (class, query) pair of feature maps in [0, 1], trained by regression to 1 for the matching
class and 0 otherwise (mean squared error, as the paper: "relation score" not logits).

Embedding: Conv-4 with max-pooling in the first two blocks only, returning feature maps
(28x28 -> 64x7x7 with our padding=1 convolutions; the paper's code leaves the first two
convolutions unpadded, 28x28 -> 64x5x5). For K > 1 shots a class's feature map is the *sum* of
its support feature maps (paper, section 3.3); with unequal shots, each class's sum is rescaled to
the average shot count (its mean times S / N), so a class is not favoured for having more
examples, and balanced episodes keep the paper's plain sums bitwise (the factor is exactly 1).
Relation module: two [conv3x3 -> BN -> maxpool2 -> ReLU] blocks on the channel-concatenated
pair (class, query), then FC -> ReLU -> FC -> sigmoid (8 hidden units).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...data.episode import Episode
from ...errors import FastAdaptError
from ...models.backbones import _batch_norm
from ...registry import LEARNERS
from ..base import Learner, parse_args, require


class RelationModule(nn.Module):
    """g(concat(f(x_c), f(x_q))) in [0, 1] for a batch of pairs of (C, H, W) feature maps."""

    def __init__(
        self,
        feature_shape: tuple[int, int, int],
        hidden: int = 64,
        fc_hidden: int = 8,
        bn: str = "inductive",
        channels_last: bool = False,
    ):
        super().__init__()
        channels, side, _ = feature_shape
        blocks: list[nn.Module] = []
        for i in range(2):
            blocks += [
                nn.Conv2d(2 * channels if i == 0 else hidden, hidden, 3, padding=1),
                _batch_norm(hidden, bn),
                nn.MaxPool2d(2),
                nn.ReLU(),
            ]
            side //= 2
        if side < 1:
            raise FastAdaptError(
                f"relation: feature maps {feature_shape} are too small for two 2x2 poolings; "
                f"use model.backbone_args.pooled_blocks: 2 on 28x28 images"
            )
        self.blocks = nn.Sequential(*blocks)
        self.fc1 = nn.Linear(hidden * side * side, fc_hidden)
        self.fc2 = nn.Linear(fc_hidden, 1)
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            pairs = pairs.contiguous(memory_format=torch.channels_last)
        h = self.blocks(pairs).flatten(1)
        return torch.sigmoid(self.fc2(F.relu(self.fc1(h)))).squeeze(-1)


def relation_pairs(class_maps: torch.Tensor, query_maps: torch.Tensor) -> torch.Tensor:
    """Every (query, class) pair, channel-concatenated class first: (N, C, H, W), (Q, C, H, W)
    -> (Q * N, 2C, H, W), query-major (row q * N + c pairs query q with class c)."""
    n, q = class_maps.shape[0], query_maps.shape[0]
    classes = class_maps.unsqueeze(0).expand(q, *class_maps.shape)
    queries = query_maps.unsqueeze(1).expand(q, n, *query_maps.shape[1:])
    return torch.cat([classes, queries], 2).flatten(0, 1)


@LEARNERS.register("relation")
class RelationNetwork(Learner):
    @dataclass
    class Args:
        hidden: int = 64  # channels of the relation module's two conv blocks
        fc_hidden: int = 8  # width of the relation module's hidden fully connected layer

        def __post_init__(self):
            require(self.hidden >= 1, "hidden", self.hidden, ">= 1")
            require(self.fc_hidden >= 1, "fc_hidden", self.fc_hidden, ">= 1")

    def __init__(self, backbone: nn.Module, relation: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.relation = relation
        self.stateless = not any(getattr(m, "track_running_stats", False) for m in self.modules())

    @classmethod
    def build(cls, backbone: nn.Module, ways: int | None, **kwargs) -> RelationNetwork:
        args = parse_args(cls.Args, kwargs)
        if not ways:
            raise FastAdaptError("relation is a classification learner; use an N-way dataset (e.g. omniglot)")
        if getattr(backbone, "flatten", True) or not hasattr(backbone, "feature_shape"):
            raise FastAdaptError(
                "relation needs feature maps from its backbone; set model.backbone: conv4 with "
                "model.backbone_args: {pooled_blocks: 2, flatten: false}"
            )
        relation = RelationModule(
            backbone.feature_shape,
            args.hidden,
            args.fc_hidden,
            getattr(backbone, "bn", "inductive"),
            getattr(backbone, "channels_last", False),
        )
        return cls(backbone, relation)

    def scores(self, episode: Episode) -> torch.Tensor:
        """Relation score of every (query, class) pair: (Q, N) in [0, 1]."""
        n_support = episode.support_x.shape[0]
        maps = self.backbone(torch.cat([episode.support_x, episode.query_x]))
        support, queries = maps[:n_support], maps[n_support:]
        # Sum the shots of each class (a (N, S) membership matrix, so any support order works),
        # rescaled to S / N shots: exactly 1.0 (a bitwise no-op) when the classes are balanced.
        membership = F.one_hot(episode.support_y, episode.ways).to(support.dtype).T
        counts = membership.sum(1)
        scale = (n_support / episode.ways) / counts
        class_maps = torch.einsum("ns,schw->nchw", membership, support) * scale.view(-1, 1, 1, 1)
        return self.relation(relation_pairs(class_maps, queries)).view(queries.shape[0], episode.ways)

    def task_loss(self, episode: Episode):
        scores = self.scores(episode)
        loss = F.mse_loss(scores, F.one_hot(episode.query_y, episode.ways).to(scores.dtype))
        accuracy = (scores.argmax(-1) == episode.query_y).float().mean()
        return loss, {"loss": loss.item(), "accuracy": accuracy.item()}

    def predict(self, episode: Episode) -> torch.Tensor:
        with torch.no_grad():
            return self.scores(episode)

    def describe(self) -> dict:
        return {
            "bn_mode": getattr(self.backbone, "bn", "none"),
            "loss": "mse",
            "feature_shape": list(getattr(self.backbone, "feature_shape", ())),
        }
