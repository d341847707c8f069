"""Backbones, built by name from presets.

A backbone's user-facing settings (`model.backbone_args`) are its `Args` dataclass; the
input-derived arguments (channels, image size, input width, head width, memory layout) are
filled in by `build_backbone`, so presets only state what is a real choice.
"""

from __future__ import annotations

import dataclasses
import inspect

from torch import nn

from ..config import build_dataclass
from ..errors import FastAdaptError
from ..registry import BACKBONES
from . import (
    backbones,  # noqa: F401  (registers the built-in backbones)
    resnet12,  # noqa: F401  (registers resnet12)
)


def parse_settings(args_cls: type, values: dict, where: str):
    """`build_dataclass(args_cls, values, where)`, with a clear message for a component that takes
    no settings at all (build_dataclass would list an empty set of valid keys)."""
    if isinstance(values, dict) and values and not dataclasses.fields(args_cls):
        raise FastAdaptError(
            f"unknown setting {where}.{sorted(values)[0]}; there are no settings here, so leave {where} empty"
        )
    return build_dataclass(args_cls, values, where)


def build_backbone(
    name: str, args: dict, *, out_features: int | None, input_shape: tuple[int, ...], channels_last: bool = False
) -> nn.Module:
    """Build a registered backbone: `model.backbone_args` parsed into its `Args` (one-line errors
    for unknown keys, wrong types and bad values), plus the input-derived arguments."""
    cls = BACKBONES.get(name)
    params = inspect.signature(cls).parameters
    derived = {"out_features": out_features, "channels_last": channels_last}
    if len(input_shape) == 3:
        derived.update(in_channels=input_shape[0], image_size=input_shape[-1])
    else:
        derived.update(in_features=input_shape[-1])
    kwargs = {k: v for k, v in derived.items() if k in params}
    settings_cls = getattr(cls, "Args", None)
    if settings_cls is not None:
        settings = parse_settings(settings_cls, args, "model.backbone_args")
        return cls(**kwargs, **{f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)})
    # A backbone without `Args` (third-party): its signature is the list of settings.
    unknown = sorted(set(args) - set(params))
    if unknown:
        raise FastAdaptError(
            f"backbone {name!r} has no argument(s) {unknown} (in model.backbone_args); "
            f"valid: {sorted(set(params) - set(derived))}"
        )
    return cls(**kwargs, **args)
