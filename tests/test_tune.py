"""`fastadapt tune` (Optuna): trials are ordinary run folders whose objective is their best
validation score; pruning sees every validation; `train --from-study` builds the full run from
the best trial; two workers share a study on a real, throwaway PostgreSQL server, and a worker
killed mid-trial leaves the study usable (the trial is failed, retried, and resumed exactly)."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from fastadapt.cli import main
from fastadapt.config import apply_overrides, load_config
from fastadapt.errors import FastAdaptError
from fastadapt.trainer import Trainer
from fastadapt.tune import _objective, prepare
from fastadapt.tune_space import load_space, override
from fastadapt.tune_storage import open_storage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import throwaway_postgres  # noqa: E402

PRESET = "maml-sinusoid-5shot"
# Every trial and the full run: small meta-batches and few validation tasks (seconds per trial).
COMMON = ["train.meta_batch=4", "train.val_episodes=8", "eval.episodes=20"]
SPACE = {
    "trial_settings": {
        "train.steps": 30,
        "train.val_every": 10,
        "train.log_every": 10,
        "train.checkpoint_every": 10,
    },
    "params": {
        "train.lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True},
        "learner.args.inner_lr": {"low": 0.001, "high": 0.1, "log": True},
        "learner.args.inner_steps": {"low": 1, "high": 2},
    },
}


def write_space(path: Path, space: dict) -> Path:
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def sets(items):
    return [arg for item in items for arg in ("--set", item)]


def study_of(study_dir: Path):
    record = json.loads((study_dir / "study.json").read_text())
    url = record["storage"] or f"sqlite:///{study_dir / 'study.db'}"
    url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    return optuna.load_study(study_name=record["study"], storage=open_storage(url, 10))


def val_scores(run_dir: Path) -> dict[int, float]:
    with (run_dir / "metrics.csv").open() as f:
        return {int(r["step"]): float(r["val_metric"]) for r in csv.DictReader(f) if r["val_metric"]}


@pytest.mark.parametrize("value", [1e-05, 1e20, 2.5e-07, 0.1, 123456789.0, 3, True, None, "adam", [40, 40]])
def test_override_reads_back_as_the_same_value(value):
    read = apply_overrides({}, [override("a.b", value)])["a"]["b"]
    assert read == value and type(read) is type(value)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"train.lr": {"low": 0.0, "high": 0.1}}, "train.lr = 0.0: train.lr must be"),
        ({"train.stpes": {"low": 1, "high": 5}}, "unknown setting train.stpes"),
        ({"train.lr": {"low": 0.1, "high": 0.01}}, "needs finite low < high"),
        ({"train.lr": {"low": -1.0, "high": 0.1, "log": True}}, "log: true, so low must be > 0"),
        ({"train.lr": {"low": 0.001, "hi": 0.1}}, "unknown field 'hi'"),
        ({"learner.args.inner_steps": {"low": 0, "high": 3}}, "learner.args.inner_steps = 0"),
        ({"train.meta_batch": {"choices": []}}, "choices must be a non-empty list"),
    ],
)
def test_bad_space_is_one_line_before_any_trial(tmp_path, params, message):
    space = write_space(tmp_path / "space.yaml", {"params": params})
    with pytest.raises(FastAdaptError, match=message.replace("(", r"\(").replace(".", r"\.")) as info:
        prepare(PRESET, space, 2, out=tmp_path / "study")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "study" / "trials").exists()


def test_space_types_are_inferred(tmp_path):
    space = load_space(
        write_space(
            tmp_path / "s.yaml",
            {"params": {"a": {"low": 1, "high": 4}, "b": {"low": 1.0e-3, "high": 1}, "c": {"choices": [1, "x"]}}},
        )
    )
    assert [(p.key, p.kind) for p in space.params] == [("a", "int"), ("b", "float"), ("c", "categorical")]


def test_sqlite_study_trials_are_run_folders_and_the_best_trains_a_full_run(tmp_path):
    space, study_dir = write_space(tmp_path / "space.yaml", SPACE), tmp_path / "study"
    argv = ["tune", PRESET, "--space", str(space), "--trials", "3", "--out", str(study_dir), "--pruner", "none"]
    assert main([*argv, "--workers", "2", *sets(COMMON), "--quiet"]) == 0  # two processes on one SQLite file
    study = study_of(study_dir)
    trials = study.get_trials()
    # two workers may both start a trial when the study needs one more: 3 or 4 trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * len(trials) and len(trials) in (3, 4)
    # the first trial is the preset's own values of the searched keys
    assert trials[0].params == {"train.lr": 0.001, "learner.args.inner_lr": 0.01, "learner.args.inner_steps": 1}
    assert trials[0].user_attrs["preset_default"] is True
    for trial in trials:
        run = study_dir / trial.user_attrs["run_dir"]
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["train"]["lr"] == trial.params["train.lr"]
        assert config["learner"]["args"]["inner_lr"] == trial.params["learner.args.inner_lr"]
        assert config["train"]["steps"] == 30 and config["train"]["meta_batch"] == 4
        scores = val_scores(run)
        assert trial.intermediate_values == scores  # every validation reported to the pruner
        assert trial.value == min(scores.values())  # the objective: the kept checkpoint's validation MSE
        assert trial.user_attrs["best_step"] == min(scores, key=scores.get)
        assert not (run / "eval.json").exists() and not list(run.glob("episodes/test-*"))  # test set untouched
        assert list(run.glob("events.out.tfevents.*"))
    best = min(trials, key=lambda t: t.value)
    with (study_dir / "trials.csv").open() as f:
        assert [int(r["trial"]) for r in csv.DictReader(f)] == [t.number for t in trials]
    report = (study_dir / "results.md").read_text()
    assert f"**Best: trial {best.number}," in report and "preset default" in report
    assert (study_dir / "history.png").stat().st_size > 0 and (study_dir / "parallel.png").stat().st_size > 0

    # Running the same command again: the study is complete, no trial is added.
    assert main([*argv, *sets(COMMON), "--quiet"]) == 0
    assert len(study_of(study_dir).get_trials()) == len(trials)
    # Another space under the same study: one line, exit 2.
    other = write_space(tmp_path / "other.yaml", {**SPACE, "params": {"train.lr": {"low": 0.01, "high": 0.1}}})
    assert main(["tune", PRESET, "--space", str(other), "--trials", "3", "--out", str(study_dir)]) == 2

    # The full run: the preset, the study's --set items and the best values; not the trial settings.
    out = tmp_path / "best"
    assert main(["train", "--from-study", str(study_dir), "--set", "train.steps=20", "--out", str(out), "--quiet"]) == 0
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["learner"]["args"]["inner_lr"] == best.params["learner.args.inner_lr"]
    assert config["learner"]["args"]["inner_steps"] == best.params["learner.args.inner_steps"]
    assert config["train"]["lr"] == best.params["train.lr"]
    assert config["train"]["meta_batch"] == 4 and config["train"]["steps"] == 20
    preset = load_config(PRESET)
    assert config["train"]["checkpoint_every"] == preset.train.checkpoint_every  # trial settings dropped
    assert json.loads((out / "eval.json").read_text())["episodes"] == 20
    # The study's own storage gone (a stopped throwaway server): --study-storage reads a copy.
    from fastadapt.tune_space import override
    from fastadapt.tune_storage import best_trial_settings

    (study_dir / "study.db").rename(tmp_path / "copy.db")
    assert main(["train", "--from-study", str(study_dir), "--out", str(tmp_path / "x"), "--quiet"]) == 2
    _, items, summary = best_trial_settings(study_dir, str(tmp_path / "copy.db"))
    assert summary["trial"] == best.number and override("train.lr", best.params["train.lr"]) in items


def test_pruned_and_diverged_trials_stop_at_the_validation_that_decides(tmp_path):
    space = write_space(tmp_path / "space.yaml", SPACE)
    job = prepare(PRESET, space, 1, overrides=COMMON, out=tmp_path / "study", quiet=True)
    # Any MSE is above 0: the pruner stops the trial at its first validation report.
    study = optuna.load_study(
        study_name=job.study, storage=open_storage(job.storage, 10), pruner=optuna.pruners.ThresholdPruner(upper=0.0)
    )
    study.optimize(_objective(job, job.space, []), n_trials=1)
    pruned = study.trials[0]
    run = tmp_path / "study" / pruned.user_attrs["run_dir"]
    assert pruned.state == optuna.trial.TrialState.PRUNED
    assert pruned.intermediate_values == val_scores(run) and list(pruned.intermediate_values) == [10]
    assert not (run / "curve.png").exists()  # stopped there, not trained to the end

    # An outer lr of 1e30 makes the weights non-finite: the trainer stops it, the trial is pruned.
    diverging = write_space(tmp_path / "lr.yaml", {**SPACE, "params": {"train.lr": {"choices": [1.0e30]}}})
    job = prepare(PRESET, diverging, 1, overrides=COMMON, out=tmp_path / "study2", quiet=True)
    study = optuna.load_study(study_name=job.study, storage=open_storage(job.storage, 10))
    study.optimize(_objective(job, job.space, []), n_trials=1)
    assert study.trials[0].state == optuna.trial.TrialState.PRUNED
    assert "training diverged" in study.trials[0].user_attrs["diverged"]


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    """A real PostgreSQL server in a temporary folder, on 127.0.0.1 only; stopped afterwards."""
    reason = throwaway_postgres.unavailable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI (.ci/run) installs PostgreSQL and must run this test")
        pytest.skip(reason)
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="fastadapt-pg-"))  # not under pytest's root-only folders
    try:
        yield throwaway_postgres.start(folder)
    finally:
        throwaway_postgres.stop(folder)
        subprocess.run(["rm", "-rf", str(folder)], check=False)


def _lock_pid(run: Path) -> int | None:
    try:
        text = (run / ".lock").read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _kill_mid_trial(first, second, study_dir: Path, grace: int) -> Path | None:
    """Kill `first` (kill -9) in the middle of a trial, after a checkpoint and before its end, and
    hold `second` stopped until the dead trial's heartbeat is stale; returns the killed trial's folder.

    Without the hold, `second` may start trials within the grace period (a trial here takes about a
    second) and reach the study's target before any start sees the dead trial: its retry then stays
    queued. Held, `second` finishes at most the trial it is in before the retry; so the kill waits
    until at most one trial has finished (its curve.png is written before the trial is complete)."""
    trials, deadline = study_dir / "trials", time.monotonic() + 300
    while time.monotonic() < deadline and first.poll() is None:
        runs = sorted(trials.glob("*")) if trials.is_dir() else []
        ours = [r for r in runs if _lock_pid(r) == first.pid and (r / "checkpoints" / "latest.json").exists()]
        running = [r for r in ours if not (r / "curve.png").exists()]
        if running:
            for worker in (first, second):  # freeze both, then check again: nothing moves meanwhile
                worker.send_signal(signal.SIGSTOP)
            finished = sum((r / "curve.png").exists() for r in trials.glob("*"))
            if not (running[0] / "curve.png").exists() and finished <= 1:
                first.send_signal(signal.SIGKILL)
                first.wait()
                time.sleep(grace + 2)  # past the grace period of the dead trial's last heartbeat
                second.send_signal(signal.SIGCONT)
                return running[0]
            for worker in (first, second):
                worker.send_signal(signal.SIGCONT)
        time.sleep(0.05)
    first.wait()
    return None


def test_two_workers_share_a_postgres_study_and_survive_a_killed_worker(postgres, tmp_path):
    space = write_space(
        tmp_path / "space.yaml",
        {**SPACE, "trial_settings": {**SPACE["trial_settings"], "train.steps": 100, "train.val_every": 50}},
    )
    study_dir = tmp_path / "study"
    argv = [sys.executable, "-m", "fastadapt", "tune", PRESET, "--space", str(space), "--trials", "3"]
    argv += ["--storage", postgres, "--out", str(study_dir), "--pruner", "none", "--heartbeat", "1", "--quiet"]
    argv += sets(COMMON)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    second = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    killed_run = _kill_mid_trial(first, second, study_dir, grace=2 * 1)
    assert killed_run is not None, "the first worker never ran a trial long enough to be killed"
    _, errors = second.communicate(timeout=600)
    assert second.returncode == 0, errors

    study = study_of(study_dir)
    states = optuna.trial.TrialState
    by_number = {t.number: t for t in study.get_trials()}
    killed = next(
        t for t in by_number.values() if study_dir / t.user_attrs["run_dir"] == killed_run and t.state == states.FAIL
    )
    retry = next(t for t in by_number.values() if t.system_attrs.get("failed_trial") == killed.number)
    assert retry.state == states.COMPLETE and retry.params == killed.params
    assert retry.user_attrs["run_dir"] == killed.user_attrs["run_dir"]  # resumed in the dead trial's folder
    assert sum(t.state == states.COMPLETE for t in by_number.values()) == 3
    # Exact resume: the retried trial scores what an uninterrupted run with its values scores.
    config = load_config(
        PRESET, [*COMMON, *load_space(space).trial_settings, *load_space(space).overrides(retry.params)]
    )
    # One intra-op thread, as the workers had (OMP_NUM_THREADS=1): the thread count changes how a
    # convolution's sums are split, hence the last bits (CI has 2 threads by default).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        straight = Trainer(config, tmp_path / "straight", quiet=True)
        straight.fit(test=False)
    finally:
        torch.set_num_threads(threads)
    assert retry.value == straight.state["best"]
    assert val_scores(killed_run) == val_scores(tmp_path / "straight")
    assert f"retry of {killed.number}" in (study_dir / "results.md").read_text()
