"""Neural Processes with a latent path (Garnelo et al., 2018b), regression.

A CNP predicts every target independently given r, so it cannot express that functions
consistent with the context may differ *as wholes*. The NP adds a global latent z: a
deterministic path (as in the CNP) gives r = mean_i MLP(x_i, y_i), a latent path gives
q(z | C) = N(mu, diag sigma^2) from another mean-aggregated encoding, and the decoder maps
(r, z, x*) to a Gaussian over y*. Sampling z gives coherent function samples.

Training maximises the ELBO of the targets T (context and query points) given the context C,
with the intractable prior p(z | C) replaced by the encoder's own q(z | C):
    loss = -E_{q(z | C u T)} [mean_t log p(y_t | z, r_C, x_t)] + KL(q(z | C u T) || q(z | C)) / |T|,
one reparameterised sample of z per task, as in the authors' notebook.

The noise of that sample is drawn from a generator seeded by the training step and the task's
data, so the loss is a pure function of (parameters, episode, step): a resumed run or another
engine sees the same noise. `predict` uses the mean of q(z | C): no noise, no query labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...data.episode import Episode
from ...registry import LEARNERS
from ..base import Learner, parse_args, require
from .cnp import gaussian_head, gaussian_log_likelihood, mlp


def kl_diagonal_gaussians(
    mu_q: torch.Tensor, sigma_q: torch.Tensor, mu_p: torch.Tensor, sigma_p: torch.Tensor
) -> torch.Tensor:
    """KL(N(mu_q, diag sigma_q^2) || N(mu_p, diag sigma_p^2)), summed over the last dimension:
    sum_d log(sigma_p / sigma_q) + (sigma_q^2 + (mu_q - mu_p)^2) / (2 sigma_p^2) - 1/2."""
    return (torch.log(sigma_p / sigma_q) + (sigma_q**2 + (mu_q - mu_p) ** 2) / (2 * sigma_p**2) - 0.5).sum(-1)


@LEARNERS.register("np")
class NeuralProcess(Learner):
    problem = "regression"

    @dataclass
    class Args:
        encoder: tuple[int, ...] = (128, 128, 128, 128)  # deterministic path (x, y) -> r; the last is r's size
        latent_encoder: tuple[int, ...] = (128, 128, 128, 128)  # latent path (x, y) -> s, before mu and sigma
        latent_dim: int = 128  # size of the global latent z
        decoder: tuple[int, ...] = (128, 128)  # hidden widths of the (r, z, x*) -> Gaussian MLP

        def __post_init__(self):
            for key in ("encoder", "latent_encoder"):
                widths = getattr(self, key)
                require(len(widths) >= 1 and min(widths) >= 1, key, list(widths), "a non-empty list of widths >= 1")
            require(self.latent_dim >= 1, "latent_dim", self.latent_dim, ">= 1")
            require(all(w >= 1 for w in self.decoder), "decoder", list(self.decoder), "a list of widths >= 1")

    def __init__(self, backbone: nn.Module, **kwargs):
        super().__init__()
        args = parse_args(self.Args, kwargs)
        encoder, latent_encoder, latent_dim, decoder = args.encoder, args.latent_encoder, args.latent_dim, args.decoder
        self.backbone = backbone
        x_dim = backbone.embedding_dim
        self.encoder = mlp([x_dim + 1, *encoder])
        self.latent_encoder = mlp([x_dim + 1, *latent_encoder])
        hidden = (latent_encoder[-1] + latent_dim) // 2  # the notebook's penultimate layer
        self.latent_hidden = nn.Sequential(nn.Linear(latent_encoder[-1], hidden), nn.ReLU())
        self.latent_mu = nn.Linear(hidden, latent_dim)
        self.latent_sigma = nn.Linear(hidden, latent_dim)
        self.decoder = mlp([encoder[-1] + latent_dim + x_dim, *decoder, 2])
        self.step = 0

    @classmethod
    def build(cls, backbone: nn.Module, ways: int | None, **kwargs) -> NeuralProcess:
        return cls(backbone, **kwargs)

    def on_step(self, step: int, total_steps: int) -> None:
        self.step = step

    def latent(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z | {(x_i, y_i)}): mean and sigma = 0.1 + 0.9 sigmoid (the notebook's bounds)."""
        s = self.latent_hidden(self.latent_encoder(torch.cat([self.backbone(x), y], -1)).mean(0))
        return self.latent_mu(s), 0.1 + 0.9 * torch.sigmoid(self.latent_sigma(s))

    def decode(
        self, context_x: torch.Tensor, context_y: torch.Tensor, z: torch.Tensor, target_x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std at target_x for latent sample(s) z ((L,) or (S, L) -> (T, 1) or (S, T, 1))."""
        r = self.encoder(torch.cat([self.backbone(context_x), context_y], -1)).mean(0)
        features = self.backbone(target_x)
        batch = z.shape[:-1]
        t = len(features)
        inputs = torch.cat(
            [r.expand(*batch, t, -1), z.unsqueeze(-2).expand(*batch, t, -1), features.expand(*batch, t, -1)], -1
        )
        return gaussian_head(self.decoder(inputs))

    def predictive(
        self,
        context_x: torch.Tensor,
        context_y: torch.Tensor,
        target_x: torch.Tensor,
        samples: int = 0,
        generator: torch.Generator | None = None,
    ):
        """samples=0: the prediction at the mean of q(z | C), (T, 1) each; samples=S: S function
        draws z ~ q(z | C), mean and std of shape (S, T, 1)."""
        mu, sigma = self.latent(context_x, context_y)
        if samples == 0:
            return self.decode(context_x, context_y, mu, target_x)
        eps = torch.randn((samples, *mu.shape), generator=generator).to(mu)
        return self.decode(context_x, context_y, mu + sigma * eps, target_x)

    def _noise(self, episode: Episode, shape: torch.Size) -> torch.Tensor:
        """Training noise (`task_loss` only). Keyed by the query targets as before, so training is
        unchanged; without them (an unlabelled episode) by the query inputs."""
        query = episode.query_y if episode.query_y is not None else episode.query_x
        key = hash((self.step, float(episode.support_x.sum()), float(query.sum()), len(episode.query_x)))
        generator = torch.Generator().manual_seed(key & 0x7FFF_FFFF_FFFF_FFFF)
        return torch.randn(shape, generator=generator)

    def task_loss(self, episode: Episode):
        target_x = torch.cat([episode.support_x, episode.query_x])
        target_y = torch.cat([episode.support_y, episode.query_y])
        mu_post, sigma_post = self.latent(target_x, target_y)
        mu_prior, sigma_prior = self.latent(episode.support_x, episode.support_y)
        z = mu_post + sigma_post * self._noise(episode, mu_post.shape).to(mu_post)
        mean, std = self.decode(episode.support_x, episode.support_y, z, target_x)
        log_likelihood = gaussian_log_likelihood(target_y, mean, std).mean()
        kl = kl_diagonal_gaussians(mu_post, sigma_post, mu_prior, sigma_prior)
        loss = -log_likelihood + kl / len(target_x)
        n = len(episode.support_x)
        mse = F.mse_loss(mean[n:].detach(), episode.query_y)
        return loss, {"loss": loss.item(), "mse": mse.item(), "kl": kl.item()}

    def predict(self, episode: Episode) -> torch.Tensor:
        with torch.no_grad():
            return self.predictive(episode.support_x, episode.support_y, episode.query_x)[0]

    def describe(self) -> dict:
        return {
            "bn_mode": "none",
            "predict": "decoder mean at the mean of q(z | context)",
            "sigma": "0.1 + 0.9 softplus (output), 0.1 + 0.9 sigmoid (latent)",
        }
