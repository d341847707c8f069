"""Backbones, built by name from presets."""
from __future__ import annotations

import inspect

from torch import nn

from ..errors import FastAdaptError
from ..registry import BACKBONES
from . import backbones  # noqa: F401  (registers the built-in backbones)


def build_backbone(name: str, args: dict, *, out_features: int | None, input_shape: tuple[int, ...],
                   channels_last: bool = False) -> nn.Module:
    """Build a registered backbone. Input-derived arguments (channels, image size, input width)
    and the device's memory layout are filled in, so presets only state what is a real choice."""
    cls = BACKBONES.get(name)
    params = inspect.signature(cls).parameters
    derived = {"out_features": out_features, "channels_last": channels_last}
    if len(input_shape) == 3:
        derived.update(in_channels=input_shape[0], image_size=input_shape[-1])
    else:
        derived.update(in_features=input_shape[-1])
    kwargs = {k: v for k, v in derived.items() if k in params}
    unknown = sorted(set(args) - set(params))
    if unknown:
        raise FastAdaptError(f"backbone {name!r} has no argument(s) {unknown} (in model.backbone_args); "
                             f"valid: {sorted(set(params) - set(derived))}")
    return cls(**kwargs, **args)
