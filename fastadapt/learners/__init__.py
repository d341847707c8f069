"""Learners, grouped by family; each registers itself by name in `LEARNERS`."""
from __future__ import annotations

from ..config import Config
from ..errors import FastAdaptError
from ..models import build_backbone
from ..registry import LEARNERS
from .base import Learner
from .metric import protonet  # noqa: F401  (registers)
from .optimization import maml  # noqa: F401  (registers)


def build_learner(config: Config, input_shape: tuple[int, ...], channels_last: bool = False) -> Learner:
    """The learner a config names, with its backbone. Metric learners embed (no head);
    optimisation learners get a head with one output per training way (or one for regression)."""
    cls = LEARNERS.get(config.learner.name)
    ways = config.train.episodes.ways
    out_features = (ways or 1) if cls.needs_head else None
    backbone = build_backbone(config.model.backbone, config.model.backbone_args, out_features=out_features,
                              input_shape=input_shape, channels_last=channels_last)
    try:
        return cls.build(backbone, ways, **config.learner.args)
    except TypeError as exc:
        raise FastAdaptError(f"learner {config.learner.name!r}: bad learner.args {config.learner.args} ({exc})") from None
