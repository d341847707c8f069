"""Train / val / test class splits of a user's own dataset (`imagefolder`'s class folders,
`textfile`'s labels): explicit `data.args.*_classes` lists, or `split_fractions` of the classes
shuffled by `split_seed`. Every bad setting is a one-line error naming its `data.args` key."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import FastAdaptError

__all__ = ["CLASS_SPLITS", "DEFAULT_FRACTIONS", "apportion", "class_splits", "require_listed"]

DEFAULT_FRACTIONS = (0.6, 0.2, 0.2)
CLASS_SPLITS = ("train", "val", "test")


def apportion(fractions: list[float], n: int) -> np.ndarray:
    """Split n classes by `fractions` (largest remainder: counts sum to n, each within 1 of its share)."""
    raw = np.asarray(fractions, np.float64) / sum(fractions) * n  # exact sum, so floors never exceed n
    counts = np.floor(raw + 1e-9).astype(np.int64)
    extra = np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]
    counts[extra] += 1
    return counts


def class_splits(args, classes: list[str], source: str | Path, noun: str = "class folder") -> dict[str, np.ndarray]:
    """Class ids (sorted int64 arrays) of the train / val / test splits that `args` defines
    (`train_classes`, `val_classes`, `test_classes`, `split_fractions`, `split_seed`), for the
    sorted class names `classes` read from `source`. `noun` names a class in messages
    ("class folder", "label"). Raises one-line FastAdaptErrors naming the bad `data.args` key."""
    lists = {s: getattr(args, f"{s}_classes") for s in CLASS_SPLITS if getattr(args, f"{s}_classes") is not None}
    if lists:
        if args.split_fractions is not None:
            raise FastAdaptError(
                f"data.args: give {noun} lists (train_classes, val_classes, test_classes) or split_fractions, not both"
            )
        index, owner, out = {c: i for i, c in enumerate(classes)}, {}, {}
        for split, names in lists.items():
            key = f"data.args.{split}_classes"
            if not isinstance(names, list) or not names:
                raise FastAdaptError(f"{key} must be a non-empty list of {noun} names, got {names!r}")
            for j, name in enumerate(names):
                if not isinstance(name, str):  # YAML reads 007 as 7 and yes as True
                    raise FastAdaptError(
                        f"{key}[{j}] must be a {noun} name (a string), got {name!r}; quote names that "
                        f"YAML reads as numbers or booleans, e.g. '007'"
                    )
                if name not in index:
                    shown = ", ".join(classes[:8]) + (", ..." if len(classes) > 8 else "")
                    raise FastAdaptError(f"{key}: no {noun} {name!r} in {source} ({len(classes)} {noun}s: {shown})")
                if owner.get(name) == split:
                    raise FastAdaptError(f"{noun} {name!r} is listed twice in {key}; give it once")
                if name in owner:
                    raise FastAdaptError(
                        f"{noun} {name!r} is listed in data.args.{owner[name]}_classes and in {key}; "
                        f"each {noun} belongs to one split"
                    )
                owner[name] = split
            out[split] = np.sort([index[name] for name in names]).astype(np.int64)
        return out
    fractions = DEFAULT_FRACTIONS if args.split_fractions is None else args.split_fractions
    if len(fractions) != 3 or not all(np.isfinite(f) and f >= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise FastAdaptError(
            f"data.args.split_fractions must be 3 non-negative shares of the {noun}s for "
            f"train, val and test summing to 1, e.g. [0.6, 0.2, 0.2]; got {list(fractions)}"
        )
    if args.split_seed < 0:
        raise FastAdaptError(f"data.args.split_seed must be a non-negative integer, got {args.split_seed}")
    order = np.random.default_rng(args.split_seed).permutation(len(classes))
    ends = np.cumsum(apportion(fractions, len(classes)))
    return {s: np.sort(order[a:b]) for s, a, b in zip(CLASS_SPLITS, [0, *ends[:-1]], ends)}


def require_listed(splits: dict[str, np.ndarray], split: str, dataset: str, what: str = "classes") -> None:
    """One-line error when `split` is one the `*_classes` lists of `class_splits` leave out."""
    if split not in splits:
        raise FastAdaptError(
            f"{dataset} has no {split!r} split: data.args lists {what} for {', '.join(splits)} only; add "
            f"data.args.{split}_classes, or set data.{split}_split to another split (e.g. all) or null"
        )
