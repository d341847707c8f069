"""Small shared helpers: atomic file writes, machine description, device choice."""

from __future__ import annotations

import errno
import functools
import os
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import torch

from .errors import FastAdaptError

# Errors that mean "the disk (or the user's quota) is full", whoever raises them.
_FULL = (errno.ENOSPC, errno.EDQUOT)
NO_SPACE = "no space left on device"


class WriteError(FastAdaptError):
    """An output file could not be written (full disk, read-only folder, ...): one line naming
    it. The previous version of the file, if any, is intact."""

    def __init__(self, path: Path, reason: str, hint: str | None = None):
        self.path, self.reason = Path(path), reason
        if hint is None:
            hint = (
                "free space and re-run the same command"
                if reason == NO_SPACE
                else "make its folder writable or choose another, and re-run"
            )
        super().__init__(f"could not write {path}: {reason}; {hint}")


@functools.lru_cache(maxsize=1)
def file_mode() -> int:
    """The mode a new file gets under the process umask (0o666 & ~umask). Read once: Linux
    reports the umask in /proc/self/status; elsewhere it is set and restored straight away,
    at the first write (os.umask has no read-only form before Python 3.13's os.getumask)."""
    umask = None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                umask = int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    if umask is None:
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write via `write(file)` to a temp file beside `path`, fsync, then rename over `path`:
    a reader (or a resumed run) sees the old file or the new one, never half of one. The file
    gets the mode the user's umask gives (mkstemp alone would make it 0600). A full disk, or a
    folder that cannot be written, raises WriteError (one line) and leaves the old file as it was."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise WriteError(path, exc.strerror or str(exc)) from None
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        # Only a full disk is translated: other OSErrors may come from the caller's `write`
        # (reading a download, say) and are not about this file.
        if isinstance(exc, OSError) and exc.errno in _FULL:
            raise WriteError(path, NO_SPACE) from None
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise FastAdaptError(f"unknown device {name!r} (train.device); use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FastAdaptError(f"device {name!r} asked for (train.device) but CUDA is not available; use cpu or auto")
    return device


def machine_info(device: torch.device) -> dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": _cpu_name(),
        "cores": len(os.sched_getaffinity(0)),
        "threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
