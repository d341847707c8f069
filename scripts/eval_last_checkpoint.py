"""Evaluate the newest checkpoint of an interrupted run, as `fastadapt train` would at its end.

For a run stopped before `train.steps` (a time budget ran out): the newest checkpoint's weights
become the selected weights (`best.safetensors`, recording that step) and the run's own test
protocol writes `eval.json` (its `train_steps` says how far training got). Resuming the run
later (`fastadapt train RUN`) continues from the same checkpoint and overwrites both files.

    OMP_NUM_THREADS=1 python scripts/eval_last_checkpoint.py runs/maml-trpo-point2d
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from fastadapt.config import config_from_dict
from fastadapt.divergence import save_finite_weights
from fastadapt.runlock import read_run_config, run_lock
from fastadapt.trainer import Trainer, evaluate_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = config_from_dict(read_run_config(args.run))
    with run_lock(args.run):
        trainer = Trainer(config, args.run, quiet=True)
        trainer._resume()
        step = trainer.state["step"]
        if step == 0:
            sys.exit(f"{args.run} has no checkpoint to evaluate")
        save_finite_weights(
            args.run / "best.safetensors", trainer.learner, {"step": step, "fingerprint": trainer.fingerprint}
        )
        trainer.state["best_step"] = step
        record = evaluate_run(args.run, trainer=trainer)
    print(json.dumps({k: record[k] for k in ("preset", "train_steps", "metric", record["metric"], "ci95")}))
    print(json.dumps(record.get("other_metrics", {})))


if __name__ == "__main__":
    main()
