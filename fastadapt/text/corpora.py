"""Raw intent corpora as (texts, labels): CLINC150 and Banking77, read from the data root.

These readers return `TextCorpus` objects (sentences, int64 labels, class names); the dataset
suites in `fastadapt/data/` turn them into `LabelledDataset`s of embeddings or token ids, and the
full-way protocol (`fastadapt/text/fullway.py`) uses them directly.

Layouts (as published; `<root>` is the data root, e.g. `--data-root` or $FASTADAPT_DATA):
- `<root>/text/clinc150/data_full.json` (Larson et al. 2019, https://github.com/clinc/oos-eval):
  keys train/val/test (150 intents: 100/20/30 per intent) and oos_train/oos_val/oos_test,
  each a list of [text, intent].
- `<root>/text/banking77/{train,test}.csv` with columns text,category and `categories.json`
  (Casanueva et al. 2020, https://github.com/PolyAI-LDN/task-specific-datasets).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import FastAdaptError

#: Official homes; `fastadapt.data.download.download_file` fetches them for users with internet.
#: sha256 of the files this project was tested with (identical to the upstream files at the time).
CLINC150_URL = "https://raw.githubusercontent.com/clinc/oos-eval/master/data/data_full.json"
BANKING77_URL = "https://raw.githubusercontent.com/PolyAI-LDN/task-specific-datasets/master/banking_data/"
SHA256 = {
    "clinc150/data_full.json": "36923c3705a59e08fe9c3883d8bc2dd966ef93e22cb78ac41171782a698d56e0",
    "banking77/train.csv": "b06e26ac675513959a63135f11b94ea7786ed02da65db93a5650d8838cbc664b",
    "banking77/test.csv": "d12d6e3bc4c3103966ae786dc435913c0c563dfa328f5a3646d0e62cfeeb474d",
    "banking77/categories.json": "53261da888122daf2d120d925458631d9619e15d82e56052e7a42e535ce32b63",
}
OOS = "oos"


@dataclass
class TextCorpus:
    """`texts[i]` has label `labels[i]` (int64 in [0, len(class_names))); `name` e.g. "banking77/test"."""

    texts: list[str]
    labels: np.ndarray
    class_names: list[str]
    name: str

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(self.class_names))

    def subset(self, classes: list[int] | np.ndarray, name: str) -> TextCorpus:
        """The sentences of `classes`, relabelled 0..len(classes)-1 in that order."""
        classes = np.asarray(classes, dtype=np.int64)
        remap = np.full(len(self.class_names), -1, np.int64)
        remap[classes] = np.arange(len(classes))
        keep = np.flatnonzero(remap[self.labels] >= 0)
        return TextCorpus(
            [self.texts[i] for i in keep], remap[self.labels[keep]], [self.class_names[c] for c in classes], name
        )


def _missing(path: Path, what: str, url: str) -> FastAdaptError:
    return FastAdaptError(
        f"{what} not found at {path}; download it from {url} into that folder, or point --data-root / "
        "FASTADAPT_DATA at a folder that has text/ in it"
    )


def read_clinc150(root: str | Path, split: str, oos: bool = False) -> TextCorpus:
    """CLINC150's in-scope sentences of `split` (train, val, test), 150 intents in sorted name
    order; with `oos=True`, the split's out-of-scope sentences instead (one class, "oos").

    Raises FastAdaptError when the file is missing, not JSON, or not in the published layout."""
    path = Path(root) / "text" / "clinc150" / "data_full.json"
    if split not in ("train", "val", "test"):
        raise FastAdaptError(f"clinc150 has no split {split!r}; valid splits: train, val, test")
    if not path.is_file():
        raise _missing(path, "CLINC150 (data_full.json)", CLINC150_URL)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FastAdaptError(f"{path} is not valid UTF-8 JSON ({exc}); download it again from {CLINC150_URL}") from None
    key = f"oos_{split}" if oos else split
    rows = data.get(key) if isinstance(data, dict) else None
    if not isinstance(rows, list) or not all(
        isinstance(r, list) and len(r) == 2 and all(isinstance(c, str) for c in r) for r in rows
    ):
        raise FastAdaptError(f"{path}: key {key!r} must be a list of [text, intent] pairs; is this data_full.json?")
    if oos:
        return TextCorpus([t for t, _ in rows], np.zeros(len(rows), np.int64), [OOS], f"clinc150/oos_{split}")
    # Intent ids from the training split, so every split numbers the 150 intents alike.
    names = sorted({intent for _, intent in data.get("train", rows)})
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted({intent for _, intent in rows if intent not in index})
    if unknown:
        raise FastAdaptError(f"{path}: split {split!r} has intent {unknown[0]!r} that the train split lacks")
    return TextCorpus([t for t, _ in rows], np.array([index[i] for _, i in rows], np.int64), names, f"clinc150/{split}")


def read_banking77(root: str | Path, split: str) -> TextCorpus:
    """Banking77's `split` (train: 10,003 sentences; test: 3,080), intents in categories.json order.

    Raises FastAdaptError naming the file and line for a missing file, a missing column, an
    unknown category or an empty text."""
    folder = Path(root) / "text" / "banking77"
    if split not in ("train", "test"):
        raise FastAdaptError(f"banking77 has no split {split!r}; valid splits: train, test")
    path, categories = folder / f"{split}.csv", folder / "categories.json"
    for p in (path, categories):
        if not p.is_file():
            raise _missing(p, f"Banking77 ({p.name})", BANKING77_URL + p.name)
    try:
        names = json.loads(categories.read_text(encoding="utf-8"))
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FastAdaptError(
            f"{folder}: unreadable Banking77 file ({exc}); download it again from {BANKING77_URL}"
        ) from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise FastAdaptError(f"{categories} must be a JSON list of category names")
    index = {n: i for i, n in enumerate(names)}
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or not {"text", "category"} <= set(reader.fieldnames):
        raise FastAdaptError(f"{path}: expected columns text,category, got {','.join(reader.fieldnames or [])}")
    texts, labels = [], []
    for line, row in enumerate(reader, start=2):
        if row["category"] not in index:
            raise FastAdaptError(f"{path}:{line}: category {row['category']!r} is not in {categories.name}")
        if not (row["text"] or "").strip():
            raise FastAdaptError(f"{path}:{line}: empty text")
        texts.append(row["text"].strip())
        labels.append(index[row["category"]])
    return TextCorpus(texts, np.array(labels, np.int64), list(names), f"banking77/{split}")
