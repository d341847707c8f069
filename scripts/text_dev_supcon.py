"""LP-FT with an added supervised contrastive loss, scored on held-out *train* sentences only.

CPFT's second stage (Zhang et al. 2021, "Few-Shot Intent Detection via Contrastive Pre-Training
and Fine-Tuning"): cross-entropy through the probe-initialised head plus `weight` x the
supervised contrastive loss (Khosla et al. 2020, temperature `tau`) of the mini-batch's
normalised embeddings. Positives need classes that repeat within a batch, so batches are
class-balanced: `per_class` sentences of each of 32 / per_class intents. Weight 0 measures the
batch composition alone. Banking77, the (seed 0, K=10) support set plus 3 copies of each intent
name, the table's LP-FT settings otherwise; scored on `held_out_dev`'s 1,500 sentences. The
2026-11-30 lines are in results/text/dev-targets.jsonl.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/text_dev_supcon.py --weights 0 0.5 1
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.nn.functional as F

from fastadapt.learners.base import by_label
from fastadapt.text.encoder import DEFAULT_ENCODER, load_encoder, pad_token_id, tokenize
from fastadapt.text.finetune import TopEncoder, _collate, _states_by_item, bottom_states, embed_states, fit_linear_head
from fastadapt.text.fullway import held_out_dev, load_fullway, support_set


def supcon(z: torch.Tensor, y: torch.Tensor, tau: float) -> torch.Tensor:
    """Mean over anchors with a positive of -mean_p log softmax_{a != i}(z_i . z_a / tau)[p]."""
    eye = torch.eye(len(z), dtype=torch.bool)
    sim = (z @ z.T / tau).masked_fill(eye, float("-inf"))
    log_prob = (sim - torch.logsumexp(sim, 1, keepdim=True)).masked_fill(eye, 0.0)
    positive = (y[:, None] == y[None]) & ~eye
    has = positive.any(1)
    return (-(log_prob * positive).sum(1)[has] / positive.sum(1)[has]).mean()


def balanced_batches(y: torch.Tensor, ways: int, per_class: int, generator: torch.Generator) -> list[torch.Tensor]:
    chunks = []
    for c in range(ways):
        members = torch.nonzero(y == c).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        chunks += [members[i : i + per_class] for i in range(0, len(members), per_class)]
    chunks = [chunks[i] for i in torch.randperm(len(chunks), generator=generator).tolist()]
    k = max(1, 32 // per_class)
    return [torch.cat(chunks[i : i + k]) for i in range(0, len(chunks), k)]


def run(dev, weight_sc: float, tau: float, per_class: int, epochs: int = 4, lr: float = 5e-5) -> dict:
    torch.manual_seed(0)
    texts, y = support_set(dev, 10, 0, 3)
    ids, y = by_label(torch.from_numpy(tokenize(texts)), torch.from_numpy(y))
    encoder, pad = TopEncoder(load_encoder(DEFAULT_ENCODER), 2), pad_token_id()
    states = bottom_states(encoder, ids, pad)
    items = _states_by_item(states, len(ids))
    start = encoder.initial_params()
    weight, bias = fit_linear_head(embed_states(encoder, start, states, len(ids)), y, dev.ways, 1e-4)
    params = {k: v.clone().requires_grad_() for k, v in start.items()}
    weight, bias = weight.clone().requires_grad_(), bias.clone().requires_grad_()
    opt = torch.optim.AdamW(
        [
            {"params": list(params.values()), "lr": lr, "weight_decay": 0.01},
            {"params": [weight, bias], "lr": 1e-3, "weight_decay": 0.0},
        ]
    )
    generator, started = torch.Generator().manual_seed(0), time.perf_counter()
    for _ in range(epochs):
        for index in balanced_batches(y, dev.ways, per_class, generator):
            z = encoder.top(params, *_collate(items, index))
            loss = F.cross_entropy(z @ weight.T + bias, y[index])
            if weight_sc:
                loss = loss + weight_sc * supcon(z, y[index], tau)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    query = torch.from_numpy(tokenize(dev.test.texts))
    adapted = {k: v.detach() for k, v in params.items()}
    scores = embed_states(encoder, adapted, bottom_states(encoder, query, pad), len(query)) @ weight.detach().T
    accuracy = float(((scores + bias.detach()).argmax(-1).numpy() == dev.test.labels).mean())
    return {"dev_accuracy": accuracy, "seconds": round(time.perf_counter() - started)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", nargs="+", type=float, default=[0.0, 0.5, 1.0])
    parser.add_argument("--tau", type=float, default=0.1)
    parser.add_argument("--per-class", type=int, default=4, help="sentences per intent in a 32-sentence batch")
    parser.add_argument("--data-root", default=os.environ.get("FASTADAPT_DATA", "data"))
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    dev = held_out_dev(load_fullway(args.data_root, "banking77"), 10, 0)
    for w in args.weights:
        result = run(dev, w, args.tau, args.per_class)
        print(json.dumps({"supcon_weight": w, "tau": args.tau, "per_class": args.per_class, **result}), flush=True)


if __name__ == "__main__":
    main()
