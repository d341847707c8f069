"""Conditional Neural Processes (Garnelo et al., 2018a): learning from a context set is one
forward pass, no gradient steps.

Each context pair (x_i, y_i) is encoded to r_i by an MLP, the r_i are averaged (order-invariant,
any number of points) into r, and a decoder maps (r, x*) to the parameters of the prediction at
a target x*. The whole map context -> predictor is trained by maximum likelihood over tasks.

- Regression (`ways` None): the decoder outputs a Gaussian mean and sigma = 0.1 + 0.9 softplus(.)
  (the floor of the paper's code keeps the likelihood bounded); training targets are context
  and query points together, as in the paper; `predict` returns the mean, so the shared
  evaluator reports the MSE.
- Classification (the paper's Omniglot variant): images are embedded by the backbone (Conv-4),
  concatenated with the one-hot label and encoded; the encodings are averaged *within each class*
  into per-class representations r_c, and the decoder scores every (r_c, query embedding) pair:
  its output is the query's logit for class c.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...data.episode import Episode
from ...errors import FastAdaptError
from ...registry import LEARNERS
from ..base import Learner, class_means, classification_loss, parse_args, require


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def gaussian_head(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split decoder output (..., 2) into mean and sigma = 0.1 + 0.9 softplus (the paper's code)."""
    mean, raw_sigma = raw.unbind(-1)
    return mean.unsqueeze(-1), (0.1 + 0.9 * F.softplus(raw_sigma)).unsqueeze(-1)


def gaussian_log_likelihood(y: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(y; mean, std^2), elementwise."""
    return -0.5 * ((y - mean) / std) ** 2 - std.log() - 0.5 * math.log(2 * math.pi)


@LEARNERS.register("cnp")
class CNP(Learner):
    @dataclass
    class Args:
        encoder: tuple[int, ...] = (128, 128, 128, 128)  # widths of the (x, y) -> r MLP; the last is r's size
        decoder: tuple[int, ...] = (128, 128)  # hidden widths of the (r, x*) -> prediction MLP

        def __post_init__(self):
            require(
                len(self.encoder) >= 1 and min(self.encoder) >= 1,
                "encoder",
                list(self.encoder),
                "a non-empty list of widths >= 1",
            )
            require(all(w >= 1 for w in self.decoder), "decoder", list(self.decoder), "a list of widths >= 1")

    def __init__(self, backbone: nn.Module, *, ways: int | None = None, **kwargs):
        super().__init__()
        args = parse_args(self.Args, kwargs)
        encoder, decoder = args.encoder, args.decoder
        self.backbone = backbone
        self.ways = ways
        self.problem = "classification" if ways else "regression"
        x_dim = backbone.embedding_dim
        y_dim = ways if ways else 1
        self.encoder = mlp([x_dim + y_dim, *encoder])
        self.decoder = mlp([encoder[-1] + x_dim, *decoder, 1 if ways else 2])
        self.stateless = not any(getattr(m, "track_running_stats", False) for m in backbone.modules())

    @classmethod
    def build(cls, backbone: nn.Module, ways: int | None, **kwargs) -> CNP:
        return cls(backbone, ways=ways, **kwargs)

    # -- regression --------------------------------------------------------------------------
    def predictive(
        self, context_x: torch.Tensor, context_y: torch.Tensor, target_x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std (both (T, 1)) of the Gaussian prediction at target_x given the context."""
        r = self.encoder(torch.cat([self.backbone(context_x), context_y], -1)).mean(0)
        features = self.backbone(target_x)
        return gaussian_head(self.decoder(torch.cat([r.expand(len(features), -1), features], -1)))

    # -- classification ----------------------------------------------------------------------
    def logits(self, episode: Episode) -> torch.Tensor:
        if episode.ways != self.ways:
            raise FastAdaptError(
                f"this CNP encodes {self.ways}-way one-hot labels but the episode is "
                f"{episode.ways}-way; evaluate with --ways {self.ways}"
            )
        n_support = len(episode.support_x)
        z = self.backbone(torch.cat([episode.support_x, episode.query_x]))
        support, query = z[:n_support], z[n_support:]
        labels = F.one_hot(episode.support_y, self.ways).to(support.dtype)
        encoded = self.encoder(torch.cat([support, labels], -1))
        # Per-class mean of the encodings, by label: any order, any number of shots per class.
        r = class_means(encoded, episode.support_y, self.ways)  # (ways, R)
        pairs = torch.cat(
            [r.unsqueeze(0).expand(len(query), -1, -1), query.unsqueeze(1).expand(-1, self.ways, -1)], -1
        )  # (Q, ways, R + D)
        return self.decoder(pairs).squeeze(-1)

    # -- Learner API -------------------------------------------------------------------------
    def task_loss(self, episode: Episode):
        if self.problem == "classification":
            return classification_loss(self.logits(episode), episode.query_y)
        target_x = torch.cat([episode.support_x, episode.query_x])
        target_y = torch.cat([episode.support_y, episode.query_y])
        mean, std = self.predictive(episode.support_x, episode.support_y, target_x)
        loss = -gaussian_log_likelihood(target_y, mean, std).mean()
        n = len(episode.support_x)
        mse = F.mse_loss(mean[n:].detach(), episode.query_y)
        return loss, {"loss": loss.item(), "mse": mse.item()}

    def predict(self, episode: Episode) -> torch.Tensor:
        with torch.no_grad():
            if self.problem == "classification":
                return self.logits(episode)
            return self.predictive(episode.support_x, episode.support_y, episode.query_x)[0]

    def describe(self) -> dict:
        return {"bn_mode": getattr(self.backbone, "bn", "none"), "problem": self.problem, "sigma": "0.1 + 0.9 softplus"}
