"""Lake et al.'s 20-run within-alphabet one-shot benchmark for a trained run folder."""

from __future__ import annotations

import json
from pathlib import Path

from .data.lake import lake_episode, load_lake_runs, score_lake
from .errors import FastAdaptError
from .trainer import load_run
from .utils import atomic_write_text


def lake_benchmark(run_dir: str | Path, data_root=None) -> dict:
    """Score each of the 400 trials by the learner's 20-way 1-shot prediction; write lake.json."""
    run_dir = Path(run_dir)
    trainer = load_run(run_dir, data_root=data_root)
    config, learner = trainer.config, trainer.learner
    if config.data.dataset != "omniglot":
        raise FastAdaptError(f"the Lake benchmark needs an Omniglot run; {run_dir} trained on {config.data.dataset!r}")
    if learner.needs_head and config.train.episodes.ways != 20:
        raise FastAdaptError(
            f"{config.learner.name} in {run_dir} has a {config.train.episodes.ways}-way head; "
            f"the Lake runs are 20-way: train with --set train.episodes.ways=20"
        )
    runs = load_lake_runs(data_root, size=config.data.image_size)
    learner.eval()
    predictions = [
        learner.predict(lake_episode(run).without_query_labels().to(trainer.device)).argmax(-1).cpu() for run in runs
    ]
    score = score_lake(predictions, runs)
    result = {
        "preset": config.name,
        "method": config.learner.name,
        "accuracy": score["accuracy"],
        "mean_error": score["mean_error"],
        "error_per_run": score["error_per_run"],
        "trials": sum(len(r.answers) for r in runs),
        "train_split": config.data.train_split,
        "clean": config.data.train_split == "background",
        "bn_mode": learner.describe().get("bn_mode"),
    }
    atomic_write_text(run_dir / "lake.json", json.dumps(result, indent=2))
    return result
