"""Run configuration: YAML presets, `--set key=value` overrides, strict validation.

A config is a tree of dataclasses, so a typo (`train.stpes`) or a wrong type is a clear one-line
error naming the key, instead of a silently ignored setting.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .errors import FastAdaptError


@dataclass
class DataConfig:
    dataset: str = "omniglot"
    image_size: int = 28
    train_split: str = "train"
    val_split: str | None = "val"  # None: no validation, the last checkpoint is the result
    test_split: str = "test"
    args: dict[str, Any] = field(default_factory=dict)  # the dataset's own settings (its `Args` dataclass)


@dataclass
class EpisodeConfig:
    ways: int | None = 5  # None for regression
    shots: int = 1
    queries: int = 15


@dataclass
class TrainConfig:
    steps: int = 1000
    meta_batch: int = 1
    episodes: EpisodeConfig = field(default_factory=EpisodeConfig)
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9  # sgd only; Reptile's outer step is plain SGD (momentum 0)
    lr_schedule: str = "constant"  # constant | step | cosine | linear (to 0)
    lr_min: float = 0.0  # cosine: the final lr
    lr_step: int = 2000  # step schedule: multiply by lr_gamma every lr_step steps
    lr_gamma: float = 0.5
    val_every: int = 500
    val_episodes: int = 200
    checkpoint_every: int = 250
    log_every: int = 50
    engine: str = "auto"  # auto | serial | fork | vmap (see fastadapt.engine)
    workers: int = 0  # fork engine processes; 0 = one per core
    chunk_size: int = 0  # vmap engine: tasks per vmapped call (bounds memory); 0 = the whole meta-batch
    compile: bool = False  # vmap engine: torch.compile the batched loss (falls back to eager, with a warning)
    device: str = "auto"  # auto | cpu | cuda[:N]


@dataclass
class EvalConfig:
    ways: int | None = 5
    shots: int = 1
    queries: int = 15
    episodes: int = 1000
    seed: int = 1234  # fixes the test episodes; shared by every method for comparable results


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
    name: str = "custom"
    description: str = ""
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    reference: dict[str, Any] = field(default_factory=dict)  # the paper's numbers, for tables
    overrides: list[str] = field(default_factory=list)  # the --set items applied to the preset

    def to_dict(self) -> dict:
        return asdict(self)


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
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:
            return float(value)  # YAML reads 1e-3 as a string
        except ValueError:
            pass
    if hint in (int, str, bool, float) and not (isinstance(value, hint) and
                                                 not (hint is int and isinstance(value, bool))):
        raise FastAdaptError(f"{where} must be {hint.__name__}, got {value!r}")
    return value


def _build(cls, values: dict, where: str):
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        prefix = f"{where}." if where else ""
        raise FastAdaptError(f"unknown setting {prefix}{unknown[0]}; valid keys here: {', '.join(sorted(known))}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in values.items()}
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


def _read_yaml(text: str, where: str) -> dict:
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise FastAdaptError(f"{where} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise FastAdaptError(f"{where} must hold a mapping of settings at top level")
    return values


def load_raw(preset_or_path: str) -> dict:
    """Settings of a shipped preset (by name) or a YAML file (by path)."""
    path = Path(preset_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise FastAdaptError(f"config file {path} does not exist; give a preset name "
                                 f"({', '.join(preset_names())}) or a YAML path")
        return _read_yaml(path.read_text(), str(path))
    resource = resources.files("fastadapt.presets") / f"{preset_or_path}.yaml"
    if not resource.is_file():
        raise FastAdaptError(f"no preset or file named {preset_or_path!r}; presets: "
                             f"{', '.join(preset_names())} (see `fastadapt presets`)")
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


def load_config(preset_or_path: str, overrides: list[str] | None = None) -> Config:
    return config_from_dict(apply_overrides(load_raw(preset_or_path), overrides or []))
