"""The search space of `fastadapt tune`: a YAML file naming config keys and their ranges.

    # space.yaml
    trial_settings:                 # every trial's own settings (a shorter schedule); the full run
      train.steps: 5000             # from the best trial (`fastadapt train --from-study`) drops them
      train.val_every: 1000
    params:                         # any config key, as `--set` names it
      train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}       # float (a bound with a point or exponent)
      learner.args.inner_lr: {low: 0.001, high: 0.1, log: true}
      learner.args.inner_steps: {low: 1, high: 5}            # int (both bounds integers)
      train.meta_batch: {choices: [10, 25, 50]}              # categorical
      train.episodes.ways: {low: 5, high: 20, step: 5}       # int with a step

`type: float | int | categorical` may be given to override the inference. Each bound and choice
is checked against the config's own validation (ranges, learner settings, ways that the learner
can take) before any trial runs, so a bad space is one line naming the key, not a failed study.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path
from typing import Any

import yaml

from .config import apply_overrides, config_from_dict
from .errors import FastAdaptError

_KEYS = {"type", "low", "high", "log", "step", "choices"}


@dataclasses.dataclass(frozen=True)
class Param:
    """One searched setting: `kind` float | int (`low`..`high`, optional `log` scale or `step`) or
    categorical (`choices`, YAML scalars)."""

    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()

    def suggest(self, trial) -> Any:
        """The value an Optuna trial takes for this setting (Optuna's own distributions)."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def corners(self) -> list:
        """The values that bound the space: checked against the config before any trial."""
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]

    def contains(self, value) -> bool:
        if self.kind == "categorical":
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int" and not float(value).is_integer():
            return False
        return self.low <= value <= self.high


@dataclasses.dataclass(frozen=True)
class Space:
    """A parsed space file: the searched `params` (in file order) and the fixed `trial_settings`
    (`key=value` override strings that every trial, and no full run, gets)."""

    params: tuple[Param, ...]
    trial_settings: tuple[str, ...]
    text: str  # the file as given, recorded with the study

    def overrides(self, values: dict) -> list[str]:
        """`key=value` override strings of a trial's parameter values, in space order."""
        return [override(p.key, values[p.key]) for p in self.params if p.key in values]


def override(key: str, value) -> str:
    """`key=value` whose value `--set` (YAML) reads back as exactly `value`: PyYAML's YAML 1.1
    reads `1e-05` as a string, so a float is written with a decimal point (`1.0e-05`)."""
    if isinstance(value, float) and math.isfinite(value):
        text = repr(value)
        if "e" in text and "." not in text.split("e")[0]:
            mantissa, exponent = text.split("e")
            text = f"{mantissa}.0e{exponent}"
        return f"{key}={text}"
    return f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"


def _param(key: str, spec, where: str) -> Param:
    if not isinstance(spec, dict):
        raise FastAdaptError(f"{where}: {key} must be a mapping like {{low: 0.001, high: 0.1}} or {{choices: [...]}}")
    unknown = sorted(set(spec) - _KEYS)
    if unknown:
        raise FastAdaptError(f"{where}: {key} has unknown field {unknown[0]!r}; valid: {', '.join(sorted(_KEYS))}")
    kind = spec.get("type")
    if "choices" in spec:
        choices = spec["choices"]
        if kind not in (None, "categorical") or not isinstance(choices, list) or not choices:
            raise FastAdaptError(f"{where}: {key}.choices must be a non-empty list (and type categorical)")
        bad = [c for c in choices if not (c is None or isinstance(c, (bool, int, float, str)))]
        if bad or len({repr(c) for c in choices}) != len(choices):
            raise FastAdaptError(f"{where}: {key}.choices must be distinct numbers, texts, booleans or null")
        if set(spec) - {"choices", "type"}:
            raise FastAdaptError(f"{where}: {key} has choices, so low/high/log/step do not apply; drop them")
        return Param(key, "categorical", choices=tuple(choices))
    if "low" not in spec or "high" not in spec:
        raise FastAdaptError(f"{where}: {key} needs low and high (or choices)")
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    numbers = [v for v in (low, high, step) if v is not None]
    # YAML 1.1 reads 1e-3 as a string: accept number-like strings
    try:
        low, high = (float(v) if isinstance(v, str) else v for v in (low, high))
        step = float(step) if isinstance(step, str) else step
    except ValueError:
        raise FastAdaptError(f"{where}: {key}.low/high/step must be numbers, got {numbers}") from None
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in (low, high, *([step] if step else []))):
        raise FastAdaptError(f"{where}: {key}.low/high/step must be numbers, got {numbers}")
    if not all(math.isfinite(v) for v in (low, high)) or not low < high:
        raise FastAdaptError(f"{where}: {key} needs finite low < high, got low={low}, high={high}")
    if not isinstance(log, bool):
        raise FastAdaptError(f"{where}: {key}.log must be true or false, got {log!r}")
    if log and low <= 0:
        raise FastAdaptError(f"{where}: {key} has log: true, so low must be > 0, got {low}")
    if step is not None and (step <= 0 or log):
        raise FastAdaptError(f"{where}: {key}.step must be > 0 and cannot go with log: true")
    if kind is None:
        kind = "int" if all(isinstance(v, int) for v in (spec["low"], spec["high"])) else "float"
    if kind not in ("int", "float"):
        raise FastAdaptError(f"{where}: {key}.type must be float, int or categorical, got {kind!r}")
    if kind == "int":
        if not all(float(v).is_integer() for v in (low, high, *([step] if step else []))):
            raise FastAdaptError(f"{where}: {key} is an int parameter, so low/high/step must be integers")
        low, high, step = int(low), int(high), (int(step) if step else None)
    else:
        low, high = float(low), float(high)
    return Param(key, kind, low, high, log, step)


def load_space(path: str | Path) -> Space:
    """Parse and check a space file (the format is in this module's docstring); every error is
    one FastAdaptError line naming the file and the key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        raw = yaml.safe_load(text)
    except FileNotFoundError:
        raise FastAdaptError(
            f"--space {path} does not exist; write a space file (see `fastadapt tune --help`)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FastAdaptError(f"cannot read --space {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise FastAdaptError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    return parse_space(raw, text, str(path))


def parse_space(raw, text: str, where: str) -> Space:
    if not isinstance(raw, dict) or not isinstance(raw.get("params"), dict) or not raw["params"]:
        raise FastAdaptError(f"{where} must hold a mapping `params:` of config keys to ranges (e.g. train.lr: ...)")
    unknown = sorted(set(raw) - {"params", "trial_settings"})
    if unknown:
        raise FastAdaptError(f"{where}: unknown section {unknown[0]!r}; valid: params, trial_settings")
    fixed = raw.get("trial_settings") or {}
    if not isinstance(fixed, dict):
        raise FastAdaptError(f"{where}: trial_settings must be a mapping of config keys to values")
    both = sorted(set(fixed) & set(raw["params"]))
    if both:
        raise FastAdaptError(f"{where}: {both[0]} is both searched (params) and fixed (trial_settings); keep one")
    params = tuple(_param(str(k), v, where) for k, v in raw["params"].items())
    return Space(params, tuple(override(str(k), v) for k, v in fixed.items()), text)


def check_space(space: Space, raw_config: dict, overrides: list[str], where: str) -> None:
    """Build the trial config at every bound and choice of every parameter (the others at the
    preset's values): an unknown key or a value the config refuses is one line naming it."""
    from .config_checks import check_config, unused_settings

    base = list(overrides) + list(space.trial_settings)
    with warnings.catch_warnings():  # settings a trial leaves unused: refused below, or warned per trial
        warnings.simplefilter("ignore")
        try:
            variants = [config_from_dict(apply_overrides(raw_config, base))]
            check_config(variants[0])
        except FastAdaptError as exc:
            raise FastAdaptError(f"{where}: trial_settings: {exc}") from None
        for param in space.params:
            for value in param.corners():
                try:
                    variants.append(config_from_dict(apply_overrides(raw_config, [*base, override(param.key, value)])))
                    check_config(variants[-1])
                except FastAdaptError as exc:
                    raise FastAdaptError(f"{where}: {param.key} = {value!r}: {exc}") from None
    for param in space.params:  # a key no trial reads (e.g. train.lr under TRPO): every trial the same run
        reasons = [unused_settings(variant).get(param.key) for variant in variants]
        if all(reasons):
            raise FastAdaptError(f"{where}: {param.key} is unused by this learner ({reasons[0]}); search another key")


def preset_values(space: Space, raw_config: dict, overrides: list[str]) -> dict | None:
    """The preset's own values of the searched keys, when every one lies in the space (so the
    preset's default can run as the study's first trial, the baseline the search must beat)."""
    from . import trainer  # noqa: F401 - registers the learners and backbones

    config = config_from_dict(apply_overrides(raw_config, overrides))
    values = config.to_dict()
    # settings a preset leaves at the learner's or backbone's code default: that default
    from .learners.base import fields_of
    from .models import parse_settings
    from .registry import BACKBONES, LEARNERS

    for part, registry, name, where in (
        ("learner", LEARNERS, config.learner.name, "learner.args"),
        ("model", BACKBONES, config.model.backbone, "model.backbone_args"),
    ):
        args_cls = getattr(registry.get(name), "Args", None)
        key = where.split(".")[1]
        if args_cls is not None:
            values[part][key] = {**fields_of(parse_settings(args_cls, values[part][key], where)), **values[part][key]}
    found = {}
    for param in space.params:
        node = values
        for part in param.key.split("."):
            if not isinstance(node, dict) or part not in node:
                return None  # a learner or data setting left at its code default
            node = node[part]
        if not param.contains(node):
            return None
        found[param.key] = node
    return found
