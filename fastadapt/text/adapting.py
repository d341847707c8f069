"""What the encoder-adapting learners share: the encoder's trained top layers as the learner's
parameters, token-id episodes, the support grouped by label, and the predict path.

A learner of this kind (`encoder-finetune`, `contrastive-finetune`) reads token-id episodes
(int64 (N, L), padded with the encoder's pad id; `data.args.representation: tokens`). Its
parameters are the pretrained weights of the encoder's top `train_layers` transformer layers:
`task_loss` meta-trains them episodically with the prototypical loss (Snell et al. 2017) when
used with `fastadapt train`, and `predict` adapts a copy of them to the support set
(`fastadapt.text.finetune`, a pure function of (params, data)) and scores the queries with the
adapted encoder and head. The pretrained encoder module itself is shared and never modified.
"""

from __future__ import annotations

import abc
import hashlib
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data.episode import Episode
from ..errors import FastAdaptError
from ..learners.base import Learner, by_label, class_means, classification_loss, parse_args, require
from .encoder import DEFAULT_ENCODER, load_encoder, pad_token_id
from .finetune import FinetuneSettings, Params, TopEncoder, bottom_states, embed_states


@dataclass
class EncoderArgs:
    """Settings shared by the encoder-adapting learners."""

    encoder: str = DEFAULT_ENCODER  # sentence-transformers model: the default, a local folder or a hub name
    train_layers: int = 2  # how many top transformer layers are adapted (the rest stay frozen)
    epochs: int = 4  # passes over the support set (or over the sampled pairs) when adapting
    batch_size: int = 16  # sentences (or pairs) per adaptation step
    lr: float = 5e-5  # AdamW step size of the encoder's layers while adapting
    weight_decay: float = 0.01  # AdamW decoupled weight decay of the encoder's layers
    head_l2: float = 1e-4  # L2 penalty of the logistic-regression head fit (per-sentence mean loss)
    seed: int = 0  # seeds the mini-batch order (and pair draws), so predictions are repeatable
    proto_scale: float = 10.0  # meta-training only: logits = scale * cosine(query, prototype)

    def __post_init__(self):
        require(self.train_layers >= 1, "train_layers", self.train_layers, ">= 1")
        require(self.epochs >= 0, "epochs", self.epochs, ">= 0")
        require(self.batch_size >= 1, "batch_size", self.batch_size, ">= 1")
        require(self.lr > 0, "lr", self.lr, "> 0")
        require(self.weight_decay >= 0, "weight_decay", self.weight_decay, ">= 0")
        require(self.head_l2 > 0, "head_l2", self.head_l2, "> 0")
        require(self.proto_scale > 0, "proto_scale", self.proto_scale, "> 0")


class EncoderAdaptingLearner(Learner):
    """Base of the learners that adapt the encoder's top layers to each support set."""

    order_invariant = False  # mini-batches the support (grouped by label first, see `by_label`)
    inputs = "tokens"  # episodes carry int64 token ids, not images or vectors

    def __init__(self, **kwargs):
        super().__init__()
        args = parse_args(self.Args, kwargs)
        self.args = args
        model = load_encoder(args.encoder)
        self.encoder = TopEncoder(model, args.train_layers)
        self.pad_id = pad_token_id(args.encoder)
        initial = self.encoder.initial_params()
        self.param_names = list(initial)
        self.top = nn.ParameterList([nn.Parameter(v) for v in initial.values()])
        self.timing: dict[str, float] = {}
        self._cached_queries: tuple[str, list] | None = None

    @classmethod
    def build(cls, backbone: nn.Module, ways: int | None, **kwargs):
        """The config's backbone is not used: the network is the sentence encoder in `Args.encoder`."""
        if not ways:
            raise FastAdaptError(f"{cls.__name__} is for classification; set train.episodes.ways")
        return cls(**kwargs)

    def params(self) -> Params:
        return dict(zip(self.param_names, self.top))

    def settings(self) -> FinetuneSettings:
        a = self.args
        return FinetuneSettings(
            epochs=a.epochs,
            batch_size=a.batch_size,
            lr=a.lr,
            head_lr=getattr(a, "head_lr", 1e-3),
            weight_decay=a.weight_decay,
            label_smoothing=getattr(a, "label_smoothing", 0.0),
            head_l2=a.head_l2,
            pair_iterations=getattr(a, "pair_iterations", 1),
        )

    def _ids(self, x: torch.Tensor, where: str) -> torch.Tensor:
        if x.dtype != torch.int64 or x.dim() != 2:
            raise FastAdaptError(
                f"{where} must be int64 token ids (N, L) for this learner (got {tuple(x.shape)} {x.dtype}); "
                "set data.args.representation: tokens"
            )
        return x

    def _embed_with_grad(self, ids: torch.Tensor) -> torch.Tensor:
        """Sentence embeddings through the learner's own top layers (differentiable)."""
        out = []
        index_all = []
        for index, hidden, mask in bottom_states(self.encoder, ids, self.pad_id):
            out.append(self.encoder.top(self.params(), hidden, mask))
            index_all.append(index)
        z = torch.cat(out)
        return z[torch.argsort(torch.cat(index_all))]

    def task_loss(self, episode: Episode):
        """Episodic meta-training of the top layers with the prototypical loss: logits =
        proto_scale * cos(query embedding, class-mean support embedding)."""
        support = self._embed_with_grad(self._ids(episode.support_x, "support"))
        query = self._embed_with_grad(self._ids(episode.query_x, "query"))
        prototypes = F.normalize(class_means(support, episode.support_y, episode.ways), dim=-1)
        return classification_loss(self.args.proto_scale * query @ prototypes.T, episode.query_y)

    @abc.abstractmethod
    def adapt(self, ids: torch.Tensor, labels: torch.Tensor, ways: int):
        """(new top params, head W (ways, D), head b (ways,)) for this support set (label-sorted)."""

    def _query_states(self, ids: torch.Tensor) -> list:
        """The frozen bottom's states of the query sentences, remembered for the last query set:
        they do not depend on the support set, so scoring the same queries again (another seed of
        the full-way protocol, another support set in `fastadapt predict`) skips most of the encoder."""
        key = hashlib.sha256(ids.contiguous().numpy().tobytes()).hexdigest() + str(tuple(ids.shape))
        if self._cached_queries is None or self._cached_queries[0] != key:
            self._cached_queries = (key, bottom_states(self.encoder, ids, self.pad_id))
        return self._cached_queries[1]

    def predict(self, episode: Episode) -> torch.Tensor:
        """Adapt a copy of the top layers and a head to the support set, then (n_query, ways) logits."""
        support_x, support_y = by_label(self._ids(episode.support_x, "support"), episode.support_y)
        query_x = self._ids(episode.query_x, "query")
        started, cpu = time.perf_counter(), time.process_time()
        params, weight, bias = self.adapt(support_x, support_y, episode.ways)
        adapted, adapt_cpu = time.perf_counter(), time.process_time() - cpu
        states = self._query_states(query_x)
        scores = embed_states(self.encoder, params, states, len(query_x)) @ weight.T + bias
        # Wall seconds, and the process's CPU seconds (all threads) of the adaptation: on a shared
        # machine the wall time depends on the load, the CPU time much less.
        self.timing = {"adapt": adapted - started, "adapt_cpu": adapt_cpu, "predict": time.perf_counter() - adapted}
        return scores

    def describe(self) -> dict:
        return {"encoder": self.args.encoder, "train_layers": self.args.train_layers}
