"""N-way K-shot episodes drawn from a class pool.

An episode is a pure function of (seed, index): its random generator is seeded from the pair
and nothing else, so resuming from a checkpoint only needs the next index, and distributed
ranks draw disjoint tasks by taking disjoint indices. Evaluation uses `FixedEpisodes`: the
drawn index arrays themselves, saved with the results, so every method is scored on exactly
the same tasks.
"""
from __future__ import annotations

import operator
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..errors import FastAdaptError
from ..utils import atomic_write
from .episode import Episode
from .omniglot import ClassPool

#: Extra seed word for fixed evaluation sets, so they never replay the training stream of the
#: same seed (which would test on the very episodes trained on when the pools coincide).
_FIXED_STREAM = 1
_FORMAT = 1


def _check_request(pool: ClassPool, ways: int, shots: int, queries: int, seed: int) -> None:
    values = {"ways": ways, "shots": shots, "queries": queries}
    if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in values.values()):
        raise FastAdaptError("ways, shots and queries must be positive integers (got "
                             + ", ".join(f"{k}={v!r}" for k, v in values.items()) + ")")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise FastAdaptError(f"episode seed must be a non-negative integer, got {seed!r}")
    n_classes, per_class = pool.images.shape[:2]
    if ways > n_classes:
        raise FastAdaptError(f"cannot draw {ways}-way episodes from {pool.name}: it has only {n_classes} classes; "
                             f"lower ways to at most {n_classes} or use a split with more classes")
    if shots + queries > per_class:
        raise FastAdaptError(f"episodes need shots + queries = {shots} + {queries} = {shots + queries} examples per "
                             f"class but {pool.name} has only {per_class}; lower shots or queries")


def _draw(rng: np.random.Generator, n_classes: int, per_class: int, ways: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """`ways` distinct classes and, per class, `k` distinct examples (first the shots, then the queries)."""
    classes = rng.choice(n_classes, size=ways, replace=False)
    examples = np.argsort(rng.random((ways, per_class)), axis=1)[:, :k]  # a random permutation per row
    return classes.astype(np.int64), examples.astype(np.int64)


def _gather(pool: ClassPool, classes: np.ndarray, examples: np.ndarray, shots: int) -> Episode:
    """Build the episode with one fancy-index gather: support and query are class-major."""
    ways, k = examples.shape
    images = pool.images[torch.from_numpy(classes)[:, None], torch.from_numpy(examples)]  # (ways, k, C, H, W)
    images = images.float().div_(255)
    support = images[:, :shots].reshape(ways * shots, *images.shape[2:])
    query = images[:, shots:].reshape(ways * (k - shots), *images.shape[2:])
    labels = torch.arange(ways)
    return Episode(support, labels.repeat_interleave(shots), query, labels.repeat_interleave(k - shots),
                   ways=ways, shots=shots, info={"classes": classes})


class EpisodeSampler:
    """Random `ways`-way `shots`-shot episodes with `queries` queries per class from `pool`."""

    def __init__(self, pool: ClassPool, ways: int, shots: int, queries: int, seed: int = 0):
        _check_request(pool, ways, shots, queries, seed)
        self.pool, self.ways, self.shots, self.queries, self.seed = pool, int(ways), int(shots), int(queries), int(seed)

    def indices(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(classes (ways,), examples (ways, shots + queries)) of episode `index`: pool indices."""
        index = operator.index(index)
        if index < 0:
            raise IndexError(f"episode index must be non-negative, got {index}")
        return _draw(np.random.default_rng([self.seed, index]), *self.pool.images.shape[:2], self.ways,
                     self.shots + self.queries)

    def episode(self, index: int) -> Episode:
        """Episode `index`: float32 images in [0, 1], labels 0..ways-1, class-major."""
        classes, examples = self.indices(index)
        return _gather(self.pool, classes, examples, self.shots)

    __call__ = episode

    def __repr__(self) -> str:
        return (f"EpisodeSampler({self.pool.name}, ways={self.ways}, shots={self.shots}, "
                f"queries={self.queries}, seed={self.seed})")


class FixedEpisodes:
    """A fixed, seeded set of evaluation episodes, stored as pool index arrays.

    `classes` is (n, ways) and `examples` is (n, ways, shots + queries); index arrays are tiny, so
    a set is saved next to results and reloaded to score another method on identical tasks.
    """

    def __init__(self, pool: ClassPool, ways: int, shots: int, queries: int, seed: int,
                 classes: np.ndarray, examples: np.ndarray):
        _check_request(pool, ways, shots, queries, seed)
        n = len(classes)
        if classes.shape != (n, ways) or examples.shape != (n, ways, shots + queries):
            raise ValueError(f"index arrays {classes.shape}, {examples.shape} do not fit "
                             f"{ways}-way {shots}+{queries}-example episodes")
        self.pool, self.ways, self.shots, self.queries, self.seed = pool, int(ways), int(shots), int(queries), int(seed)
        self.classes, self.examples = classes.astype(np.int64), examples.astype(np.int64)

    @property
    def pool_name(self) -> str:
        return self.pool.name

    @classmethod
    def generate(cls, pool: ClassPool, ways: int, shots: int, queries: int, n_episodes: int = 1000,
                 seed: int = 0) -> "FixedEpisodes":
        """Draw `n_episodes` episodes; the same arguments always give the same set."""
        _check_request(pool, ways, shots, queries, seed)
        if isinstance(n_episodes, bool) or not isinstance(n_episodes, (int, np.integer)) or n_episodes < 1:
            raise FastAdaptError(f"number of evaluation episodes must be a positive integer, got {n_episodes!r}")
        draws = [_draw(np.random.default_rng([seed, i, _FIXED_STREAM]), *pool.images.shape[:2], ways, shots + queries)
                 for i in range(n_episodes)]
        return cls(pool, ways, shots, queries, seed, np.stack([c for c, _ in draws]), np.stack([e for _, e in draws]))

    def __len__(self) -> int:
        return len(self.classes)

    def __getitem__(self, i: int) -> Episode:
        i = operator.index(i)
        return _gather(self.pool, self.classes[i], self.examples[i], self.shots)

    def __iter__(self) -> Iterator[Episode]:
        return (self[i] for i in range(len(self)))

    def save(self, path: Path | str) -> None:
        """Write the index arrays and their provenance to `path` (.npz), atomically."""
        meta = {"format": _FORMAT, "ways": self.ways, "shots": self.shots, "queries": self.queries,
                "seed": self.seed, "pool_name": self.pool.name, "pool_shape": np.array(self.pool.images.shape[:2])}
        atomic_write(Path(path), lambda f: np.savez_compressed(f, classes=self.classes, examples=self.examples, **meta))

    @classmethod
    def load(cls, path: Path | str, pool: ClassPool) -> "FixedEpisodes":
        """Reload a saved set onto `pool`, which must be the pool it was drawn from."""
        try:
            with np.load(path) as data:
                saved = {key: data[key] for key in data.files}
        except FileNotFoundError:
            raise FastAdaptError(f"fixed episode file {path} not found; generate it first or fix the path") from None
        except (OSError, ValueError) as exc:
            raise FastAdaptError(f"cannot read fixed episodes from {path} ({exc}); regenerate the file") from None
        name, shape = str(saved["pool_name"]), tuple(int(v) for v in saved["pool_shape"])
        if name != pool.name or shape != tuple(pool.images.shape[:2]):
            n_classes, per_class = pool.images.shape[:2]
            raise FastAdaptError(f"episodes in {path} were drawn from {name} ({shape[0]} classes x {shape[1]} "
                                 f"examples) but the pool given is {pool.name} ({n_classes} x {per_class}); "
                                 f"load them with the same split and data, or regenerate them")
        return cls(pool, int(saved["ways"]), int(saved["shots"]), int(saved["queries"]), int(saved["seed"]),
                   saved["classes"], saved["examples"])

    def __repr__(self) -> str:
        return (f"FixedEpisodes({len(self)} x {self.ways}-way {self.shots}-shot {self.queries}-query "
                f"from {self.pool.name}, seed={self.seed})")
