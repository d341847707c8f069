"""Training end to end on real Omniglot: exact resume after interruption (in-process and by
SIGKILL), run-folder outputs, and sinusoid MAML learning something real."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fastadapt.config import load_config
from fastadapt.trainer import Trainer

SMALL = ["train.val_episodes=5", "eval.episodes=30", "model.backbone_args.hidden=16", "train.log_every=2"]


def small_config(preset, *overrides):
    return load_config(preset, SMALL + list(overrides))


PROTONET = (
    "protonet-omniglot-5w1s",
    "train.steps=12",
    "train.checkpoint_every=3",
    "train.episodes.ways=10",
    "data.val_split=val",
    "train.val_every=5",
    "train.lr_step=4",
)
MAML = (
    "maml-omniglot-5w1s",
    "train.steps=6",
    "train.checkpoint_every=2",
    "train.meta_batch=4",
    "train.val_every=3",
    "learner.args.eval_inner_steps=2",
)


def outputs(run_dir: Path) -> tuple:
    result = json.loads((run_dir / "eval.json").read_text())
    volatile = {"eval_seconds", "train_seconds", "created", "machine"}
    return (
        (run_dir / "best.safetensors").read_bytes(),
        (run_dir / "metrics.csv").read_text().splitlines()[0],
        {k: v for k, v in result.items() if k not in volatile},
        [{k: v for k, v in row.items() if k != "elapsed_s"} for row in _csv_rows(run_dir / "metrics.csv")],
    )


def _csv_rows(path):
    import csv

    return list(csv.DictReader(path.open()))


@pytest.mark.parametrize("preset", [PROTONET, MAML], ids=["protonet-serial", "maml-fork-engine"])
def test_resume_after_interruptions_equals_uninterrupted_run(preset, real_data_root, tmp_path):
    config = small_config(*preset)
    Trainer(config, tmp_path / "straight", data_root=real_data_root, quiet=True).fit()
    interrupted = tmp_path / "interrupted"
    first_stop = config.train.checkpoint_every
    assert Trainer(config, interrupted, data_root=real_data_root, quiet=True).fit(stop_after=first_stop) is None
    assert not (interrupted / "eval.json").exists()
    # A second interruption, then a run to the end, each in a fresh Trainer (a new process's view).
    Trainer(config, interrupted, data_root=real_data_root, quiet=True).fit(stop_after=2 * first_stop)
    Trainer(config, interrupted, data_root=real_data_root, quiet=True).fit()
    assert outputs(interrupted) == outputs(tmp_path / "straight")


def test_run_folder_contents(real_data_root, tmp_path):
    config = small_config(*PROTONET)
    result = Trainer(config, tmp_path, data_root=real_data_root, quiet=True).fit()
    for name in ("config.yaml", "best.safetensors", "metrics.csv", "eval.json", "curve.png", "checkpoints/latest.json"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / result["episodes_file"]).is_file()
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["train"]["steps"] == 12
    record = json.loads((tmp_path / "eval.json").read_text())
    for key in (
        "method",
        "ways",
        "shots",
        "queries",
        "episodes",
        "seed",
        "bn_mode",
        "accuracy",
        "ci95",
        "train_seconds",
        "eval_seconds",
        "machine",
    ):
        assert key in record, key
    assert record["bn_mode"] == "inductive" and record["episodes"] == 30
    assert 0.2 < record["accuracy"] <= 1.0
    # The two newest checkpoint pairs are kept (a resume falls back to the older if the newer is bad).
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*")) == [
        "step-00000009.json",
        "step-00000009.safetensors",
        "step-00000012.json",
        "step-00000012.safetensors",
    ]


def test_changed_settings_on_an_existing_run_folder_are_refused(real_data_root, tmp_path):
    from fastadapt.errors import FastAdaptError

    Trainer(small_config(*PROTONET), tmp_path, data_root=real_data_root, quiet=True).fit(stop_after=3)
    with pytest.raises(FastAdaptError, match="other settings"):
        Trainer(small_config(*PROTONET, "train.lr=0.01"), tmp_path, data_root=real_data_root, quiet=True).fit()


def test_sigkill_mid_training_then_resume_matches(real_data_root, tmp_path):
    args = [sys.executable, "-m", "fastadapt", "train", PROTONET[0], "--quiet", "--data-root", str(real_data_root)]
    for item in SMALL + list(PROTONET[1:]) + ["train.steps=30", "train.checkpoint_every=2"]:
        args += ["--set", item]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    straight = subprocess.run(args + ["--out", str(tmp_path / "straight")], env=env, capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr
    killed_dir = tmp_path / "killed"
    process = subprocess.Popen(
        args + ["--out", str(killed_dir)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    pointer = killed_dir / "checkpoints" / "latest.json"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if pointer.exists() and json.loads(pointer.read_text())["step"] >= 6:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed_dir / "eval.json").exists(), "the run finished before it could be killed"
    resumed = subprocess.run(args + ["--out", str(killed_dir)], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert outputs(killed_dir) == outputs(tmp_path / "straight")


def test_maml_sinusoid_learns_to_adapt(tmp_path):
    """A short MAML run must beat its own initialisation on held-out tasks by a wide margin."""
    config = load_config(
        "maml-sinusoid-5shot",
        [
            "train.steps=300",
            "train.val_every=300",
            "train.log_every=100",
            "eval.episodes=100",
            "train.checkpoint_every=300",
        ],
    )
    trainer = Trainer(config, tmp_path, quiet=True)
    from fastadapt.evaluate import evaluate

    test_set = trainer.suite.fixed_set("test", None, 5, 100, 100, 1234)
    before = evaluate(trainer.learner, test_set, trainer.device)["mean"]
    after = trainer.fit()["mse"]
    # An untrained net predicts ~0 (MSE ~ E[A^2]/2 ~ 4.2); 300 meta-steps already cut that by >20%.
    assert after < 0.8 * before, (before, after)


def test_zero_steps_tests_the_initial_weights(tmp_path):
    """`train.steps: 0` (a pretrained model fine-tuned per task, no meta-training): nothing is
    updated, the initial weights are saved as the selected ones and scored on the test tasks,
    exactly as `evaluate` scores the untrained learner."""
    import torch
    from safetensors.torch import load_file

    from fastadapt.evaluate import evaluate

    config = load_config("maml-sinusoid-5shot", ["train.steps=0", "eval.episodes=20"])
    trainer = Trainer(config, tmp_path, quiet=True)
    initial = {k: v.detach().clone() for k, v in trainer.learner.state_dict().items()}
    expected = evaluate(trainer.learner, trainer.suite.fixed_set("test", None, 5, 100, 20, 1234), trainer.device)
    result = trainer.fit()
    saved = load_file(str(tmp_path / "best.safetensors"))
    assert saved.keys() == initial.keys() and all(torch.equal(saved[k], initial[k]) for k in saved)
    assert result["mse"] == pytest.approx(expected["mean"], rel=1e-12) and result["train_steps"] == 0


def test_a_run_takes_its_preset_s_corrected_labels_but_not_other_settings(tmp_path):
    """The paper's figures, name and description label a run (they are not fingerprinted): a run
    folder written under an earlier preset takes the current ones on resume; a changed setting
    beside them is still an error that names what differs, and nothing is rewritten."""
    from fastadapt.errors import FastAdaptError

    run_dir = tmp_path / "run"
    old = load_config("maml-sinusoid-5shot", ["train.steps=3"]).to_dict()
    old["reference"], old["description"] = {"paper": "an earlier reading", "mse": 0.5}, "earlier"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    new = load_config("maml-sinusoid-5shot", ["train.steps=3"])
    Trainer(new, run_dir, quiet=True)._prepare_run_dir()
    assert yaml.safe_load((run_dir / "config.yaml").read_text()) == new.to_dict()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    other = load_config("maml-sinusoid-5shot", ["train.steps=4"])
    with pytest.raises(FastAdaptError, match=r"\(differs in: description, overrides, reference, train\)"):
        Trainer(other, run_dir, quiet=True)._prepare_run_dir()
    assert yaml.safe_load((run_dir / "config.yaml").read_text()) == old


def test_a_new_run_failing_before_training_leaves_no_folder_to_refuse_the_fix(tmp_path, monkeypatch):
    """A setting only the model or the environment refuses fails after the folder's claim
    (config.yaml): the claim is taken back, so the corrected command is not "a run with other
    settings"; a folder holding anything more is kept as it was."""
    from fastadapt import trainer as trainer_module
    from fastadapt.errors import FastAdaptError

    config = load_config("maml-sinusoid-5shot", ["train.steps=2", "train.meta_batch=2", "train.checkpoint_every=1"])

    def refuse(*args, **kwargs):
        raise FastAdaptError("refused after the claim")

    with monkeypatch.context() as patch:
        patch.setattr(trainer_module, "make_engine", refuse)
        with pytest.raises(FastAdaptError, match="refused after the claim"):
            Trainer(config, tmp_path / "new", quiet=True).fit()
        assert not (tmp_path / "new").exists()
        (tmp_path / "mine").mkdir()  # the user's empty folder stays, empty
        with pytest.raises(FastAdaptError):
            Trainer(config, tmp_path / "mine", quiet=True).fit()
        assert [p.name for p in (tmp_path / "mine").iterdir() if not p.name.startswith(".")] == []
    other = load_config("maml-sinusoid-5shot", ["train.steps=2", "train.meta_batch=4", "train.checkpoint_every=1"])
    Trainer(other, tmp_path / "new", quiet=True).fit(stop_after=1)  # the corrected command takes the folder
    # a failure after training wrote files (here the final test) keeps them, in a new run too
    with monkeypatch.context() as patch:
        patch.setattr(trainer_module, "evaluate_run", refuse)
        with pytest.raises(FastAdaptError):
            Trainer(config, tmp_path / "trained", quiet=True).fit()
    kept = {p.name for p in (tmp_path / "trained").iterdir()}
    assert {"config.yaml", "checkpoints", "metrics.csv", "best.safetensors"} <= kept
