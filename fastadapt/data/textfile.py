"""`textfile`: the user's own labelled sentences (CSV, TSV or JSONL) as a few-shot dataset.

    data: {dataset: textfile, args: {path: tickets.csv, text_column: text, label_column: label}}

- CSV / TSV: UTF-8 (a BOM is fine), a header row naming the columns, `delimiter` (default ","
  for .csv, a tab for .tsv); fields holding the delimiter or a newline are quoted, as any
  spreadsheet writes them. JSONL: one JSON object per line with the two keys.
- Classes are the distinct labels, sorted (class id = position). Class splits as `imagefolder`:
  `train_classes` / `val_classes` / `test_classes` lists, or `split_fractions` of the labels
  shuffled by `split_seed` (default 60 / 20 / 20 %); split `all` holds every class.
- Every problem is one line naming the file and line: bytes that are not UTF-8, an empty text or
  label, a missing column or key, a malformed row, and a class with fewer examples than an
  episode takes (shots + queries of training or evaluation, whichever is larger).

Items (embeddings or token ids) are made as for the benchmarks (`fastadapt/data/text.py`); the
embeddings are cached keyed by every sentence, so editing the file recomputes them.
`read_text_table` is also what `fastadapt predict` reads a text run's support and query files with.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ..errors import FastAdaptError
from ..registry import DATASETS
from ..text.corpora import TextCorpus
from .class_splits import class_splits
from .text import EncoderArgs, TextSuite

FORMATS = ("csv", "tsv", "jsonl", "lines")
_SUFFIX = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".txt": "lines"}


@dataclass
class TextTable:
    """Rows of a text file: `texts[i]` (stripped), `labels[i]` (None without a label column) and
    `lines[i]`, the 1-based line the row ends on (for messages)."""

    path: Path
    texts: list[str]
    labels: list[str] | None
    lines: list[int]


def format_of(path: Path, fmt: str = "auto") -> str:
    """The table format: `fmt`, or for "auto" the file's extension (.csv, .tsv, .jsonl, .txt)."""
    if fmt != "auto":
        if fmt not in FORMATS:
            raise FastAdaptError(f"unknown text file format {fmt!r}; choose auto, {', '.join(FORMATS)}")
        return fmt
    found = _SUFFIX.get(path.suffix.lower())
    if found is None:
        raise FastAdaptError(
            f"{path}: cannot tell the format from the extension {path.suffix!r}; name it .csv, .tsv, "
            f".jsonl or .txt, or set data.args.format"
        )
    return found


def read_utf8(path: Path) -> str:
    """The file's text; bytes that are not UTF-8 are one line naming the file, line and byte."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FastAdaptError(f"text file {path} does not exist; fix the path") from None
    except IsADirectoryError:
        raise FastAdaptError(f"{path} is a folder; give a CSV, TSV, JSONL or text file") from None
    except OSError as exc:
        raise FastAdaptError(f"cannot read {path} ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise FastAdaptError(
            f"{path}:{line}: byte 0x{data[exc.start]:02x} at column {column} is not UTF-8; save the file as UTF-8"
        ) from None


def _checked(path: Path, line: int, text, label, label_column: str | None) -> tuple[str, str | None]:
    if not isinstance(text, str) or not text.strip():
        raise FastAdaptError(f"{path}:{line}: empty text; remove the row or fill it in")
    if label_column is None:
        return text.strip(), None
    if isinstance(label, bool) or not isinstance(label, (str, int)) or not str(label).strip():
        raise FastAdaptError(f"{path}:{line}: empty or non-text label {label!r} in {label_column!r}")
    return text.strip(), str(label).strip()


def read_text_table(
    path: str | Path,
    text_column: str = "text",
    label_column: str | None = "label",
    delimiter: str | None = None,
    fmt: str = "auto",
    optional_label: bool = False,
    fix_columns: str | None = None,
) -> TextTable:
    """Labelled (or, with `label_column` None, unlabelled) sentences from a CSV / TSV (header row
    naming the columns), JSONL (one object per line) or plain text file (one sentence per line,
    unlabelled, blank lines skipped). `optional_label`: a file without the label column (CSV/TSV
    header, or JSONL's first object) is read unlabelled. Raises one-line FastAdaptErrors naming
    the file and line; `fix_columns` replaces the advice on a missing column (default: the
    data.args settings that name the columns)."""
    path = Path(path).expanduser()
    fmt = format_of(path, fmt)
    text = read_utf8(path)
    texts, labels, lines = [], [], []
    if fmt == "lines":
        if optional_label:
            label_column = None
        if label_column is not None:
            raise FastAdaptError(
                f"{path}: a plain text file has no labels; give a CSV, TSV or JSONL with a label column"
            )
        for line, row in enumerate(text.splitlines(), start=1):
            if row.strip():
                texts.append(row.strip())
                lines.append(line)
    elif fmt == "jsonl":
        for line, row in enumerate(text.splitlines(), start=1):
            if not row.strip():
                continue
            try:
                record = json.loads(row)
            except json.JSONDecodeError as exc:
                raise FastAdaptError(f"{path}:{line}: not valid JSON ({exc.msg}); write one object per line") from None
            if not isinstance(record, dict):
                raise FastAdaptError(f"{path}:{line}: expected a JSON object, got {type(record).__name__}")
            if optional_label and not texts and label_column not in record:
                label_column = None  # decided by the first object: the file is unlabelled
            for key in (text_column, label_column):
                if key is not None and key not in record:
                    raise FastAdaptError(
                        f"{path}:{line}: no key {key!r} (keys: {', '.join(record) or 'none'}); "
                        + (fix_columns or f"set data.args.{'text' if key == text_column else 'label'}_column")
                    )
            t, label = _checked(path, line, record[text_column], record.get(label_column), label_column)
            texts.append(t)
            labels.append(label)
            lines.append(line)
    else:
        sep = delimiter or ("\t" if fmt == "tsv" else ",")
        if len(sep) != 1:
            raise FastAdaptError(f"data.args.delimiter must be one character, got {sep!r}")
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
        try:
            header = next((r for r in reader if r), None)
            if header is None:
                raise FastAdaptError(
                    f"{path} is empty; it needs a header row naming its columns, then one row a sentence"
                )
            names = [c.strip() for c in header]
            where = {n: i for i, n in enumerate(names)}
            if optional_label and label_column not in where:
                label_column = None
            for key, what in ((text_column, "text"), (label_column, "label")):
                if key is not None and key not in where:
                    raise FastAdaptError(
                        f"{path}:{reader.line_num}: no column {key!r} in the header ({sep.join(names)}); "
                        + (fix_columns or f"set data.args.{what}_column or the file's header")
                        + ("" if len(names) > 1 else f"; is the delimiter {sep!r} right?")
                    )
            for row in reader:
                if not row or not any(c.strip() for c in row):
                    continue
                line = reader.line_num
                if len(row) != len(names):
                    raise FastAdaptError(
                        f"{path}:{line}: {len(row)} fields but the header has {len(names)}; quote "
                        f"fields that contain {sep!r}"
                    )
                label = row[where[label_column]] if label_column is not None else None
                t, label = _checked(path, line, row[where[text_column]], label, label_column)
                texts.append(t)
                labels.append(label)
                lines.append(line)
        except csv.Error as exc:
            raise FastAdaptError(f"{path}:{reader.line_num}: malformed row ({exc}); check its quotes") from None
    if not texts:
        raise FastAdaptError(f"{path} has no sentences; add one row per sentence")
    return TextTable(path, texts, labels if label_column is not None else None, lines)


@DATASETS.register("textfile")
class TextFileSuite(TextSuite):
    """Few-shot classification over the labels of a user's text file (see the module docstring)."""

    @dataclass
    class Args(EncoderArgs):
        path: str | None = None  # required: the CSV, TSV or JSONL file of labelled sentences
        format: Literal["auto", "csv", "tsv", "jsonl"] = "auto"  # auto: from the extension
        delimiter: str | None = None  # CSV/TSV field separator; null: "," for .csv, tab for .tsv
        text_column: str = "text"  # column (CSV/TSV header) or key (JSONL) holding the sentence
        label_column: str = "label"  # column or key holding the class label
        train_classes: list | None = None  # labels of the train split (replaces split_fractions)
        val_classes: list | None = None  # labels of the val split
        test_classes: list | None = None  # labels of the test split
        split_fractions: list[float] | None = None  # train/val/test shares of the labels; null: [0.6, 0.2, 0.2]
        split_seed: int = 0  # seeds the shuffle of the sorted labels that split_fractions cuts

        def __post_init__(self):
            super().__post_init__()
            if self.split_seed < 0:
                raise FastAdaptError(f"data.args.split_seed = {self.split_seed} is out of range; it must be >= 0")

    def _path(self) -> Path:
        if not self.args.path:
            raise FastAdaptError(
                "data.args.path is required for the textfile dataset: a CSV, TSV or JSONL file of "
                "labelled sentences (e.g. --set data.args.path=tickets.csv)"
            )
        return Path(self.args.path).expanduser()

    def read_pool(self) -> TextCorpus:
        a = self.args
        table = read_text_table(self._path(), a.text_column, a.label_column, a.delimiter, a.format)
        classes = sorted(set(table.labels))
        index = {c: i for i, c in enumerate(classes)}
        labels = np.array([index[label] for label in table.labels], np.int64)
        counts = np.bincount(labels, minlength=len(classes))
        t, e = self.config.train.episodes, self.config.eval
        shots, queries = max((t.shots, t.queries), (e.shots, e.queries), key=sum)
        small = np.flatnonzero(counts < shots + queries)
        if small.size:
            worst = small[np.argmin(counts[small])]
            first = table.lines[int(np.flatnonzero(labels == worst)[0])]
            others = f" ({small.size} labels have too few)" if small.size > 1 else ""
            raise FastAdaptError(
                f"{table.path}:{first}: label {classes[worst]!r} (first here) has {counts[worst]} "
                f"examples but an episode takes shots + queries = {shots} + {queries} per class{others}; "
                f"add examples of it or lower the shots/queries"
            )
        return TextCorpus(table.texts, labels, classes, f"textfile/{table.path.name}")

    def class_split_ids(self, pool: TextCorpus) -> dict[str, np.ndarray]:
        return class_splits(self.args, pool.class_names, self._path(), noun="label")
