"""The Lake et al. (2015) one-shot classification benchmark: 20 runs of 20-way within-alphabet trials.

Each run has 20 training images (one per class) and 20 test items; `class_labels.txt` pairs each
test item with its correct training image. Scores are reported as the official demo
(`demo_classification.py`) does: percent error per run, averaged over runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import FastAdaptError
from .episode import Episode
from .omniglot import ArchiveReader, locate

_LABELS = re.compile(r"(?:^|/)(run\d+)/class_labels\.txt$")


@dataclass
class LakeRun:
    """One run: `support` (20, 1, H, W) = training/class01..class20, `query` (20, 1, H, W) =
    test/item01..item20, float in [0, 1]; `answers[i]` = index of item i's correct class."""

    name: str
    support: torch.Tensor
    query: torch.Tensor
    answers: torch.Tensor

    def __len__(self) -> int:
        return len(self.answers)


def _answers(text: str, trains: list[str], tests: list[str], where: str) -> np.ndarray:
    """answers[i] = index in `trains` of test image `tests[i]`'s class, from `class_labels.txt`.

    Lines are '<test image> <training image>', paths relative to the folder holding the runs.
    """
    pairs = [line.split() for line in text.splitlines() if line.strip()]
    answer_of = dict(p for p in pairs if len(p) == 2)
    class_index = {name: i for i, name in enumerate(trains)}
    if len(answer_of) != len(pairs) or sorted(answer_of) != tests or not set(answer_of.values()) <= set(class_index):
        raise FastAdaptError(
            f"{where} does not pair each test image of the run with one of its training images "
            f"(lines '<test image> <training image>'); replace all_runs.zip with the official one"
        )
    return np.array([class_index[answer_of[t]] for t in tests], dtype=np.int64)


def _load_run(reader: ArchiveReader, files: list[str], labels_path: str, size: int) -> LakeRun:
    """Support = runNN/training/*.png and query = runNN/test/*.png, each sorted by name (as the demo)."""
    match = _LABELS.search(labels_path)
    prefix, run = labels_path[: match.start(1)], match[1]  # prefix: the folder holding runNN/, if any

    def listed(folder: str) -> list[str]:
        return sorted(
            f[len(prefix) :] for f in files if f.startswith(f"{prefix}{run}/{folder}/") and f.endswith(".png")
        )

    def images(names: list[str]) -> torch.Tensor:
        stacked = np.stack([reader.image(prefix + name, size) for name in names])
        return torch.from_numpy(stacked).unsqueeze(1).float().div_(255)

    trains, tests = listed("training"), listed("test")
    answers = _answers(reader.read(labels_path).decode(), trains, tests, f"{reader.path}/{labels_path}")
    return LakeRun(run, images(trains), images(tests), torch.from_numpy(answers))


def load_lake_runs(root: Path | str | None = None, size: int = 28, download: bool = False) -> list[LakeRun]:
    """All runs of `all_runs.zip` (or its extracted folder), preprocessed like the archives."""
    source = locate(root, "all_runs", download)
    with ArchiveReader(source) as reader:
        files = reader.names()
        labels = sorted((f for f in files if _LABELS.search(f)), key=lambda f: _LABELS.search(f)[1])
        if not labels:
            raise FastAdaptError(
                f"no runNN/class_labels.txt found in {source}; replace it with the official all_runs.zip"
            )
        return [_load_run(reader, files, path, size) for path in labels]


def lake_episode(run: LakeRun) -> Episode:
    """The run as a 20-way 1-shot episode whose query labels are the official answers."""
    ways = len(run.support)
    return Episode(run.support, torch.arange(ways), run.query, run.answers, ways=ways, shots=1, info={"run": run.name})


def score_lake(predictions: list[torch.Tensor], runs: list[LakeRun]) -> dict:
    """Score predicted class indices (or logits, argmax taken) per run against the answers.

    Returns `accuracy` (fraction correct over all trials), `error_per_run` (percent, per run) and
    `mean_error` (percent, the mean over runs: the number the official demo prints).
    """
    if len(predictions) != len(runs):
        raise FastAdaptError(f"got predictions for {len(predictions)} runs but there are {len(runs)} runs")
    correct, errors = 0, []
    for prediction, run in zip(predictions, runs):
        prediction = torch.as_tensor(prediction).detach().cpu()
        if prediction.ndim == 2:
            prediction = prediction.argmax(-1)
        if prediction.shape != run.answers.shape:
            raise FastAdaptError(
                f"{run.name}: predictions have shape {tuple(prediction.shape)}, "
                f"expected {tuple(run.answers.shape)} (one class index per test item)"
            )
        hits = int((prediction.long() == run.answers).sum())
        correct += hits
        errors.append(100.0 - 100.0 * hits / len(run))  # as the demo: perror = 100 - pcorrect
    trials = sum(len(run) for run in runs)
    return {
        "accuracy": correct / trials,
        "error_per_run": errors,
        "mean_error": float(np.mean(errors)),
        "runs": len(runs),
        "trials": trials,
    }
