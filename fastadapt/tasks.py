"""Task suites: what a dataset offers the trainer and evaluator.

A suite gives a meta-training source (`train_task(index)`, a pure function of the index, so
resuming or sharding over ranks needs no sampler state), a fixed validation set and fixed,
seeded test sets that can be saved next to the results.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .config import Config, EpisodeConfig
from .data.episode import Episode
from .data.gp import GPTasks
from .data.omniglot import omniglot_pool
from .data.sampler import EpisodeSampler, FixedEpisodes
from .data.sinusoid import SinusoidTasks
from .errors import FastAdaptError
from .registry import DATASETS
from .utils import atomic_write


@DATASETS.register("omniglot")
class OmniglotSuite:
    """Few-shot classification on Omniglot class splits (Vinyals or Lake background/evaluation)."""

    problem = "classification"

    def __init__(self, config: Config, data_root: str | Path | None, download: bool = False):
        self.config = config
        self.data_root, self.download = data_root, download
        self.size = config.data.image_size
        self.input_shape = (1, self.size, self.size)
        episodes = config.train.episodes
        self._train = EpisodeSampler(self.pool(config.data.train_split), episodes.ways, episodes.shots,
                                     episodes.queries, seed=config.seed)

    @property
    def num_train_classes(self) -> int:
        """Size of the training class pool (the classifier width of transfer baselines)."""
        return int(self._train.pool.images.shape[0])

    def pool(self, split: str):
        return omniglot_pool(split, root=self.data_root, size=self.size, download=self.download)

    def train_task(self, index: int) -> Episode:
        return self._train.episode(index)

    def fixed_set(self, split: str, ways: int, shots: int, queries: int, episodes: int, seed: int) -> FixedEpisodes:
        return FixedEpisodes.generate(self.pool(split), ways, shots, queries, episodes, seed)


class FixedTasks(Sequence[Episode]):
    """A fixed list of regression tasks; saved whole (they are small)."""

    def __init__(self, tasks: list[Episode], seed: int):
        self.tasks, self.seed = tasks, seed

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, i):
        return self.tasks[i]

    def save(self, path: str | Path) -> None:
        arrays = {name: np.stack([getattr(t, name).numpy() for t in self.tasks])
                  for name in ("support_x", "support_y", "query_x", "query_y")}
        for key in self.tasks[0].info:
            arrays[key] = np.array([t.info[key] for t in self.tasks])
        atomic_write(Path(path), lambda f: np.savez_compressed(f, seed=self.seed, **arrays))


@DATASETS.register("sinusoid")
class SinusoidSuite:
    """Sinusoid regression (MAML paper): amplitude in [0.1, 5], phase in [0, pi], x in [-5, 5]."""

    problem = "regression"
    input_shape = (1,)
    num_train_classes = None

    def __init__(self, config: Config, data_root: str | Path | None = None, download: bool = False):
        self.config = config
        episodes: EpisodeConfig = config.train.episodes
        self._train = SinusoidTasks(episodes.shots, episodes.queries, seed=config.seed)

    def train_task(self, index: int) -> Episode:
        return self._train.task(index)

    def fixed_set(self, split: str, ways, shots: int, queries: int, episodes: int, seed: int) -> FixedTasks:
        # Validation and test tasks come from different seeds, both disjoint from training's.
        offset = {"val": 1_000_003, "test": 2_000_003}.get(split, 3_000_017)
        source = SinusoidTasks(shots, queries, seed=seed + offset)
        return FixedTasks([source.task(i) for i in range(episodes)], seed)


@DATASETS.register("gp1d")
class GP1DSuite:
    """1-D GP regression (Neural Process papers): RBF kernel, lengthscale 0.4, x in [-2, 2].
    Training tasks draw their context size in [min(3, shots), shots] (see fastadapt.data.gp);
    validation and test tasks have exactly `shots` context points."""

    problem = "regression"
    input_shape = (1,)
    num_train_classes = None

    def __init__(self, config: Config, data_root: str | Path | None = None, download: bool = False):
        self.config = config
        episodes: EpisodeConfig = config.train.episodes
        self._train = GPTasks(episodes.shots, episodes.queries, seed=config.seed, variable_context=True)

    def train_task(self, index: int) -> Episode:
        return self._train.task(index)

    def fixed_set(self, split: str, ways, shots: int, queries: int, episodes: int, seed: int) -> FixedTasks:
        offset = {"val": 1_000_003, "test": 2_000_003}.get(split, 3_000_017)
        source = GPTasks(shots, queries, seed=seed + offset)
        return FixedTasks([source.task(i) for i in range(episodes)], seed)


def build_suite(config: Config, data_root: str | Path | None, download: bool = False):
    suite_cls = DATASETS.get(config.data.dataset)
    if suite_cls.problem == "classification" and not config.train.episodes.ways:
        raise FastAdaptError(f"dataset {config.data.dataset!r} needs train.episodes.ways (got null)")
    return suite_cls(config, data_root, download)
