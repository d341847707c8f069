"""Write the episodic class splits of the text datasets, shipped in `fastadapt/data/splits/`.

    .venv/bin/python scripts/make_text_splits.py --data-root ../shared/data

Banking77: 77 intents -> 25 train / 25 val / 27 test; CLINC150: its 150 in-scope intents ->
50 / 50 / 50 (issue 11). Class split k (0..4) is a permutation of the sorted intent names drawn
from numpy's PCG64 seeded with [SEED, k], cut in that order; so the five splits are independent
and regenerating them gives byte-identical files. Each file lists one intent per line, sorted,
after '#' lines that record this provenance. Run once; the files are committed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fastadapt.paths import resolve_data_root
from fastadapt.text.corpora import read_banking77, read_clinc150
from fastadapt.utils import atomic_write_text

SEED = 20191111  # fixed once (arbitrary); changing it would change every shipped split
CLASS_SPLITS = 5
SIZES = {"banking77": (25, 25, 27), "clinc150": (50, 50, 50)}
SPLITS_DIR = Path(__file__).resolve().parent.parent / "fastadapt" / "data" / "splits"


def intent_names(dataset: str, root: Path) -> list[str]:
    corpus = read_banking77(root, "train") if dataset == "banking77" else read_clinc150(root, "train")
    return sorted(corpus.class_names)


def class_splits(names: list[str], sizes: tuple[int, int, int], k: int) -> dict[str, list[str]]:
    """Class split `k` of the sorted `names`: {"train", "val", "test"} -> sorted intent names."""
    if sum(sizes) != len(names):
        raise SystemExit(f"expected {sum(sizes)} intents, found {len(names)}")
    order = np.random.default_rng([SEED, k]).permutation(len(names))
    ends = np.cumsum(sizes)
    cuts = {"train": order[: ends[0]], "val": order[ends[0] : ends[1]], "test": order[ends[1] :]}
    return {split: sorted(names[i] for i in index) for split, index in cuts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None, help="folder holding text/banking77 and text/clinc150")
    args = parser.parse_args()
    root = resolve_data_root(args.data_root)
    for dataset, sizes in SIZES.items():
        names = intent_names(dataset, root)
        for k in range(CLASS_SPLITS):
            for split, chosen in class_splits(names, sizes, k).items():
                head = (
                    f"# {dataset} class split {k}, {split}: {len(chosen)} of {len(names)} intents.\n"
                    f"# scripts/make_text_splits.py: permutation of the sorted intents by "
                    f"numpy default_rng([{SEED}, {k}]), cut {'/'.join(map(str, sizes))} (train/val/test).\n"
                )
                path = SPLITS_DIR / dataset / f"{split}-{k}.txt"
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(path, head + "\n".join(chosen) + "\n")
        print(f"{dataset}: {CLASS_SPLITS} class splits of {len(names)} intents in {SPLITS_DIR / dataset}")


if __name__ == "__main__":
    main()
