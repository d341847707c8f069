"""A labelled dataset: items plus integer labels, for any modality.

Items are one tensor with the example index first: images (N, C, H, W) uint8 (1 or 3
channels), float vectors (N, D) (e.g. precomputed sentence embeddings) or token-id sequences
(N, L) int64. Labels are (N,) int64 in [0, n_classes); classes may have different sizes, as
in easyfsl's label-indexed datasets. Episode samplers work on label indices only, so any
modality and any class sizes go through the same sampler.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

from ..errors import FastAdaptError

MODALITIES = ("image", "vector", "tokens")


def modality_of(items: torch.Tensor) -> str:
    """ "image" for uint8 (N, C, H, W), "vector" for float (N, D), "tokens" for int64 (N, L)."""
    if items.dtype == torch.uint8 and items.dim() == 4 and items.shape[1] in (1, 3):
        return "image"
    if items.is_floating_point() and items.dim() == 2:
        return "vector"
    if items.dtype == torch.int64 and items.dim() == 2:
        return "tokens"
    raise FastAdaptError(
        f"dataset items must be uint8 images (N, 1|3, H, W), float vectors (N, D) or int64 "
        f"token ids (N, L); got {items.dtype} of shape {tuple(items.shape)}"
    )


@dataclass
class LabelledDataset:
    """`items` (N, ...) and `labels` (N,) int64 in [0, len(class_names)); `name` says where it came
    from (e.g. "omniglot/vinyals-test") and is saved with fixed episode sets to check they are
    reloaded onto the same data. `sources[i]`, when given, is item i's file (for messages)."""

    items: torch.Tensor
    labels: np.ndarray
    class_names: list[str]
    name: str
    sources: list[str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.items, torch.Tensor):
            self.items = torch.as_tensor(self.items)
        self.labels = np.asarray(self.labels)
        self.modality = modality_of(self.items)
        n = self.items.shape[0]
        if self.labels.shape != (n,) or not np.issubdtype(self.labels.dtype, np.integer):
            raise FastAdaptError(
                f"dataset {self.name}: labels must be {n} integers (one per item), "
                f"got {self.labels.dtype} of shape {self.labels.shape}"
            )
        self.labels = self.labels.astype(np.int64, copy=False)
        k = len(self.class_names)
        if n and (self.labels.min() < 0 or self.labels.max() >= k):
            raise FastAdaptError(
                f"dataset {self.name}: labels must lie in 0..{k - 1} ({k} class names), "
                f"got {self.labels.min()}..{self.labels.max()}"
            )
        empty = [self.class_names[c] for c in np.flatnonzero(self.counts == 0)]
        if empty:
            raise FastAdaptError(
                f"dataset {self.name}: class {empty[0]!r} has no examples "
                f"({len(empty)} empty class(es)); remove it or add examples"
            )

    @classmethod
    def from_class_array(cls, items: torch.Tensor | np.ndarray, class_names: list[str], name: str) -> LabelledDataset:
        """From an equal-size (n_classes, per_class, ...) array: item c*per_class + j is example j of class c."""
        items = torch.as_tensor(items)
        n_classes, per_class = items.shape[:2]
        return cls(
            items.reshape(n_classes * per_class, *items.shape[2:]),
            np.repeat(np.arange(n_classes, dtype=np.int64), per_class),
            list(class_names),
            name,
        )

    def __len__(self) -> int:
        return self.items.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @cached_property
    def counts(self) -> np.ndarray:
        """Examples per class, (n_classes,)."""
        return np.bincount(self.labels, minlength=len(self.class_names))

    @cached_property
    def class_indices(self) -> list[np.ndarray]:
        """Item indices of each class, ascending (a stable order, so episodes are reproducible)."""
        order = np.argsort(self.labels, kind="stable")
        return np.split(order, np.cumsum(self.counts)[:-1])

    @property
    def item_shape(self) -> tuple[int, ...]:
        return tuple(self.items.shape[1:])

    def as_model_input(self, index: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Items at `index` as the model sees them: images float32 in [0, 1], vectors float32,
        token ids int64."""
        x = self.items[torch.as_tensor(index)]
        if self.modality == "image":
            return x.float().div_(255)
        return x.float() if self.modality == "vector" else x

    def subset(self, classes: list[int] | np.ndarray, name: str) -> LabelledDataset:
        """The items of `classes` (dataset class ids), relabelled 0..len(classes)-1 in that order."""
        classes = np.asarray(classes, dtype=np.int64)
        remap = np.full(len(self.class_names), -1, np.int64)
        remap[classes] = np.arange(len(classes))
        keep = np.flatnonzero(remap[self.labels] >= 0)
        sources = [self.sources[i] for i in keep] if self.sources is not None else None
        return LabelledDataset(
            self.items[torch.from_numpy(keep)],
            remap[self.labels[keep]],
            [self.class_names[c] for c in classes],
            name,
            sources,
        )
