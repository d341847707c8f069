"""Run-folder safety: one writer per folder, no stale temp files, a config.yaml read with care.

- `run_lock(run_dir)`: an exclusive, non-blocking `flock` on `RUN/.lock` for as long as a
  process writes the folder (`fit`, `eval`); the holder's PID is written into the file so a
  second process can say who holds it. The lock is re-entrant within a process (`fit` calls
  `evaluate_run`), and forked children (engine workers) close their copy at once, so the lock
  lives exactly as long as the process that took it, and dies with it (even on kill -9).
- `remove_stale_temp_files`: the `.*.tmp` files of writes cut short by a kill.
- `release_unused_claim`: a new run that failed before training leaves no folder that would refuse
  the corrected command.
- `read_run_config`: `config.yaml` of a run folder, every way of being unreadable one line;
  `write_or_check_settings`: a new run's config.yaml, or a resumed run's settings checked against it.
- `require_rank_0`: under torch.distributed only rank 0 locks and writes a run folder (the other
  ranks read it to resume); the lock and the checkpoint writer refuse other ranks.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

from .errors import FastAdaptError
from .utils import WriteError, atomic_write_text, file_mode

LOCK_NAME = ".lock"
#: Settings that only label a run (checkpoint.UNFINGERPRINTED but `overrides`, which records how a
#: run departs from its preset): a resumed run takes the preset's current ones.
LABELS = ("name", "description", "reference")
_IMPORTED = time.time()
_held: dict[str, list[int]] = {}  # real path of the run folder -> [fd, depth]


def _close_inherited_locks() -> None:
    # A forked child shares the lock's open file description: closing its copy keeps the lock
    # owned by the parent alone (flock is released when the last copy closes).
    for fd, _ in _held.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _held.clear()


os.register_at_fork(after_in_child=_close_inherited_locks)


def _holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        pid = ""
    return f"process {pid}" if pid.isdigit() else "another process"


def require_rank_0(what: str) -> None:
    """A RuntimeError (a bug, not user input) when this process is a torch.distributed rank other
    than 0: `what` is rank 0's job. Reads torch.distributed only if something imported it."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        raise RuntimeError(f"rank {dist.get_rank()} tried to {what}; only rank 0 writes the run folder")


@contextmanager
def run_lock(run_dir: str | Path):
    """Hold the run folder's lock (creating the folder); a folder locked by another process is
    a one-line FastAdaptError naming its PID. Rank 0 only, under torch.distributed."""
    require_rank_0("lock the run folder")
    run_dir = Path(run_dir)
    key = os.path.realpath(run_dir)
    if key in _held:  # re-entered by the process holding it
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    path = run_dir / LOCK_NAME
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, file_mode())
    except OSError as exc:
        raise WriteError(path, exc.strerror or str(exc)) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise FastAdaptError(
            f"{run_dir} is in use by {holder} (lock {path}); wait for it to finish or "
            f"stop it, or use another run folder"
        ) from None
    except OSError:  # a file system without flock: run unlocked rather than not at all
        pass
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[key] = [fd, 1]
    try:
        yield
    finally:
        entry = _held.pop(key, None)
        if entry is not None:
            if created:  # refused before anything was written (bad data, bad ranks): leave no folder behind
                _remove_if_only_lock(run_dir, path)
            os.close(entry[0])


def _remove_if_only_lock(run_dir: Path, path: Path) -> None:
    """Remove a folder this process created that holds nothing but its lock (unlinked while still held)."""
    try:
        if os.listdir(run_dir) == [LOCK_NAME]:
            path.unlink()
            run_dir.rmdir()
    except OSError:
        pass  # someone else wrote into it meanwhile: it stays


def release_unused_claim(run_dir: str | Path) -> bool:
    """Remove what a new run wrote on claiming its folder (config.yaml, model.json, an empty
    TensorBoard log) when it failed before writing anything else: a setting only the environment or
    the model could refuse, a divergence at the first steps, a crash, Ctrl-C. A folder with anything
    more is left as it is (returns False)."""
    written = [p for p in Path(run_dir).iterdir() if p.name != LOCK_NAME]
    if not all(p.name in ("config.yaml", "model.json") or p.name.startswith("events.out.tfevents") for p in written):
        return False
    for path in written:
        path.unlink(missing_ok=True)
    return True


def process_start_time() -> float:
    """When this process started (Linux: /proc; elsewhere: when this module was imported)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(
            int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")
        )
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED


def remove_stale_temp_files(run_dir: str | Path, subfolders=("episodes", "checkpoints")) -> list[Path]:
    """Delete the `.*.tmp` files (atomic_write's half-written files) in the run folder and its
    `subfolders` that are older than this process: a killed writer left them; a live writer's
    files are newer (and, for the run folder, the lock keeps other writers out)."""
    run_dir = Path(run_dir)
    started = process_start_time()
    removed = []
    for folder in (run_dir, *(run_dir / s for s in subfolders)):
        for path in folder.glob(".*.tmp"):
            try:
                if path.is_file() and path.stat().st_mtime < started:
                    path.unlink()
                    removed.append(path)
            except OSError:
                pass  # gone already, or not ours to delete: harmless either way
    return removed


def read_run_config(run_dir: str | Path) -> dict:
    """The settings in `RUN/config.yaml` as a mapping; missing, unreadable, binary, truncated
    or not a mapping is a one-line FastAdaptError naming the file."""
    path = Path(run_dir) / "config.yaml"
    fix = "restore it, or start the run again in a new folder"
    try:
        values = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise FastAdaptError(
            f"{run_dir} is not a run folder (no config.yaml); give the --out folder of a `fastadapt train` run"
        ) from None
    except OSError as exc:
        raise FastAdaptError(f"cannot read {path} ({exc.strerror}); {fix}") from None
    except UnicodeDecodeError:
        raise FastAdaptError(f"{path} is not text (a binary or damaged file); {fix}") from None
    except yaml.YAMLError as exc:
        raise FastAdaptError(f"{path} is not valid YAML ({str(exc).splitlines()[0]}); {fix}") from None
    if not isinstance(values, dict):
        raise FastAdaptError(f"{path} does not hold a mapping of settings (empty or damaged); {fix}")
    return values


def write_or_check_settings(run_dir: str | Path, wanted: dict) -> None:
    """Write `wanted` (a Config's dict) as RUN/config.yaml, or check that the folder's run has these
    settings: labels (LABELS) may differ and are updated, anything else is a one-line error. A
    folder with other files and no config.yaml is the user's (e.g. their data): never written into."""
    from .config import config_from_dict  # the config module is the settings' one reader

    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if config_path.exists():
        raw = read_run_config(run_dir)  # binary, truncated, not a mapping: one line
        try:
            existing = config_from_dict(raw).to_dict()
        except FastAdaptError as exc:
            raise FastAdaptError(f"{config_path}: {exc}") from None
        changed = sorted(k for k in wanted if wanted[k] != existing.get(k))
        if any(k not in LABELS for k in changed):
            raise FastAdaptError(
                f"run folder {run_dir} holds a run with other settings (differs in: {', '.join(changed)}); "
                f"resume it with the same settings or choose a new --out"
            )
        if changed:  # only labels, e.g. a preset's corrected paper figures: the run takes them
            atomic_write_text(config_path, yaml.safe_dump(wanted, sort_keys=False))
        return
    other = sorted(p.name for p in run_dir.iterdir() if not p.name.startswith(".")) if run_dir.is_dir() else []
    if other:
        raise FastAdaptError(
            f"--out {run_dir} is a folder with other files ({', '.join(other[:3])}{' ...' if len(other) > 3 else ''}) "
            f"and no config.yaml, so it is not a run folder; give a new or empty folder"
        )
    atomic_write_text(config_path, yaml.safe_dump(wanted, sort_keys=False))
