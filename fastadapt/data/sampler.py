"""N-way K-shot episodes drawn from a labelled dataset, by label index.

An episode is a pure function of (seed, index): its random generator is seeded from the pair
and nothing else, so resuming from a checkpoint only needs the next index, and distributed
ranks draw disjoint tasks by taking disjoint indices. Classes may have different sizes; each
episode draws `ways` distinct classes and, per class, shots + queries distinct examples, so no
item is ever both a support and a query example. Evaluation uses `FixedEpisodes`: the drawn
index arrays themselves, saved with the results, so every method is scored on exactly the same
tasks.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..errors import FastAdaptError
from ..utils import atomic_write
from .dataset import LabelledDataset
from .episode import Episode

#: Extra seed word for fixed evaluation sets, so they never replay the training stream of the
#: same seed (which would test on the very episodes trained on when the datasets coincide).
_FIXED_STREAM = 1
_FORMAT = 2


def _positive_int(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= 1


def check_request(dataset: LabelledDataset, ways: int, shots: int, queries: int, seed: int) -> None:
    """One-line errors for episodes that cannot be drawn from `dataset`."""
    values = {"ways": ways, "shots": shots, "queries": queries}
    if not all(_positive_int(v) for v in values.values()):
        raise FastAdaptError(
            "ways, shots and queries must be positive integers (got "
            + ", ".join(f"{k}={v!r}" for k, v in values.items())
            + ")"
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise FastAdaptError(f"episode seed must be a non-negative integer, got {seed!r}")
    n_classes = dataset.num_classes
    if ways > n_classes:
        fix = (
            f"lower ways to at most {n_classes} or use a split with more classes"
            if n_classes > 1
            else "give that split more classes (your own data: data.args.split_fractions or data.args.*_classes)"
        )
        raise FastAdaptError(
            f"cannot draw {ways}-way episodes from {dataset.name}: it has only {n_classes} "
            f"class{'es' if n_classes != 1 else ''}; {fix}"
        )
    need = shots + queries
    small = np.flatnonzero(dataset.counts < need)
    if small.size:
        worst = small[np.argmin(dataset.counts[small])]
        others = f" ({small.size} classes have fewer)" if small.size > 1 else ""
        raise FastAdaptError(
            f"episodes need shots + queries = {shots} + {queries} = {need} examples per class but "
            f"class {dataset.class_names[worst]!r} of {dataset.name} has only "
            f"{dataset.counts[worst]}{others}; lower shots or queries, or add examples to that class"
        )


def draw(rng: np.random.Generator, counts: np.ndarray, ways: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """`ways` distinct classes and, per class, `k` distinct positions within the class (first the
    shots, then the queries): a random permutation of each drawn class, cut to `k`.

    Equal class sizes take one (ways, size) draw; uneven ones one draw per class in turn, which
    reads the same random stream, so both give identical episodes when sizes are equal.
    """
    classes = rng.choice(len(counts), size=ways, replace=False).astype(np.int64)
    sizes = counts[classes]
    if (sizes == sizes[0]).all():
        examples = np.argsort(rng.random((ways, int(sizes[0]))), axis=1)[:, :k]
    else:
        examples = np.stack([np.argsort(rng.random(int(s)))[:k] for s in sizes])
    return classes, examples.astype(np.int64)


def gather(dataset: LabelledDataset, classes: np.ndarray, examples: np.ndarray, shots: int) -> Episode:
    """The episode of (classes (ways,), positions (ways, k)): one gather, support and query class-major,
    labels 0..ways-1 in the order of `classes`."""
    ways, k = examples.shape
    items = np.stack([dataset.class_indices[c][e] for c, e in zip(classes, examples)])  # (ways, k)
    support = dataset.as_model_input(items[:, :shots].reshape(-1))
    query = dataset.as_model_input(items[:, shots:].reshape(-1))
    labels = torch.arange(ways)
    return Episode(
        support,
        labels.repeat_interleave(shots),
        query,
        labels.repeat_interleave(k - shots),
        ways=ways,
        shots=shots,
        info={"classes": classes},
    )


class EpisodeSampler:
    """Random `ways`-way `shots`-shot episodes with `queries` queries per class from `dataset`."""

    def __init__(self, dataset: LabelledDataset, ways: int, shots: int, queries: int, seed: int = 0):
        check_request(dataset, ways, shots, queries, seed)
        self.dataset, self.ways, self.shots, self.queries, self.seed = (
            dataset,
            int(ways),
            int(shots),
            int(queries),
            int(seed),
        )

    def indices(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(classes (ways,), positions within each class (ways, shots + queries)) of episode `index`."""
        index = operator.index(index)
        if index < 0:
            raise IndexError(f"episode index must be non-negative, got {index}")
        return draw(
            np.random.default_rng([self.seed, index]), self.dataset.counts, self.ways, self.shots + self.queries
        )

    def episode(self, index: int) -> Episode:
        """Episode `index`: model inputs (images float32 in [0, 1]), labels 0..ways-1, class-major."""
        classes, examples = self.indices(index)
        return gather(self.dataset, classes, examples, self.shots)

    __call__ = episode

    def __repr__(self) -> str:
        return (
            f"EpisodeSampler({self.dataset.name}, ways={self.ways}, shots={self.shots}, "
            f"queries={self.queries}, seed={self.seed})"
        )


class FixedEpisodes:
    """A fixed, seeded set of evaluation episodes, stored as index arrays.

    `classes` is (n, ways) (dataset class ids) and `examples` is (n, ways, shots + queries)
    (positions within each class); index arrays are tiny, so a set is saved next to results and
    reloaded to score another method on identical tasks.
    """

    def __init__(
        self,
        dataset: LabelledDataset,
        ways: int,
        shots: int,
        queries: int,
        seed: int,
        classes: np.ndarray,
        examples: np.ndarray,
    ):
        check_request(dataset, ways, shots, queries, seed)
        n = len(classes)
        if classes.shape != (n, ways) or examples.shape != (n, ways, shots + queries):
            raise FastAdaptError(
                f"index arrays {classes.shape}, {examples.shape} do not fit "
                f"{ways}-way {shots}+{queries}-example episodes; regenerate the episode file"
            )
        if n and (
            classes.min() < 0
            or classes.max() >= dataset.num_classes
            or examples.min() < 0
            or (examples >= dataset.counts[classes][:, :, None]).any()
        ):
            raise FastAdaptError(f"episode indices point outside {dataset.name}; regenerate the episode file")
        self.dataset, self.ways, self.shots, self.queries, self.seed = (
            dataset,
            int(ways),
            int(shots),
            int(queries),
            int(seed),
        )
        self.classes, self.examples = classes.astype(np.int64), examples.astype(np.int64)

    @property
    def pool_name(self) -> str:
        return self.dataset.name

    @classmethod
    def generate(
        cls, dataset: LabelledDataset, ways: int, shots: int, queries: int, n_episodes: int = 1000, seed: int = 0
    ) -> FixedEpisodes:
        """Draw `n_episodes` episodes; the same arguments always give the same set."""
        check_request(dataset, ways, shots, queries, seed)
        if not _positive_int(n_episodes):
            raise FastAdaptError(f"number of evaluation episodes must be a positive integer, got {n_episodes!r}")
        draws = [
            draw(np.random.default_rng([seed, i, _FIXED_STREAM]), dataset.counts, ways, shots + queries)
            for i in range(n_episodes)
        ]
        return cls(
            dataset, ways, shots, queries, seed, np.stack([c for c, _ in draws]), np.stack([e for _, e in draws])
        )

    def __len__(self) -> int:
        return len(self.classes)

    def __getitem__(self, i: int) -> Episode:
        i = operator.index(i)
        return gather(self.dataset, self.classes[i], self.examples[i], self.shots)

    def __iter__(self) -> Iterator[Episode]:
        return (self[i] for i in range(len(self)))

    def save(self, path: Path | str) -> None:
        """Write the index arrays and their provenance to `path` (.npz), atomically."""
        meta = {
            "format": _FORMAT,
            "ways": self.ways,
            "shots": self.shots,
            "queries": self.queries,
            "seed": self.seed,
            "pool_name": self.dataset.name,
            "counts": self.dataset.counts,
        }
        atomic_write(Path(path), lambda f: np.savez_compressed(f, classes=self.classes, examples=self.examples, **meta))

    @classmethod
    def load(cls, path: Path | str, dataset: LabelledDataset) -> FixedEpisodes:
        """Reload a saved set onto `dataset`, which must be the data it was drawn from."""
        try:
            with np.load(path, allow_pickle=False) as data:
                saved = {key: data[key] for key in data.files}
            name = str(saved["pool_name"])
            # format 1 (equal-size pools only) stored (n_classes, per_class) instead of the counts
            counts = (
                saved["counts"]
                if "counts" in saved
                else np.full(int(saved["pool_shape"][0]), int(saved["pool_shape"][1]))
            )
            ways, shots, queries, seed = (int(saved[k]) for k in ("ways", "shots", "queries", "seed"))
            classes, examples = saved["classes"], saved["examples"]
        except FileNotFoundError:
            raise FastAdaptError(f"fixed episode file {path} not found; generate it first or fix the path") from None
        except (OSError, ValueError, KeyError, EOFError) as exc:
            raise FastAdaptError(
                f"cannot read fixed episodes from {path} ({exc}); delete it to regenerate it"
            ) from None
        if name != dataset.name or not np.array_equal(counts, dataset.counts):
            raise FastAdaptError(
                f"episodes in {path} were drawn from {name} ({len(counts)} classes, {int(np.sum(counts))} "
                f"examples) but the data given is {dataset.name} ({dataset.num_classes} classes, "
                f"{len(dataset)} examples); load them with the same split and data, or regenerate them"
            )
        return cls(dataset, ways, shots, queries, seed, classes, examples)

    def __repr__(self) -> str:
        return (
            f"FixedEpisodes({len(self)} x {self.ways}-way {self.shots}-shot {self.queries}-query "
            f"from {self.dataset.name}, seed={self.seed})"
        )
