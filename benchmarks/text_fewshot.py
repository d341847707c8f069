"""Full-way K-shot intent classification: our encoder-adapting learners against SetFit 1.2 and
the frozen-embedding baselines, in the same run, on the same support sets.

Every cell (dataset, method, K) draws the K-shot support set of each seed with
`fastadapt.text.fullway.draw_support` (a pure function of (seed, K)), adapts, and scores the whole
official test set (Banking77 3,080; CLINC150 4,500 in-scope, plus out-of-scope detection with the
threshold chosen on val + oos_val). Prints one JSON line per cell and writes it to
`<out>/<dataset>_<method>_<K>shot.json`; `benchmarks/text_table.py` makes the table and plot.

Methods:
- `frozen-logreg`: frozen MiniLM embeddings + multinomial logistic regression (L-BFGS, the
  same head fit the learners use); `frozen-ncm`: nearest class mean, cosine (ProtoNet on frozen
  embeddings). Both as baselines computed inline from the cached embeddings.
- `encoder-finetune`, `contrastive-finetune`: the learners of those names, through
  `learner.predict` on a token-id episode (settings: `--settings METHOD='{"epochs": 4}'`).
- `setfit`: SetFit 1.2 (Tunstall et al. 2022) with the same MiniLM body (the gt package's copy),
  `num_iterations=20`, its default logistic-regression head, seeded with the same seed.

    .venv/bin/python benchmarks/text_fewshot.py --datasets banking77 --methods encoder-finetune setfit \\
        --shots 10 --seeds 0 --threads 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fastadapt.text.encoder import DEFAULT_ENCODER, embed, resolve_encoder
from fastadapt.text.finetune import fit_linear_head
from fastadapt.text.fullway import (
    DATASETS,
    SHOTS,
    FullwayData,
    draw_support,
    held_out_dev,
    load_fullway,
    run_seed,
    summarise,
    support_set,
)
from fastadapt.utils import atomic_write_text

LEARNER_METHODS = ("encoder-finetune", "contrastive-finetune")
METHODS = ("frozen-logreg", "frozen-ncm", *LEARNER_METHODS, "setfit")
#: The settings measured for the results table, chosen on 1,500 held-out *train* sentences (not in
#: the support set) at 10-shot, seed 0, never on test: step size 5e-5 (Banking77) / 1e-4 (CLINC150).
DEFAULTS = {
    "encoder-finetune": {"train_layers": 2, "epochs": 4, "lr": 5e-5, "head_l2": 1e-4},
    "encoder-finetune/clinc150": {"lr": 1e-4},
    "contrastive-finetune": {"train_layers": 2, "epochs": 1, "pair_iterations": 5, "lr": 2e-5, "head_l2": 1e-4},
    "frozen-logreg": {"head_l2": 1e-4},
}


def at_least(low: int):
    """An argparse type: an integer >= low (a one-line usage error otherwise)."""

    def parse(text: str) -> int:
        if not text.lstrip("-").isdigit() or int(text) < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return int(text)

    return parse


def frozen_cell(data: FullwayData, method: str, shots: int, seed: int, settings: dict, label_names: int = 0) -> dict:
    """The frozen-embedding baselines for one seed (accuracy in [0, 1], seconds to fit)."""
    index = draw_support(data.train.labels, shots, seed, data.ways)
    z = torch.from_numpy(embed(data.train.texts))[index]  # the whole train split, embedded (and cached) once
    texts, labels = support_set(data, shots, seed, label_names)
    if label_names:
        z = torch.cat([z, torch.from_numpy(embed(texts[len(index) :]))])
    test_z = torch.from_numpy(embed(data.test.texts))
    y = torch.from_numpy(labels)
    started = time.perf_counter()
    if method == "frozen-logreg":
        weight, bias = fit_linear_head(z, y, data.ways, settings.get("head_l2", 1e-4))
        scores = test_z @ weight.T + bias
    else:
        means = torch.nn.functional.normalize(torch.zeros(data.ways, z.shape[1]).index_add_(0, y, z), dim=-1)
        scores = test_z @ means.T
    seconds = time.perf_counter() - started
    accuracy = float((scores.argmax(-1).numpy() == data.test.labels).mean())
    return {"seed": seed, "accuracy": accuracy, "adapt_seconds": seconds, "load": os.getloadavg()[0]}


def setfit_cell(data: FullwayData, shots: int, seed: int, encoder: str) -> dict:
    """SetFit 1.2 with `num_iterations=20` on the same support set; adapt = `trainer.train()` time."""
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    index = draw_support(data.train.labels, shots, seed, data.ways)
    train = Dataset.from_dict(
        {"text": [data.train.texts[i] for i in index], "label": data.train.labels[index].tolist()}
    )
    model = SetFitModel.from_pretrained(resolve_encoder(encoder), device="cpu")
    # No checkpoints: SetFit would otherwise write ~260 MB into ./checkpoints every 500 steps.
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="setfit-"),
        save_strategy="no",
        num_iterations=20,
        batch_size=16,
        num_epochs=1,
        seed=seed,
        report_to="none",
        show_progress_bar=False,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train)
    started, cpu = time.perf_counter(), time.process_time()
    trainer.train()
    adapt, adapt_cpu = time.perf_counter() - started, time.process_time() - cpu
    predicted = np.asarray(model.predict(data.test.texts, batch_size=64))
    return {
        "seed": seed,
        "accuracy": float((predicted.astype(np.int64) == data.test.labels).mean()),
        "adapt_seconds": adapt,
        "adapt_cpu_seconds": adapt_cpu,
        "predict_seconds": time.perf_counter() - started - adapt,
        "load": os.getloadavg()[0],
    }


def learner_cell(learner, data: FullwayData, shots: int, seed: int, label_names: int = 0) -> dict:
    """One seed through `learner.predict`; the learner's mini-batch seed is the protocol's seed. The
    same learner serves every seed, so the frozen bottom layers' query states are computed once."""
    learner.args = dataclasses.replace(learner.args, seed=seed)
    return run_seed(learner, data, shots, seed, "tokens", learner.args.encoder, label_names)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=" ".join(__doc__.split("\n\n")[0].split()), formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--shots", nargs="+", type=at_least(1), default=list(SHOTS), help="K: sentences per intent")
    parser.add_argument(
        "--seeds", nargs="+", type=at_least(0), default=[0, 1, 2, 3, 4], help="one K-shot draw (and fine-tuning) each"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (2: this machine's cores)")
    parser.add_argument("--settings", action="append", default=[], help="METHOD=JSON overrides of DEFAULTS")
    parser.add_argument(
        "--label-names",
        type=at_least(0),
        default=0,
        metavar="COPIES",
        help="add COPIES of each intent's name to its support sentences (method recorded as METHOD+names)",
    )
    parser.add_argument("--note", default="", help="why a cell is shortened (fewer seeds/shots), kept in the JSON")
    parser.add_argument("--data-root", default=os.environ.get("FASTADAPT_DATA", "data"))
    parser.add_argument(
        "--out", type=Path, default=Path("results/text"), help="folder for the cells' JSON (one file per cell)"
    )
    parser.add_argument(
        "--dev", action="store_true", help="score 1,500 held-out train sentences instead of test (choosing settings)"
    )
    parser.add_argument(
        "--collect",
        type=Path,
        help="write the cells from the per-seed JSON lines this script printed in an interrupted run (same options)",
    )
    args = parser.parse_args(argv)
    if args.label_names and "setfit" in args.methods:
        parser.error("--label-names is not implemented for setfit; run it without")
    collected = []
    if args.collect:
        lines = [json.loads(line) for line in args.collect.read_text().splitlines() if line.startswith("{")]
        collected = [r for r in lines if "seed" in r and r.get("method") in args.methods]
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.settings)}
    for method, values in overrides.items():  # the learners check their own keys when built
        unknown = set(values) - set(DEFAULTS.get(method, {})) if method.startswith("frozen-") else set()
        if method not in METHODS or unknown:
            parser.error(f"--settings {method}: unknown method or setting {sorted(unknown) or method}")
    args.out.mkdir(parents=True, exist_ok=True)
    for dataset in args.datasets:
        full = data = load_fullway(args.data_root, dataset)
        for method in args.methods:
            settings = {
                **DEFAULTS.get(method, {}),
                **DEFAULTS.get(f"{method}/{dataset}", {}),
                **overrides.get(method, {}),
            }
            if method in LEARNER_METHODS and not args.collect:
                from fastadapt.registry import LEARNERS

                learner = LEARNERS.get(method).build(None, data.ways, **settings)
            for shots in args.shots:
                name = f"{dataset}-dev" if args.dev else dataset
                shown = f"{method}+names" if args.label_names else method
                path = args.out / f"{name}_{shown}_{shots}shot.json"
                runs = [r for r in collected if (r["dataset"], r["method"], r["shots"]) == (dataset, shown, shots)]
                for seed in [] if args.collect else args.seeds:
                    data = held_out_dev(full, shots, seed) if args.dev else full
                    if method in LEARNER_METHODS:
                        runs.append(learner_cell(learner, data, shots, seed, args.label_names))
                    elif method == "setfit":
                        runs.append(setfit_cell(data, shots, seed, DEFAULT_ENCODER))
                    else:
                        runs.append(frozen_cell(data, method, shots, seed, settings, args.label_names))
                    print(json.dumps({"dataset": dataset, "method": shown, "shots": shots, **runs[-1]}), flush=True)
                    # Written after every seed, so an interrupted run leaves its finished seeds.
                    write_cell(path, name, shown, shots, settings, runs, args)
                if runs and args.collect:
                    write_cell(path, name, shown, shots, settings, [{**r} for r in runs], args)


def write_cell(path: Path, dataset: str, method: str, shots: int, settings: dict, runs: list[dict], args) -> None:
    """The cell's JSON: settings, per-seed runs (accuracy in [0, 1], seconds), and their summary."""
    runs = [{k: v for k, v in r.items() if k not in ("dataset", "method", "shots")} for r in runs]
    cell = {
        "dataset": dataset,
        "method": method,
        "shots": shots,
        "encoder": DEFAULT_ENCODER,
        "settings": {"num_iterations": 20} if method == "setfit" else settings,
        "label_names": args.label_names,
        "seeds": [r["seed"] for r in runs],
        "note": args.note,
        "threads": args.threads,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "summary": summarise(runs),
        "runs": runs,
    }
    atomic_write_text(path, json.dumps(cell, indent=1) + "\n")
    print(json.dumps({k: cell[k] for k in ("dataset", "method", "shots", "summary")}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
