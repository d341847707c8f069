"""CUB-200-2011 (Wah et al., 2011) with the 100/50/50 class split of Chen et al., "A Closer Look
at Few-shot Classification" (ICLR 2019).

200 bird species, 11,788 images (41 to 60 per class). Chen et al.'s write_CUB_filelist.py numbers
the 200 sorted class folders i = 0..199 and takes i % 2 == 0 as base (train), i % 4 == 1 as val
and i % 4 == 3 as novel (test); `splits/cub/` is that rule applied. Items are whole images (no
bounding-box crop), RGB uint8 (N, 3, S, S), S = data.image_size (84 in the paper), resized by
`data.args.resize`. Read from `<data root>/cub/` (or `data.args.root`), the first found of:

- `CUB_200_2011/` (or the folder itself), the extracted archive: `images/<NNN.Name>/*.jpg`; when
  its `images.txt` is there, every image it lists for the split must exist, so a partial
  extraction is an error naming the missing file rather than a silently smaller dataset;
- `CUB_200_2011.tgz`, the official archive (read as a stream, never extracted; fetched from
  CaltechDATA and MD5-checked with `--download` / download=True).

Per class, images are in file-name order (the same from the folder and the archive). A split is
decoded once into the cache, keyed by the source files' names, sizes and mtimes, the image size
and the resize mode.
"""

from __future__ import annotations

import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..errors import FastAdaptError
from ..registry import DATASETS
from .base import ClassificationSuite
from .dataset import LabelledDataset
from .download import download_file
from .images import IMAGE_EXTENSIONS, cached_dataset
from .safe_pickle import dataset_dir, decode_many, fingerprint, root_origin, split_classes

FOLDER = "CUB_200_2011"
ARCHIVE = "CUB_200_2011.tgz"
URL = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz"
MD5 = "97eceeb196236b17998738112f37df78"
MIN_BYTES = 1_000_000_000  # the archive is 1.15 GB
NATIVE_SIZE = 84
_CHUNK = 256  # archive members decoded per batch: bounds the compressed bytes held at once


@dataclass
class CubArgs:
    root: str | None = None  # folder holding the files; default <data root>/cub
    # squash: the whole image to S x S (aspect ratio ignored); center_crop: shorter side to S, then the centre square
    resize: Literal["squash", "center_crop"] = "squash"


@DATASETS.register("cub")
class Cub(ClassificationSuite):
    """CUB-200-2011 with Chen et al.'s 100/50/50 class split, from the user's files (module doc)."""

    Args = CubArgs
    splits = ("train", "val", "test")

    def load_split(self, split: str) -> LabelledDataset:
        base = dataset_dir("cub", self.args.root, self.data_root)
        size, resize = self.image_size or NATIVE_SIZE, self.args.resize
        classes = split_classes("cub", split)
        name = f"cub/chen-{split}"
        key = {"dataset": "cub", "name": name, "size": size, "resize": resize}
        for folder in (base / FOLDER, base):
            if (folder / "images").is_dir():
                files = _folder_files(folder, classes)
                key["files"] = fingerprint([p for group in files for p in group], folder)
                return cached_dataset(
                    "cub",
                    key,
                    lambda: _from_folder(files, classes, size, resize, name),  # noqa: B023 (called before the loop moves on)
                    (3, size, size),
                )
        archive = base / ARCHIVE
        if not archive.is_file() and self.download:
            download_file(URL, archive, MD5, min_bytes=MIN_BYTES)
        if archive.is_file():
            key["files"] = fingerprint([archive])
            return cached_dataset(
                "cub", key, lambda: _from_archive(archive, classes, size, resize, name), (3, size, size)
            )
        raise FastAdaptError(
            f"CUB-200-2011 not found: looked for {base / FOLDER / 'images'}/, {base / 'images'}/ and {archive} "
            f"({root_origin(self.args.root, self.data_root)}); fix: download {URL} (`fastadapt train --download`, or "
            f"download=True in Python) or put it or its extracted {FOLDER}/ there, or point data.args.root at it"
        )


def _folder_files(folder: Path, classes: list[str]) -> list[list[Path]]:
    """Each class's image files, by file name; from images.txt when present (all must exist)."""
    images = folder / "images"
    listed: dict[str, list[str]] | None = None
    if (folder / "images.txt").is_file():  # "<id> <class folder>/<file>" per line
        listed = {}
        for line in (folder / "images.txt").read_text().splitlines():
            rel = line.split(maxsplit=1)[-1].strip() if line.strip() else ""
            if "/" in rel:
                listed.setdefault(rel.split("/", 1)[0], []).append(rel.split("/", 1)[1])
    per_class = []
    for c in classes:
        if listed is not None:
            files = [images / c / f for f in sorted(listed.get(c, []))]
            absent = [p for p in files if not p.is_file()]
            if absent:
                raise FastAdaptError(
                    f"{absent[0]} is listed in {folder / 'images.txt'} but missing ({len(absent)} missing "
                    f"in class {c}); the extraction is incomplete: extract {ARCHIVE} again"
                )
        else:
            d = images / c
            files = (
                sorted(
                    (p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")),
                    key=lambda p: p.name,
                )
                if d.is_dir()
                else []
            )
        if not files:
            raise FastAdaptError(
                f"CUB class {c} has no images in {images / c}/; the copy is incomplete or not "
                f"CUB-200-2011: use the official {ARCHIVE} ({URL})"
            )
        per_class.append(files)
    return per_class


def _from_folder(per_class: list[list[Path]], classes: list[str], size: int, resize: str, name: str) -> LabelledDataset:
    files = [p for group in per_class for p in group]
    items = decode_many([(p, str(p)) for p in files], size, resize)
    labels = np.repeat(np.arange(len(classes)), [len(g) for g in per_class])
    return LabelledDataset(torch.from_numpy(items), labels, classes, name, [str(p) for p in files])


def _from_archive(archive: Path, classes: list[str], size: int, resize: str, name: str) -> LabelledDataset:
    """Stream the tgz once, decoding the split's images in batches as they come."""
    wanted = set(classes)
    decoded: dict[tuple[str, str], tuple[np.ndarray, str]] = {}  # (class, file) -> (image, member)
    batch: list[tuple[tuple[str, str], bytes, str]] = []

    def flush() -> None:
        arrays = decode_many([(data, where) for _, data, where in batch], size, resize)
        decoded.update({key: (array, where) for (key, _, where), array in zip(batch, arrays)})
        batch.clear()

    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                parts = member.name.split("/")
                if (
                    member.isfile()
                    and len(parts) >= 3
                    and parts[-3] == "images"
                    and parts[-2] in wanted
                    and Path(parts[-1]).suffix.lower() in IMAGE_EXTENSIONS
                    and not parts[-1].startswith(".")
                ):
                    batch.append(((parts[-2], parts[-1]), tar.extractfile(member).read(), f"{archive}:{member.name}"))
                    if len(batch) >= _CHUNK:
                        flush()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise FastAdaptError(
            f"{archive} is not a readable tgz archive ({type(exc).__name__}: {exc}); it is corrupt or a "
            f"partial download: delete it and download it again ({URL})"
        ) from None
    if batch:
        flush()
    per_class = [sorted(f for c2, f in decoded if c2 == c) for c in classes]
    empty = [c for c, files in zip(classes, per_class) if not files]
    if empty:
        raise FastAdaptError(
            f"{archive} has no images of class {empty[0]} ({len(empty)} classes missing); it is not the "
            f"official {ARCHIVE}: replace it ({URL})"
        )
    order = [decoded[(c, f)] for c, files in zip(classes, per_class) for f in files]
    labels = np.repeat(np.arange(len(classes)), [len(g) for g in per_class])
    items = torch.from_numpy(np.stack([array for array, _ in order]))
    return LabelledDataset(items, labels, classes, name, [where for _, where in order])
