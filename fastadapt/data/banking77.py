"""`banking77`: Banking77 (Casanueva et al. 2020, https://github.com/PolyAI-LDN/task-specific-datasets),
77 fine-grained banking intents, as few-shot sentence classification.

Data: `<data root>/text/banking77/{train,test}.csv` and `categories.json` (`--download` fetches
them). Episodic protocol: disjoint train / val / test intents, 25 / 25 / 27, five shipped class
splits (`splits/banking77/{train,val,test}-<k>.txt`, `data.args.class_split` k = 0..4, written by
scripts/make_text_splits.py). For episodes, each intent's sentences are pooled from the official
train and test files (13,083 sentences, 75 to 227 per intent): the intents, not the sentences,
separate meta-training from testing, so no test intent's sentence is seen in training. Split
`all` holds the 77 intents (the same pooled sentences). Items: see `fastadapt/data/text.py`.
"""

from __future__ import annotations

import numpy as np

from ..registry import DATASETS
from ..text.corpora import BANKING77_URL, SHA256, TextCorpus, read_banking77
from .safe_pickle import SPLITS_DIR, split_classes
from .text import BenchmarkArgs, TextSuite, checked_split_names, fetch_text_files


@DATASETS.register("banking77")
class Banking77Suite(TextSuite):
    """Banking77 intents as few-shot tasks (see the module docstring)."""

    Args = BenchmarkArgs

    @property
    def split_tag(self) -> str:
        return f"/split{self.args.class_split}"

    def read_pool(self) -> TextCorpus:
        folder = self.root / "text" / "banking77"
        files = ("train.csv", "test.csv", "categories.json")
        fetch_text_files(folder, {f: (BANKING77_URL + f, SHA256[f"banking77/{f}"]) for f in files}, self.download)
        train, test = read_banking77(self.root, "train"), read_banking77(self.root, "test")
        return TextCorpus(
            train.texts + test.texts, np.concatenate([train.labels, test.labels]), train.class_names, "banking77"
        )

    def class_split_ids(self, pool: TextCorpus) -> dict[str, np.ndarray]:
        index = {name: i for i, name in enumerate(pool.class_names)}
        k = self.args.class_split
        return {
            split: checked_split_names(
                SPLITS_DIR / "banking77" / f"{split}-{k}.txt",
                split_classes("banking77", f"{split}-{k}"),
                index,
                "banking77's categories.json",
            )
            for split in ("train", "val", "test")
        }
