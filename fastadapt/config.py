"""Run configuration: YAML presets, `--set key=value` overrides, strict validation.

A config is a tree of dataclasses, so a typo (`train.stpes`) or a wrong type is a clear one-line
error naming the key, instead of a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import FastAdaptError

SEED_MAX = 2**32 - 1  # numpy's seed range
LR_MAX = 1e38  # torch's optimisers hold the lr as float32 (max 3.4e38): larger ones raise


@dataclass(frozen=True)
class Range:
    """The valid values of a numeric setting: `low`..`high` (None: unbounded), each end open or
    closed; `null` (a text) when None is also allowed, and what it means. Numbers are finite."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    null: str | None = None

    def contains(self, value) -> bool:
        if value is None:
            return self.null is not None
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self, kind: type) -> str:
        noun = "an integer" if kind is int else "a finite number"
        if self.low is not None and self.high is not None:
            text = (
                f"{noun} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
                if kind is float
                else f"{noun} in {self.low}..{self.high}"
            )
        elif self.low is not None:
            text = f"{noun} {'>' if self.low_open else '>='} {self.low:g}"
        elif self.high is not None:
            text = f"{noun} {'<' if self.high_open else '<='} {self.high:g}"
        else:
            text = noun
        return f"{text} or null for {self.null}" if self.null else text


def ranged(default, low=None, high=None, *, low_open=False, high_open=False, null=None):
    """A numeric setting with its valid range (`Range`), checked when the config is built."""
    return field(default=default, metadata={"range": Range(low, high, low_open, high_open, null)})


def matching(default: str, pattern: str, allowed: str):
    """A text setting that must match `pattern` (the whole text); `allowed` says what fits."""
    return field(default=default, metadata={"pattern": pattern, "allowed": allowed})


NAME = r"[^/\\\x00]+"  # a run folder name: runs/<name>
SPLIT = r"\S+"


@dataclass
class DataConfig:
    dataset: str = "omniglot"
    image_size: int = ranged(28, 1, 4096)  # the backbone sets its own floor (conv4: 2 ** pooled_blocks)
    train_split: str = matching("train", SPLIT, "a split name")
    val_split: str | None = matching(
        "val", SPLIT, "a split name or null"
    )  # None: no validation, the last checkpoint is the result
    test_split: str = matching("test", SPLIT, "a split name")
    args: dict[str, Any] = field(default_factory=dict)  # the dataset's own settings (its `Args` dataclass)


@dataclass
class EpisodeConfig:
    ways: int | None = ranged(5, 2, null="regression")  # None for regression
    shots: int = ranged(1, 1)
    queries: int = ranged(15, 1)


Optimizer = Literal["adam", "sgd"]
Schedule = Literal["constant", "step", "cosine", "linear"]
Engine = Literal["auto", "serial", "fork", "vmap"]  # fastadapt.engine.ENGINES


@dataclass
class TrainConfig:
    # 0: no meta-training, the learner's initial weights are tested (a pretrained encoder fine-tuned per task)
    steps: int = ranged(1000, 0)
    meta_batch: int = ranged(1, 1)
    episodes: EpisodeConfig = field(default_factory=EpisodeConfig)
    optimizer: Optimizer = "adam"
    lr: float = ranged(1e-3, 0, LR_MAX, low_open=True)
    momentum: float = ranged(0.9, 0, 1, high_open=True)  # sgd only; Reptile's outer step is plain SGD (momentum 0)
    lr_schedule: Schedule = "constant"  # constant | step | cosine | linear (to 0)
    lr_min: float = ranged(0.0, 0, LR_MAX)  # cosine: the final lr
    lr_step: int = ranged(2000, 1)  # step schedule: multiply by lr_gamma every lr_step steps
    lr_gamma: float = ranged(0.5, 0, 1, low_open=True)
    val_every: int = ranged(500, 1)
    val_episodes: int = ranged(200, 1)
    # The validation metric that picks best.safetensors; null: the learner's main one. RL learners
    # also take return_after_<k> (the return after k adaptation steps, or in trial episode k).
    select_metric: str | None = matching(None, r"[a-z][a-z0-9_]*", "a metric name or null")
    checkpoint_every: int = ranged(250, 1)
    log_every: int = ranged(50, 1)
    engine: Engine = "auto"  # auto | serial | fork | vmap (see fastadapt.engine)
    workers: int = ranged(0, 0, 4096)  # fork engine processes; 0 = one per core
    chunk_size: int = ranged(0, 0)  # vmap engine: tasks per vmapped call (bounds memory); 0 = the whole meta-batch
    compile: bool = False  # vmap engine: torch.compile the batched loss (falls back to eager, with a warning)
    device: str = matching("auto", r"auto|cpu|cuda(:\d+)?", "auto, cpu, cuda or cuda:N")


@dataclass
class EvalConfig:
    ways: int | None = ranged(5, 2, null="regression")
    shots: int = ranged(1, 1)
    queries: int = ranged(15, 1)
    episodes: int = ranged(1000, 2)  # a 95% CI needs two
    seed: int = ranged(1234, 0, SEED_MAX - 1)  # fixes the test episodes; shared by every method (validation: seed + 1)


@dataclass
class ModelConfig:
    backbone: str = "conv4"
    backbone_args: dict[str, Any] = field(default_factory=dict)
    channels_last: bool | None = None  # NHWC convolutions; None = on CPU (measured faster there)


@dataclass
class LearnerConfig:
    name: str = "protonet"
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class Config:
    name: str = matching("custom", NAME, "a name without '/' (the default run folder is runs/<name>)")
    description: str = ""
    seed: int = ranged(0, 0, SEED_MAX)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    reference: dict[str, Any] = field(default_factory=dict)  # the paper's numbers, for tables
    overrides: list[str] = field(default_factory=list)  # the --set items applied to the preset

    def to_dict(self) -> dict:
        return asdict(self)


def _shown(value) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _check_field(f: dataclasses.Field, hint, value, where: str):
    """Coerce and range-check one setting: a wrong type or value is one line naming `where`
    and the allowed values."""
    limits, pattern = f.metadata.get("range"), f.metadata.get("pattern")
    if limits is None:
        value = _coerce(value, hint, where)
        if pattern is not None and value is not None and not re.fullmatch(pattern, value):
            raise FastAdaptError(f"{where} must be {f.metadata['allowed']}, got {_shown(value)}")
        return value
    kind = next(a for a in (typing.get_args(hint) or (hint,)) if a is not type(None))
    number, shown = value, _shown(value)
    if kind is float and isinstance(value, (str, int)) and not isinstance(value, bool):
        try:
            number = float(value)  # YAML reads 1e-3 (and nan, inf) as a string
            shown = str(value)
        except ValueError:
            pass
        except OverflowError:
            number = math.inf
    typed = number is None or (
        isinstance(number, (int, float) if kind is float else int) and not isinstance(number, bool)
    )
    if not typed:
        prefix = "int (" + limits.describe(int) + ")" if kind is int else limits.describe(float)
        raise FastAdaptError(f"{where} must be {prefix}, got {shown}")
    if not limits.contains(number):
        raise FastAdaptError(f"{where} must be {limits.describe(kind)}, got {shown}")
    return float(number) if kind is float and number is not None else number


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise FastAdaptError(f"{where} must be a mapping of settings, got {value!r}")
        return _build(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin is dict:
        if not isinstance(value, dict):
            raise FastAdaptError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if origin is typing.Literal:
        if value not in args or isinstance(value, bool) != any(isinstance(a, bool) for a in args if a == value):
            raise FastAdaptError(f"{where} must be one of {', '.join(map(repr, args))}; got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise FastAdaptError(f"{where} must be a list, got {value!r}")
        item = args[0] if args and (origin is list or (len(args) == 2 and args[1] is Ellipsis)) else None
        items = [_coerce(v, item, f"{where}[{i}]") if item is not None else v for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if hint is float and not isinstance(value, bool):
        try:  # YAML reads 1e-3 (and inf, nan) as a string
            number = float(value) if isinstance(value, (int, float, str)) else None
        except ValueError:
            number = None
        except OverflowError:  # an integer beyond any float
            number = math.inf
        if number is not None:
            if not math.isfinite(number):  # no setting means anything at inf or nan: each would overflow later
                raise FastAdaptError(f"{where} must be a finite number, got {value}")
            return number
    if hint in (int, str, bool, float) and not (
        isinstance(value, hint) and not (hint is int and isinstance(value, bool))
    ):
        raise FastAdaptError(f"{where} must be {hint.__name__}, got {value!r}")
    return value


def _build(cls, values: dict, where: str):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    known = set(fields)
    unknown = sorted(set(values) - known)
    if unknown:
        prefix = f"{where}." if where else ""
        raise FastAdaptError(f"unknown setting {prefix}{unknown[0]}; valid keys here: {', '.join(sorted(known))}")
    kwargs = {k: _check_field(fields[k], hints[k], v, f"{where}.{k}" if where else k) for k, v in values.items()}
    return cls(**kwargs)


def build_dataclass(cls, values: dict, where: str):
    """`cls(**values)` with every key and type checked: an unknown key or a wrong type is a
    one-line FastAdaptError naming `where.key` and the valid keys. For the typed settings of
    learners (`learner.args`), backbones (`model.backbone_args`) and datasets (`data.args`)."""
    if not isinstance(values, dict):
        raise FastAdaptError(f"{where} must be a mapping of settings, got {values!r}")
    return _build(cls, values, where)


def config_from_dict(values: dict) -> Config:
    return _build(Config, values, "")


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("fastadapt.presets").iterdir() if p.name.endswith(".yaml"))


def _read_yaml(text: str, where: str, file: bool = False) -> dict:
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise FastAdaptError(f"{where} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if file and not values:
        raise FastAdaptError(
            f"{where} is empty; a config needs at least its parts (e.g. learner: {{name: protonet}}, "
            f"model: {{backbone: conv4}}, data: {{dataset: omniglot}}); see a preset with "
            f"`fastadapt presets`"
        )
    if not isinstance(values, dict):
        raise FastAdaptError(f"{where} must hold a mapping of settings at top level")
    return values


def load_raw(preset_or_path: str) -> dict:
    """Settings of a shipped preset (by name) or a YAML file (by path)."""
    path = Path(preset_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise FastAdaptError(
                f"config file {path} does not exist; give a preset name ({', '.join(preset_names())}) or a YAML path"
            )
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise FastAdaptError(
                f"{path} is not a YAML text file (not UTF-8: binary or damaged); give a preset name or a YAML config"
            ) from None
        except OSError as exc:
            raise FastAdaptError(f"cannot read config file {path}: {exc.strerror or exc}") from None
        return _read_yaml(text, str(path), file=True)
    resource = resources.files("fastadapt.presets") / f"{preset_or_path}.yaml"
    if not resource.is_file():
        raise FastAdaptError(
            f"no preset or file named {preset_or_path!r}; presets: "
            f"{', '.join(preset_names())} (see `fastadapt presets`)"
        )
    return _read_yaml(resource.read_text(), f"preset {preset_or_path}")


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """Apply `key.sub=value` strings; values are parsed as YAML (numbers, lists, null, ...).
    The strings are recorded under `overrides`, so results show how a run departs from its preset."""
    values = yaml.safe_load(yaml.safe_dump(values))  # deep copy
    values["overrides"] = list(values.get("overrides") or []) + list(overrides)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise FastAdaptError(f"--set {item!r} is not key=value (e.g. --set train.steps=500)")
        node = values
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise FastAdaptError(f"--set {item!r}: {part!r} is not a section")
        node[parts[-1]] = yaml.safe_load(raw) if raw != "" else ""
    return values


# A settings block and the setting that names what it configures.
_BLOCK_OWNERS = {"data.args": ("data.dataset", "dataset"), "learner.args": ("learner.name", "learner")}
_BLOCK_OWNERS["model.backbone_args"] = ("model.backbone", "backbone")


def with_preset_hint(config: Config, exc: FastAdaptError) -> FastAdaptError:
    """`exc`, or for an unknown or ill-typed key that the preset set for the component a `--set`
    replaced (e.g. banking77's data.args.class_split after --set data.dataset=textfile), the same message saying
    so: `--set data.args.path=...` merges into the preset's block, it does not replace it."""
    # an unknown key, or a known one whose preset value is the wrong kind here (mlp's hidden list for conv4)
    found = re.match(r"(?:unknown setting )?(data\.args|learner\.args|model\.backbone_args)\.(\w+)[; ]", str(exc))
    if not found:
        return exc
    block, key = found.groups()
    owner, what = _BLOCK_OWNERS[block]
    changed = [item.partition("=")[0] for item in config.overrides]
    if owner not in changed or block in changed or f"{block}.{key}" in changed:
        return exc
    return FastAdaptError(
        f"{exc}; {block}.{key} comes from the preset, written for its own {what}: after --set "
        f"{owner}=..., replace the whole block, e.g. --set '{block}={{...}}'"
    )


def load_config(preset_or_path: str, overrides: list[str] | None = None) -> Config:
    return config_from_dict(apply_overrides(load_raw(preset_or_path), overrides or []))
