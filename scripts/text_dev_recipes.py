"""Choosing full-way fine-tuning settings on held-out *train* sentences, never on test.

For one dataset, the (seed, K=10) support set of `fastadapt.text.fullway.draw_support` is adapted
to with `adapt_cross_entropy` (LP-FT) under each JSON variant, and scored on the 1,500 held-out
train sentences of `held_out_dev` (not in the support set). A variant with several `seeds`
averages the softmax of that many fine-tunings (different mini-batch orders): an ensemble.
One JSON line per variant (accuracy in [0, 1], seconds); the 2026-11-30 figures are in
results/text/dev-targets.jsonl.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/text_dev_recipes.py banking77 \\
        '[{"name": "V0"}, {"name": "V1", "epochs": 8}, {"name": "V2", "ls": 0.1}]'
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from fastadapt.learners.base import by_label
from fastadapt.text.encoder import DEFAULT_ENCODER, load_encoder, pad_token_id, tokenize
from fastadapt.text.finetune import FinetuneSettings, TopEncoder, adapt_cross_entropy, bottom_states, embed_states
from fastadapt.text.fullway import draw_support, held_out_dev, load_fullway


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=["banking77", "clinc150"])
    parser.add_argument("variants", help="JSON list of {name, layers, epochs, lr, bs, ls, head_lr, seeds, names}")
    parser.add_argument("--seed", type=int, default=0, help="the support set's seed")
    parser.add_argument("--data-root", default=os.environ.get("FASTADAPT_DATA", "data"))
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    dev = held_out_dev(load_fullway(args.data_root, args.dataset), 10, args.seed)
    index = draw_support(dev.train.labels, 10, args.seed, dev.ways)
    texts, labels = [dev.train.texts[i] for i in index], list(dev.train.labels[index])
    query_ids = torch.from_numpy(tokenize(dev.test.texts))
    model, pad = load_encoder(DEFAULT_ENCODER), pad_token_id(DEFAULT_ENCODER)
    encoders: dict[int, tuple] = {}
    for v in json.loads(args.variants):
        # "names": k copies of each class name (underscores as spaces) as extra support sentences
        names = [n.replace("_", " ") for n in dev.train.class_names] * v.get("names", 0)
        ids, y = by_label(
            torch.from_numpy(tokenize(texts + names)),
            torch.tensor(labels + list(range(dev.ways)) * v.get("names", 0), dtype=torch.int64),
        )
        layers = v.get("layers", 2)
        if layers not in encoders:
            encoder = TopEncoder(model, layers)
            encoders[layers] = (encoder, bottom_states(encoder, query_ids, pad))
        encoder, query_states = encoders[layers]
        settings = FinetuneSettings(
            epochs=v.get("epochs", 4),
            batch_size=v.get("bs", 16),
            lr=v.get("lr", 5e-5),
            head_lr=v.get("head_lr", 1e-3),
            label_smoothing=v.get("ls", 0.0),
            head_l2=1e-4,
        )
        started, probs = time.perf_counter(), []
        for seed in v.get("seeds", [0]):
            params, weight, bias = adapt_cross_entropy(
                encoder, encoder.initial_params(), ids, y, dev.ways, pad, settings, seed
            )
            probs.append(
                torch.softmax(embed_states(encoder, params, query_states, len(query_ids)) @ weight.T + bias, -1)
            )
        accuracy = lambda p: float((p.argmax(-1).numpy() == dev.test.labels).mean())  # noqa: E731
        print(
            json.dumps(
                {
                    "dataset": args.dataset,
                    **v,
                    "dev_accuracy": accuracy(torch.stack(probs).mean(0)),
                    "single_accuracies": [accuracy(p) for p in probs],
                    "seconds": round(time.perf_counter() - started),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
