"""Every example in README.md runs: each `fastadapt` command line parses, names real presets and
valid settings; the Python examples run as written against a tiny trained run (training
shortened to a few steps) and the user's files they name."""

import re
import shlex
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

import fastadapt
from fastadapt.cli import _parser
from fastadapt.config import apply_overrides, config_from_dict, load_raw

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def commands() -> list[str]:
    lines = []
    for block in blocks("bash"):
        text = re.sub(r"\\\n\s*", " ", block)  # join continued lines
        lines += [line.split("  #")[0].strip() for line in text.splitlines() if line.startswith("fastadapt ")]
    return lines


def test_readme_has_the_examples_this_test_checks():
    assert len(commands()) >= 15 and len(blocks("python")) >= 2


@pytest.mark.parametrize("line", commands())
def test_every_command_parses_and_names_valid_settings(line):
    argv = shlex.split(line)[1:]
    if "--help" in argv:
        with pytest.raises(SystemExit) as stop:
            _parser().parse_args(argv)
        assert stop.value.code == 0
        return
    args = _parser().parse_args(argv)
    if args.command == "train" and args.config is not None and not args.config.startswith("runs/"):
        config = config_from_dict(apply_overrides(load_raw(args.config), args.overrides))  # real preset, valid keys
        assert config.name


def _draw(path: Path, kind: str) -> None:
    img = Image.new("L", (64, 64), 255)
    d = ImageDraw.Draw(img)
    if kind == "cat":
        d.ellipse([12, 12, 52, 52], outline=0, width=5)
    else:
        d.line([10, 32, 54, 32], fill=0, width=5)
        d.line([32, 10, 32, 54], fill=0, width=5)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def test_python_examples_run_as_written(real_data_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FASTADAPT_DATA", str(real_data_root))
    tiny = [
        "train.steps=2",
        "train.meta_batch=2",
        "train.val_episodes=2",
        "eval.episodes=3",
        "model.backbone_args.hidden=8",
        "train.val_every=2",
        "train.checkpoint_every=2",
    ]
    real_load_config = fastadapt.load_config
    shortened = lambda name, overrides=None: real_load_config(name, list(overrides or []) + tiny)  # noqa: E731
    monkeypatch.setattr(fastadapt, "load_config", shortened)
    # the files the "your own few-shot task" example names, and the run it loads
    for name in ("s/cat1.png", "s/cat2.png", "q/2.png"):
        _draw(Path(name), "cat")
    for name in ("s/dog1.png", "q/1.png"):
        _draw(Path(name), "dog")
    fastadapt.Trainer(shortened("protonet-omniglot-quick"), "runs/protonet-omniglot-quick", quiet=True).fit()
    for block in blocks("python"):
        namespace: dict = {}
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    task = fastadapt.load("runs/protonet-omniglot-quick").adapt(["s/cat1.png", "s/dog1.png"], ["cat", "dog"])
    assert task.classes == ["cat", "dog"] and len(task.predict(["q/1.png", "q/2.png"])) == 2
