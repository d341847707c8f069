"""`clinc150`: CLINC150 (Larson et al. 2019, https://github.com/clinc/oos-eval), 150 in-scope
intents over 10 domains, as few-shot sentence classification.

Data: `<data root>/text/clinc150/data_full.json` (`--download` fetches it). Episodic protocol:
disjoint train / val / test intents, 50 / 50 / 50, five shipped class splits
(`splits/clinc150/{train,val,test}-<k>.txt`, `data.args.class_split` k = 0..4, written by
scripts/make_text_splits.py). Episodes use the in-scope sentences only, each intent's official
train, val and test sentences pooled (100 + 20 + 30 = 150 per intent): the intents, not the
sentences, separate meta-training from testing. The out-of-scope sentences are not in any split
here (out-of-scope detection is the full-way protocol's, `fastadapt/text/`). Split `all` holds
the 150 intents. Items: see `fastadapt/data/text.py`.
"""

from __future__ import annotations

import numpy as np

from ..registry import DATASETS
from ..text.corpora import CLINC150_URL, SHA256, TextCorpus, read_clinc150
from .safe_pickle import SPLITS_DIR, split_classes
from .text import BenchmarkArgs, TextSuite, checked_split_names, fetch_text_files


@DATASETS.register("clinc150")
class Clinc150Suite(TextSuite):
    """CLINC150's in-scope intents as few-shot tasks (see the module docstring)."""

    Args = BenchmarkArgs

    @property
    def split_tag(self) -> str:
        return f"/split{self.args.class_split}"

    def read_pool(self) -> TextCorpus:
        folder = self.root / "text" / "clinc150"
        fetch_text_files(folder, {"data_full.json": (CLINC150_URL, SHA256["clinc150/data_full.json"])}, self.download)
        parts = [read_clinc150(self.root, split) for split in ("train", "val", "test")]
        return TextCorpus(
            [t for p in parts for t in p.texts],
            np.concatenate([p.labels for p in parts]),
            parts[0].class_names,
            "clinc150",
        )

    def class_split_ids(self, pool: TextCorpus) -> dict[str, np.ndarray]:
        index = {name: i for i, name in enumerate(pool.class_names)}
        k = self.args.class_split
        return {
            split: checked_split_names(
                SPLITS_DIR / "clinc150" / f"{split}-{k}.txt",
                split_classes("clinc150", f"{split}-{k}"),
                index,
                "clinc150's data_full.json",
            )
            for split in ("train", "val", "test")
        }
