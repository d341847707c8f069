"""mini-ImageNet (Vinyals et al., NeurIPS 2016) with the class split of Ravi & Larochelle (ICLR 2017).

100 ImageNet classes x 600 images; 64 train / 16 val / 20 test classes (`splits/miniimagenet/`,
the classes of Ravi's train/val/test.csv); items RGB uint8 (N, 3, S, S), S = data.image_size
(84 in the papers). There is no official download left (ImageNet needs an account, the
pre-resized copies sit on quota-limited drives), so this reads the layout the user has in
`<data root>/miniimagenet/` (or `data.args.root`), the first found in this order:

- "pickle": `mini-imagenet-cache-{split}.pkl` (Ren et al. 2018): a dict with `image_data`
  (N, 84, 84, 3) uint8 and `class_dict` {wnid: [indices]}; or MetaOptNet's
  `miniImageNet_category_split_{train_phase_train,val,test}.pickle` (`data`, `labels`,
  `catname2label`). Read by the restricted unpickler of safe_pickle.py: no code can run.
- "npz": `mini-imagenet-{split}.npz` or `mini-imagenet-cache-{split}.npz` holding `image_data`
  (or `images`) (N, H, W, 3) uint8 and `labels` (N,) wnids.
- "files": Ravi's pre-resized `images/n0153282900000005.jpg ...` (flat), or one folder per
  class: `<wnid>/`, `<split>/<wnid>/`, `images/<wnid>/` or ImageNet's `train/<wnid>/*.JPEG`.
  With Ravi's `<split>.csv` beside them (or in `split/`), exactly its images are used: a listed
  name that exists is read as is, otherwise `<wnid>000000NN.jpg` is the NN-th image of the class
  folder in ImageNet's numeric order (the mapping of mmfewshot and CloserLookFewShot). Without
  a csv every image of the class is used; over 600 means a full ImageNet folder: the csv is needed.

Images are squashed to S x S (Ravi's preprocessing ignores the aspect ratio) and decoded once
into the cache (keyed by the files' names, sizes and mtimes); arrays already at S x S are used
as they are, so the 84-pixel pickles are not copied into the cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..errors import FastAdaptError
from ..registry import DATASETS
from .base import ClassificationSuite
from .dataset import LabelledDataset
from .images import IMAGE_EXTENSIONS, cached_dataset
from .safe_pickle import dataset_dir, decode_many, fingerprint, resize_images, root_origin, safe_load, split_classes

NATIVE_SIZE = 84
PER_CLASS = 600
LAYOUTS = ("pickle", "npz", "files")
METAOPTNET = {"train": "train_phase_train", "val": "val", "test": "test"}
CSV_SOURCE = "https://github.com/twitter-research/meta-learning-lstm/tree/master/data/miniImagenet"


@dataclass
class MiniImageNetArgs:
    root: str | None = None  # folder holding the files; default <data root>/miniimagenet
    layout: Literal["auto", "pickle", "npz", "files"] = "auto"  # auto: the first layout found (pickle, npz, files)


@DATASETS.register("miniimagenet")
class MiniImageNet(ClassificationSuite):
    """mini-ImageNet, Ravi & Larochelle's 64/16/20 class split, from the user's files (module doc)."""

    Args = MiniImageNetArgs
    splits = ("train", "val", "test")

    def load_split(self, split: str) -> LabelledDataset:
        base = dataset_dir("miniimagenet", self.args.root, self.data_root)
        size = self.image_size or NATIVE_SIZE
        classes = split_classes("miniimagenet", split)
        name = f"miniimagenet/ravi-{split}"
        layouts = LAYOUTS if self.args.layout == "auto" else (self.args.layout,)
        looked: list[str] = []
        for layout in layouts:
            if layout in ("pickle", "npz"):
                path = _array_file(base, split, layout, looked)
                if path is not None:
                    return _load_array_split(path, classes, size, name)
            else:
                found = _image_files(base, split, classes, looked)
                if found is not None:
                    return _decode_split(base, classes, found, size, name)
        origin = root_origin(self.args.root, self.data_root) + ("" if base.is_dir() else "; the folder does not exist")
        raise FastAdaptError(
            f"mini-ImageNet {split} split not found in {base} ({origin}): looked for {'; '.join(looked)}; fix: put one "
            f"of these there or point data.args.root at it; there is no official download: build it from ImageNet "
            f"(image-net.org) with Ravi's csv files ({CSV_SOURCE}) or use a copy you already have"
        )


# ----------------------------------------------------------------------------- pickles and npz


def _array_file(base: Path, split: str, layout: str, looked: list[str]) -> Path | None:
    names = (
        [f"mini-imagenet-cache-{split}.pkl", f"miniImageNet_category_split_{METAOPTNET[split]}.pickle"]
        if layout == "pickle"
        else [f"mini-imagenet-{split}.npz", f"mini-imagenet-cache-{split}.npz"]
    )
    for file in names:
        looked.append(file)
        if (base / file).is_file():
            return base / file
    return None


def _read_arrays(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(images (N, H, W, 3) uint8, {wnid: item indices}) of a pickle or npz, checked."""
    bad = f"{path} does not hold mini-ImageNet images"
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:  # allow_pickle=False: object arrays refused, no code
                key = "image_data" if "image_data" in data.files else "images"
                images, labels = data[key], data["labels"]
        except (OSError, ValueError, KeyError, EOFError) as exc:
            raise FastAdaptError(
                f"{bad} (expected arrays image_data and labels: {type(exc).__name__}: "
                f"{str(exc)[:100]}); replace it with a complete copy"
            ) from None
        labels = labels.astype(str)
        groups = {wnid: np.flatnonzero(labels == wnid) for wnid in np.unique(labels)}
    else:
        data = safe_load(path)
        if isinstance(data, dict) and "image_data" in data and isinstance(data.get("class_dict"), dict):
            images = data["image_data"]
            groups = {str(k): np.asarray(v, np.int64) for k, v in data["class_dict"].items()}
        elif isinstance(data, dict) and {"data", "labels", "catname2label"} <= set(data):  # MetaOptNet's layout
            images, labels = data["data"], np.asarray(data["labels"], np.int64)
            groups = {str(k): np.flatnonzero(labels == v) for k, v in data["catname2label"].items()}
            groups = {k: v for k, v in groups.items() if v.size}
        else:
            keys = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise FastAdaptError(
                f"{bad}: expected a dict with image_data and class_dict (or data, labels and "
                f"catname2label), got {keys}; replace it with the original file"
            )
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4 and images.shape[3] == 3):
        got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise FastAdaptError(f"{bad}: images must be uint8 (N, H, W, 3), got {got}; replace it with the original file")
    for wnid, index in groups.items():
        if index.size and (index.min() < 0 or index.max() >= len(images)):
            raise FastAdaptError(f"{bad}: class {wnid} lists image {index.max()} of {len(images)}; the file is corrupt")
    return images, groups


def _load_array_split(path: Path, classes: list[str], size: int, name: str) -> LabelledDataset:
    def build() -> LabelledDataset:
        images, groups = _read_arrays(path)
        missing, extra = [c for c in classes if c not in groups], sorted(set(groups) - set(classes))
        if missing or extra:
            raise FastAdaptError(
                f"{path} does not hold Ravi's {name.rsplit('-', 1)[1]} classes (missing "
                f"{missing[:3]}, unexpected {extra[:3]}); is it the file of another split?"
            )
        index = np.concatenate([groups[c] for c in classes])
        labels = np.repeat(np.arange(len(classes)), [len(groups[c]) for c in classes])
        return LabelledDataset(torch.from_numpy(resize_images(images, size, index)), labels, classes, name)

    if size == NATIVE_SIZE:  # nothing to decode: reading the array is as fast as reading a cache of it
        return build()
    key = {"dataset": "miniimagenet", "name": name, "size": size, "files": fingerprint([path])}
    return cached_dataset("miniimagenet", key, build, (3, size, size))


# ----------------------------------------------------------------------------- image files


def _listing(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))


def _read_csv(base: Path, split: str, classes: list[str]) -> tuple[Path, dict[str, list[str]]] | None:
    """Ravi's `<split>.csv` (header, then `filename,wnid` rows) as {wnid: file names}, or None."""
    for path in (base / f"{split}.csv", base / "split" / f"{split}.csv"):
        if path.is_file():
            break
    else:
        return None
    rows: dict[str, list[str]] = {}
    for number, line in enumerate(path.read_text().splitlines()[1:], start=2):
        if line.strip():
            file, _, wnid = line.strip().partition(",")
            if not wnid:
                raise FastAdaptError(
                    f"{path}:{number}: expected `filename,label`, got {line!r}; use Ravi's csv ({CSV_SOURCE})"
                )
            rows.setdefault(wnid.strip(), []).append(file.strip())
    if set(rows) != set(classes):
        raise FastAdaptError(
            f"{path} does not list Ravi's {split} classes ({len(rows)} classes, e.g. "
            f"{sorted(set(rows) ^ set(classes))[:2]} differ); use the original csv ({CSV_SOURCE})"
        )
    return path, rows


def _imagenet_order(files: list[Path]) -> list[Path]:
    """ImageNet's `<wnid>_<number>.JPEG` files by number (the order Ravi's file ids index)."""

    def number(p: Path) -> tuple[int, str]:
        tail = p.stem.rsplit("_", 1)[-1]
        return (int(tail) if tail.isdigit() else -1, p.name)

    return sorted(files, key=number)


def _image_files(base: Path, split: str, classes: list[str], looked: list[str]) -> list[list[Path]] | None:
    """Each class's image files (csv selection applied), or None when no class is found."""
    looked.append(
        f"{split}.csv with images/ or class folders <wnid>/, {split}/<wnid>/, images/<wnid>/ or train/<wnid>/ "
        f"(e.g. {base / classes[0]})"
    )
    flat: dict[str, list[Path]] = {}
    if (base / "images").is_dir():  # Ravi's flat folder: group n0153282900000005.jpg by its wnid prefix
        for path in _listing(base / "images"):
            flat.setdefault(path.name[:9], []).append(path)
    per_class, missing = [], []
    for wnid in classes:
        candidates = (base / split / wnid, base / wnid, base / "images" / wnid, base / "train" / wnid)
        folders = [f for f in candidates if f.is_dir()]
        files = _listing(folders[0]) if folders else flat.get(wnid, [])
        if not files:
            missing.append(wnid)
        per_class.append(files)
    if len(missing) == len(classes):
        return None
    if missing:
        raise FastAdaptError(
            f"mini-ImageNet class {missing[0]} of the {split} split has no images in {base} "
            f"({len(missing)} of {len(classes)} classes missing); looked in {base / split / missing[0]}/, "
            f"{base / missing[0]}/, {base / 'images' / missing[0]}/ and {base / 'train' / missing[0]}/; "
            f"complete the copy"
        )
    csv = _read_csv(base, split, classes)
    if csv is None:
        for wnid, files in zip(classes, per_class):
            if len(files) > PER_CLASS:
                raise FastAdaptError(
                    f"class {wnid} has {len(files)} images in {files[0].parent}, more than mini-ImageNet's "
                    f"{PER_CLASS}: a full ImageNet folder; put Ravi's {split}.csv ({CSV_SOURCE}) in "
                    f"{base} to select the benchmark's images"
                )
        return per_class
    path, rows = csv
    return [_select(path, wnid, rows[wnid], files) for wnid, files in zip(classes, per_class)]


def _select(csv: Path, wnid: str, names: list[str], files: list[Path]) -> list[Path]:
    """The files a csv lists for one class: by name, else by Ravi's file id into ImageNet's order."""
    by_name, ordered = {p.name: p for p in files}, None
    chosen = []
    for name in names:
        if name in by_name:
            chosen.append(by_name[name])
            continue
        ordered = ordered or _imagenet_order(files)
        stem = Path(name).stem
        number = int(stem[len(wnid) :]) if stem.startswith(wnid) and stem[len(wnid) :].isdigit() else 0
        if not 1 <= number <= len(ordered):
            raise FastAdaptError(
                f"{csv} lists {name}, which is neither in {files[0].parent} nor image number {number} "
                f"of its {len(ordered)} images; use ImageNet's full train/{wnid}/ folder or Ravi's images/"
            )
        chosen.append(ordered[number - 1])
    return chosen


def _decode_split(base: Path, classes: list[str], per_class: list[list[Path]], size: int, name: str) -> LabelledDataset:
    files = [p for group in per_class for p in group]

    def build() -> LabelledDataset:
        items = decode_many([(p, str(p)) for p in files], size)
        labels = np.repeat(np.arange(len(per_class)), [len(g) for g in per_class])
        return LabelledDataset(torch.from_numpy(items), labels, classes, name, [str(p) for p in files])

    key = {"dataset": "miniimagenet", "name": name, "size": size, "resize": "squash", "files": fingerprint(files, base)}
    return cached_dataset("miniimagenet", key, build, (3, size, size))
