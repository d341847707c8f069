"""Omniglot (Lake, Salakhutdinov & Tenenbaum, 2015): loading, caching, class splits and the `omniglot` dataset.

The two official archives are decoded once into one uint8 array of every character's 20
drawings, cached as .npz under the user cache (keyed by image size and the archives' checksums),
so later runs start in well under a second. Class pools (the Vinyals rotated splits, or Lake's
background/evaluation alphabets) are one vectorised gather (and rotation) of that array.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import re
import warnings
import zipfile
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import FastAdaptError
from ..paths import resolve_data_root, user_cache_dir
from ..registry import DATASETS
from ..utils import WriteError, atomic_write
from .base import ClassificationSuite
from .dataset import LabelledDataset
from .download import download_file

_OFFICIAL = "https://github.com/brendenlake/omniglot/raw/master/python/"
#: stem -> (official URL, official MD5 or None, minimum plausible size in bytes)
OFFICIAL_FILES = {
    "images_background": (_OFFICIAL + "images_background.zip", "68d2efa1b9178cc56df9314c21c6e718", 1_000_000),
    "images_evaluation": (_OFFICIAL + "images_evaluation.zip", "6b91aef0f799c5bb55b94e3f2daec811", 1_000_000),
    "all_runs": (_OFFICIAL + "one-shot-classification/all_runs.zip", None, 100_000),
}
#: archive label -> file stem, in the order characters are stored.
ARCHIVES = {"background": "images_background", "evaluation": "images_evaluation"}
VINYALS_SPLITS = ("train", "val", "test", "trainval")
SPLITS = VINYALS_SPLITS + tuple(ARCHIVES)
SPLITS_DIR = Path(__file__).with_name("splits") / "vinyals"

_CACHE_FORMAT = 1  # bump when preprocessing or the cache layout changes
_PARALLEL_MIN_IMAGES = 4000  # below this, worker start-up costs more than it saves


def preprocess_image(img: Image.Image, size: int) -> np.ndarray:
    """Grayscale, LANCZOS-resized to (size, size), inverted so ink is high: uint8 (size, size).

    Every Omniglot image (archives and the Lake benchmark) goes through this one function, so
    models see identical pixels whichever way a drawing was loaded.
    """
    img = img.convert("L")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.LANCZOS)
    return 255 - np.asarray(img, dtype=np.uint8)


@dataclass
class OmniglotCharacters:
    """Every character of both archives: `images` uint8 (n_chars, 20, size, size), ink high.

    `names[i]` is "Alphabet/characterNN" and `archive[i]` is "background" or "evaluation";
    drawings are in file-name order within a character.
    """

    images: np.ndarray
    names: list[str]
    archive: list[str]

    def __len__(self) -> int:
        return len(self.names)


# ----------------------------------------------------------------------------- locating files


class ArchiveReader:
    """Members of a zip file, or of the folder it was extracted to, behind one interface."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._zip = None
        if self.path.is_file():
            try:
                self._zip = zipfile.ZipFile(self.path)
            except (zipfile.BadZipFile, OSError) as exc:
                raise FastAdaptError(
                    f"{self.path} is not a readable zip file ({exc}); it is corrupt or a partial "
                    f"download: delete it and download it again"
                ) from None

    def names(self) -> list[str]:
        """Relative posix paths of all files, skipping hidden ones (e.g. macOS '._' resource forks)."""
        if self._zip is not None:
            names = [n for n in self._zip.namelist() if not n.endswith("/")]
        else:
            names = [p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file()]
        return [n for n in names if not any(part.startswith(".") or part == "__MACOSX" for part in n.split("/"))]

    def read(self, name: str) -> bytes:
        try:
            return self._zip.read(name) if self._zip is not None else (self.path / name).read_bytes()
        except (KeyError, FileNotFoundError):
            raise FastAdaptError(
                f"{name} is missing from {self.path}; the archive is incomplete: replace it with the official one"
            ) from None

    def image(self, name: str, size: int) -> np.ndarray:
        """One member decoded by `preprocess_image`; a member that is not a whole image (text,
        half a PNG) is a one-line FastAdaptError naming the archive and the member."""
        data = self.read(name)
        try:
            with Image.open(io.BytesIO(data)) as img:
                return preprocess_image(img, size)
        except Exception as exc:  # noqa: BLE001 - untrusted bytes: PIL raises OSError, SyntaxError, ValueError...
            raise FastAdaptError(
                f"{name} in {self.path} is not a readable image ({type(exc).__name__}: {exc}); "
                f"the archive is damaged: replace it with the official one"
            ) from None

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def locate(root: Path | str | None, stem: str, download: bool = False) -> Path:
    """`<root>/omniglot/<stem>.zip`, else the extracted folder `<root>/omniglot/<stem>/`.

    Missing both: download the official zip when `download`, otherwise raise a FastAdaptError
    that names the file, every place looked at, and how to fix it.
    """
    base = resolve_data_root(root) / "omniglot"
    zip_path, folder = base / f"{stem}.zip", base / stem
    if zip_path.is_file():
        return zip_path
    if folder.is_dir():
        return folder
    url, md5, min_bytes = OFFICIAL_FILES[stem]
    if download:
        return download_file(url, zip_path, md5, min_bytes=min_bytes)
    origin = (
        "--data-root"
        if root
        else "$FASTADAPT_DATA"
        if os.environ.get("FASTADAPT_DATA")
        else "the default, as neither --data-root nor FASTADAPT_DATA is set"
    )
    raise FastAdaptError(
        f"Omniglot file {stem}.zip not found: looked for {zip_path} and the extracted folder {folder}/ "
        f"(data root from {origin}); fix: pass --data-root DIR or set FASTADAPT_DATA=DIR where "
        f"DIR/omniglot/{stem}.zip exists, or download it from {url} (`fastadapt train --download`, or download=True in Python)"
    )


# ----------------------------------------------------------------------------- decoding + cache


def _group_drawings(reader: ArchiveReader) -> dict[str, list[str]]:
    """ "Alphabet/characterNN" -> its PNG members sorted by file name, characters sorted by name."""
    groups: dict[str, list[str]] = defaultdict(list)
    for name in reader.names():
        parts = name.split("/")
        if name.endswith(".png") and len(parts) >= 3:
            groups["/".join(parts[-3:-1])].append(name)
    return {char: sorted(files, key=lambda f: f.rsplit("/", 1)[1]) for char, files in sorted(groups.items())}


def _decode_chunk(path: str, members: list[str], size: int) -> np.ndarray:
    """Decode and preprocess some members of one archive (runs in worker processes)."""
    with ArchiveReader(Path(path)) as reader:
        return np.stack([reader.image(m, size) for m in members])


def _decode_drawings(jobs: list[tuple[str, list[str]]], size: int) -> np.ndarray:
    """Decode (archive path, members) jobs into one (n_images, size, size) array, in job order.

    Per-image work is small and holds the GIL (threads do not help), so big jobs are split over
    worker processes, one slice of each archive per core (opening a big zip is not free); if
    workers cannot start, decoding falls back to this process.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if cores > 1 and sum(len(members) for _, members in jobs) >= _PARALLEL_MIN_IMAGES:
        chunks = [
            (path, members[i : i + step])
            for path, members in jobs
            for step in [-(-len(members) // cores)]
            for i in range(0, len(members), step)
        ]
        try:
            with ProcessPoolExecutor(cores) as pool:
                return np.concatenate(list(pool.map(_decode_chunk, *zip(*chunks), [size] * len(chunks))))
        except (OSError, RuntimeError) as exc:  # no /dev/shm, process limits, broken pool...
            warnings.warn(f"parallel Omniglot decoding failed ({exc}); decoding in one process")
    return np.concatenate([_decode_chunk(path, members, size) for path, members in jobs])


def _decode_characters(sources: dict[str, Path], size: int) -> OmniglotCharacters:
    """Decode every drawing of both archives (the slow path the cache exists to avoid)."""
    names, archive, jobs, counts = [], [], [], {}
    for label, source in sources.items():
        with ArchiveReader(source) as reader:
            groups = _group_drawings(reader)
        if not groups:
            raise FastAdaptError(
                f"no Omniglot drawings (<Alphabet>/<character>/<file>.png) found in {source}; "
                f"replace it with the official {ARCHIVES[label]}.zip"
            )
        names += groups
        archive += [label] * len(groups)
        counts.update({f"{char} in {source}": len(members) for char, members in groups.items()})
        jobs.append((str(source), [m for members in groups.values() for m in members]))
    per_char = Counter(counts.values()).most_common(1)[0][0]
    odd = [f"{char} has {n}" for char, n in counts.items() if n != per_char]
    if odd:
        raise FastAdaptError(
            f"Omniglot characters must all have the same number of drawings ({per_char}), but "
            f"{'; '.join(odd[:3])}{' ...' if len(odd) > 3 else ''}; replace the archive with the "
            f"official one"
        )
    images = _decode_drawings(jobs, size)
    return OmniglotCharacters(images.reshape(len(names), per_char, size, size), names, archive)


def _fingerprint(source: Path) -> str:
    """sha256 of a zip's bytes, or of an extracted folder's relative paths and file sizes."""
    if source.is_file():
        with open(source, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    digest = hashlib.sha256()
    for path in sorted(source.rglob("*.png")):
        digest.update(f"{path.relative_to(source).as_posix()}\0{path.stat().st_size}\n".encode())
    return digest.hexdigest()


def _read_cache(path: Path, size: int | None = None) -> OmniglotCharacters | None:
    """The cached characters, or None when absent, unreadable (empty, truncated) or of the wrong
    shape (then it is rebuilt, with a warning)."""
    try:
        with np.load(path) as data:
            chars = OmniglotCharacters(data["images"], data["names"].tolist(), data["archive"].tolist())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        warnings.warn(f"ignoring unreadable Omniglot cache {path} ({exc or type(exc).__name__}); rebuilding it")
        return None
    images = chars.images
    if not (
        images.dtype == np.uint8
        and images.ndim == 4
        and images.shape[0] == len(chars) == len(chars.archive)
        and images.shape[0] > 0
        and (size is None or images.shape[2:] == (size, size))
    ):
        warnings.warn(
            f"ignoring Omniglot cache {path} of the wrong shape ({images.dtype} {images.shape} for "
            f"{len(chars)} characters); rebuilding it"
        )
        return None
    return chars


def _write_cache(path: Path, chars: OmniglotCharacters) -> None:
    try:
        atomic_write(
            path,
            lambda f: np.savez(f, images=chars.images, names=np.array(chars.names), archive=np.array(chars.archive)),
        )
    except (OSError, WriteError) as exc:  # a read-only cache costs speed, not correctness
        warnings.warn(f"could not write the Omniglot cache {path} ({exc}); set FASTADAPT_CACHE to a writable folder")


def cache_path(sources: dict[str, Path], size: int) -> Path:
    """Where the decoded array for these archives at this size lives."""
    key = "|".join([f"format{_CACHE_FORMAT}", str(size)] + [_fingerprint(s) for s in sources.values()])
    return user_cache_dir() / "omniglot" / f"characters-{size}px-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


@functools.lru_cache(maxsize=4)
def _load_characters(sources: tuple[tuple[str, Path], ...], signature: tuple, size: int) -> OmniglotCharacters:
    """Disk cache, else decode; memoised per process on the archives' (path, size, mtime) `signature`."""
    sources = dict(sources)
    path = cache_path(sources, size)
    chars = _read_cache(path, size)
    if chars is None:
        chars = _decode_characters(sources, size)
        _write_cache(path, chars)
    chars.images.flags.writeable = False  # shared by every caller in this process
    return chars


def load_omniglot_characters(
    root: Path | str | None = None, size: int = 28, download: bool = False
) -> OmniglotCharacters:
    """All 1623 characters (964 background + 659 evaluation) x 20 drawings, preprocessed to `size`.

    The first call decodes the archives (seconds) and caches the result; later calls, in this
    process or another, load the cache. The returned array is read-only because it is shared.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise FastAdaptError(f"Omniglot image size must be a positive integer (data.image_size), got {size!r}")
    sources = {label: locate(root, stem, download) for label, stem in ARCHIVES.items()}
    signature = tuple((s.stat().st_size, s.stat().st_mtime_ns) for s in sources.values())
    return _load_characters(tuple(sources.items()), signature, size)


# ----------------------------------------------------------------------------- class pools


def _vinyals_classes(chars: OmniglotCharacters, split: str) -> tuple[np.ndarray, list[str]]:
    """The rotated classes of a Vinyals split file: images (n_classes, 20, S, S) and names.

    Rotation is np.rot90 by k = degrees / 90 (counter-clockwise, like PIL's rotate), applied to
    the already-resized uint8 array: the same as rotating before the square LANCZOS resize up
    to 8-bit rounding, and free of any re-decoding.
    """
    path = SPLITS_DIR / f"{split}.txt"
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    index = {name: i for i, name in enumerate(chars.names)}
    char_ids, turns = np.empty(len(lines), np.int64), np.empty(len(lines), np.int64)
    for j, line in enumerate(lines):
        character, _, rotation = line.rpartition("/")
        match = re.fullmatch(r"rot(\d{3})", rotation)
        if match is None or int(match[1]) % 90:
            raise FastAdaptError(
                f"bad class {line!r} at {path}:{j + 1}; expected <Alphabet>/characterNN/rotDDD "
                f"with DDD a multiple of 90"
            )
        if character not in index:
            raise FastAdaptError(
                f"class {line!r} of split file {path} is not in the Omniglot archives "
                f"({len(chars)} characters found); use the official images_background.zip "
                f"and images_evaluation.zip"
            )
        char_ids[j], turns[j] = index[character], int(match[1]) // 90 % 4
    images = chars.images[char_ids]  # fancy indexing copies, so rotating in place is safe
    for k in (1, 2, 3):
        if (selected := turns == k).any():
            images[selected] = np.rot90(images[selected], k, axes=(2, 3))
    return images, lines


def omniglot_pool(
    split: str, root: Path | str | None = None, size: int = 28, download: bool = False
) -> LabelledDataset:
    """Classes of an Omniglot split as a labelled dataset: items uint8 (n_classes * 20, 1, size, size),
    item c * 20 + j being drawing j of class c.

    "train"/"val"/"test"/"trainval": the Vinyals et al. rotated classes (4112/688/1692/4800),
    which mix alphabets of both archives. "background"/"evaluation": Lake's alphabet split,
    unrotated characters of that archive (964/659).
    """
    if split not in SPLITS:
        raise FastAdaptError(f"unknown Omniglot split {split!r}; valid splits: {', '.join(SPLITS)}")
    chars = load_omniglot_characters(root, size, download)
    if split in ARCHIVES:
        keep = np.flatnonzero(np.asarray(chars.archive) == split)
        images, names, name = chars.images[keep], [chars.names[i] for i in keep], f"omniglot/{split}"
    else:
        (images, names), name = _vinyals_classes(chars, split), f"omniglot/vinyals-{split}"
    return LabelledDataset.from_class_array(torch.from_numpy(images).unsqueeze(2), names, name)


@DATASETS.register("omniglot")
class OmniglotSuite(ClassificationSuite):
    """Few-shot classification on Omniglot class splits (Vinyals or Lake background/evaluation)."""

    splits = SPLITS
    inverted_ink = True

    def load_split(self, split: str) -> LabelledDataset:
        return omniglot_pool(split, root=self.data_root, size=self.image_size, download=self.download)

    def item_from_file(self, path: str | Path, channels: int = 1) -> np.ndarray:
        """A drawing as Omniglot's items: grayscale, resized, ink high (dark strokes on light paper)."""
        try:
            with Image.open(path) as img:
                return preprocess_image(img, self.image_size)[None]
        except (OSError, ValueError) as exc:
            raise FastAdaptError(f"cannot read image {path} ({exc}); replace or remove the file") from None
