"""The command line: help, presets, one-line errors with exit code 2, eval and lake on a run."""

import json
import subprocess
import sys

import pytest

from fastadapt.cli import main


def run_cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "fastadapt", *args], capture_output=True, text=True, **kwargs)


@pytest.mark.parametrize("command", [[], ["train"], ["eval"], ["lake"], ["presets"]])
def test_help(command):
    result = run_cli(*command, "--help")
    assert result.returncode == 0 and "usage: fastadapt" in result.stdout


def test_presets_lists_the_paper_presets(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in (
        "protonet-omniglot-5w1s",
        "protonet-omniglot-20w1s",
        "maml-omniglot-5w1s",
        "maml-sinusoid-5shot",
        "protonet-omniglot-quick",
    ):
        assert name in out


@pytest.mark.parametrize(
    "args,expected",
    [
        (["train", "no-such-preset"], "no preset or file named 'no-such-preset'"),
        (["train", "protonet-omniglot-quick", "--set", "train.stpes=3"], "unknown setting train.stpes"),
        (["train", "protonet-omniglot-quick", "--set", "train.steps=many"], "train.steps must be int"),
        (["train", "protonet-omniglot-quick", "--set", "train.steps"], "is not key=value"),
        (["train", "protonet-omniglot-quick", "--set", "learner.name=nope"], "unknown learner 'nope'"),
        (["eval", "/nonexistent/run"], "is not a run folder"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(args, expected, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1, err


def test_missing_data_names_the_file_and_where_it_looked(tmp_path, capsys):
    code = main(["train", "protonet-omniglot-quick", "--data-root", str(tmp_path), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "images_background.zip" in err and str(tmp_path) in err


def test_impossible_episode_request_names_the_numbers(real_data_root, tmp_path, capsys):
    code = main(
        [
            "train",
            "protonet-omniglot-quick",
            "--data-root",
            str(real_data_root),
            "--out",
            str(tmp_path),
            "--set",
            "train.episodes.queries=25",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "1 + 25 = 26" in err and "20" in err


def test_train_eval_and_lake_on_a_background_run(real_data_root, tmp_path, capsys):
    run = tmp_path / "run"
    sets = [
        "data.train_split=background",
        "data.test_split=evaluation",
        "train.steps=4",
        "train.episodes.ways=20",
        "eval.episodes=20",
        "model.backbone_args.hidden=16",
        "train.checkpoint_every=2",
    ]
    args = ["train", "protonet-omniglot-quick", "--quiet", "--data-root", str(real_data_root), "--out", str(run)]
    for item in sets:
        args += ["--set", item]
    assert main(args) == 0
    assert "test accuracy" in capsys.readouterr().out
    # Training again on a finished run reports it instead of retraining.
    assert main(args) == 0 and "is complete" in capsys.readouterr().out

    assert main(["eval", str(run), "--ways", "20", "--episodes", "10", "--data-root", str(real_data_root)]) == 0
    assert "20-way 1-shot" in capsys.readouterr().out
    record = json.loads((run / "eval-20w1s15q-10ep-seed1234.json").read_text())
    assert record["ways"] == 20 and record["episodes"] == 10

    assert main(["lake", str(run), "--data-root", str(real_data_root)]) == 0
    out = capsys.readouterr()
    lake = json.loads((run / "lake.json").read_text())
    assert lake["trials"] == 400 and lake["clean"] and 0.0 <= lake["accuracy"] <= 1.0
    assert "Lake 20-run" in out.out and "warning" not in out.err

    # A glob over a runs folder also names a run still training and a folder that is not a run:
    # both are left out with a warning, not an error that loses the whole table.
    (tmp_path / "training").mkdir()
    (tmp_path / "training" / "config.yaml").write_text((run / "config.yaml").read_text())
    (tmp_path / "other").mkdir()
    folders = [str(run), str(tmp_path / "training"), str(tmp_path / "other"), str(tmp_path / "gone")]
    with pytest.warns(UserWarning) as caught:
        assert main(["results", *folders, "--out", str(tmp_path / "RESULTS.md")]) == 0
    shown = " ".join(str(w.message) for w in caught)
    assert "training has no eval.json yet; left out" in shown and "other is not a run folder; left out" in shown
    assert "gone does not exist; left out" in shown
    assert main(["results", *folders[1:]]) == 2  # nothing at all to show: an error
    assert "none of the 3 folders holds a result" in capsys.readouterr().err
    # the folder holding the runs names them all (the run, the one still training; "other" is not one)
    with pytest.warns(UserWarning, match="training has no eval.json yet"):
        assert main(["results", str(tmp_path), "--out", str(tmp_path / "whole.md")]) == 0
    table = (tmp_path / "RESULTS.md").read_text()
    assert (tmp_path / "whole.md").read_text() == table
    main_record = json.loads((run / "eval.json").read_text())
    assert f"{100 * main_record['accuracy']:.2f} ± {100 * main_record['ci95']:.2f}" in table
    assert f"| {100 * lake['accuracy']:.2f} |" in table and table.count("\n") == 2 + 3  # header + 3 rows
    lake_row = next(line for line in table.splitlines() if "Lake 20-run" in line)
    assert f"| {main_record['train_steps']} |" in lake_row  # the Lake row names the training it scores
