"""Datasets as few-shot tasks, one file per dataset (see `base.py` for the contract).

Every module of this package is imported here, so a dataset registers itself in `DATASETS`
by being a file in this folder.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from ..errors import FastAdaptError
from ..registry import DATASETS
from .base import ClassificationSuite, FixedTasks, RegressionSuite, TaskSuite
from .dataset import LabelledDataset
from .download import download_file
from .episode import Episode
from .lake import LakeRun, lake_episode, load_lake_runs, score_lake
from .omniglot import OmniglotCharacters, load_omniglot_characters, omniglot_pool, preprocess_image
from .sampler import EpisodeSampler, FixedEpisodes
from .sinusoid import SinusoidTasks, sinusoid

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def build_suite(config, data_root: str | Path | None = None, download: bool = False) -> TaskSuite:
    """The dataset a config names (`data.dataset`), with its `data.args` checked."""
    suite_cls = DATASETS.get(config.data.dataset)
    if suite_cls.problem == "classification" and not config.train.episodes.ways:
        raise FastAdaptError(f"dataset {config.data.dataset!r} needs train.episodes.ways (got null)")
    return suite_cls(config, data_root, download)


__all__ = [
    "ClassificationSuite",
    "Episode",
    "EpisodeSampler",
    "FixedEpisodes",
    "FixedTasks",
    "LabelledDataset",
    "LakeRun",
    "OmniglotCharacters",
    "RegressionSuite",
    "SinusoidTasks",
    "TaskSuite",
    "build_suite",
    "download_file",
    "lake_episode",
    "load_lake_runs",
    "load_omniglot_characters",
    "omniglot_pool",
    "preprocess_image",
    "score_lake",
    "sinusoid",
]
