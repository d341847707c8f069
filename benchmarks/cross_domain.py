"""Cross-domain table: runs meta-trained on Omniglot, evaluated on a user-style image folder.

Each run is scored through the same path as `fastadapt eval RUN --data imagefolder --set
data.args.root=FOLDER` (1000 fixed, seeded episodes; the run's image size and channel count;
the folder read as the run's training data was, i.e. inverted for Omniglot runs) at 5-way
1-shot and 5-way 5-shot, next to the run's own Omniglot test result. Prints one JSON line per
cell, then a markdown table.

    python benchmarks/drawn_folder.py /tmp/drawn            # 44 classes x 20 drawn glyphs
    python benchmarks/cross_domain.py /tmp/drawn runs/protonet runs/maml runs/baseline
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fastadapt.trainer import evaluate_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="image folder, one sub-folder per class")
    parser.add_argument("runs", type=Path, nargs="+", help="trained run folders")
    parser.add_argument("--episodes", type=int, default=1000)
    args = parser.parse_args()
    rows = []
    for run in args.runs:
        own = json.loads((run / "eval.json").read_text())
        for shots in (1, 5):
            record = evaluate_run(
                run,
                ways=5,
                shots=shots,
                queries=15,
                episodes=args.episodes,
                data="imagefolder",
                data_settings=[f"data.args.root={args.folder}"],
            )
            cell = {
                "run": str(run),
                "method": record["method"],
                "train_steps": record["train_steps"],
                "shots": shots,
                "accuracy": record["accuracy"],
                "ci95": record["ci95"],
                "episodes": record["episodes"],
                "omniglot_5w1s": own["accuracy"],
                "eval_seconds": record["eval_seconds"],
            }
            print(json.dumps(cell), flush=True)
            rows.append(cell)
    print("\n| method (training steps) | Omniglot 5w1s (own test) | drawn glyphs 5w1s | drawn glyphs 5w5s |")
    print("| --- | --- | --- | --- |")
    for run in args.runs:
        cells = {r["shots"]: r for r in rows if r["run"] == str(run)}
        first = cells[1]
        shown = {k: f"{100 * c['accuracy']:.2f} ± {100 * c['ci95']:.2f}" for k, c in cells.items()}
        print(
            f"| {first['method']} ({first['train_steps']}) | {100 * first['omniglot_5w1s']:.2f} | {shown[1]} | {shown[5]} |"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
