"""`imagefolder`: the user's own images as a few-shot dataset, one sub-folder per class.

    <root>/<class name>/**/<image>.{png,jpg,jpeg,bmp,pgm,tif,tiff,webp}

Classes are the non-hidden sub-folders of `root`, sorted by name (class id = position); a
class's images are every image file under its folder (nested folders included), sorted by
relative path. Hidden files and folders (".name", "__MACOSX") and other files are ignored.
Every image is decoded once (in worker processes for large folders) to uint8
(channels, image_size, image_size) and cached as one .npz keyed by the relative file list,
sizes, mtimes, image size, channels and resize mode, so touching, adding or removing a file
rebuilds the cache and unchanged folders load in a fraction of a second.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..errors import FastAdaptError
from ..registry import DATASETS
from .base import ClassificationSuite
from .class_splits import CLASS_SPLITS, class_splits, require_listed
from .dataset import LabelledDataset
from .decode_pool import decode_files
from .images import IMAGE_EXTENSIONS, cache_file, cached_dataset, decode_image

log = logging.getLogger(__name__)

_CACHE_VERSION = 1  # bump when the listing or decoding rules change


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _is_image(name: str) -> bool:
    return not _hidden(name) and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


@dataclass
class FolderListing:
    """What `scan_folder` found: `files[i]` (posix path relative to `root`) has class
    `labels[i]` (index into the sorted `classes`), and `stats[i]` = (bytes, mtime in ns),
    (-1, 0) for a file that cannot be stat'ed (a broken link: reported when decoded)."""

    root: Path
    classes: list[str]
    files: list[str]
    labels: np.ndarray
    stats: list[tuple[int, int]]


def _walk(folder: Path, prefix: str, seen: set, out: list[str]) -> None:
    """Image files under `folder` as `prefix/relative/path`, sorted; follows links, once per folder."""
    try:
        info = folder.stat()
        if (info.st_dev, info.st_ino) in seen:  # a link back up the tree
            return
        seen.add((info.st_dev, info.st_ino))
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise FastAdaptError(
            f"cannot list image folder {folder} ({exc.strerror or exc}); check its permissions"
        ) from None
    for entry in entries:
        if _hidden(entry.name):
            continue
        try:
            is_dir = entry.is_dir()
        except OSError:
            is_dir = False
        if is_dir:
            _walk(Path(entry.path), f"{prefix}/{entry.name}", seen, out)
        elif _is_image(entry.name):
            out.append(f"{prefix}/{entry.name}")


def scan_folder(root: str | Path) -> FolderListing:
    """List the class folders of `root` and their image files (nothing is decoded).

    Raises FastAdaptError (one line, naming the folder) when `root` is not a folder, has no
    class folders, or a class folder holds no image.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a folder"
        raise FastAdaptError(
            f"data.args.root={str(root)!r} {what}; point it at a folder with one sub-folder "
            f"of images per class (e.g. --set data.args.root=photos/)"
        )
    root = root.resolve()
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        raise FastAdaptError(
            f"cannot list data.args.root {root} ({exc.strerror or exc}); check its permissions"
        ) from None
    class_dirs = [e for e in entries if not _hidden(e.name) and e.is_dir()]
    loose = sum(1 for e in entries if e.is_file() and _is_image(e.name))
    if not class_dirs:
        found = f"it holds {loose} images directly" if loose else "it is empty of sub-folders"
        raise FastAdaptError(
            f"no class folders in {root} ({found}); put each class's images in a sub-folder "
            f"named after the class: {root}/<class>/<image>"
        )
    if loose:
        warnings.warn(f"ignoring {loose} images directly in {root}: only images inside class sub-folders are used")
    files, labels, seen = [], [], {(root.stat().st_dev, root.stat().st_ino)}
    for label, entry in enumerate(class_dirs):
        found: list[str] = []
        _walk(Path(entry.path), entry.name, seen, found)
        if not found:
            raise FastAdaptError(
                f"class folder {root / entry.name} has no images ({', '.join(IMAGE_EXTENSIONS)}); "
                f"add images, or remove it or hide it (a name starting with '.')"
            )
        files += found
        labels += [label] * len(found)
    stats, base = [], str(root)
    for rel in files:  # os.stat on strings: pathlib joins cost more than the stat calls here
        try:
            info = os.stat(os.path.join(base, rel))
            stats.append((info.st_size, info.st_mtime_ns))
        except OSError:
            stats.append((-1, 0))
    return FolderListing(root, [e.name for e in class_dirs], files, np.asarray(labels, np.int64), stats)


# ----------------------------------------------------------------------------- loading


def load_image_folder(
    root: str | Path,
    size: int,
    channels: int = 3,
    resize: str = "squash",
    skip_bad: bool = False,
    listing: FolderListing | None = None,
) -> LabelledDataset:
    """Every image under `root`'s class folders: items uint8 (N, channels, size, size), labels
    (N,) = index of the class folder in sorted order, `sources` the absolute file paths.

    Decoded once and cached (see the module docstring). An unreadable file is a one-line
    FastAdaptError naming it, unless `skip_bad`, where it is left out and the count is warned
    about on every load; a class left with no readable image is an error either way.
    """
    listing = listing or scan_folder(root)
    root = listing.root
    key = {
        "kind": "imagefolder",
        "version": _CACHE_VERSION,
        "size": size,
        "channels": channels,
        "resize": resize,
        "classes": listing.classes,
        "files": [[f, *s] for f, s in zip(listing.files, listing.stats)],
    }

    def build() -> LabelledDataset:
        log.info(
            "decoding %d images of %s once; later loads read %s",
            len(listing.files),
            root,
            cache_file("imagefolder", key),
        )
        items, bad = decode_files([os.path.join(root, f) for f in listing.files], size, channels, resize)
        keep = np.ones(len(listing.files), bool)
        keep[list(bad)] = False
        empty = np.flatnonzero(np.bincount(listing.labels[keep], minlength=len(listing.classes)) == 0)
        if empty.size:
            first = min(i for i in bad if listing.labels[i] == empty[0])
            raise FastAdaptError(
                f"class folder {root / listing.classes[empty[0]]} has no readable image; the first: {bad[first]}"
            )
        index = np.flatnonzero(keep)
        return LabelledDataset(
            torch.from_numpy(items[index] if bad else items),
            listing.labels[index],
            list(listing.classes),
            f"imagefolder/{root.name}",
            [listing.files[i] for i in index],
        )

    dataset = cached_dataset("imagefolder", key, build, item_shape=(channels, size, size))
    decoded = set(dataset.sources or ())
    skipped = [f for f in listing.files if f not in decoded]
    if skipped and not skip_bad:
        try:  # decoding the first again gives its message (the cache keeps only the good images)
            decode_image(root / skipped[0], size, channels, resize)
        except FastAdaptError as exc:
            more = f" ({len(skipped)} unreadable images in {root})" if len(skipped) > 1 else ""
            raise FastAdaptError(f"{exc}{more}") from None
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} unreadable image(s) of {root} (data.args.skip_bad=true), e.g. {root / skipped[0]}"
        )
    return LabelledDataset(
        dataset.items,
        dataset.labels,
        dataset.class_names,
        f"imagefolder/{root.name}",
        [os.path.join(root, s) for s in dataset.sources],
    )


@DATASETS.register("imagefolder")
class ImageFolderSuite(ClassificationSuite):
    """Few-shot classification over the class folders of `data.args.root` (see the module
    docstring); splits: train / val / test by class, and `all` (every class: cross-domain
    evaluation and `predict`)."""

    @dataclass
    class Args:
        root: str | None = None  # required: the folder holding one sub-folder of images per class
        channels: Literal[1, 3] = 3  # 1: grayscale, 3: RGB; every image is converted to this
        resize: Literal["squash", "center_crop"] = "squash"  # squash: stretch to square; center_crop: crop centre
        skip_bad: bool = False  # true: leave unreadable images out (counted in a warning) instead of an error
        train_classes: list | None = None  # class-folder names of the train split (replaces split_fractions)
        val_classes: list | None = None  # class-folder names of the val split
        test_classes: list | None = None  # class-folder names of the test split
        split_fractions: list[float] | None = None  # train/val/test shares of the classes; null: [0.6, 0.2, 0.2]
        split_seed: int = 0  # seeds the shuffle of the sorted classes that split_fractions cuts
        invert: bool = False  # true: pixel -> 255 - pixel (dark strokes become high, as Omniglot's items)

    splits = ("train", "val", "test", "all")

    def _listing(self) -> FolderListing:
        if getattr(self, "_folder", None) is None:
            if not self.args.root:
                raise FastAdaptError(
                    "data.args.root is required for the imagefolder dataset: the folder with one "
                    "sub-folder of images per class (e.g. --set data.args.root=photos/)"
                )
            self._folder = scan_folder(self.args.root)
        return self._folder

    def load_all(self) -> LabelledDataset:
        """Every class: the decoded folder, memoised (splits are class subsets of it)."""
        if getattr(self, "_everything", None) is None:
            a = self.args
            data = load_image_folder(a.root, self.image_size, a.channels, a.resize, a.skip_bad, listing=self._listing())
            if a.invert:  # after the cache: one decoded copy serves both settings
                data = LabelledDataset(255 - data.items, data.labels, data.class_names, data.name, data.sources)
            self._everything = data
        return self._everything

    def load_split(self, split: str) -> LabelledDataset:
        listing = self._listing()
        if split == "all":
            data = self.load_all()
            return LabelledDataset(data.items, data.labels, data.class_names, f"{data.name}/all", data.sources)
        splits = class_splits(self.args, listing.classes, listing.root)  # checked before the slow decode
        require_listed(splits, split, "imagefolder")
        if not len(splits[split]):
            sizes = "/".join(str(len(splits[s])) for s in CLASS_SPLITS)
            raise FastAdaptError(
                f"the {split!r} split of {listing.root} has no classes: split_fractions of "
                f"{len(listing.classes)} classes give train/val/test = {sizes}; add classes "
                f"or change data.args.split_fractions"
            )
        data = self.load_all()
        return data.subset(splits[split], f"{data.name}/{split}")
