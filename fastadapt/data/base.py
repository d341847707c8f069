"""The dataset contract: what one dataset file provides so the trainer, the evaluator and
`fastadapt predict` can use it. Adding a dataset is writing one file in `fastadapt/data/`.

A *suite* is registered by name (`@DATASETS.register("name")`, the `data.dataset` of a config)
and built as `Suite(config, data_root, download)`. It offers:

- `problem`: "classification" or "regression"; `input_shape`: one item's model-input shape;
- `train_task(index) -> Episode`: a pure function of (config.seed, index), so resuming and
  sharding over ranks need no sampler state;
- `fixed_set(split, ways, shots, queries, episodes, seed)`: a fixed, seeded sequence of
  episodes with `save(path)`; the same arguments always give the same tasks, so every method is
  scored on identical episodes (classification: `FixedEpisodes`, index arrays; regression:
  `FixedTasks`, the tasks themselves);
- `item_from_file(path)` (image datasets): one user file as a stored item, for `predict`;
- `Args`: a dataclass of the dataset's own settings (`data.args` in YAML or
  `--set data.args.root=DIR`), checked like the rest of the config: an unknown key or a wrong
  type is a one-line error naming the valid keys.

Classification datasets subclass `ClassificationSuite` and only implement
`load_split(split) -> LabelledDataset` (and list their `splits`); sampling, fixed sets and
class counts come from here.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import Config, build_dataclass, with_preset_hint
from ..errors import FastAdaptError
from ..utils import atomic_write
from .dataset import LabelledDataset
from .episode import Episode
from .sampler import EpisodeSampler, FixedEpisodes


@dataclass
class NoArgs:
    """This dataset takes no data.args."""


class TaskSuite(abc.ABC):
    problem: str = "classification"
    #: Settings under `data.args`; subclasses replace it with their own dataclass.
    Args: type = NoArgs
    input_shape: tuple[int, ...] = ()
    num_train_classes: int | None = None

    def __init__(self, config: Config, data_root: str | Path | None = None, download: bool = False):
        self.config, self.data_root, self.download = config, data_root, download
        self.args = parse_data_args(type(self), config)

    @abc.abstractmethod
    def train_task(self, index: int) -> Episode:
        """Training task `index`, a pure function of (config.seed, index)."""

    def check(self) -> None:  # noqa: B027 (an optional hook: most suites have nothing to check)
        """Fail now, before training, if training tasks cannot be drawn."""

    def require_split(self, split: str, where: str = "") -> None:
        """One-line error unless `split` is one of the suite's `splits` (`where`: the setting named)."""
        splits = getattr(self, "splits", ())
        if split not in splits:
            raise FastAdaptError(
                f"{where}{self.config.data.dataset} has no split {split!r}; valid splits: {', '.join(splits)}"
            )

    def require_config_splits(self) -> None:
        """`require_split` for each of data.train_split / val_split / test_split that is set."""
        for key in ("train_split", "val_split", "test_split"):
            split = getattr(self.config.data, key)
            if split is not None:
                self.require_split(split, f"data.{key}: ")

    @abc.abstractmethod
    def fixed_set(self, split: str, ways: int | None, shots: int, queries: int, episodes: int, seed: int):
        """A fixed, seeded sequence of evaluation episodes with `save(path)`."""


def parse_data_args(suite_cls: type, config: Config):
    """`config.data.args` as the suite's `Args` dataclass (one-line errors for bad keys and types)."""
    try:
        return build_dataclass(suite_cls.Args, config.data.args or {}, "data.args")
    except FastAdaptError as exc:
        raise with_preset_hint(config, exc) from None


class ClassificationSuite(TaskSuite):
    """Few-shot classification over class splits of a labelled dataset.

    Subclasses set `splits` (the split names a config may use for data.train_split /
    val_split / test_split) and implement `load_split`. Loaded splits are memoised per suite.
    """

    problem = "classification"
    splits: tuple[str, ...] = ("train", "val", "test")

    def __init__(self, config: Config, data_root: str | Path | None = None, download: bool = False):
        super().__init__(config, data_root, download)
        self.image_size = config.data.image_size
        self._loaded: dict[str, LabelledDataset] = {}
        self._train: EpisodeSampler | None = None
        self.require_config_splits()
        if not config.train.episodes.ways:
            raise FastAdaptError(f"dataset {config.data.dataset!r} needs train.episodes.ways (got null)")

    # Loaded on first use, so evaluating a trained model on another dataset never loads (or
    # samples from) that dataset's training split.
    @property
    def input_shape(self) -> tuple[int, ...]:
        data = self.split(self.config.data.train_split)
        return tuple(data.as_model_input(np.arange(1)).shape[1:])

    @property
    def num_train_classes(self) -> int:
        return self.split(self.config.data.train_split).num_classes

    #: True when items store ink as high values (Omniglot): evaluating such a run on a user's
    #: folder inverts the user's images (`data.args.invert`) so both read alike.
    inverted_ink: bool = False

    def check(self) -> None:
        """Before training: the training episodes, and the validation and test episodes the run
        will be scored on, can all be drawn (a too-small split fails now, not after training)."""
        from .sampler import check_request

        self._sampler()
        e = self.config.eval
        for key in ("val_split", "test_split"):
            split = getattr(self.config.data, key)
            if split is not None:
                check_request(self.split(split), e.ways, e.shots, e.queries, e.seed)

    def _sampler(self) -> EpisodeSampler:
        if self._train is None:
            e = self.config.train.episodes
            self._train = EpisodeSampler(
                self.split(self.config.data.train_split), e.ways, e.shots, e.queries, seed=self.config.seed
            )
        return self._train

    def item_from_file(self, path: str | Path, channels: int) -> np.ndarray:
        """One image file as this dataset's items are stored: uint8 (channels, image_size, image_size).
        Datasets with their own preprocessing (Omniglot inverts ink) override this; `fastadapt
        predict` reads the user's files through it, so they match what the model was trained on."""
        from .images import decode_image

        item = decode_image(path, self.image_size, channels, getattr(self.args, "resize", "squash"))
        return 255 - item if getattr(self.args, "invert", False) else item

    @abc.abstractmethod
    def load_split(self, split: str) -> LabelledDataset:
        """The items and labels of one split (class ids 0..n-1 within the split)."""

    def split(self, split: str) -> LabelledDataset:
        self.require_split(split)
        if split not in self._loaded:
            self._loaded[split] = self.load_split(split)
        return self._loaded[split]

    def train_task(self, index: int) -> Episode:
        return self._sampler().episode(index)

    def fixed_set(self, split: str, ways: int, shots: int, queries: int, episodes: int, seed: int) -> FixedEpisodes:
        return FixedEpisodes.generate(self.split(split), ways, shots, queries, episodes, seed)


class FixedTasks(Sequence[Episode]):
    """A fixed list of regression tasks; saved whole (they are small)."""

    def __init__(self, tasks: list[Episode], seed: int):
        self.tasks, self.seed = tasks, seed

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, i):
        return self.tasks[i]

    def save(self, path: str | Path) -> None:
        arrays = {
            name: np.stack([getattr(t, name).numpy() for t in self.tasks])
            for name in ("support_x", "support_y", "query_x", "query_y")
        }
        for key in self.tasks[0].info:
            arrays[key] = np.array([t.info[key] for t in self.tasks])
        atomic_write(Path(path), lambda f: np.savez_compressed(f, seed=self.seed, **arrays))


#: Seed offsets of regression validation / test tasks: disjoint from training's stream.
REGRESSION_SPLIT_OFFSETS = {"val": 1_000_003, "test": 2_000_003}


class RegressionSuite(TaskSuite):
    """Regression task families whose task `index` is a pure function of (seed, index).

    Subclasses implement `source(shots, queries, seed, training)`, an object with `task(index)`;
    validation and test tasks come from seeds offset from the evaluation seed, so they are
    disjoint from training's stream and from each other.
    """

    problem = "regression"
    input_shape = (1,)
    splits: tuple[str, ...] = ("train", "val", "test")  # task streams, not data: each split its own seeds

    def __init__(self, config: Config, data_root: str | Path | None = None, download: bool = False):
        super().__init__(config, data_root, download)
        episodes = config.train.episodes
        self._train = self.source(episodes.shots, episodes.queries, config.seed, training=True)

    @abc.abstractmethod
    def source(self, shots: int, queries: int, seed: int, training: bool):
        """An object whose `task(index)` is that task, a pure function of (seed, index)."""

    def train_task(self, index: int) -> Episode:
        return self._train.task(index)

    def fixed_set(self, split: str, ways, shots: int, queries: int, episodes: int, seed: int) -> FixedTasks:
        source = self.source(shots, queries, seed + REGRESSION_SPLIT_OFFSETS.get(split, 3_000_017), training=False)
        return FixedTasks([source.task(i) for i in range(episodes)], seed)
