"""Decoding many image files to uint8 arrays, in worker processes that cannot outlive the caller.

Decoding holds the GIL, so large folders are split over processes; a worker dies with its parent
(SIGKILL, crash or Ctrl-C included) instead of waiting on its queue forever. Used by `imagefolder`.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from ..errors import FastAdaptError
from .images import decode_image

__all__ = ["decode_files"]

#: Below this many images (~1 s of decoding) one process is about as fast: starting workers and
#: shipping arrays back costs ~0.1 s (measured), and on a busy machine the other cores are not free.
_PARALLEL_MIN_IMAGES = 400
_CHUNK = (16, 256)  # images per worker job: small enough to balance load and stop promptly


def _decode_chunk(paths: list[str], size: int, channels: int, resize: str) -> tuple[np.ndarray, dict[int, str]]:
    """Decode `paths` (runs in worker processes): uint8 (n, channels, size, size), unreadable
    images left zero and returned as {position: one-line message}."""
    out = np.zeros((len(paths), channels, size, size), np.uint8)
    bad = {}
    for i, path in enumerate(paths):
        try:
            out[i] = decode_image(path, size, channels, resize)
        except FastAdaptError as exc:
            bad[i] = str(exc)
    return out, bad


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _watch_parent(parent: int, ppid: int) -> None:
    """Exit as soon as the parent is gone (reparented, or its pid no longer exists)."""
    while True:
        if os.getppid() != ppid or not _alive(parent):
            os._exit(1)
        time.sleep(0.5)


def _worker_init(parent: int) -> None:
    """Make a decode worker unable to outlive `parent`: a SIGKILLed or crashed parent never runs
    the pool's shutdown, and an orphaned worker would wait on its queue forever."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the pool
    if sys.platform.startswith("linux"):
        try:  # PR_SET_PDEATHSIG: the kernel kills us when the process that forked us exits
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    threading.Thread(target=_watch_parent, args=(parent, os.getppid()), daemon=True).start()


def _stop(pool: ProcessPoolExecutor) -> None:
    """Kill the workers now (on Ctrl-C or an error), rather than letting them finish the queue."""
    if hasattr(pool, "terminate_workers"):  # Python 3.14+
        pool.terminate_workers()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def decode_files(
    paths: list[str], size: int, channels: int = 3, resize: str = "squash", workers: int | None = None
) -> tuple[np.ndarray, dict[int, str]]:
    """Decode image files to uint8 (n, channels, size, size), in path order.

    Returns the array and {index: message} for unreadable files (their rows are zero). Decoding
    holds the GIL, so folders of `_PARALLEL_MIN_IMAGES` or more are split over `workers` processes
    (default: one per usable core); they die with this process. If workers cannot start,
    decoding falls back to this process with a warning.
    """
    n = len(paths)
    workers = min(workers or _cores(), n)
    if workers > 1 and n >= _PARALLEL_MIN_IMAGES:
        step = int(np.clip(n // (workers * 8), *_CHUNK))
        items, bad = np.zeros((n, channels, size, size), np.uint8), {}
        pool = None
        try:
            pool = ProcessPoolExecutor(workers, initializer=_worker_init, initargs=(os.getpid(),))
            jobs = {
                pool.submit(_decode_chunk, paths[i : i + step], size, channels, resize): i for i in range(0, n, step)
            }
            for job in as_completed(jobs):
                array, errors = job.result()
                start = jobs[job]
                items[start : start + len(array)] = array
                bad.update({start + j: message for j, message in errors.items()})
            pool.shutdown()
            return items, bad
        except (OSError, BrokenProcessPool) as exc:  # no /dev/shm, process limits, a worker killed (OOM)...
            warnings.warn(f"parallel image decoding failed ({type(exc).__name__}: {exc}); decoding in one process")
            if pool is not None:
                _stop(pool)
        except BaseException:
            if pool is not None:
                _stop(pool)
            raise
    return _decode_chunk(paths, size, channels, resize)
