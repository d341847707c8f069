"""What the text datasets (`banking77`, `clinc150`, `textfile`) share: sentences in, items out.

A text suite holds a *pool* (`TextCorpus`: every sentence of every class, class ids in a fixed
order) and a class split (class ids of train / val / test, disjoint). Its items are, by
`data.args.representation`:

- "embedding": frozen sentence embeddings of `data.args.encoder` (default all-MiniLM-L6-v2,
  Reimers & Gurevych 2019), float32 (N, D), L2-normalised, computed once for the whole pool and
  cached on disk (`fastadapt.text.encoder.embed`: keyed by the encoder's file contents, the
  settings and every sentence, so a changed model or file recomputes them). Learners on these
  vectors use the `raw-input` (identity) or `mlp` backbone.
- "tokens": the encoder tokenizer's ids, int64 (N, L), padded with the tokenizer's pad id to the
  pool's longest sentence (at most `max_length`), for learners that adapt the encoder itself.

Splits: "train", "val", "test" (class subsets, relabelled 0..n-1) and "all" (every class: the
full-way protocol, `fastadapt predict`, cross-domain evaluation). `items_from_texts` turns a
user's sentences into items exactly as the pool's were made, so `fastadapt predict` and
`fastadapt.load(run).adapt(texts, labels)` read sentences as the run was trained on them.
"""

from __future__ import annotations

import abc
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..errors import FastAdaptError
from ..paths import resolve_data_root
from .base import ClassificationSuite
from .class_splits import CLASS_SPLITS as LISTED_SPLITS
from .class_splits import require_listed
from .dataset import LabelledDataset

#: Episodic class splits shipped per benchmark (scripts/make_text_splits.py writes them).
CLASS_SPLITS = 5
TEXT_SPLITS = ("train", "val", "test", "all")


@dataclass
class EncoderArgs:
    """`data.args` every text dataset takes: which encoder makes the items, and in what form."""

    encoder: str = "all-MiniLM-L6-v2"  # sentence-transformers model: a local folder or a hub name (default: offline)
    representation: Literal["embedding", "tokens"] = "embedding"  # frozen cached vectors (N, D) or token ids (N, L)
    max_length: int | None = None  # tokens: longest sequence kept (truncated beyond); null: the encoder's own limit

    def __post_init__(self):
        if not isinstance(self.encoder, str) or not self.encoder.strip():
            raise FastAdaptError(
                f"data.args.encoder must name a sentence-transformers model (a folder or hub name), got {self.encoder!r}"
            )
        if self.max_length is not None and not 2 <= self.max_length <= 8192:
            raise FastAdaptError(f"data.args.max_length = {self.max_length} is out of range; it must be in 2..8192")


@dataclass
class BenchmarkArgs(EncoderArgs):
    """`data.args` of the shipped benchmarks: the encoder settings plus the episodic class split."""

    class_split: int = 0  # which shipped train/val/test intent split (0..4) the episodes use

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.class_split, bool) or not 0 <= self.class_split < CLASS_SPLITS:
            raise FastAdaptError(
                f"data.args.class_split = {self.class_split!r} is out of range; it must be in 0..{CLASS_SPLITS - 1}"
            )


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_text_files(folder: Path, files: dict[str, tuple[str, str]], download: bool) -> None:
    """With `download`, fetch each missing `name` of `files` (name -> (url, sha256)) into `folder`
    and check its SHA-256 (a mismatch removes it: one line). Without it, nothing happens here:
    the readers report a missing file with its URL."""
    if not download:
        return
    from .download import download_file

    for name, (url, digest) in files.items():
        dest = folder / name
        if dest.is_file():
            continue
        download_file(url, dest)
        if sha256_of(dest) != digest:
            dest.unlink(missing_ok=True)
            raise FastAdaptError(f"download of {url} has an unexpected SHA-256; try again or save it by hand as {dest}")


class TextSuite(ClassificationSuite):
    """Few-shot classification of sentences (see the module docstring). Subclasses implement
    `read_pool()` and `class_split_ids(pool)`."""

    Args = EncoderArgs
    splits = TEXT_SPLITS
    #: `fastadapt predict` and the API read the user's strings as sentences, not file paths.
    modality = "text"

    @abc.abstractmethod
    def read_pool(self):
        """Every sentence of every class, as a `fastadapt.text.corpora.TextCorpus`."""

    @abc.abstractmethod
    def class_split_ids(self, pool) -> dict[str, np.ndarray]:
        """{"train", "val", "test"} -> sorted class ids of `pool`, pairwise disjoint."""

    @property
    def root(self) -> Path:
        """The data root (`--data-root`, $FASTADAPT_DATA, or the user cache)."""
        return resolve_data_root(self.data_root)

    @property
    def split_tag(self) -> str:
        """Names the class split in dataset names (saved with fixed episode sets)."""
        return ""

    def pool(self):
        if getattr(self, "_pool", None) is None:
            self._pool = self.read_pool()
        return self._pool

    def items_from_texts(
        self, texts: list[str], item_shape: tuple[int, ...] | None = None, cache: bool = False
    ) -> torch.Tensor:
        """Sentences as this suite's items: float32 (N, D) embeddings, or int64 (N, L) token ids
        padded or truncated to `item_shape[0]` when given (a trained run's sequence length).
        `cache`: keep the embeddings in the on-disk cache (the pool's; a user's few sentences
        cost less to encode than a cache file).

        Raises FastAdaptError for an empty list or an empty (whitespace-only) sentence."""
        texts = list(texts)
        if not texts:
            raise FastAdaptError("no sentences given; pass at least one")
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise FastAdaptError(f"sentence {i} is {t!r}; every sentence must be non-empty text")
        from ..text.encoder import embed, pad_token_id, tokenize

        if self.args.representation == "embedding":
            return torch.from_numpy(embed(texts, self.args.encoder, use_cache=cache))
        length = item_shape[0] if item_shape else self.args.max_length
        ids = tokenize(texts, self.args.encoder, max_length=length)
        if item_shape and ids.shape[1] < length:
            pad = np.full((len(ids), length - ids.shape[1]), pad_token_id(self.args.encoder), np.int64)
            ids = np.concatenate([ids, pad], axis=1)
        return torch.from_numpy(np.ascontiguousarray(ids))

    def item_from_file(self, path, channels: int):
        raise FastAdaptError(
            f"{self.config.data.dataset} runs take sentences, not files: pass a list of strings "
            f"(or a CSV with a text column to `fastadapt predict`); got the path {path}"
        )

    def load_all(self) -> LabelledDataset:
        """Every class of the pool as items (memoised; the other splits are class subsets of it)."""
        if getattr(self, "_everything", None) is None:
            pool = self.pool()
            self._everything = LabelledDataset(
                self.items_from_texts(pool.texts, cache=True), pool.labels, list(pool.class_names), pool.name
            )
        return self._everything

    def texts(self, split: str):
        """The sentences of `split` as a `TextCorpus` (class ids as in `split(split)`), for learners
        and protocols that need the raw text."""
        pool = self.pool()
        if split == "all":
            return pool
        ids = self._split_ids(split)
        return pool.subset(ids, f"{pool.name}{self.split_tag}/{split}")

    def _split_ids(self, split: str) -> np.ndarray:
        ids = self.class_split_ids(self.pool())
        if split in LISTED_SPLITS:  # one the user's data.args lists may leave out (textfile)
            require_listed(ids, split, self.config.data.dataset, "labels")
        if split not in ids:
            raise FastAdaptError(
                f"{self.config.data.dataset} has no split {split!r}; valid splits: {', '.join(self.splits)}"
            )
        if not len(ids[split]):
            raise FastAdaptError(
                f"the {split!r} split of {self.config.data.dataset} has no classes; change its class split"
            )
        return ids[split]

    def load_split(self, split: str) -> LabelledDataset:
        if split == "all":
            data = self.load_all()
            return LabelledDataset(data.items, data.labels, data.class_names, f"{data.name}/all")
        ids = self._split_ids(split)  # checked before the slow encoding
        data = self.load_all()
        return data.subset(ids, f"{data.name}{self.split_tag}/{split}")


def checked_split_names(path: Path, names: list[str], index: dict[str, int], where: str) -> np.ndarray:
    """Class ids of the intent `names` listed in shipped split file `path`; an unknown name is a
    one-line error (the data is not the published version)."""
    unknown = [n for n in names if n not in index]
    if unknown:
        raise FastAdaptError(
            f"split file {path} names intent {unknown[0]!r} that {where} lacks; is it the published version of the data?"
        )
    return np.sort(np.array([index[n] for n in names], np.int64))
