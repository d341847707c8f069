"""The full-way K-shot protocol for intent classification, and out-of-scope detection.

Full-way K-shot (as in Casanueva et al. 2020, Banking77; Zhang et al. 2021, CPFT): every intent
of the dataset at once, K training sentences per intent drawn from the official train split, and
the whole official test set as the query set (Banking77: 77 intents, 3,080 test sentences;
CLINC150: 150 intents, 4,500 in-scope test sentences). The K-shot draw is a pure function of
(seed, K) (`draw_support`); results are the mean and spread over several seeds.

Methods are learners (`fastadapt.learners`): each seed is one `Episode` whose support is the
K-shot set and whose query is the test set, handed to `learner.predict` without query labels,
exactly as the episodic evaluator and `fastadapt predict` do.

Out-of-scope detection on CLINC150 (Larson et al. 2019): the learner scores the in-scope test
sentences, the out-of-scope test sentences (oos_test) and the validation sentences (val and
oos_val) in the same episode; a query is rejected as out-of-scope when its maximum softmax
probability is below a threshold, which `choose_threshold` picks on the validation scores only
(maximising in-scope accuracy + out-of-scope recall); the test scores are used only to report
in-scope accuracy (a rejected in-scope sentence counts as an error) and out-of-scope recall.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..data.episode import Episode
from ..errors import FastAdaptError
from .corpora import TextCorpus, read_banking77, read_clinc150

SHOTS = (1, 2, 5, 10, 20)
DATASETS = ("banking77", "clinc150")


def draw_support(labels: np.ndarray, shots: int, seed: int, ways: int | None = None) -> np.ndarray:
    """Indices of exactly `shots` items of every class 0..ways-1, class-major, drawn without
    replacement by a generator seeded with (seed, shots) only: the same (seed, K) always gives the
    same support set, whatever else was drawn before. Raises FastAdaptError when a class has
    fewer than `shots` items."""
    labels = np.asarray(labels)
    ways = int(labels.max()) + 1 if ways is None else ways
    if shots < 1:
        raise FastAdaptError(f"shots = {shots} is out of range; it must be >= 1")
    rng = np.random.default_rng([int(seed), int(shots)])
    chosen = []
    for c in range(ways):
        members = np.flatnonzero(labels == c)
        if len(members) < shots:
            raise FastAdaptError(f"class {c} has {len(members)} training sentences; {shots}-shot needs {shots}")
        chosen.append(np.sort(rng.choice(members, shots, replace=False)))
    return np.concatenate(chosen)


@dataclass
class FullwayData:
    """The splits of one dataset: train (the K-shot pool), test (in-scope queries) and, for
    CLINC150, val / oos_val (threshold selection) and oos_test (out-of-scope queries)."""

    name: str
    train: TextCorpus
    test: TextCorpus
    val: TextCorpus | None = None
    oos_val: TextCorpus | None = None
    oos_test: TextCorpus | None = None

    @property
    def ways(self) -> int:
        return len(self.train.class_names)


def load_fullway(root, dataset: str) -> FullwayData:
    """Banking77 (train/test) or CLINC150 (train/val/test + oos_val/oos_test) from the data root."""
    if dataset == "banking77":
        return FullwayData(dataset, read_banking77(root, "train"), read_banking77(root, "test"))
    if dataset == "clinc150":
        return FullwayData(
            dataset,
            read_clinc150(root, "train"),
            read_clinc150(root, "test"),
            val=read_clinc150(root, "val"),
            oos_val=read_clinc150(root, "val", oos=True),
            oos_test=read_clinc150(root, "test", oos=True),
        )
    raise FastAdaptError(f"unknown full-way dataset {dataset!r}; valid: {', '.join(DATASETS)}")


def support_set(data: FullwayData, shots: int, seed: int, label_names: int = 0) -> tuple[list[str], np.ndarray]:
    """The (seed, K) support sentences and labels, plus `label_names` copies of every intent's name
    as a sentence ("card_arrival" -> "card arrival"): the names are data a user has for free,
    used as extra labelled examples (as label-semantics methods do); 0 is the standard protocol."""
    index = draw_support(data.train.labels, shots, seed, data.ways)
    names = [n.replace("_", " ") for n in data.train.class_names] * label_names
    labels = np.concatenate([data.train.labels[index], np.tile(np.arange(data.ways), label_names)])
    return [data.train.texts[i] for i in index] + names, labels.astype(np.int64)


def held_out_dev(data: FullwayData, shots: int, seed: int, size: int = 1500) -> FullwayData:
    """For choosing settings without touching test: the same train split (the (seed, K) support is
    drawn from it as usual), scored on `size` other train sentences, never in that support
    (chosen by a generator seeded 12345). No out-of-scope splits."""
    support = draw_support(data.train.labels, shots, seed, data.ways)
    rest = np.setdiff1d(np.arange(len(data.train)), support)
    pick = np.random.default_rng(12345).choice(rest, min(size, len(rest)), replace=False)
    dev = TextCorpus([data.train.texts[i] for i in pick], data.train.labels[pick], data.train.class_names, "dev")
    return FullwayData(f"{data.name}-dev", data.train, dev)


def represent(texts: list[str], representation: str, encoder: str) -> torch.Tensor:
    """ "tokens": int64 (N, L) token ids padded with the encoder's pad id; "embedding": float32
    (N, D) frozen, normalised sentence embeddings (cached on disk)."""
    from .encoder import embed, tokenize

    if representation == "tokens":
        return torch.from_numpy(tokenize(texts, encoder))
    if representation == "embedding":
        return torch.from_numpy(embed(texts, encoder))
    raise FastAdaptError(f"representation {representation!r} is not one of 'tokens', 'embedding'")


def _pad_cat(parts: list[torch.Tensor], pad_id: int) -> torch.Tensor:
    """Token-id blocks of different widths side by side in one (sum N, max L) tensor."""
    if parts[0].dtype != torch.int64:
        return torch.cat(parts)
    width = max(p.shape[1] for p in parts)
    return torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1]), value=pad_id) for p in parts])


def choose_threshold(val_scores: np.ndarray, val_correct: np.ndarray, oos_scores: np.ndarray) -> float:
    """The rejection threshold t (reject when score < t) that maximises in-scope accuracy +
    out-of-scope recall on VALIDATION data: mean(correct & score >= t) + mean(oos_score < t).
    Candidates are the validation scores themselves and +inf; ties go to the lowest t.
    Arguments: scores (max softmax probability) and correctness of the in-scope validation
    sentences, scores of the out-of-scope validation sentences. O(n log n)."""
    val_scores, val_correct = np.asarray(val_scores, np.float64), np.asarray(val_correct, bool)
    oos_scores = np.asarray(oos_scores, np.float64)
    candidates = np.unique(np.concatenate([val_scores, oos_scores, [np.inf]]))
    order = np.argsort(val_scores)
    correct_sorted, scores_sorted = val_correct[order], val_scores[order]
    # accepted-and-correct with score >= t: total correct minus correct with score < t.
    correct_below = np.concatenate([[0], np.cumsum(correct_sorted)])[np.searchsorted(scores_sorted, candidates)]
    accuracy = (val_correct.sum() - correct_below) / max(len(val_scores), 1)
    recall = np.searchsorted(np.sort(oos_scores), candidates) / max(len(oos_scores), 1)
    return float(candidates[int(np.argmax(accuracy + recall))])


def oos_metrics(scores: torch.Tensor, labels: np.ndarray, threshold: float) -> tuple[float, float]:
    """(in-scope accuracy with rejection, ...) helper: returns (accuracy of in-scope rows where a
    rejected row is wrong, fraction rejected). scores: (N, ways) learner scores."""
    prob = torch.softmax(scores.double(), -1)
    top, pred = prob.max(-1)
    accepted = top.numpy() >= threshold
    correct = pred.numpy() == labels
    return float((correct & accepted).mean()), float((~accepted).mean())


def run_seed(
    learner, data: FullwayData, shots: int, seed: int, representation: str, encoder: str, label_names: int = 0
) -> dict:
    """One seed of the full-way protocol: adapt to the (seed, K) support set (with `label_names`
    copies of the intent names, see `support_set`) and score the test set (and, for CLINC150, the
    out-of-scope detection). Returns accuracies in [0, 1] and times."""
    from .encoder import pad_token_id

    texts, labels = support_set(data, shots, seed, label_names)
    support_x = represent(texts, representation, encoder)
    support_y = torch.from_numpy(labels)
    blocks = [data.test] + ([data.oos_test, data.val, data.oos_val] if data.val is not None else [])
    parts = [represent(b.texts, representation, encoder) for b in blocks]
    pad = pad_token_id(encoder) if representation == "tokens" else 0
    episode = Episode(support_x, support_y, _pad_cat(parts, pad), None, ways=data.ways, shots=shots)
    started = time.perf_counter()
    with torch.no_grad():
        scores = learner.predict(episode)
    seconds = time.perf_counter() - started
    bounds = np.cumsum([0] + [len(b) for b in blocks])
    test_scores = scores[: bounds[1]]
    out = {
        "seed": seed,
        "accuracy": float((test_scores.argmax(-1).numpy() == data.test.labels).mean()),
        "seconds": seconds,
        "load": os.getloadavg()[0],
    }
    out.update({f"{k}_seconds": v for k, v in getattr(learner, "timing", {}).items()})
    if data.val is not None:
        oos_test, val, oos_val = (scores[bounds[i] : bounds[i + 1]] for i in (1, 2, 3))
        val_prob, val_pred = torch.softmax(val.double(), -1).max(-1)
        threshold = choose_threshold(
            val_prob.numpy(),
            val_pred.numpy() == data.val.labels,
            torch.softmax(oos_val.double(), -1).max(-1).values.numpy(),
        )
        out["threshold"] = threshold
        out["inscope_accuracy_with_rejection"] = oos_metrics(test_scores, data.test.labels, threshold)[0]
        out["oos_recall"] = oos_metrics(oos_test, np.zeros(len(oos_test), np.int64) - 1, threshold)[1]
    return out


def summarise(runs: list[dict]) -> dict:
    """Mean and sample standard deviation (ddof=1) over seeds of every numeric per-seed field."""
    keys = [k for k in runs[0] if k != "seed" and isinstance(runs[0][k], (int, float))]
    out = {}
    for k in keys:
        values = np.array([r[k] for r in runs], np.float64)
        out[k] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0}
    return out
