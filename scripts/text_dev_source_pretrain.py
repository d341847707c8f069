"""Does meta-training the encoder on *another* intent dataset help full-way K-shot? (dev only)

IntentBERT-style transfer (Zhang et al. 2021): the top `layers` layers of MiniLM are meta-trained
with the prototypical loss (`encoder-finetune`'s `task_loss`) on `ways`-way 4-shot 4-query
episodes of the source dataset's training sentences (all its intents), then the target's
(seed 0, K=10) support set is adapted to with a linear probe (epochs 0) and with LP-FT (epochs 4),
scored on the target's 1,500 held-out train sentences (`held_out_dev`), never on test. The
2026-11-30 figures are in results/text/dev-targets.jsonl.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/text_dev_source_pretrain.py clinc150 banking77 --steps 100
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import numpy as np
import torch

from fastadapt.data.episode import Episode
from fastadapt.registry import LEARNERS
from fastadapt.text.encoder import DEFAULT_ENCODER, tokenize
from fastadapt.text.fullway import held_out_dev, load_fullway, run_seed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", choices=["banking77", "clinc150"])
    parser.add_argument("target", choices=["banking77", "clinc150"])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--ways", type=int, default=50)
    parser.add_argument("--data-root", default=os.environ.get("FASTADAPT_DATA", "data"))
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    import fastadapt.learners  # noqa: F401  (registers the learners)

    finetune_lr = 5e-5 if args.target == "banking77" else 1e-4  # benchmarks/text_fewshot.py's DEFAULTS
    learner = LEARNERS.get("encoder-finetune").build(
        None, 10, train_layers=args.layers, epochs=4, lr=finetune_lr, head_l2=1e-4
    )
    started = time.perf_counter()
    source = load_fullway(args.data_root, args.source).train
    ids, labels = torch.from_numpy(tokenize(source.texts)), source.labels
    by_class = [np.flatnonzero(labels == c) for c in range(labels.max() + 1)]
    rng, optimizer, shots, queries = np.random.default_rng(0), torch.optim.Adam(learner.parameters(), args.lr), 4, 4
    for step in range(args.steps):
        support, support_y, query, query_y = [], [], [], []
        for j, c in enumerate(rng.choice(len(by_class), args.ways, replace=False)):
            pick = rng.choice(by_class[c], shots + queries, replace=False)
            support += list(pick[:shots])
            query += list(pick[shots:])
            support_y += [j] * shots
            query_y += [j] * queries
        episode = Episode(ids[support], torch.tensor(support_y), ids[query], torch.tensor(query_y), args.ways, shots)
        loss, metrics = learner.task_loss(episode)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 25 == 0:
            print(json.dumps({"step": step, **metrics}), flush=True)
    out = {**vars(args), "pretrain_seconds": round(time.perf_counter() - started)}
    out.pop("data_root")
    dev = held_out_dev(load_fullway(args.data_root, args.target), 10, 0)
    for epochs in (0, 4):
        learner.args = dataclasses.replace(learner.args, epochs=epochs)
        out[f"dev_accuracy_epochs{epochs}"] = run_seed(learner, dev, 10, 0, "tokens", DEFAULT_ENCODER)["accuracy"]
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
