"""Matching Networks (Vinyals et al., 2016): a query's label distribution is the attention-
weighted sum of the support set's one-hot labels, attention = softmax of cosine similarities.

    P(y | x, S) = sum_i a(x, x_i) y_i,   a(x, x_i) = softmax_i(scale * cos(f(x), g(x_i)))

The loss is the negative log of the true class's probability. `scale` = 1 is the paper (plain
cosine); cosines are bounded, so the predicted distribution can never become sharp (5-way 1-shot:
P(true) <= e / (e + 4/e) = 0.65), which is why later work adds a temperature.

Full-context embeddings (`fce: true`) embed each example in the context of the whole support set:
g is a bidirectional LSTM over the support embeddings with a skip connection, and f is an
attention LSTM that reads the support set K times for each query (paper, appendix A.2).
The LSTM reads the support as a sequence, so it is first ordered stably by label (a no-op on the
samplers' class-major episodes): a user's shuffled support then gives the class-major result.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...data.episode import Episode
from ...errors import FastAdaptError
from ...registry import LEARNERS
from ..base import Learner, by_label, parse_args, require


def cosine_attention_logits(queries: torch.Tensor, support: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """scale * cos(q, s) for every query/support pair: (Q, D), (S, D) -> (Q, S)."""
    return scale * F.normalize(queries, dim=-1, eps=1e-8) @ F.normalize(support, dim=-1, eps=1e-8).T


def class_log_probs(attention_logits: torch.Tensor, support_y: torch.Tensor, ways: int) -> torch.Tensor:
    """log sum_i a_i [y_i = c] for each class c, with a = softmax(attention_logits): (Q, S) -> (Q, N).

    Computed as logsumexp over the class's support items minus logsumexp over all of them, so a
    class with tiny attention gets a finite log-probability instead of log(0)."""
    log_attention = attention_logits.log_softmax(-1)  # (Q, S)
    log_membership = F.one_hot(support_y, ways).to(log_attention.dtype).log()  # (S, N): 0 or -inf
    return (log_attention.unsqueeze(-1) + log_membership).logsumexp(1)


class SupportContext(nn.Module):
    """g(x_i, S) = h_fw_i + h_bw_i + g'(x_i): a bidirectional LSTM over the support sequence."""

    def __init__(self, dim: int):
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, bidirectional=True, batch_first=True)

    def forward(self, support: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(support.unsqueeze(0))  # (1, S, 2D): forward and backward states
        forward_h, backward_h = out[0].chunk(2, dim=-1)
        return support + forward_h + backward_h


class QueryAttentionLSTM(nn.Module):
    """f(x, S) = attLSTM(f'(x), g(S), K) (paper eqs. 3-6), for all queries at once:

        r_{k-1} = sum_i softmax_i(h_{k-1} . g(x_i)) g(x_i)
        h^_k, c_k = LSTM(f'(x), [h_{k-1}, r_{k-1}], c_{k-1})
        h_k = h^_k + f'(x)

    The LSTM's recurrent input is [h, r]; an LSTM cell whose input is [f'(x), r] computes the
    same gates (one linear map of x, h and r), so nn.LSTMCell(2D, D) implements it exactly.
    h_0 = c_0 = 0, so the first read is the mean of g(S)."""

    def __init__(self, dim: int, steps: int):
        super().__init__()
        self.cell = nn.LSTMCell(2 * dim, dim)
        self.steps = steps

    def forward(self, queries: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        h = torch.zeros_like(queries)
        c = torch.zeros_like(queries)
        for _ in range(self.steps):
            read = (h @ support.T).softmax(-1) @ support
            h_hat, c = self.cell(torch.cat([queries, read], -1), (h, c))
            h = h_hat + queries
        return h


@LEARNERS.register("matching")
class MatchingNetworks(Learner):
    @dataclass
    class Args:
        fce: bool = False  # full-context embeddings (support BiLSTM + query attention LSTM)
        fce_steps: int = 5  # K, the attention LSTM's reads of the support set per query (fce only)
        scale: float = 1.0  # multiplies the cosines before the softmax; 1 is the paper

        def __post_init__(self):
            require(self.fce_steps >= 1, "fce_steps", self.fce_steps, ">= 1 (e.g. 5)")
            require(self.scale > 0, "scale", self.scale, "> 0")

    def __init__(self, backbone: nn.Module, **kwargs):
        super().__init__()
        args = parse_args(self.Args, kwargs)
        fce, fce_steps = args.fce, args.fce_steps
        self.backbone = backbone
        self.fce = fce
        self.scale = float(args.scale)
        self.order_invariant = not fce  # the support LSTM depends on the order within each class
        if fce:
            dim = getattr(backbone, "embedding_dim", None)
            if dim is None:
                raise FastAdaptError("matching with fce: true needs a backbone with an embedding_dim (e.g. conv4)")
            self.support_context = SupportContext(dim)
            self.query_context = QueryAttentionLSTM(dim, fce_steps)
        self.stateless = not any(getattr(m, "track_running_stats", False) for m in backbone.modules())

    @classmethod
    def build(cls, backbone: nn.Module, ways: int | None, **kwargs) -> MatchingNetworks:
        if not ways:
            raise FastAdaptError("matching is a classification learner; use an N-way dataset (e.g. omniglot)")
        return cls(backbone, **kwargs)

    def log_probs(self, episode: Episode) -> torch.Tensor:
        """log P(c | query, S) for every query and class: (Q, N)."""
        n_support = episode.support_x.shape[0]
        z = self.backbone(torch.cat([episode.support_x, episode.query_x])).flatten(1)
        support, queries, support_y = z[:n_support], z[n_support:], episode.support_y
        if self.fce:
            support, support_y = by_label(support, support_y)
            support = self.support_context(support)
            queries = self.query_context(queries, support)
        logits = cosine_attention_logits(queries, support, self.scale)
        return class_log_probs(logits, support_y, episode.ways)

    def task_loss(self, episode: Episode):
        log_probs = self.log_probs(episode)
        loss = F.nll_loss(log_probs, episode.query_y)
        accuracy = (log_probs.argmax(-1) == episode.query_y).float().mean()
        return loss, {"loss": loss.item(), "accuracy": accuracy.item()}

    def predict(self, episode: Episode) -> torch.Tensor:
        with torch.no_grad():
            return self.log_probs(episode)

    def describe(self) -> dict:
        return {
            "bn_mode": getattr(self.backbone, "bn", "none"),
            "fce": self.fce,
            "scale": self.scale,
            "fce_steps": self.query_context.steps if self.fce else None,
        }
