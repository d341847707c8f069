"""Adapting a pretrained sentence encoder to a support set: a pure function of (params, data).

The encoder (a sentence-transformers BERT-style model, e.g. all-MiniLM-L6-v2) is split in two:
a frozen bottom (token embeddings and the lower transformer layers), run once per sentence
without gradients, and a trained top (the upper `train_layers` layers), run with
`torch.func.functional_call` on a dict of parameter tensors. The module itself is never changed,
copied or hooked: `adapt_cross_entropy` / `adapt_contrastive` take the top's parameters and the
support data and return new parameters (and a head). Why the split: with 2 CPU cores the
backward pass through all six layers is most of the cost, and the bottom layers' outputs for the
support set never change, so they are computed once (`TopEncoder.bottom`) and each epoch pays
only for the top layers.

Two recipes:
- Cross-entropy through a head initialised by linear probing, then fine-tuning ("LP-FT",
  Kumar et al. 2022, "Fine-Tuning can Distort Pretrained Features and Underperform
  Out-of-Distribution", ICLR): the head starts at the multinomial logistic regression fit on the
  frozen embeddings (`fit_linear_head`), so the first gradients refine features instead of
  tearing them apart to fit a random head.
- SetFit's recipe (Tunstall et al. 2022, "Efficient Few-Shot Learning Without Prompts"):
  a cosine-similarity regression on sentence pairs sampled from the support set
  (`fastadapt.text.pairs.sample_pairs`, never enumerated), then a logistic-regression head on
  the adapted embeddings.

Token ids are int64 (N, L), padded with the tokenizer's pad id; the attention mask is
`ids != pad_id`; each mini-batch is trimmed to its longest sentence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..errors import FastAdaptError
from .pairs import sample_pairs

Params = dict[str, torch.Tensor]


def _transformer_of(model) -> nn.Module:
    """The Hugging Face model inside a sentence-transformers model (`.model` in sentence-
    transformers 6, `.auto_model` before)."""
    first = model[0]
    inner = getattr(first, "model", None) or getattr(first, "auto_model", None)
    if inner is None or not hasattr(inner, "embeddings") or not hasattr(getattr(inner, "encoder", None), "layer"):
        raise FastAdaptError(
            f"encoder {type(inner or first).__name__} is not BERT-like (embeddings + encoder.layer); "
            "fine-tuning supports BERT-style sentence-transformers models such as all-MiniLM-L6-v2"
        )
    return inner


def _pooling_mode(model) -> str:
    pooling = model[1] if len(model) > 1 else None
    mode = getattr(pooling, "pooling_mode", None)
    if mode is None:  # sentence-transformers < 6: boolean flags
        if getattr(pooling, "pooling_mode_cls_token", False):
            mode = "cls"
        elif getattr(pooling, "pooling_mode_mean_tokens", False):
            mode = "mean"
    if mode not in ("mean", "cls"):
        raise FastAdaptError(f"encoder pooling {mode!r} is not supported for fine-tuning; use a mean or CLS model")
    return mode


class TopEncoder:
    """The encoder seen as frozen bottom + functional top.

    `bottom(ids, mask)`: (N, L) int64 ids and bool mask -> (N, L, D) hidden states after the
    embeddings and the first `num_layers - train_layers` layers (no gradients).
    `top(params, hidden, mask)`: -> (N, D) L2-normalised sentence embeddings, differentiable in
    `params` (a dict named like `initial_params()`: "<layer index>.<name in the layer>").
    """

    def __init__(self, model, train_layers: int):
        self.bert = _transformer_of(model)
        self.pooling = _pooling_mode(model)
        layers = self.bert.encoder.layer
        if not 1 <= train_layers <= len(layers):
            raise FastAdaptError(
                f"train_layers = {train_layers} is out of range; this encoder has {len(layers)} layers"
            )
        self.first_trained = len(layers) - train_layers
        self.layers = list(layers)

    def initial_params(self) -> Params:
        """Detached copies of the trained layers' parameters, ready for `requires_grad_`."""
        return {
            f"{i}.{name}": p.detach().clone()
            for i in range(self.first_trained, len(self.layers))
            for name, p in self.layers[i].named_parameters()
        }

    @staticmethod
    def _additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # (N, 1, 1, L): 0 where attended, the dtype's minimum at padding (eager and SDPA both add it).
        return (~mask)[:, None, None, :].to(dtype) * torch.finfo(dtype).min

    @torch.no_grad()
    def bottom(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert.embeddings(input_ids=ids, token_type_ids=torch.zeros_like(ids))
        additive = self._additive_mask(mask, hidden.dtype)
        for layer in self.layers[: self.first_trained]:
            hidden = layer(hidden, additive)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        return hidden

    def top(self, params: Params, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        additive = self._additive_mask(mask, hidden.dtype)
        for i in range(self.first_trained, len(self.layers)):
            own = {k.split(".", 1)[1]: v for k, v in params.items() if k.split(".", 1)[0] == str(i)}
            hidden = functional_call(self.layers[i], own, (hidden, additive))
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return F.normalize(pooled, dim=-1)


def trim(ids: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch cut to its longest sentence, and its bool attention mask: (N, L) -> (N, L'), (N, L')."""
    mask = ids != pad_id
    length = max(int(mask.sum(1).max()), 1) if len(ids) else 1
    return ids[:, :length], mask[:, :length]


def bottom_states(encoder: TopEncoder, ids: torch.Tensor, pad_id: int, batch_size: int = 64) -> list:
    """The frozen bottom's hidden states of every sentence, in mini-batches sorted by length (so
    little padding is computed): a list of (indices, hidden (B, L, D), mask (B, L))."""
    lengths = (ids != pad_id).sum(1)
    order = torch.argsort(lengths, stable=True)
    out = []
    for start in range(0, len(ids), batch_size):
        index = order[start : start + batch_size]
        batch, mask = trim(ids[index], pad_id)
        out.append((index, encoder.bottom(batch, mask), mask))
    return out


def encode(encoder: TopEncoder, params: Params, ids: torch.Tensor, pad_id: int, batch_size: int = 64) -> torch.Tensor:
    """(N, L) token ids -> (N, D) normalised embeddings through the adapted encoder, no gradients."""
    return embed_states(encoder, params, bottom_states(encoder, ids, pad_id, batch_size), len(ids))


def embed_states(encoder: TopEncoder, params: Params, states: list, n: int) -> torch.Tensor:
    """(n, D) embeddings in the original item order from `bottom_states`' batches, no gradients."""
    out = None
    with torch.no_grad():
        for index, hidden, mask in states:
            z = encoder.top(params, hidden, mask)
            if out is None:
                out = z.new_empty(n, z.shape[1])
            out[index] = z
    return out if out is not None else torch.zeros(0, 0)


def fit_linear_head(
    z: torch.Tensor, y: torch.Tensor, ways: int, l2: float = 1e-3, steps: int = 100
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression on fixed features: argmin over (W (ways, D), b (ways,)) of
    mean cross-entropy(z W^T + b, y) + l2/2 ||W||^2, by L-BFGS (strongly convex, so the minimum is
    unique). At the returned point the gradient is ~0: W = -(1/(N l2)) (softmax - onehot)^T z."""
    z = z.detach()
    weight = torch.zeros(ways, z.shape[1], dtype=z.dtype, requires_grad=True)
    bias = torch.zeros(ways, dtype=z.dtype, requires_grad=True)
    opt = torch.optim.LBFGS(
        [weight, bias], lr=1, max_iter=steps, tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ weight.T + bias, y) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return weight.detach(), bias.detach()


@dataclass
class FinetuneSettings:
    """Settings of `adapt_cross_entropy` / `adapt_contrastive` (see the learners' Args for meaning)."""

    epochs: int = 4
    batch_size: int = 16
    lr: float = 5e-5
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    label_smoothing: float = 0.0
    head_l2: float = 1e-3
    pair_iterations: int = 2


def _batches(n: int, batch_size: int, generator: torch.Generator):
    perm = torch.randperm(n, generator=generator)
    return [perm[i : i + batch_size] for i in range(0, n, batch_size)]


def _states_by_item(states: list, n: int):
    """Per-sentence bottom states (hidden (L_i, D) without padding), from `bottom_states`."""
    items: list = [None] * n
    for index, hidden, mask in states:
        for row, i in enumerate(index.tolist()):
            length = int(mask[row].sum())
            items[i] = hidden[row, :length]
    return items


def _collate(items: list, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad the chosen sentences' bottom states to the batch's longest: (B, L, D), bool (B, L)."""
    chosen = [items[i] for i in index.tolist()]
    length = max(h.shape[0] for h in chosen)
    hidden = chosen[0].new_zeros(len(chosen), length, chosen[0].shape[1])
    mask = torch.zeros(len(chosen), length, dtype=torch.bool)
    for row, h in enumerate(chosen):
        hidden[row, : h.shape[0]] = h
        mask[row, : h.shape[0]] = True
    return hidden, mask


def adapt_cross_entropy(
    encoder: TopEncoder,
    params: Params,
    ids: torch.Tensor,
    labels: torch.Tensor,
    ways: int,
    pad_id: int,
    settings: FinetuneSettings,
    seed: int = 0,
) -> tuple[Params, torch.Tensor, torch.Tensor]:
    """LP-FT on the support set: (ids (S, L), labels (S,)) -> (new top params, head W (ways, D),
    head b (ways,)). The head starts at the logistic regression of the frozen embeddings; then
    `epochs` passes of AdamW over shuffled mini-batches (seeded by `seed`) minimise the
    cross-entropy of (z W^T + b) with optional label smoothing. `params` is not modified."""
    generator = torch.Generator().manual_seed(seed)
    states = bottom_states(encoder, ids, pad_id)
    items = _states_by_item(states, len(ids))
    weight, bias = fit_linear_head(embed_states(encoder, params, states, len(ids)), labels, ways, settings.head_l2)
    new = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    weight, bias = weight.clone().requires_grad_(), bias.clone().requires_grad_()
    opt = torch.optim.AdamW(
        [
            {"params": list(new.values()), "lr": settings.lr, "weight_decay": settings.weight_decay},
            {"params": [weight, bias], "lr": settings.head_lr, "weight_decay": 0.0},
        ]
    )
    with torch.enable_grad():
        for _ in range(settings.epochs):
            for index in _batches(len(ids), settings.batch_size, generator):
                hidden, mask = _collate(items, index)
                logits = encoder.top(new, hidden, mask) @ weight.T + bias
                loss = F.cross_entropy(logits, labels[index], label_smoothing=settings.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    return {k: v.detach() for k, v in new.items()}, weight.detach(), bias.detach()


def adapt_contrastive(
    encoder: TopEncoder,
    params: Params,
    ids: torch.Tensor,
    labels: torch.Tensor,
    ways: int,
    pad_id: int,
    settings: FinetuneSettings,
    seed: int = 0,
) -> tuple[Params, torch.Tensor, torch.Tensor]:
    """SetFit's recipe on the support set: `pair_iterations` rounds of one positive and one
    negative pair per sentence (sampled, `sample_pairs`), `epochs` passes of AdamW minimising
    (cos(z_i, z_j) - t_ij)^2 (t = 1 same intent, 0 otherwise), then the logistic-regression head
    on the adapted embeddings. Returns (new top params, W (ways, D), b (ways,))."""
    generator = torch.Generator().manual_seed(seed)
    items = _states_by_item(bottom_states(encoder, ids, pad_id), len(ids))
    first, second, target = sample_pairs(labels, settings.pair_iterations, generator)
    new = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    opt = torch.optim.AdamW(list(new.values()), lr=settings.lr, weight_decay=settings.weight_decay)
    with torch.enable_grad():
        for _ in range(settings.epochs):
            for index in _batches(len(target), settings.batch_size, generator):
                a = encoder.top(new, *_collate(items, first[index]))
                b = encoder.top(new, *_collate(items, second[index]))
                loss = F.mse_loss((a * b).sum(-1), target[index])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    new = {k: v.detach() for k, v in new.items()}
    z = encode(encoder, new, ids, pad_id)
    weight, bias = fit_linear_head(z, labels, ways, settings.head_l2)
    return new, weight, bias
