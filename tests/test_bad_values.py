"""Issue 14, section 6: every bad value is one line and exit 2, before any training.

Every field of the core config is fuzzed with out-of-range and wrong-type values through
`fastadapt train PRESET --set key=value`: exit 2, one stderr line naming the key, and neither the
data nor `Trainer.fit` is ever reached. Valid values are accepted by the config builder."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import re
import typing

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastadapt import trainer as trainer_module
from fastadapt.cli import main
from fastadapt.config import Config, load_config, preset_names
from fastadapt.config_checks import check_config
from fastadapt.errors import FastAdaptError

PRESET = "protonet-omniglot-quick"
FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(autouse=True, scope="module")
def no_training():
    def refuse(*args, **kwargs):
        raise AssertionError("reached data loading or training with a bad value")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer_module, "build_suite", refuse)
        mp.setattr(trainer_module.Trainer, "fit", refuse)
        yield


def run(*argv: str) -> tuple[int, list[str]]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse
            code = exc.code
    return code, err.getvalue().strip().splitlines()


def as_yaml(value) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text[:-4].strip() if text.endswith("\n...") else text.removesuffix("...").strip()


def core_fields(cls=Config, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            yield from core_fields(hint, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, hint


FIELDS = {key: (f, hint) for key, f, hint in core_fields()}
REGISTRY_NAMES = {"data.dataset", "model.backbone", "learner.name"}  # checked against the registries

NOT_NUMBERS = st.one_of(
    st.text(alphabet="abcxyz_", min_size=1, max_size=6),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.sampled_from("ab"), st.integers(), min_size=1, max_size=1),
)
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])


def optional(hint) -> bool:
    return type(None) in typing.get_args(hint)


def bad_values(key: str):
    f, hint = FIELDS[key]
    limits, pattern = f.metadata.get("range"), f.metadata.get("pattern")
    none = [] if optional(hint) else [st.none()]
    if limits is not None:
        kind = next(a for a in (typing.get_args(hint) or (hint,)) if a is not type(None))
        out = [NOT_NUMBERS, NON_FINITE, st.booleans(), *none]
        if kind is int:
            out.append(st.floats(allow_nan=False, allow_infinity=False).filter(lambda v: v != int(v)))
            out.append(st.integers(max_value=int(limits.low) - 1))
            if limits.high is not None:
                out.append(st.integers(min_value=int(limits.high) + 1))
        else:
            below = st.floats(max_value=limits.low, allow_nan=False, allow_infinity=False)
            out.append(below if limits.low_open else below.filter(lambda v: v < limits.low))
            if limits.high is not None:
                above = st.floats(min_value=limits.high, allow_nan=False, allow_infinity=False)
                out.append(above.filter(lambda v: v > limits.high) if not limits.high_open else above)
        return st.one_of(out)
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        return st.one_of(
            st.text(alphabet="abcxyz", min_size=1, max_size=6).filter(lambda v: v not in choices),
            st.integers(),
            st.lists(st.sampled_from(choices), max_size=2),
            *none,
        )
    if origin is dict:
        return st.one_of(
            st.integers(),
            st.text(alphabet="abc", min_size=1, max_size=4),
            st.lists(st.integers(), min_size=1, max_size=2),
            st.booleans(),
        )
    if origin is list:
        return st.one_of(
            st.integers(),
            st.text(alphabet="abc", min_size=1, max_size=4),
            st.booleans(),
            st.lists(st.integers(), min_size=1, max_size=2),
        )
    if hint is bool or hint == (bool | None):
        return st.one_of(
            st.integers(min_value=2),
            st.text(alphabet="xyz", min_size=1, max_size=4),
            st.lists(st.booleans(), max_size=2),
            *none,
        )
    # text settings
    out = [st.integers(), st.lists(st.integers(), min_size=1, max_size=2), st.booleans(), *none]
    if pattern is not None:
        texts = [t for t in ["", "a b", "a/b", "/x", "gpu", "cuda:x", "cuda:"] if not re.fullmatch(pattern, t)]
        out.append(st.sampled_from(texts))
    return st.one_of(out)


def good_values(key: str):
    f, hint = FIELDS[key]
    limits = f.metadata.get("range")
    if limits is not None:
        kind = next(a for a in (typing.get_args(hint) or (hint,)) if a is not type(None))
        low, high = limits.low, limits.high
        if kind is int:
            values = st.integers(min_value=int(low), max_value=int(high) if high is not None else 10**9)
        else:
            values = st.floats(
                min_value=low,
                max_value=high if high is not None else 1e30,
                exclude_min=limits.low_open,
                exclude_max=limits.high_open,
            )
        return st.one_of(values, st.none()) if limits.null else values
    if typing.get_origin(hint) is typing.Literal:
        return st.sampled_from(typing.get_args(hint))
    return None


RANGED = [k for k, (f, _) in FIELDS.items() if "range" in f.metadata]
CHOICES = [k for k, (_, hint) in FIELDS.items() if typing.get_origin(hint) is typing.Literal]


def test_every_core_setting_declares_its_valid_values():
    free = {
        "name",
        "description",
        "reference",
        "overrides",
        "data.args",
        "model.backbone_args",
        "learner.args",
        "train.compile",
        "model.channels_last",
    } | REGISTRY_NAMES  # typed only (or a registry name)
    declared = set(RANGED) | set(CHOICES) | {k for k, (f, _) in FIELDS.items() if "pattern" in f.metadata}
    assert set(FIELDS) - declared <= free, sorted(set(FIELDS) - declared - free)


def test_presets_are_valid():
    for name in preset_names():
        check_config(load_config(name))


@pytest.mark.parametrize("key", sorted(FIELDS))
def test_bad_values_are_one_line_naming_the_key(key):
    @FUZZ
    @given(bad_values(key))
    def check(value):
        code, err = run("train", PRESET, "--set", f"{key}={as_yaml(value)}", "--quiet")
        assert code == 2 and len(err) == 1, (value, err)
        assert err[0].startswith("fastadapt train: error: ")
        assert key in err[0] or key.rsplit(".", 1)[-1] in err[0], (value, err)

    check()


@pytest.mark.parametrize("key", RANGED + CHOICES)
def test_valid_values_are_accepted(key):
    @FUZZ
    @given(good_values(key))
    def check(value):
        config = load_config(PRESET, [f"{key}={as_yaml(value)}"])
        node = config
        for part in key.split("."):
            node = getattr(node, part)
        assert node == value or (isinstance(value, float) and math.isclose(node, value))

    check()


# -- the examples of issue 14, section 6 ----------------------------------------------------
@pytest.mark.parametrize(
    "setting,message",
    [
        ("train.lr=-1", "train.lr must be a finite number in (0, 1e+38], got -1"),
        ("train.lr=nan", "train.lr must be a finite number in (0, 1e+38], got nan"),
        ("train.lr=.inf", "train.lr must be a finite number in (0, 1e+38], got inf"),
        ("train.lr=1e39", "train.lr must be a finite number in (0, 1e+38], got 1e39"),
        ("seed=-1", "seed must be an integer in 0..4294967295, got -1"),
        ("model.backbone_args.bn=inductve", "model.backbone_args.bn must be one of 'transductive', 'inductive'"),
        ("data.image_size=8", "data.image_size must be >= 16 for conv4 with 4 poolings, got 8"),
        ("eval.ways=0", "eval.ways must be an integer >= 2 or null for regression, got 0"),
        ("eval.ways=null", "eval.ways must be an integer >= 2 for the classification dataset omniglot"),
        ("train.optimizer=rmsprop", "train.optimizer must be one of 'adam', 'sgd'; got 'rmsprop'"),
        ("train.lr_gamma=0", "train.lr_gamma must be a finite number in (0, 1], got 0"),
        ("train.momentum=1", "train.momentum must be a finite number in [0, 1), got 1"),
        ("train.device=gpu", "train.device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
        ("train.steps=true", "train.steps must be int (an integer >= 0), got True"),
    ],
)
def test_issue_examples(setting, message, tmp_path):
    code, err = run("train", PRESET, "--set", setting, "--out", str(tmp_path / "run"), "--quiet")
    assert code == 2 and err == [f"fastadapt train: error: {message}"] or message in err[0], err
    assert len(err) == 1 and not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "preset,settings,message",
    [
        ("maml-trpo-point2d", ["data.args.goal_high=inf"], "data.args.goal_high must be a finite number, got inf"),
        ("maml-trpo-cheetah-vel", ["data.args.velocity_high=.nan"], "data.args.velocity_high must be a finite"),
        ("maml-trpo-point2d", ["learner.args.inner_lr=.inf"], "learner.args.inner_lr must be a finite number, got inf"),
        ("maml-trpo-point2d", ["learner.args.inner_lr=1e400"], "learner.args.inner_lr must be a finite number"),
        (
            "maml-trpo-point2d",
            ["model.backbone=conv4", "model.backbone_args={}"],
            "model.backbone conv4 takes images, but point2d-nav gives vectors (observations); use mlp",
        ),
        (
            "rl2-point2d",
            ["model.backbone=resnet12", "model.backbone_args={}"],
            "model.backbone resnet12 takes images, but point2d-nav gives vectors",
        ),
        (
            "maml-sinusoid-5shot",
            ["model.backbone=conv4", "model.backbone_args={}"],
            "model.backbone conv4 takes images, but sinusoid gives vectors (inputs)",
        ),
        (  # the preset's mlp widths, a list, where conv4 takes one width: the hint says where it came from
            "maml-trpo-point2d",
            ["model.backbone=conv4"],
            "model.backbone_args.hidden must be int, got [100, 100]; model.backbone_args.hidden comes from the "
            "preset, written for its own backbone",
        ),
    ],
)
def test_settings_the_chosen_parts_cannot_take(preset, settings, message, tmp_path):
    argv = [arg for item in settings for arg in ("--set", item)]
    code, err = run("train", preset, *argv, "--out", str(tmp_path / "run"), "--quiet")
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "run").exists()


def test_head_learner_eval_ways_must_match_training():
    code, err = run("train", "maml-omniglot-5w1s", "--set", "eval.ways=20", "--quiet")
    assert code == 2 and len(err) == 1 and "eval.ways must equal train.episodes.ways (5)" in err[0], err


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "is empty; a config needs at least"),
        (b"# only a comment\n", "is empty; a config needs at least"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "is not a YAML text file (not UTF-8"),
        (b"abc\x00def: 1\n", "is not valid YAML"),
        (b"- 1\n- 2\n", "must hold a mapping of settings"),
    ],
)
def test_bad_yaml_files(content, message, tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_bytes(content)
    code, err = run("train", str(path), "--quiet")
    assert code == 2 and len(err) == 1 and message in err[0] and str(path) in err[0], err


def test_out_naming_a_file(tmp_path):
    target = tmp_path / "a-file"
    target.write_text("x")
    code, err = run("train", PRESET, "--out", str(target), "--quiet")
    assert code == 2 and len(err) == 1 and "is a file, not a folder" in err[0], err
    code, err = run("train", PRESET, "--out", str(target / "sub"), "--quiet")
    assert code == 2 and len(err) == 1 and "cannot be created" in err[0], err


def test_out_naming_a_read_only_folder(tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: simulate the permission check
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(folder) else real(p, mode, **kw))
    else:
        folder.chmod(0o555)
    try:
        code, err = run("train", PRESET, "--out", str(folder / "run"), "--quiet")
    finally:
        folder.chmod(0o755)
    assert code == 2 and len(err) == 1 and "is not writable" in err[0], err


def test_finished_run_with_other_settings_is_an_error(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    config = load_config(PRESET, ["train.steps=3"])
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    (run_dir / "eval.json").write_text("{}")
    (run_dir / "checkpoints" / "latest.json").write_text("{}")
    code, err = run("train", PRESET, "--set", "train.steps=3", "--set", "train.lr=0.5", "--out", str(run_dir))
    assert code == 2 and len(err) == 1, err
    assert f"run folder {run_dir} holds a run with other settings (differs in: overrides, train)" in err[0]


@pytest.mark.parametrize(
    "option,value,message",
    [
        ("--ways", "0", "--ways must be an integer >= 2, got 0"),
        ("--episodes", "0", "--episodes must be an integer >= 2 (a 95% CI needs two), got 0"),
        ("--episodes", "1", "--episodes must be an integer >= 2 (a 95% CI needs two), got 1"),
        ("--shots", "-1", "--shots must be an integer >= 1, got -1"),
        ("--queries", "0", "--queries must be an integer >= 1, got 0"),
        ("--seed", "-1", "--seed must be an integer in 0..4294967294, got -1"),
        ("--adapt-steps", "0", "--adapt-steps must be an integer >= 1, got 0"),
        ("--ways", "two", "argument --ways: invalid int value: 'two'"),
    ],
)
def test_eval_options_are_checked_before_loading(option, value, message, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("loaded the run")

    monkeypatch.setattr(trainer_module, "load_run", refuse)
    code, err = run("eval", str(tmp_path / "run"), option, value)
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_predict_adapt_steps_checked_before_loading(tmp_path):
    code, err = run("predict", str(tmp_path), "--support", "s", "--query", "q", "--adapt-steps", "0")
    assert code == 2 and err == ["fastadapt predict: error: --adapt-steps must be an integer >= 1, got 0"], err


def test_config_built_in_code_is_checked_too():
    config = Config()
    config.train.steps = -1
    with pytest.raises(FastAdaptError, match="train.steps must be an integer >= 0, got -1"):
        check_config(config)
