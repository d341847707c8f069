"""How long `predict` takes for a 5-way 5-shot support set and 100 query images, on CPU.

For ProtoNets and MAML (10 adaptation steps), both with the full Conv-4 of the Omniglot presets
(trained for one step only: speed does not depend on the weights), it times in one process:
- `included`: `fastadapt.load(run)` + adapt + predict from the image files;
- `excluded`: adapt + predict from the image files, the model already loaded;
- `tensors`: the learner's own `predict` on images already decoded (the floor), so
  `excluded / tensors` is what reading and preprocessing the files costs;
and once, the whole `fastadapt predict` command in a fresh process (Python start-up and imports
included: what a user waits for). One JSON line per learner; medians over `--repeats`.

    FASTADAPT_DATA=../shared/data python benchmarks/predict_speed.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from drawn_folder import make_folder  # noqa: E402

import fastadapt  # noqa: E402
from fastadapt.config import load_config  # noqa: E402
from fastadapt.data.episode import Episode  # noqa: E402
from fastadapt.trainer import Trainer  # noqa: E402
from fastadapt.utils import machine_info  # noqa: E402

LEARNERS = {"protonet": ("protonet-omniglot-5w1s", None), "maml": ("maml-omniglot-5w1s", 10)}


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", type=Path, help="work folder (default: a temporary one)")
    args = parser.parse_args()
    work = args.dir or Path(tempfile.mkdtemp(prefix="fastadapt-predict-"))
    classes = ("letter-A", "letter-K", "digit-3", "star", "ring")
    folder = make_folder(work / "drawn", per_class=25, seed=3, classes=classes)
    support = [(p, c) for c in classes for p in sorted((folder / c).iterdir())[:5]]
    queries = [p for c in classes for p in sorted((folder / c).iterdir())[5:]]
    (work / "support").mkdir(exist_ok=True)
    (work / "support.csv").write_text("path,label\n" + "".join(f"{p},{c}\n" for p, c in support))
    (work / "queries.csv").write_text("path\n" + "".join(f"{p}\n" for p in queries))
    for name, (preset, steps) in LEARNERS.items():
        run = work / f"run-{name}"
        if not (run / "eval.json").exists():
            config = load_config(preset, ["train.steps=1", "data.val_split=null", "eval.episodes=2"])
            Trainer(config, run, quiet=True).fit()
        paths, labels = [str(p) for p, _ in support], [c for _, c in support]
        query_paths = [str(p) for p in queries]

        def included():
            return fastadapt.load(run).adapt(paths, labels, adapt_steps=steps).predict_proba(query_paths)

        model = fastadapt.load(run)
        task = model.adapt(paths, labels, adapt_steps=steps)
        x_support, x_query = model.inputs(paths), model.inputs(query_paths)
        episode = Episode(x_support, task.support_y, x_query, None, ways=5, shots=5)

        def tensors():
            with torch.enable_grad() if steps else torch.no_grad():
                return model.learner.predict(episode)

        t_included, _ = timed(included, args.repeats)
        t_excluded, _ = timed(
            lambda: model.adapt(paths, labels, adapt_steps=steps).predict_proba(query_paths), args.repeats
        )
        t_tensors, _ = timed(tensors, args.repeats)
        command = [
            sys.executable,
            "-m",
            "fastadapt",
            "predict",
            str(run),
            "--support",
            str(work / "support.csv"),
            "--query",
            str(work / "queries.csv"),
            "--out",
            str(work / f"pred-{name}.csv"),
        ]
        if steps:
            command += ["--adapt-steps", str(steps)]
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        t_cli = time.perf_counter() - start
        print(
            json.dumps(
                {
                    "learner": name,
                    "adapt_steps": steps,
                    "support": "5-way 5-shot",
                    "queries": len(queries),
                    "seconds_load_included": round(t_included, 4),
                    "seconds_load_excluded": round(t_excluded, 4),
                    "seconds_tensors_only": round(t_tensors, 4),
                    "seconds_cli_process": round(t_cli, 3),
                    "file_overhead_ratio": round(t_excluded / t_tensors, 2),
                    "repeats": args.repeats,
                    "threads": torch.get_num_threads(),
                    "cpu": machine_info(torch.device("cpu"))["cpu"],
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
