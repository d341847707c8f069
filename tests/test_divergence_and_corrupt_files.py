"""Issue 14, sections 2 and 3: divergence stops cleanly (exit 2, one line, nothing non-finite
written over a good checkpoint or best.safetensors), NaN is never a score, damaged result files
and damaged Omniglot members are one line naming the file, damaged caches are rebuilt.

Training runs are a tiny sinusoid MAML (no data files, ~1 s each); Omniglot archives are built
small in tmp_path, in the layout of the shared fixture (tests/conftest.py)."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastadapt.checkpoint import read_checkpoint
from fastadapt.cli import main
from fastadapt.config import load_config
from fastadapt.data import omniglot
from fastadapt.data.episode import Episode
from fastadapt.divergence import DivergedError, all_finite, save_finite_weights
from fastadapt.errors import FastAdaptError
from fastadapt.evaluate import better, evaluate
from fastadapt.learners.base import Learner
from fastadapt.learners.optimization.maml import MAML
from fastadapt.results import print_result
from fastadapt.trainer import Trainer

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


def cli(capsys, *args) -> tuple[int, list[str]]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err.strip().splitlines()


def train_cli(capsys, run_dir: Path, *settings: str) -> tuple[int, list[str]]:
    sets = [a for s in TINY + list(settings) for a in ("--set", s)]
    return cli(capsys, "train", PRESET, *sets, "--out", run_dir, "--quiet")


def snapshot(run_dir: Path) -> dict[str, bytes]:
    files = [run_dir / "best.safetensors", *sorted((run_dir / "checkpoints").glob("*"))]
    return {p.name: p.read_bytes() for p in files if p.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """`stopped`: a tiny run stopped at step 4 (checkpoints 2 and 4, best from step 3);
    `finished`: the same run trained to the end."""
    root = tmp_path_factory.mktemp("runs")
    Trainer(load_config(PRESET, TINY), root / "stopped", quiet=True).fit(stop_after=4)
    shutil.copytree(root / "stopped", root / "finished")
    Trainer(load_config(PRESET, TINY), root / "finished", quiet=True).fit()
    return {"stopped": root / "stopped", "finished": root / "finished"}


# -- 3. divergence stops cleanly ------------------------------------------------------------
def test_overflowing_lr_stops_at_step_1_and_writes_no_weights(capsys, tmp_path):
    # lr=inf is rejected up front now (test_bad_values.py); SGD at the largest lr overflows at step 1
    code, err = train_cli(capsys, tmp_path / "run", "train.optimizer=sgd", "train.lr=1e38")
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("fastadapt train: error: training diverged at step 1 (non-finite")
    assert "no checkpoint had been written yet" in err[0] and "lower train.lr (now 1e+38)" in err[0]
    assert not (tmp_path / "run" / "best.safetensors").exists()
    assert not list((tmp_path / "run").glob("checkpoints/step-*"))


def test_huge_lr_stops_and_every_written_checkpoint_is_finite(capsys, tmp_path):
    run = tmp_path / "run"
    code, err = train_cli(capsys, run, "train.lr=1e6", "train.checkpoint_every=1", "train.val_every=1")
    assert code == 2 and len(err) == 1, err
    assert "training diverged at step" in err[0] and "lower train.lr (now 1e+06)" in err[0]
    assert not (run / "eval.json").exists()
    for path in (run / "checkpoints").glob("step-*.json"):
        step = int(path.stem.split("-")[1])
        assert f"the last good checkpoint (step {step}) is kept" in err[0]
        _, weights = read_checkpoint(run / "checkpoints", step, None)
        assert all_finite(weights.values())


def test_nan_lr_is_rejected_before_training(capsys, tmp_path):
    code, err = train_cli(capsys, tmp_path / "run", "train.lr=nan")
    assert code == 2 and len(err) == 1, err
    assert "train.lr must be a finite number in (0, 1e+38], got nan" in err[0]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_divergence_mid_run_keeps_the_last_checkpoint_and_best_weights(capsys, runs, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(runs["stopped"], run)
    before = snapshot(run)
    assert "best.safetensors" in before and "step-00000004.safetensors" in before
    original = MAML.task_loss

    def nan_loss(self, episode):
        loss, metrics = original(self, episode)
        return loss * float("nan"), dict(metrics, loss=float("nan"))

    monkeypatch.setattr(MAML, "task_loss", nan_loss)
    code, err = cli(capsys, "train", run, "--quiet")
    assert code == 2 and len(err) == 1, err
    assert (
        "training diverged at step 5 (non-finite loss/gradient); the last good checkpoint (step 4) is kept" in err[0]
    ) and "lower train.lr (now 0.001)" in err[0]
    assert snapshot(run) == before  # bytes-identical: nothing written over them
    monkeypatch.setattr(MAML, "task_loss", original)
    code, err = cli(capsys, "train", run, "--quiet")  # and the run still resumes and finishes
    assert code == 0 and (run / "eval.json").is_file()


def test_non_finite_weights_are_never_saved(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["stopped"], run)
    trainer = Trainer(load_config(PRESET, TINY), run, quiet=True)
    trainer._resume()
    before = snapshot(run)
    with torch.no_grad():
        next(trainer.learner.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(DivergedError, match="weights are not finite"):
        trainer._checkpoint()
    with pytest.raises(DivergedError, match="best.safetensors was not written"):
        save_finite_weights(run / "best.safetensors", trainer.learner, {"step": 4})
    assert snapshot(run) == before


def test_better_treats_nan_as_never_an_improvement():
    assert better("mse", 0.5, float("nan")) is True
    assert better("mse", float("nan"), None) is False
    assert better("accuracy", float("nan"), 0.2) is False


# -- 3. NaN is never a score ----------------------------------------------------------------
class _NaNLearner(Learner):
    """Predicts the right class, except all-NaN (or other broken) logits in chosen episodes."""

    def __init__(self, broken: dict[int, str]):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.broken = broken

    def task_loss(self, episode):  # evaluation only: never trained
        raise AssertionError("the evaluator must not call task_loss")

    def predict(self, episode):
        logits = torch.nn.functional.one_hot(episode.info["answers"], episode.ways).float()
        kind = self.broken.get(episode.info["index"])
        if kind == "nan":
            logits[:] = float("nan")
        elif kind == "one-nan":
            logits[0, 1] = float("nan")
        elif kind == "posinf":
            logits[1, 2] = float("inf")
        elif kind == "row-neginf":
            logits[2] = float("-inf")
        elif kind == "some-neginf":  # a log-probability of 0 is a valid score
            logits[:, 1:] = float("-inf")
        return logits


def _episodes(n: int, ways: int = 3, queries: int = 6) -> list[Episode]:
    episodes = []
    for i in range(n):
        answers = torch.arange(queries) % ways
        episodes.append(
            Episode(
                torch.zeros(ways, 1),
                torch.arange(ways),
                torch.zeros(queries, 1),
                answers,
                ways=ways,
                shots=1,
                info={"index": i, "answers": answers},
            )
        )
    return episodes


def test_nan_query_logits_make_the_episode_non_finite():
    result = evaluate(_NaNLearner({0: "nan", 2: "nan"}), _episodes(3), torch.device("cpu"))
    assert result["nonfinite"] == 2 and math.isnan(result["mean"]) and result["episodes"] == 3
    clean = evaluate(_NaNLearner({}), _episodes(3), torch.device("cpu"))
    assert clean["nonfinite"] == 0 and clean["mean"] == 1.0


@pytest.mark.parametrize(
    "kind,finite", [("one-nan", False), ("posinf", False), ("row-neginf", False), ("some-neginf", True)]
)
def test_which_scores_count_as_diverged(kind, finite):
    result = evaluate(_NaNLearner({0: kind}), _episodes(1), torch.device("cpu"))
    assert (result["nonfinite"] == 0) is finite


def test_eval_output_warns_on_non_finite_classification_episodes(capsys):
    record = {
        "metric": "accuracy",
        "accuracy": float("nan"),
        "ci95": float("nan"),
        "ways": 5,
        "shots": 1,
        "method": "maml",
        "dataset": "omniglot",
        "episodes": 3,
        "seed": 0,
        "bn_mode": "transductive",
        "diverged_episodes": 2,
        "adapt_steps": None,
    }
    print_result(record)
    out = capsys.readouterr().out
    assert "warning:" in out and "non-finite accuracy) on 2 of 3 test episodes" in out


# -- 2. damaged result files ----------------------------------------------------------------
EVAL = {
    "preset": "p",
    "method": "maml",
    "dataset": "sinusoid",
    "split": "test",
    "ways": None,
    "shots": 5,
    "queries": 10,
    "episodes": 5,
    "seed": 0,
    "metric": "mse",
    "mse": 0.5,
    "ci95": 0.1,
    "std": 0.1,
    "train_steps": 6,
    "train_seconds": 1.0,
    "bn_mode": "none",
    "reference": {},
    "overrides": [],
}
LAKE = {"preset": "p", "method": "maml", "accuracy": 0.5, "mean_error": 50.0}
DAMAGE = {
    "binary": b"\x89\xff\x00\x13garbage\xfe",
    "truncated": json.dumps(EVAL).encode()[:40],
    "empty": b"",
    "not-an-object": b"[1, 2, 3]",
    "missing-keys": json.dumps({"preset": "p", "method": "maml"}).encode(),
    "metric-not-a-number": json.dumps(dict(EVAL, mse="0.5"), allow_nan=True).encode(),
}


def _results_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "eval.json").write_text(json.dumps(EVAL))
    (run / "eval-other.json").write_text(json.dumps(EVAL))
    (run / "lake.json").write_text(json.dumps(LAKE))
    return run


def test_results_of_intact_files_work(capsys, tmp_path):
    run = _results_run(tmp_path)
    assert main(["results", str(run)]) == 0
    assert "Lake 20-run" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["eval.json", "eval-other.json", "lake.json"])
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_result_file_is_one_line_naming_it(capsys, tmp_path, name, damage):
    run = _results_run(tmp_path)
    (run / name).write_bytes(DAMAGE[damage])
    code, err = cli(capsys, "results", run)
    assert code == 2 and len(err) == 1, err
    assert str(run / name) in err[0] and ("fastadapt eval" in err[0] or "fastadapt lake" in err[0])


@pytest.mark.parametrize("damage", ["binary", "truncated", "not-an-object", "missing-keys"])
def test_finished_run_with_damaged_eval_json_is_one_line(capsys, runs, tmp_path, damage):
    run = tmp_path / "run"
    shutil.copytree(runs["finished"], run)
    code, _ = cli(capsys, "train", run, "--quiet")
    assert code == 0  # intact: prints the stored result
    (run / "eval.json").write_bytes(DAMAGE[damage])
    code, err = cli(capsys, "train", run, "--quiet")
    assert code == 2 and len(err) == 1, err
    assert str(run / "eval.json") in err[0] and f"fastadapt eval {run}" in err[0]


# -- 2. damaged Omniglot members and caches ---------------------------------------------------
def _png(rng) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.random((105, 105)) > 0.15).save(buffer, format="PNG")
    return buffer.getvalue()


def _omniglot(root: Path, damage: dict[str, bytes | None] | None = None) -> Path:
    """A tiny Omniglot in the official layout (3 + 1 characters, 20 drawings each); `damage`
    replaces members' bytes (name -> bytes, or a callable of the good bytes)."""
    rng = np.random.default_rng(7)
    (root / "omniglot").mkdir(parents=True)
    number = 0
    for archive, alphabets in {"background": {"Alpha": 2, "Beta": 1}, "evaluation": {"Gamma": 1}}.items():
        members = {}
        for alphabet, n in alphabets.items():
            for c in range(1, n + 1):
                number += 1
                for d in range(1, 21):
                    members[f"images_{archive}/{alphabet}/character{c:02d}/{number:04d}_{d:02d}.png"] = _png(rng)
        for name, bad in (damage or {}).items():
            if name in members:
                members[name] = bad(members[name]) if callable(bad) else bad
        with zipfile.ZipFile(root / "omniglot" / f"images_{archive}.zip", "w") as z:
            for name, data in members.items():
                z.writestr(name, data)
    return root


BAD_MEMBER = "images_background/Alpha/character02/0002_07.png"
BAD_BYTES = {"text": b"this is not a png\n", "half-png": lambda data: data[: len(data) // 2]}


@pytest.mark.parametrize("damage", sorted(BAD_BYTES))
def test_corrupt_member_is_one_line_naming_archive_and_member(damage, tmp_path, fresh_cache, capsys):
    root = _omniglot(tmp_path / "data", {BAD_MEMBER: BAD_BYTES[damage]})
    with pytest.raises(FastAdaptError) as caught:
        omniglot.load_omniglot_characters(root, size=28)
    message = str(caught.value)
    assert BAD_MEMBER in message and "images_background.zip" in message and "replace it" in message
    code, err = cli(
        capsys, "train", "protonet-omniglot-quick", "--data-root", root, "--out", tmp_path / "run", "--quiet"
    )
    assert code == 2 and len(err) == 1 and BAD_MEMBER in err[0], err


def test_corrupt_member_in_a_worker_process_is_the_same_one_line(tmp_path, fresh_cache, monkeypatch):
    root = _omniglot(tmp_path / "data", {BAD_MEMBER: BAD_BYTES["half-png"]})
    monkeypatch.setattr(omniglot, "_PARALLEL_MIN_IMAGES", 1)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback to in-process decoding
        with pytest.raises(FastAdaptError) as caught:
            omniglot.load_omniglot_characters(root, size=28)
    assert type(caught.value) is FastAdaptError
    assert BAD_MEMBER in str(caught.value) and "images_background.zip" in str(caught.value)


def _cache_file(fresh_cache: Path) -> Path:
    (path,) = (fresh_cache / "omniglot").glob("characters-*.npz")
    return path


@pytest.mark.parametrize("damage", ["empty", "wrong-size", "wrong-count", "truncated"])
def test_damaged_cache_is_a_warning_and_a_rebuild(damage, tmp_path, fresh_cache):
    root = _omniglot(tmp_path / "data")
    good = omniglot.load_omniglot_characters(root, size=16)
    path = _cache_file(fresh_cache)
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    else:
        images = good.images[:, :, :8, :8] if damage == "wrong-size" else good.images[:2]
        with open(path, "wb") as f:
            np.savez(f, images=images, names=np.array(good.names), archive=np.array(good.archive))
    omniglot._load_characters.cache_clear()
    with pytest.warns(UserWarning, match="Omniglot cache"):
        again = omniglot.load_omniglot_characters(root, size=16)
    assert np.array_equal(again.images, good.images) and again.names == good.names
    omniglot._load_characters.cache_clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rebuilt: the next load reads it without a warning
        assert np.array_equal(omniglot.load_omniglot_characters(root, size=16).images, good.images)
