"""Checks of a whole config that need the registries: names of the registered parts and the
settings that depend on each other. Run by the trainer (and by `fastadapt tune` for every point
of a search space) before any data is loaded."""

from __future__ import annotations

import warnings

from .config import Config, config_from_dict, with_preset_hint
from .errors import FastAdaptError
from .registry import BACKBONES, DATASETS, LEARNERS


def _rl_learners() -> list[str]:
    return [n for n in LEARNERS.names() if getattr(LEARNERS.get(n), "problem", None) == "rl"]


def check_ranks(config: Config, world_size: int) -> None:
    """Learners whose outer update needs the whole meta-batch in one process (TRPO, PPO) refuse
    `world_size` > 1 ranks: one line, before torchrun starts any rank (`--nproc`) or, under an
    outside torchrun, before any rank trains."""
    if world_size <= 1:
        return
    from .learners.base import parse_args

    learner_cls = LEARNERS.get(config.learner.name)
    args = parse_args(learner_cls.Args, config.learner.args) if getattr(learner_cls, "Args", None) else None
    why = learner_cls.single_process_reason(args) if hasattr(learner_cls, "single_process_reason") else None
    if why:
        raise FastAdaptError(why)


def check_config(config: Config) -> None:
    """Fail fast, before any data is loaded. Each setting's own range is checked when the config
    is built (fastadapt.config: `ranged`, `matching`, Literal choices); this checks the names of
    the registered parts and the settings that depend on each other."""
    config_from_dict(config.to_dict())  # the ranges again, for a Config built in code
    from .learners.base import parse_args
    from .models import parse_settings

    learner_cls = LEARNERS.get(config.learner.name)
    learner_args = None
    backbone_args = None
    backbone_cls = BACKBONES.get(config.model.backbone)
    try:  # a key the preset set for another learner / backbone says so (data.args: parse_data_args)
        if getattr(learner_cls, "Args", None) is not None:
            learner_args = parse_args(learner_cls.Args, config.learner.args)  # the learner's ranges, before any data
        if getattr(backbone_cls, "Args", None) is not None:
            backbone_args = parse_settings(backbone_cls.Args, config.model.backbone_args, "model.backbone_args")
    except FastAdaptError as exc:
        raise with_preset_hint(config, exc) from None
    _check_select_metric(config, learner_cls, learner_args)
    for key, why in unused_settings(config, learner_cls, learner_args).items():
        if any(item.partition("=")[0] == key for item in config.overrides):  # set by the user, not the preset
            warnings.warn(f"{key} is unused by learner {config.learner.name} here ({why})", stacklevel=2)
    dataset_cls = DATASETS.get(config.data.dataset)
    if getattr(dataset_cls, "Args", None) is not None:
        from .data.base import parse_data_args

        parse_data_args(dataset_cls, config)  # keys and types only: no file is read here
    problem = getattr(dataset_cls, "problem", None)
    if (problem == "rl") != (getattr(learner_cls, "problem", None) == "rl"):  # RL tasks need an RL learner
        raise FastAdaptError(
            f"learner {config.learner.name} cannot learn the {'RL ' if problem == 'rl' else ''}dataset "
            f"{config.data.dataset}; RL datasets go with RL learners ({', '.join(_rl_learners())}) only"
        )
    vectors = problem in ("rl", "regression") or getattr(dataset_cls, "modality", None) == "text"
    if vectors and getattr(backbone_cls, "takes_images", False):
        what = {"rl": "observations", "regression": "inputs"}.get(problem, "sentence embeddings")
        raise FastAdaptError(
            f"model.backbone {config.model.backbone} takes images, but {config.data.dataset} gives vectors "
            f"({what}); use mlp (e.g. --set model.backbone=mlp --set 'model.backbone_args={{hidden: [100, 100]}}')"
        )
    splits = getattr(dataset_cls, "splits", None)
    if isinstance(splits, (tuple, list)) and splits:
        for key in ("train_split", "val_split", "test_split"):
            split = getattr(config.data, key)
            if split is not None and split not in splits:
                raise FastAdaptError(
                    f"data.{key} must be one of {', '.join(splits)} for {config.data.dataset}"
                    f"{' (or null)' if key == 'val_split' else ''}; got {split!r}"
                )
    pooled = getattr(backbone_args, "pooled_blocks", None)
    if problem == "classification" and isinstance(pooled, int) and config.data.image_size >> pooled < 1:
        raise FastAdaptError(
            f"data.image_size must be >= {2**pooled} for {config.model.backbone} with {pooled} "
            f"poolings, got {config.data.image_size}; or lower model.backbone_args.pooled_blocks"
        )
    train_ways, eval_ways = config.train.episodes.ways, config.eval.ways
    if problem == "classification":
        for key, ways in (("train.episodes.ways", train_ways), ("eval.ways", eval_ways)):
            if ways is None:
                raise FastAdaptError(
                    f"{key} must be an integer >= 2 for the classification dataset {config.data.dataset}, got null"
                )
        if getattr(learner_cls, "needs_head", False) and eval_ways != train_ways:
            raise FastAdaptError(
                f"eval.ways must equal train.episodes.ways ({train_ways}) for "
                f"{config.learner.name}, whose head has that many outputs; got {eval_ways}"
            )


def unused_settings(config: Config, learner_cls=None, learner_args=None) -> dict[str, str]:
    """{config key: why} for the settings this learner, with these args, never reads
    (`Learner.unused_settings`)."""
    from .learners.base import parse_args

    learner_cls = learner_cls or LEARNERS.get(config.learner.name)
    if learner_args is None and getattr(learner_cls, "Args", None) is not None:
        learner_args = parse_args(learner_cls.Args, config.learner.args)
    return learner_cls.unused_settings(learner_args)


def _check_select_metric(config: Config, learner_cls, learner_args) -> None:
    """train.select_metric names a validation metric of this learner, and there is validation."""
    select = config.train.select_metric
    if select is None:
        return
    if config.data.val_split is None:
        raise FastAdaptError(
            f"train.select_metric: {select!r} picks among validations, but data.val_split is null; set "
            f"data.val_split (e.g. val) or drop train.select_metric"
        )
    from .evaluate import METRICS

    choices = learner_cls.selectable_metrics(learner_args)
    # a main metric's name (accuracy, mse, ...): the trainer checks it is this learner's
    if select not in choices and select not in METRICS:
        fix = (
            f"give one of {', '.join(choices)}, or null for the main metric"
            if choices
            else "it selects on its main metric only, so leave train.select_metric null"
        )
        raise FastAdaptError(
            f"train.select_metric: {select!r} is not a validation metric of learner {config.learner.name}; {fix}"
        )
