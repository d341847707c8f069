"""Faults and hostile files (issue 14): nothing on disk runs code or is used unchecked, a full
disk or a signal leaves the run resumable, workers die with the trainer, one run per folder.

All runs are a tiny sinusoid MAML (no data files, ~1 s each); the process tests start the real
CLI in subprocesses."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastadapt.checkpoint import CheckpointWarning, latest_step, load_weights, read_checkpoint, settings_fingerprint
from fastadapt.cli import main
from fastadapt.config import load_config
from fastadapt.errors import FastAdaptError
from fastadapt.runlock import run_lock
from fastadapt.trainer import Trainer, evaluate_run
from fastadapt.utils import atomic_write, file_mode

PRESET = "maml-sinusoid-5shot"
TINY = [
    "train.steps=6",
    "train.meta_batch=2",
    "train.checkpoint_every=2",
    "train.val_every=3",
    "train.val_episodes=4",
    "train.log_every=2",
    "eval.episodes=5",
    "eval.queries=10",
]
VOLATILE = {"eval_seconds", "train_seconds", "created", "machine"}


def tiny(*extra):
    return load_config(PRESET, TINY + list(extra))


def fit(run_dir, *extra, stop_after=None):
    return Trainer(tiny(*extra), run_dir, quiet=True).fit(stop_after=stop_after)


def result_of(run_dir: Path) -> tuple:
    record = json.loads((run_dir / "eval.json").read_text())
    return (run_dir / "best.safetensors").read_bytes(), {k: v for k, v in record.items() if k not in VOLATILE}


def cli(capsys, *args) -> tuple[int, list[str]]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """`straight`: a finished run; `stopped`: the same run stopped at step 4 (checkpoints 2, 4);
    `other`: a finished run of the same architecture with another seed."""
    root = tmp_path_factory.mktemp("runs")
    fit(root / "straight")
    fit(root / "stopped", stop_after=4)
    fit(root / "other", "seed=1")
    return {name: root / name for name in ("straight", "stopped", "other")}


@pytest.fixture
def stopped(runs, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(runs["stopped"], run)
    return run


def ckpt(run: Path, step: int, ext: str) -> Path:
    return run / "checkpoints" / f"step-{step:08d}.{ext}"


# -- 1. no code runs on load ----------------------------------------------------------------
class _Plant:
    """Unpickling this creates `marker`: the proof that a loader executed the file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_pt_checkpoint_is_refused_unread(stopped, tmp_path, capsys):
    marker = tmp_path / "pwned"
    planted = ckpt(stopped, 6, "pt")
    planted.write_bytes(pickle.dumps(_Plant(marker)))
    code, err = cli(capsys, "train", stopped, "--quiet")
    assert code == 2 and len(err) == 1, err
    assert str(planted) in err[0] and "older fastadapt" in err[0] and "delete" in err[0]
    assert not marker.exists()


def test_pickle_bytes_in_any_run_file_are_never_unpickled(runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs["straight"], run)
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Plant(marker))
    for path in [*run.glob("checkpoints/step-*"), run / "checkpoints" / "latest.json", run / "best.safetensors"]:
        path.write_bytes(payload)
    (run / "eval.json").unlink()  # so `train` does not just report the finished result
    for command in (["train", run, "--quiet"], ["eval", run]):
        code, err = cli(capsys, *command)
        assert code == 2 and len(err) == 1 and "delete" in err[0], (command, err)
    assert not marker.exists()


# -- 2. nothing on disk is trusted unchecked -------------------------------------------------
def _flip_tensor_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(len(data) - 16, len(data) - 8):  # inside the last tensor's data
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "flipped-tensor-bytes": lambda run: _flip_tensor_bytes(ckpt(run, 4, "safetensors")),
    "truncated-weights": lambda run: ckpt(run, 4, "safetensors").write_bytes(
        ckpt(run, 4, "safetensors").read_bytes()[:500]
    ),
    "empty-record": lambda run: ckpt(run, 4, "json").write_bytes(b""),
    "edited-record": lambda run: ckpt(run, 4, "json").write_text(
        ckpt(run, 4, "json").read_text().replace('"elapsed": ', '"elapsed": 1', 1)
    ),
    "missing-record": lambda run: ckpt(run, 4, "json").unlink(),
    "missing-weights": lambda run: ckpt(run, 4, "safetensors").unlink(),
    "pair-mixed-with-another-step": lambda run: shutil.copy(ckpt(run, 2, "safetensors"), ckpt(run, 4, "safetensors")),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(damage, stopped, runs):
    DAMAGE[damage](stopped)
    with pytest.warns(CheckpointWarning, match=r"step-00000004.*resuming from step 2, the newest good checkpoint"):
        fit(stopped)
    assert result_of(stopped) == result_of(runs["straight"])  # resumed exactly, one checkpoint earlier


def test_checkpoint_copied_from_another_run_is_detected(stopped, runs, capsys):
    for ext in ("safetensors", "json"):  # a complete, valid pair - of another run
        shutil.copy(ckpt(runs["other"], 6, ext), ckpt(stopped, 6, ext))
    with pytest.warns(CheckpointWarning, match="step-00000006.json was written by a run with other settings"):
        fit(stopped)
    assert result_of(stopped) == result_of(runs["straight"])
    # Nothing of this run left: one line naming the file and the fix, exit 2.
    (stopped / "eval.json").unlink()
    for step in (4, 6):
        for ext in ("safetensors", "json"):
            shutil.copy(ckpt(runs["other"], 6, ext), ckpt(stopped, step, ext))
    code, err = cli(capsys, "train", stopped, "--quiet")
    assert code == 2 and len(err) == 1, err
    assert "no usable checkpoint" in err[0] and "other settings" in err[0] and "delete" in err[0]


def test_garbage_latest_json_warns_and_resumes_from_the_newest_good_checkpoint(stopped, runs):
    (stopped / "checkpoints" / "latest.json").write_bytes(b"\x00\xffnot json")
    with pytest.warns(CheckpointWarning, match="latest.json is unreadable: resuming from step 4"):
        fit(stopped)
    assert result_of(stopped) == result_of(runs["straight"])


def test_no_good_checkpoint_is_one_line_naming_the_file(stopped, capsys):
    for step in (2, 4):
        ckpt(stopped, step, "safetensors").write_bytes(b"")
    code, err = cli(capsys, "train", stopped, "--quiet")
    assert code == 2 and len(err) == 1, err
    assert f"{ckpt(stopped, 4, 'safetensors')} is empty" in err[0] and "delete" in err[0]


def test_two_newest_checkpoints_are_kept(runs):
    names = sorted(p.name for p in (runs["straight"] / "checkpoints").iterdir())
    assert names == [
        "latest.json",
        "step-00000004.json",
        "step-00000004.safetensors",
        "step-00000006.json",
        "step-00000006.safetensors",
    ]


def test_best_weights_are_checked_on_load(runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs["straight"], run)
    best = run / "best.safetensors"
    shutil.copy(runs["other"] / "best.safetensors", best)
    with pytest.raises(FastAdaptError, match="best.safetensors was written by a run with other settings"):
        evaluate_run(run)
    _flip_tensor_bytes(best)
    code, err = cli(capsys, "eval", run)
    assert code == 2 and len(err) == 1 and f"{best} is corrupt" in err[0], err
    # A weights file of another architecture never half-loads.
    module = Trainer(tiny("model.backbone_args.hidden=[8]"), tmp_path / "x", quiet=True).learner
    with pytest.raises(FastAdaptError, match="weights of another model"):
        load_weights(runs["straight"] / "best.safetensors", module)


@pytest.mark.parametrize(
    "content",
    [
        b"\x89PNG\r\n\x1a\n\x00\xff\xfe",
        b"- a list\n- not a mapping\n",
        b"",
        b"name: maml-sinusoid-5shot\ntrain: {steps: 6, meta_",
    ],
    ids=["binary", "not-a-mapping", "empty", "truncated"],
)
def test_unreadable_config_yaml_is_one_line(content, stopped, capsys):
    (stopped / "config.yaml").write_bytes(content)
    for command in (["train", stopped, "--quiet"], ["eval", stopped]):
        code, err = cli(capsys, *command)
        assert code == 2 and len(err) == 1 and "config.yaml" in err[0], (command, err)
    with pytest.raises(FastAdaptError, match="config.yaml"):
        fit(stopped)


class _FullDisk:
    """A file whose every write fails as on a full disk."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.f, name)


def full_disk_for(monkeypatch, prefix: str) -> None:
    """From now on, writing a file whose name starts with `prefix` fails with ENOSPC."""
    real = os.fdopen

    def fdopen(fd, *args, **kwargs):
        f = real(fd, *args, **kwargs)
        name = Path(os.readlink(f"/proc/self/fd/{fd}")).name
        return _FullDisk(f) if name.startswith("." + prefix) else f

    monkeypatch.setattr(os, "fdopen", fdopen)


@pytest.mark.parametrize(
    "failing, resume_step", [("step-00000006.safetensors", 4), ("step-00000006.json", 4), ("latest.json", 6)]
)
def test_full_disk_while_checkpointing(failing, resume_step, stopped, runs, monkeypatch, capsys):
    before = {p.name: p.read_bytes() for p in (stopped / "checkpoints").iterdir()}
    full_disk_for(monkeypatch, failing)
    code, err = cli(capsys, "train", stopped, "--quiet")
    assert code == 2 and len(err) == 1, err
    assert (
        f"could not write {stopped / 'checkpoints' / failing}: no space left on device; free space and "
        f"re-run to resume from step {resume_step}"
    ) in err[0]
    after = {p.name: p.read_bytes() for p in (stopped / "checkpoints").iterdir()}
    assert {k: v for k, v in after.items() if "00000006" not in k} == before  # the previous files, intact
    assert not list(stopped.rglob("*.tmp"))
    monkeypatch.undo()
    code, _ = cli(capsys, "train", stopped, "--quiet")
    assert code == 0 and result_of(stopped) == result_of(runs["straight"])


def test_full_disk_writing_any_file_keeps_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "eval.json"
    target.write_text("old")
    full_disk_for(monkeypatch, "eval.json")
    with pytest.raises(FastAdaptError, match=r"could not write .*eval.json: no space left on device; free space"):
        atomic_write(target, lambda f: f.write(b"new"))
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["eval.json"]


def test_output_files_follow_the_umask(runs):
    previous = os.umask(0o022)
    os.umask(previous)
    assert file_mode() == 0o666 & ~previous
    for path in runs["straight"].rglob("*"):
        if path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) == file_mode(), path


# -- 3. processes and files clean up ---------------------------------------------------------
def test_stale_temp_files_are_removed_at_start_but_not_new_ones(stopped):
    old = time.time() - 3600
    stale = [
        stopped / ".metrics.csv.x1.tmp",
        stopped / "checkpoints" / ".step-00000006.json.x2.tmp",
        stopped / "episodes" / ".test.npz.x3.tmp",
    ]
    for path in stale:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"half")
        os.utime(path, (old, old))
    live = stopped / ".eval.json.x4.tmp"  # newer than this process: another writer's
    live.write_bytes(b"being written")
    fit(stopped)
    assert not any(p.exists() for p in stale) and live.exists()


def _endless(*settings: str) -> list[str]:
    return TINY + ["train.steps=1000000", "train.val_every=1000000"] + list(settings)


def _cli_process(run: Path, *settings: str, umask: int | None = None) -> subprocess.Popen:
    args = [sys.executable, "-m", "fastadapt", "train", PRESET, "--quiet", "--out", str(run)]
    for item in _endless(*settings):
        args += ["--set", item]
    return subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=(lambda: os.umask(umask)) if umask else None,
    )


def _wait_for(condition, what: str, timeout: float = 60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if entry.name.isdigit() and int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped counts as gone)."""
    try:
        os.kill(pid, 0)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (ProcessLookupError, FileNotFoundError):
        return False
    return state not in ("Z", "X")


FORK = ("train.engine=fork", "train.workers=2")


def _training_with_workers(run: Path) -> tuple[subprocess.Popen, list[int]]:
    process = _cli_process(run, *FORK)
    _wait_for(lambda: latest_step(run) or process.poll() is not None, "a checkpoint")
    assert process.poll() is None, process.stderr.read()
    workers = _children(process.pid)
    assert len(workers) == 1, workers  # 2 workers: the trainer and one forked process
    return process, workers


@pytest.mark.parametrize("how", ["kill-9", "ctrl-c", "sigterm"])
def test_fork_workers_die_with_the_trainer(how, tmp_path):
    process, workers = _training_with_workers(tmp_path / "run")
    if how == "kill-9":
        process.kill()
    else:  # Ctrl-C reaches the whole foreground process group, workers included
        os.killpg(process.pid, signal.SIGINT if how == "ctrl-c" else signal.SIGTERM)
    code = process.wait(timeout=30)
    _wait_for(lambda: not any(_alive(pid) for pid in workers), "the workers to exit", timeout=5)
    if how != "kill-9":
        err = process.stderr.read().strip().splitlines()
        assert code == {"ctrl-c": 130, "sigterm": 143}[how] and len(err) == 1, err  # no worker traceback
        assert "run the same command again to resume" in err[0]
        step = latest_step(tmp_path / "run")
        state, _ = read_checkpoint(
            tmp_path / "run" / "checkpoints", step, settings_fingerprint(load_config(PRESET, _endless(*FORK)))
        )
        assert state["step"] == step and not list((tmp_path / "run").rglob("*.tmp"))


def test_one_run_per_folder(tmp_path, capsys):
    run = tmp_path / "run"
    first = _cli_process(run, "train.engine=serial", umask=0o002)  # one core busy, one for the second
    _wait_for(lambda: latest_step(run) or first.poll() is not None, "a checkpoint")
    try:
        second = _cli_process(run, "train.engine=serial")
        err = second.communicate(timeout=60)[1].strip().splitlines()
        assert second.returncode == 2 and len(err) == 1, err
        assert f"in use by process {first.pid}" in err[0]
        code, err = cli(capsys, "eval", run)  # eval writes into the folder too
        assert code == 2 and len(err) == 1 and f"in use by process {first.pid}" in err[0], err
        assert first.poll() is None  # undisturbed
        # The first process wrote its files under its own umask (002), the lock file too.
        for path in (run / ".lock", run / "config.yaml", run / "checkpoints" / "latest.json"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o664, path
    finally:
        first.terminate()
        first.wait(timeout=30)
    with run_lock(run):  # released with its holder
        assert (run / ".lock").read_text().strip() == str(os.getpid())


def test_a_run_refused_before_writing_leaves_no_folder(tmp_path):
    """A folder the lock created and nothing else wrote into (a run refused for its data or its
    ranks) is removed with the lock; a folder with a file in it, or one that existed, stays."""
    with run_lock(tmp_path / "refused"):
        assert (tmp_path / "refused" / ".lock").is_file()
    assert not (tmp_path / "refused").exists()
    with run_lock(tmp_path / "written"):
        (tmp_path / "written" / "config.yaml").write_text("x: 1\n")
    assert sorted(p.name for p in (tmp_path / "written").iterdir()) == [".lock", "config.yaml"]
    (tmp_path / "existing").mkdir()
    with run_lock(tmp_path / "existing"):
        pass
    assert (tmp_path / "existing" / ".lock").is_file()
