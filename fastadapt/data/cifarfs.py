"""CIFAR-FS (Bertinetto et al., "Meta-learning with differentiable closed-form solvers", ICLR 2019).

CIFAR-100's 100 classes with its train and test images merged (500 + 100 = 600 per class), split
64/16/20 by class (`splits/cifarfs/`, Bertinetto's lists); items RGB uint8 (N, 3, S, S),
S = data.image_size (32 native; other sizes are bicubic resizes). Read from
`<data root>/cifarfs/` (or `data.args.root`), the first found of:

- `cifar-100-python/` (or the folder itself): the extracted official archive, pickles `train`,
  `test` (`data` (N, 3072) uint8 rows of R, G, B planes, `fine_labels`) and `meta`
  (`fine_label_names`);
- `cifar-100-python.tar.gz`: the official archive itself (fetched from Krizhevsky's page and
  MD5-checked with `--download` / download=True);
- `data/<class>/*.png`: the png folders of Bertinetto's r2d2 copy.

The pickles go through the restricted unpickler (safe_pickle.py), so they cannot run code. Per
class, items are the train pickle's images then the test pickle's, in file order. A split is
read once into the cache, keyed by the source files' names, sizes and mtimes and the image size.
"""

from __future__ import annotations

import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import FastAdaptError
from ..registry import DATASETS
from .base import ClassificationSuite
from .dataset import LabelledDataset
from .download import download_file
from .images import IMAGE_EXTENSIONS, cached_dataset
from .safe_pickle import dataset_dir, decode_many, fingerprint, resize_images, root_origin, safe_load, split_classes

ARCHIVE = "cifar-100-python.tar.gz"
URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
MIN_BYTES = 150_000_000  # the archive is 169 MB
NATIVE_SIZE = 32
PARTS = ("train", "test", "meta")


@dataclass
class CifarFSArgs:
    root: str | None = None  # folder holding the files; default <data root>/cifarfs


@DATASETS.register("cifarfs")
class CifarFS(ClassificationSuite):
    """CIFAR-FS: CIFAR-100 with Bertinetto's 64/16/20 class split, from the user's files (module doc)."""

    Args = CifarFSArgs
    splits = ("train", "val", "test")

    def load_split(self, split: str) -> LabelledDataset:
        base = dataset_dir("cifarfs", self.args.root, self.data_root)
        size = self.image_size or NATIVE_SIZE
        classes = split_classes("cifarfs", split)
        name = f"cifarfs/bertinetto-{split}"
        folder = next((f for f in (base / "cifar-100-python", base) if all((f / p).is_file() for p in PARTS)), None)
        archive, pngs = base / ARCHIVE, base / "data"
        if folder is None and not archive.is_file() and not pngs.is_dir() and self.download:
            download_file(URL, archive, MD5, min_bytes=MIN_BYTES)
        if folder is not None:
            files = [folder / p for p in PARTS]
            build = lambda: _from_pickles({p: safe_load(folder / p) for p in PARTS}, str(folder), classes, size, name)
        elif archive.is_file():
            files = [archive]
            build = lambda: _from_pickles(_read_archive(archive), str(archive), classes, size, name)
        elif pngs.is_dir():
            per_class = _png_folders(pngs, classes)
            files = [p for group in per_class for p in group]
            build = lambda: _from_files(per_class, classes, size, name)
        else:
            files = []
        if files:
            key = {"dataset": "cifarfs", "name": name, "size": size, "files": fingerprint(files, base)}
            return cached_dataset("cifarfs", key, build, (3, size, size))
        raise FastAdaptError(
            f"CIFAR-FS needs CIFAR-100's python version: looked for {base / 'cifar-100-python'}/ (train, test, meta), "
            f"{archive} and Bertinetto's {base / 'data'}/<class>/*.png ({root_origin(self.args.root, self.data_root)}); "
            f"fix: download {URL} (`fastadapt train --download`, or download=True in Python) or put it there, or point "
            f"data.args.root at the folder holding it"
        )


def _read_archive(path: Path) -> dict[str, Any]:
    """The train, test and meta pickles of the official tar.gz, unpickled safely."""
    parts: dict[str, Any] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                part = member.name.rsplit("/", 1)[-1]
                if member.isfile() and part in PARTS and member.name.count("/") <= 1:
                    parts[part] = safe_load(tar.extractfile(member).read(), f"{path}:{member.name}")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise FastAdaptError(
            f"{path} is not a readable tar.gz archive ({type(exc).__name__}: {exc}); it is corrupt or a "
            f"partial download: delete it and download it again ({URL})"
        ) from None
    missing = [p for p in PARTS if p not in parts]
    if missing:
        raise FastAdaptError(
            f"{path} has no cifar-100-python/{missing[0]}; it is not CIFAR-100's python archive: replace it with {URL}"
        )
    return parts


def _from_pickles(parts: dict[str, Any], where: str, classes: list[str], size: int, name: str) -> LabelledDataset:
    """The split's classes from the train + test pickles: uint8 (N, 3, size, size)."""
    data, labels = [], []
    for part in ("train", "test"):
        d = parts[part]
        x = d.get("data") if isinstance(d, dict) else None
        y = d.get("fine_labels") if isinstance(d, dict) else None
        if not (
            isinstance(x, np.ndarray)
            and x.dtype == np.uint8
            and x.ndim == 2
            and x.shape[1] == 3 * 32 * 32
            and y is not None
            and len(y) == len(x)
        ):
            raise FastAdaptError(
                f"{where}: the {part} pickle is not CIFAR-100's (expected data uint8 (N, 3072) and N "
                f"fine_labels); replace it with the official {ARCHIVE}"
            )
        data.append(x)
        labels.append(np.asarray(y, np.int64))
    meta = parts["meta"]
    names = [str(n) for n in meta.get("fine_label_names", [])] if isinstance(meta, dict) else []
    if len(names) != 100:
        raise FastAdaptError(
            f"{where}: the meta pickle has {len(names)} fine_label_names, CIFAR-100 has 100; replace it "
            f"with the official {ARCHIVE}"
        )
    missing = [c for c in classes if c not in names]
    if missing:
        raise FastAdaptError(
            f"{where}: class {missing[0]!r} of Bertinetto's split is not among its fine_label_names; "
            f"use CIFAR-100 (not CIFAR-10 or a relabelled copy)"
        )
    x, y = np.concatenate(data), np.concatenate(labels)
    keep = [np.flatnonzero(y == names.index(c)) for c in classes]
    rows = np.concatenate(keep)
    items = x[rows].reshape(-1, 3, 32, 32)  # each row is the R, G, B planes, 32 x 32 row-major
    if size != 32:
        items = resize_images(items.transpose(0, 2, 3, 1), size)
    label_ids = np.repeat(np.arange(len(classes)), [len(k) for k in keep])
    return LabelledDataset(torch.from_numpy(np.ascontiguousarray(items)), label_ids, classes, name)


def _png_folders(data: Path, classes: list[str]) -> list[list[Path]]:
    per_class = []
    for c in classes:
        folder = data / c
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS) if folder.is_dir() else []
        if not files:
            raise FastAdaptError(
                f"CIFAR-FS class {c!r} has no images in {folder}/; the png copy is incomplete: complete "
                f"it, or use CIFAR-100's python archive ({URL})"
            )
        per_class.append(files)
    return per_class


def _from_files(per_class: list[list[Path]], classes: list[str], size: int, name: str) -> LabelledDataset:
    files = [p for group in per_class for p in group]
    items = decode_many([(p, str(p)) for p in files], size)
    labels = np.repeat(np.arange(len(classes)), [len(g) for g in per_class])
    return LabelledDataset(torch.from_numpy(items), labels, classes, name, [str(p) for p in files])
