"""Where data and caches live.

The data root is read-only as far as fastadapt is concerned (it may be a shared folder), so
derived files (decoded image caches) go to a separate, writable cache directory.
"""

from __future__ import annotations

import os
from pathlib import Path


def user_cache_dir() -> Path:
    """Writable per-user cache: $FASTADAPT_CACHE, else $XDG_CACHE_HOME/fastadapt, else ~/.cache/fastadapt."""
    if os.environ.get("FASTADAPT_CACHE"):
        return Path(os.environ["FASTADAPT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "fastadapt"


def resolve_data_root(data_root: str | os.PathLike | None = None) -> Path:
    """The data root: the explicit argument (--data-root), then $FASTADAPT_DATA, then the user cache."""
    if data_root:
        return Path(data_root).expanduser()
    if os.environ.get("FASTADAPT_DATA"):
        return Path(os.environ["FASTADAPT_DATA"]).expanduser()
    return user_cache_dir() / "data"
