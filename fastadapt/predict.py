"""`fastadapt predict`: read a user's support and query files, adapt a trained run, write predictions.

SUPPORT is a folder with one sub-folder of images per class (the folder name is the label), or
a CSV of `path,label` rows. QUERY is a folder (every image below it), a glob pattern, or a CSV
whose first column is the path (a `label` column, if present, is used only to report accuracy).
Relative paths in a CSV are relative to the CSV's folder.

Text runs (datasets `banking77`, `clinc150`, `textfile`): SUPPORT is a CSV, TSV or JSONL file with
`text` and `label` columns; QUERY is such a file with a `text` column (a `label` column, if
present, only reports accuracy) or a plain text file with one sentence per line. The output's
first column is then `text`.
"""

from __future__ import annotations

import csv
import glob
import io
from pathlib import Path

import numpy as np

from .data.images import IMAGE_EXTENSIONS
from .errors import FastAdaptError
from .utils import atomic_write_text


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"  # macOS zip leftovers, editor files


def _images_below(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(_hidden(part) for part in p.relative_to(folder).parts)
    )


def _read_csv(path: Path, columns: tuple[str, ...]) -> tuple[list[dict], list[str]]:
    """Rows of a CSV as dicts; a header naming `columns[0]` is optional (else columns are positional)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FastAdaptError(f"{path} is not UTF-8 text (byte {exc.start}); save it as UTF-8 CSV") from None
    except OSError as exc:
        raise FastAdaptError(f"cannot read {path} ({exc.strerror or exc})") from None
    rows = [r for r in csv.reader(io.StringIO(text)) if r and any(cell.strip() for cell in r)]
    if not rows:
        raise FastAdaptError(f"{path} has no rows; expected {','.join(columns)} lines")
    header = [c.strip().lower() for c in rows[0]]
    # A first row naming any usual column is a header; one without our path column is an error,
    # not a data row (e.g. "file,label").
    if set(header) & {*columns, "path", "label", "file", "filename", "image", "class", "text"}:
        names, rows, first = header, rows[1:], 2
        if not rows:
            raise FastAdaptError(f"{path} has a header but no rows; add one {','.join(columns)} line per example")
    else:
        names, first = list(columns), 1
    missing = [c for c in columns if c not in names]
    if missing:
        raise FastAdaptError(
            f"{path}: no {missing[0]!r} column (header: {','.join(header)}); expected {','.join(columns)}"
        )
    out = []
    for line, row in enumerate(rows, start=first):
        if len(row) < len(names) and any(names.index(c) >= len(row) for c in columns):
            raise FastAdaptError(f"{path}:{line}: expected {len(names)} columns ({','.join(names)}), got {len(row)}")
        record = {n: row[i].strip() for i, n in enumerate(names) if i < len(row)}
        if not record[columns[0]]:
            raise FastAdaptError(f"{path}:{line}: empty {columns[0]}")
        record[columns[0]] = str(
            (path.parent / record[columns[0]])
            if not Path(record[columns[0]]).is_absolute()
            else Path(record[columns[0]])
        )
        out.append(record)
    return out, names


def _check_files(paths: list[str], where: str) -> None:
    for p in paths:
        if not Path(p).is_file():
            raise FastAdaptError(f"{where}: image {p} does not exist; fix the path")


def read_support(spec: str | Path) -> tuple[list[str], list[str]]:
    """(paths, labels) of a support folder (class sub-folders) or a `path,label` CSV."""
    spec = Path(spec)
    if spec.is_dir():
        classes = sorted(d for d in spec.iterdir() if d.is_dir() and not _hidden(d.name))
        if not classes:
            raise FastAdaptError(
                f"support folder {spec} has no class sub-folders; put each class's images in "
                f"{spec}/<class name>/ or give a path,label CSV"
            )
        paths, labels = [], []
        for folder in classes:
            images = _images_below(folder)
            if not images:
                raise FastAdaptError(f"support class folder {folder} has no images ({', '.join(IMAGE_EXTENSIONS)})")
            paths += [str(p) for p in images]
            labels += [folder.name] * len(images)
        return paths, labels
    if spec.is_file():
        rows, _ = _read_csv(spec, ("path", "label"))
        if any(not r["label"] for r in rows):
            raise FastAdaptError(f"{spec}: every support row needs a label")
        paths = [r["path"] for r in rows]
        _check_files(paths, str(spec))
        return paths, [r["label"] for r in rows]
    raise FastAdaptError(f"support {spec} does not exist; give a folder of class sub-folders or a path,label CSV")


def read_queries(spec: str) -> tuple[list[str], list[str] | None]:
    """(paths, labels or None) of a query folder, glob pattern or CSV."""
    path = Path(spec)
    if path.is_dir():
        paths = [str(p) for p in _images_below(path)]
        if not paths:
            raise FastAdaptError(f"query folder {path} has no images ({', '.join(IMAGE_EXTENSIONS)})")
        return paths, None
    if path.is_file() and path.suffix.lower() in (".csv", ".txt", ".tsv"):
        rows, names = _read_csv(path, ("path",))
        paths = [r["path"] for r in rows]
        _check_files(paths, spec)
        return paths, ([r.get("label", "") for r in rows] if "label" in names else None)
    if path.is_file():
        return [str(path)], None
    matches = sorted(p for p in glob.glob(spec, recursive=True) if Path(p).is_file())
    if not matches:
        raise FastAdaptError(f"query {spec!r} is not a folder, a CSV or a glob matching any file")
    return matches, None


def write_predictions(
    out: Path | None, paths: list[str], predicted: list, classes: list, proba: np.ndarray, key: str = "path"
) -> str:
    """CSV text: `key` (the query's path, or its text), prediction, then one probability column per
    class; written atomically to `out`."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([key, "prediction"] + [f"p_{c}" for c in classes])
    for path, label, row in zip(paths, predicted, proba):
        writer.writerow([path, label] + [f"{p:.6f}" for p in row])
    text = buffer.getvalue()
    if out is not None:
        if out.is_dir():
            raise FastAdaptError(f"--out {out} is a folder; give a file name such as {out}/predictions.csv")
        atomic_write_text(out, text)  # a failed write is a one-line WriteError; the old file stays
    return text


def is_text_run(run_dir: Path) -> bool:
    """True when the run was trained on sentences (its dataset reads text); False for image runs
    and for folders that are not runs (`load` then says what is wrong)."""
    from .registry import DATASETS
    from .runlock import read_run_config

    try:
        name = (read_run_config(Path(run_dir)).get("data") or {}).get("dataset", "omniglot")
        return getattr(DATASETS.get(name), "modality", "image") == "text"
    except (FastAdaptError, AttributeError):
        return False


def read_text_support(spec: str | Path) -> tuple[list[str], list[str]]:
    """(sentences, labels) of a text run's support file: CSV, TSV or JSONL with text,label columns."""
    from .data.textfile import read_text_table

    spec = Path(spec)
    if spec.is_dir():
        raise FastAdaptError(
            f"support {spec} is a folder, but this run labels sentences; give a CSV, TSV or JSONL file "
            f"with text and label columns"
        )
    table = read_text_table(spec, "text", "label", fix_columns="name the file's columns text and label")
    return table.texts, table.labels


def read_text_queries(spec: str) -> tuple[list[str], list[str] | None]:
    """(sentences, labels or None) of a text run's query file: CSV, TSV or JSONL with a text column
    (a label column is optional) or a .txt file with one sentence per line."""
    from .data.textfile import read_text_table

    if Path(spec).is_dir():
        raise FastAdaptError(
            f"query {spec} is a folder, but this run labels sentences; give a CSV, TSV or JSONL file "
            f"with a text column, or a .txt file with one sentence per line"
        )
    table = read_text_table(
        spec, "text", "label", optional_label=True, fix_columns="name the sentence column text (labels: label)"
    )
    return table.texts, table.labels


def run_predict(
    run_dir: Path, support: str, query: str, out: Path | None, adapt_steps: int | None, data_root=None
) -> dict:
    """The `fastadapt predict` command: returns a summary (counts, accuracy when query labels are given)."""
    from .api import load

    model = load(run_dir, data_root=data_root)
    if model.problem != "classification":  # before its files are read against the wrong format
        raise FastAdaptError(
            f"{run_dir} is {'an RL' if model.problem == 'rl' else 'a ' + model.problem} run; "
            "`fastadapt predict` labels inputs with a classification run"
        )
    text = is_text_run(run_dir)
    paths, labels = read_text_support(support) if text else read_support(support)
    queries, truth = read_text_queries(query) if text else read_queries(query)
    task = model.adapt(paths, labels, adapt_steps=adapt_steps)
    proba = task.predict_proba(queries)
    predicted = [task.classes[i] for i in proba.argmax(1)]
    written = write_predictions(out, queries, predicted, task.classes, proba, key="text" if text else "path")
    summary = {"support": len(paths), "classes": task.classes, "queries": len(queries), "text": written}
    if truth is not None and all(truth):
        summary["accuracy"] = float(np.mean([p == t for p, t in zip(predicted, truth)]))
    return summary
