"""Decoding images from files into uint8 arrays, and the decoded-dataset cache.

Every image loader (image folders, mini-ImageNet, CIFAR-FS, CUB) decodes through
`decode_image` and caches its whole decoded split through `cached_dataset`, so a dataset is
decoded once and later runs load one .npz.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import FastAdaptError
from ..paths import user_cache_dir
from ..utils import WriteError, atomic_write
from .dataset import LabelledDataset

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
RESIZE_MODES = ("squash", "center_crop")
_CACHE_FORMAT = 1


def canonical_mode(img: Image.Image) -> Image.Image:
    """`img` upright and in a mode that converts to L / RGB without losing its content.

    EXIF orientation is applied (phone photos are often stored sideways); 16-bit and float
    images are scaled to 8 bits (PIL's own conversion clips them, which turns most 16-bit
    images white); transparent pixels are composited onto white (PIL's drops alpha, showing
    whatever colour the transparent pixels happen to hold, often black).
    """
    try:
        orientation = img.getexif().get(0x0112, 1)  # 0x0112: Orientation
    except Exception:  # a damaged EXIF block does not make the pixels unreadable
        orientation = 1
    if orientation != 1:
        img = ImageOps.exif_transpose(img)
    if img.mode == "F":
        array = np.asarray(img, dtype=np.float64)
        array = array * 255 if np.nanmax(array, initial=0) <= 1 else array  # [0, 1] floats, else 0..255
        img = Image.fromarray(np.rint(np.clip(np.nan_to_num(array), 0, 255)).astype(np.uint8))
    elif img.mode == "I" or img.mode.startswith("I;16"):
        array = np.asarray(img, dtype=np.float64)  # full scale 65535 (16-bit PNG / TIFF / PGM)
        img = Image.fromarray(np.rint(np.clip(array / 257, 0, 255)).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return img


def to_array(img: Image.Image, size: int, channels: int, resize: str = "squash") -> np.ndarray:
    """uint8 (channels, size, size) from a PIL image (made upright and 8-bit by `canonical_mode`).

    `resize="squash"` resizes straight to size x size, ignoring the aspect ratio (what Ravi &
    Larochelle's mini-ImageNet preprocessing does); "center_crop" scales the shorter side to
    `size` and crops the centre square. Resampling is bicubic (LANCZOS for downscaling Omniglot
    lives in omniglot.py).
    """
    img = canonical_mode(img).convert("L" if channels == 1 else "RGB")
    if resize == "center_crop" and img.size[0] != img.size[1]:
        w, h = img.size
        scale = size / min(w, h)
        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC)
        w, h = img.size
        left, top = (w - size) // 2, (h - size) // 2
        img = img.crop((left, top, left + size, top + size))
    elif img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    array = np.asarray(img, dtype=np.uint8)
    return array[None] if channels == 1 else np.ascontiguousarray(array.transpose(2, 0, 1))


def decode_image(
    source: str | Path | bytes, size: int, channels: int = 3, resize: str = "squash", where: str | None = None
) -> np.ndarray:
    """Decode one image file (path or bytes) to uint8 (channels, size, size).

    Raises FastAdaptError naming `where` (default: the path) for a missing, unreadable or truncated
    image; the whole file is decoded, so a half-written image is caught here, not in training.
    Any exception from parsing the file counts as unreadable (corrupt files make PIL raise many
    kinds), except MemoryError.
    """
    where = where or str(source if not isinstance(source, bytes) else "<bytes>")
    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return to_array(img, size, channels, resize)
    except MemoryError:
        raise
    except Exception as exc:  # UnidentifiedImageError, OSError, SyntaxError, struct.error, ... from a bad file
        detail = str(exc).splitlines()[0] if str(exc) else "corrupt"
        if isinstance(exc, UnidentifiedImageError):  # its message shows a BytesIO repr, not the file
            detail = "not an image format Pillow recognises"
        raise FastAdaptError(
            f"cannot read image {where} ({type(exc).__name__}: {detail}); "
            f"replace or delete the file (or set data.args.skip_bad=true where supported)"
        ) from None


def cache_file(kind: str, key: dict) -> Path:
    """The cache path for a decoded dataset identified by `key` (JSON-serialisable)."""
    text = json.dumps({"format": _CACHE_FORMAT, **key}, sort_keys=True, default=str)
    return user_cache_dir() / kind / f"{hashlib.sha256(text.encode()).hexdigest()[:20]}.npz"


def _read_cache(path: Path, expect_items: tuple[int, ...] | None) -> LabelledDataset | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            items, labels = data["items"], data["labels"]
            names = [str(n) for n in data["class_names"]]
            name = str(data["name"])
            sources = [str(s) for s in data["sources"]] if "sources" in data.files else None
        if expect_items is not None and tuple(items.shape[1:]) != expect_items:
            raise ValueError(f"items of shape {items.shape[1:]}, expected {expect_items}")
        return LabelledDataset(torch.from_numpy(items), labels, names, name, sources)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, FastAdaptError) as exc:
        warnings.warn(f"ignoring unusable decoded cache {path} ({exc}); rebuilding it")
        return None


def cached_dataset(
    kind: str, key: dict, build: Callable[[], LabelledDataset], item_shape: tuple[int, ...] | None = None
) -> LabelledDataset:
    """The dataset `build()` returns, cached under the user cache as `<kind>/<hash of key>.npz`.

    `key` must change whenever the decoded result would (file list, sizes, mtimes, image size,
    channels, ...). A cache that cannot be read or has the wrong item shape is rebuilt with a
    warning; a cache that cannot be written costs speed only (a warning).
    """
    path = cache_file(kind, key)
    dataset = _read_cache(path, item_shape)
    if dataset is not None:
        return dataset
    dataset = build()
    arrays = {
        "items": dataset.items.numpy(),
        "labels": dataset.labels,
        "class_names": np.array(dataset.class_names),
        "name": np.array(dataset.name),
    }
    if dataset.sources is not None:
        arrays["sources"] = np.array(dataset.sources)
    try:
        atomic_write(path, lambda f: np.savez(f, **arrays))
    except (OSError, WriteError) as exc:  # a cache that cannot be written costs speed, not correctness
        warnings.warn(f"could not write the decoded cache {path} ({exc}); set FASTADAPT_CACHE to a writable folder")
    return dataset
