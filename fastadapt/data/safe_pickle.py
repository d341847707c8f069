"""Reading the files of the standard image benchmarks without trusting them.

`safe_load` reads a pickle without running code from it. `pickle.load` calls whatever
importable callable the file names (`os.system` included), so a dataset pickle found on a file
share could do anything; the unpickler here resolves only numpy's array-rebuilding helpers and
refuses every other global with a one-line FastAdaptError naming the file. Plain values (dict,
list, str, bytes, int, float) need no globals and load as usual, so the mini-ImageNet cache
pickles and CIFAR-100's python pickles load, and nothing else can.

The rest is what the benchmark loaders (miniimagenet.py, cifarfs.py, cub.py) share: the shipped
split lists, where a dataset's files are looked for, a fingerprint of its source files for the
decoded cache, and decoding many images (or resizing an image array) to uint8 (N, 3, S, S).
"""

from __future__ import annotations

import hashlib
import importlib
import io
import os
import pickle
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

from ..errors import FastAdaptError
from ..paths import resolve_data_root
from .images import decode_image, to_array

SPLITS_DIR = Path(__file__).with_name("splits")

# ----------------------------------------------------------------------------- restricted unpickling


def _numpy_core(submodule: str):
    """numpy's private core module (`numpy._core` since 2.0, `numpy.core` before), without
    touching the deprecated `numpy.core` alias on numpy 2 (it warns)."""
    for package in ("numpy._core", "numpy.core"):
        try:
            return importlib.import_module(f"{package}.{submodule}")
        except ImportError:
            continue
    raise ImportError(f"numpy has no core.{submodule}")


def _latin1_encode(text: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """Protocol-2 pickles written by Python 3 store bytes as `_codecs.encode(text, "latin1")`;
    only that use is allowed (any other codec is refused)."""
    if not isinstance(text, str) or encoding.replace("-", "").replace("_", "").lower() not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"_codecs.encode is only allowed with latin1, got {encoding!r}")
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """(module, name) -> object: what numpy arrays, dtypes and scalars are pickled with. None of
    these runs anything but array construction from the arguments the file supplies."""
    multiarray, numeric = _numpy_core("multiarray"), _numpy_core("numeric")
    table = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): _latin1_encode}
    for package in ("numpy.core", "numpy._core"):
        table[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        table[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        # Protocol 5 pickles of contiguous arrays: `_frombuffer(bytes, dtype, shape, order)`.
        table[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return table


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays and plain Python values and nothing else."""

    def __init__(self, file: IO[bytes], where: str):
        # latin1 reads Python 2 pickles (CIFAR-100's, MetaOptNet's): str keys, numpy-compatible bytes.
        super().__init__(file, encoding="latin1")
        self.where = where
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._allowed:
            return self._allowed[(module, name)]
        raise FastAdaptError(
            f"refusing to load {self.where}: the pickle asks to call {module}.{name}, and only "
            f"numpy arrays and plain values are allowed (a dataset file never needs code; this one "
            f"may be malicious); delete it and get the file from the dataset's official source"
        )


#: What a corrupt or truncated pickle makes the unpickler raise.
_PICKLE_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    AttributeError,
    IndexError,
    KeyError,
    OverflowError,
    RecursionError,
    UnicodeError,
)


def safe_load(source: str | Path | bytes | IO[bytes], where: str | None = None) -> Any:
    """Unpickle a file, bytes or binary stream with `RestrictedUnpickler`; `where` names it in
    errors (default: the path). A corrupt file is a one-line FastAdaptError, never a traceback."""
    where = where or str(source if isinstance(source, (str, Path)) else "<pickle>")
    try:
        if isinstance(source, (str, Path)):
            with open(source, "rb") as f:
                return RestrictedUnpickler(f, where).load()
        stream = io.BytesIO(source) if isinstance(source, bytes) else source
        return RestrictedUnpickler(stream, where).load()
    except FastAdaptError:
        raise
    except OSError as exc:
        raise FastAdaptError(
            f"cannot read {where} ({exc.strerror or exc}); check the file and its permissions"
        ) from None
    except _PICKLE_ERRORS as exc:
        raise FastAdaptError(
            f"{where} is not a readable pickle ({type(exc).__name__}: {str(exc)[:100] or 'corrupt'}); "
            f"it is corrupt or a partial copy: replace it with the original file"
        ) from None


# ----------------------------------------------------------------------------- shared loader helpers


def split_classes(dataset: str, split: str) -> list[str]:
    """The class names of a shipped split file `splits/<dataset>/<split>.txt` ('#' lines are its
    provenance), in file order."""
    path = SPLITS_DIR / dataset / f"{split}.txt"
    return [s for line in path.read_text().splitlines() if (s := line.strip()) and not s.startswith("#")]


def dataset_dir(name: str, root: str | None, data_root: str | Path | None) -> Path:
    """`data.args.root` when given, else `<data root>/<name>`."""
    return Path(root).expanduser() if root else resolve_data_root(data_root) / name


def root_origin(root: str | None, data_root: str | Path | None) -> str:
    """Where the folder looked in came from, for not-found messages."""
    if root:
        return "from data.args.root"
    if data_root:
        return "under --data-root"
    if os.environ.get("FASTADAPT_DATA"):
        return "under $FASTADAPT_DATA"
    return "under the default data root, as neither --data-root nor FASTADAPT_DATA is set"


def fingerprint(paths: Sequence[Path], base: Path | None = None) -> str:
    """sha256 of the files' names (relative to `base`), sizes and mtimes: the decoded cache's key,
    so a changed, added or removed file rebuilds it without reading any file's bytes."""
    digest = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        name = path.relative_to(base).as_posix() if base else path.name
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _workers(n: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return 1 if n < 64 else min(8, cores)


def _run(function, n: int) -> None:
    """function(i) for i in range(n), on threads: PIL releases the GIL while it decodes and resizes,
    so JPEG decoding scales with cores. The first failure (lowest i) is raised and the rest cancelled."""
    workers = _workers(n)
    if workers == 1:
        for i in range(n):
            function(i)
        return
    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(function, i) for i in range(n)]
        try:
            for future in futures:
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def decode_many(jobs: Sequence[tuple[str | Path | bytes, str]], size: int, resize: str = "squash") -> np.ndarray:
    """Decode (source, where) jobs (a path or a file's bytes, and its name for errors) to RGB
    uint8 (len(jobs), 3, size, size) through `decode_image` (a bad file is a one-line error naming it)."""
    out = np.empty((len(jobs), 3, size, size), np.uint8)

    def one(i: int) -> None:
        out[i] = decode_image(jobs[i][0], size, 3, resize, jobs[i][1])

    _run(one, len(jobs))
    return out


def resize_images(images: np.ndarray, size: int, index: np.ndarray | None = None) -> np.ndarray:
    """RGB uint8 (N, H, W, 3) -> (N, 3, size, size) (of `images[index]` when given), bicubic like
    every decoded image (`to_array`); a plain transpose, chunk by chunk, when already size x size,
    so an 800 MB pickle needs one more copy of itself, not three."""
    index = np.arange(len(images)) if index is None else np.asarray(index)
    out = np.empty((len(index), 3, size, size), np.uint8)
    if images.shape[1:3] == (size, size):
        for start in range(0, len(index), 4096):
            out[start : start + 4096] = images[index[start : start + 4096]].transpose(0, 3, 1, 2)
        return out

    def one(i: int) -> None:
        out[i] = to_array(Image.fromarray(images[index[i]]), size, 3)

    _run(one, len(index))
    return out
