"""Learners, grouped by family (one algorithm per file); each registers itself by name in `LEARNERS`.

Every module of every family package is imported here, so adding a learner is adding a file.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from ..config import Config
from ..errors import FastAdaptError
from ..models import build_backbone
from ..registry import DATASETS, LEARNERS
from .base import Learner, fields_of, parse_args

FAMILIES = ("optimization", "metric", "generative", "graph", "transfer", "rl")


def _import_families() -> None:
    for family in FAMILIES:
        package = importlib.import_module(f"{__name__}.{family}")
        for module in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package.__name__}.{module.name}")


_import_families()


def build_learner(
    config: Config, input_shape: tuple[int, ...], channels_last: bool = False, num_train_classes: int | None = None
) -> Learner:
    """The learner a config names, with its backbone. Metric learners embed (no head);
    optimisation learners get a head with one output per training way (or one for regression).
    Learners whose `build` takes `num_train_classes` (transfer baselines) get the size of the
    training class pool. `learner.args` is parsed into the learner's `Args` first, so a typo, a
    wrong type or a value out of range is a one-line error before anything is built."""
    cls = LEARNERS.get(config.learner.name)
    settings = parse_args(cls.Args, config.learner.args) if cls.Args is not None else None
    ways = config.train.episodes.ways
    out_features = (ways or 1) if cls.needs_head else None
    if cls.problem == "rl":  # the policy's output: one unit per action dimension of the task family
        out_features = getattr(DATASETS.get(config.data.dataset), "action_dim", None) or 1
    backbone = build_backbone(
        config.model.backbone,
        config.model.backbone_args,
        out_features=out_features,
        input_shape=input_shape,
        channels_last=channels_last,
    )
    extra = {}
    if "num_train_classes" in inspect.signature(cls.build).parameters:
        extra["num_train_classes"] = num_train_classes
    if settings is not None:
        return cls.build(backbone, ways, **extra, **fields_of(settings))
    try:  # a third-party learner without `Args`: its `build` signature is the list of settings
        return cls.build(backbone, ways, **extra, **config.learner.args)
    except TypeError as exc:
        raise FastAdaptError(
            f"learner {config.learner.name!r}: bad learner.args {config.learner.args} ({exc})"
        ) from None
