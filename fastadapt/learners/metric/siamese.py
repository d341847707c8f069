"""Siamese networks (Koch, Zemel & Salakhutdinov, 2015): learn a same/different verifier on
pairs of images, then classify one-shot by picking the support example the query matches best.

Training pairs come from the episode's images (support and query together): every same-class
pair, and as many different-class pairs (chosen deterministically, see `balanced_pairs`). Heads:
- `loss: koch`: p(same) = sigmoid(sum_j alpha_j |z1_j - z2_j| + b) (the paper's weighted L1
  distance), binary cross-entropy;
- `loss: contrastive` (Hadsell, Chopra & LeCun, 2006): with d = ||z1 - z2||_2,
  L = same * d^2 / 2 + (1 - same) * max(0, margin - d)^2 / 2, and similarity = -d.
Prediction scores every query against every support example; a class's logit is its best
match (the max over its shots, found by label), so it runs unchanged on the Lake 20-way 1-shot
runs and on unbalanced, shuffled support sets. Only training needs balanced episodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ...data.episode import Episode
from ...errors import FastAdaptError
from ...registry import LEARNERS
from ..base import Learner, parse_args, require

Loss = Literal["koch", "contrastive"]


def koch_logits(z1: torch.Tensor, z2: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """Pre-sigmoid same-class score sum_j alpha_j |z1_j - z2_j| + b, broadcasting over leading dims."""
    return linear((z1 - z2).abs()).squeeze(-1)


def euclidean_distance(z1: torch.Tensor, z2: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """||z1 - z2||_2 over the last dim; eps inside the root keeps the gradient finite at d = 0."""
    return ((z1 - z2).pow(2).sum(-1) + eps).sqrt()


def contrastive_loss(z1: torch.Tensor, z2: torch.Tensor, same: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean of same * d^2 / 2 + (1 - same) * max(0, margin - d)^2 / 2 over the pairs."""
    same = same.to(z1.dtype)
    squared = (z1 - z2).pow(2).sum(-1)  # d^2 directly: no root where none is needed
    distance = euclidean_distance(z1, z2)
    return (same * squared / 2 + (1 - same) * F.relu(margin - distance).pow(2) / 2).mean()


def balanced_pairs(labels: torch.Tensor, ways: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(first, second, same) index pairs: every same-class pair (a, b), a < b, of each class c,
    and for each of them the different-class pair (a of c, b of c'), c' = c + 1 + (t mod N-1)
    (mod N) for the t-th pair of c. Balanced and deterministic (a task is a pure function of its
    index, so no random draw here), and every other class is met equally often. Needs the same
    number m >= 2 of examples in every class: N m (m - 1) / 2 pairs of each kind."""
    members = [(labels == c).nonzero().squeeze(-1) for c in range(ways)]
    m = len(members[0])
    if ways < 2 or m < 2 or any(len(x) != m for x in members):
        raise FastAdaptError(
            "siamese needs >= 2 classes with the same number (>= 2) of examples each; "
            "set train.episodes.ways >= 2 and shots + queries >= 2"
        )
    by_class = torch.stack(members)  # (N, m) example indices
    a, b = torch.triu_indices(m, m, offset=1, device=labels.device)  # (P,) positions within a class
    t = torch.arange(len(a), device=labels.device)
    c = torch.arange(ways, device=labels.device).unsqueeze(1)  # (N, 1)
    other = (c + 1 + t % (ways - 1)) % ways  # (N, P)
    positive_first, positive_second = by_class[:, a], by_class[:, b]
    negative_second = by_class[other, b]
    first = torch.cat([positive_first.flatten(), positive_first.flatten()])
    second = torch.cat([positive_second.flatten(), negative_second.flatten()])
    same = torch.arange(len(first), device=labels.device) < positive_first.numel()
    return first, second, same


@LEARNERS.register("siamese")
class SiameseNetwork(Learner):
    @dataclass
    class Args:
        loss: Loss = "koch"  # koch: weighted L1 + binary cross-entropy; contrastive: Hadsell et al.
        margin: float = 1.0  # contrastive loss: different-class pairs are pushed this far apart

        def __post_init__(self):
            require(self.margin > 0, "margin", self.margin, "> 0")

    def __init__(self, backbone: nn.Module, **kwargs):
        super().__init__()
        args = parse_args(self.Args, kwargs)
        loss = args.loss
        self.backbone = backbone
        self.loss = loss
        self.margin = float(args.margin)
        if loss == "koch":
            dim = getattr(backbone, "embedding_dim", None)
            if dim is None:
                raise FastAdaptError("siamese with loss: koch needs a backbone with an embedding_dim (e.g. conv4)")
            self.distance_weights = nn.Linear(dim, 1)  # the alpha_j of the weighted L1 distance, and b
        self.stateless = not any(getattr(m, "track_running_stats", False) for m in backbone.modules())

    @classmethod
    def build(cls, backbone: nn.Module, ways: int | None, **kwargs) -> SiameseNetwork:
        if not ways:
            raise FastAdaptError("siamese is a classification learner; use an N-way dataset (e.g. omniglot)")
        return cls(backbone, **kwargs)

    def similarity(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """Higher = more alike: the Koch logit, or minus the Euclidean distance."""
        if self.loss == "koch":
            return koch_logits(z1, z2, self.distance_weights)
        return -euclidean_distance(z1, z2)

    def class_logits(
        self, support: torch.Tensor, support_y: torch.Tensor, queries: torch.Tensor, ways: int
    ) -> torch.Tensor:
        """Best match per class: max over the class's support examples of the similarity, (Q, N)."""
        scores = self.similarity(queries.unsqueeze(1), support.unsqueeze(0))  # (Q, S)
        member = F.one_hot(support_y, ways).bool()  # (S, N)
        masked = scores.unsqueeze(-1).masked_fill(~member, float("-inf"))
        return masked.amax(1)

    def task_loss(self, episode: Episode):
        n_support = episode.support_x.shape[0]
        z = self.backbone(torch.cat([episode.support_x, episode.query_x])).flatten(1)
        labels = torch.cat([episode.support_y, episode.query_y])
        first, second, same = balanced_pairs(labels, episode.ways)
        if self.loss == "koch":
            logits = koch_logits(z[first], z[second], self.distance_weights)
            loss = F.binary_cross_entropy_with_logits(logits, same.to(logits.dtype))
        else:
            loss = contrastive_loss(z[first], z[second], same, self.margin)
        with torch.no_grad():  # the one-shot accuracy that `predict` would give on this episode
            logits = self.class_logits(z[:n_support], episode.support_y, z[n_support:], episode.ways)
            accuracy = (logits.argmax(-1) == episode.query_y).float().mean()
        return loss, {"loss": loss.item(), "accuracy": accuracy.item()}

    def predict(self, episode: Episode) -> torch.Tensor:
        with torch.no_grad():
            n_support = episode.support_x.shape[0]
            z = self.backbone(torch.cat([episode.support_x, episode.query_x])).flatten(1)
            return self.class_logits(z[:n_support], episode.support_y, z[n_support:], episode.ways)

    def describe(self) -> dict:
        return {
            "bn_mode": getattr(self.backbone, "bn", "none"),
            "loss": self.loss,
            "margin": self.margin if self.loss == "contrastive" else None,
        }
