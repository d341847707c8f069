"""The full-way K-shot protocol (fastadapt/text/fullway.py): the K-shot draw, the out-of-scope
threshold chosen on validation data only, one seed of the protocol end to end with a learner whose
scores are known, and the results table generated from result files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fastadapt.errors import FastAdaptError
from fastadapt.text import fullway
from fastadapt.text.corpora import TextCorpus
from fastadapt.text.fullway import FullwayData, choose_threshold, draw_support, run_seed, summarise


def labels_of(counts):
    return np.random.default_rng(0).permutation(np.repeat(np.arange(len(counts)), counts))


@pytest.mark.parametrize("shots", [1, 2, 5, 10, 20])
def test_draw_is_exactly_k_per_intent_and_a_pure_function_of_seed_and_k(shots):
    labels = labels_of([25, 30, 21, 40])
    index = draw_support(labels, shots, seed=3)
    assert np.array_equal(np.bincount(labels[index], minlength=4), np.full(4, shots))
    assert len(set(index.tolist())) == len(index)  # without replacement
    assert np.array_equal(labels[index], np.repeat(np.arange(4), shots))  # class-major
    draw_support(labels, shots + 1, seed=3)  # other draws in between change nothing
    assert np.array_equal(draw_support(labels, shots, seed=3), index)
    assert not np.array_equal(draw_support(labels, shots, seed=4), index)


def test_draw_comes_from_the_train_split_only_and_needs_enough_sentences():
    train = TextCorpus([f"train {i}" for i in range(12)], np.repeat(np.arange(3), 4), ["a", "b", "c"], "t/train")
    test = TextCorpus([f"test {i}" for i in range(6)], np.repeat(np.arange(3), 2), ["a", "b", "c"], "t/test")
    index = draw_support(train.labels, 4, seed=0)
    assert sorted(index.tolist()) == list(range(12))  # every train sentence, nothing else
    assert not {train.texts[i] for i in index} & set(test.texts)
    with pytest.raises(FastAdaptError, match="class 0 has 4 training sentences; 5-shot needs 5"):
        draw_support(train.labels, 5, seed=0)


def brute_force_threshold(scores, correct, oos):
    candidates = np.unique(np.concatenate([scores, oos, [np.inf]]))
    objective = [np.mean(correct & (scores >= t)) + np.mean(oos < t) for t in candidates]
    return candidates[int(np.argmax(objective))]


@pytest.mark.parametrize("seed", range(5))
def test_threshold_maximises_inscope_accuracy_plus_oos_recall(seed):
    rng = np.random.default_rng(seed)
    scores = rng.random(200).round(2)  # ties included
    correct = rng.random(200) < 0.8
    oos = (rng.random(30) * 0.7).round(2)
    assert choose_threshold(scores, correct, oos) == brute_force_threshold(scores, correct, oos)


class KnownScores(torch.nn.Module):
    """A learner whose (query, ways) scores are fixed per sentence id (the query's only feature)."""

    def __init__(self, table: dict[int, np.ndarray]):
        super().__init__()
        self.table = table

    def predict(self, episode):
        assert episode.query_y is None
        return torch.tensor(np.stack([self.table[int(i)] for i in episode.query_x[:, 0]]))


def toy_clinc(val_top, test_top):
    """3 intents; sentence i's score row puts max-probability mass on its own intent, set by `*_top`."""
    table, corpora, next_id = {}, {}, [0]

    def corpus(name, tops, intent_of):
        texts, labels = [], []
        for k, top in enumerate(tops):
            i = next_id[0]
            next_id[0] += 1
            intent = intent_of(k)
            row = np.full(3, np.log((1 - top) / 2))
            row[intent] = np.log(top)
            table[i] = row
            texts.append(str(i))
            labels.append(intent)
        corpora[name] = TextCorpus(texts, np.array(labels, np.int64), ["a", "b", "c"], name)

    corpus("train", [0.9] * 6, lambda k: k % 3)
    corpus("val", val_top[0], lambda k: k % 3)
    corpus("oos_val", val_top[1], lambda k: 0)
    corpus("test", test_top[0], lambda k: k % 3)
    corpus("oos_test", test_top[1], lambda k: 0)
    data = FullwayData(
        "toy", corpora["train"], corpora["test"], corpora["val"], corpora["oos_val"], corpora["oos_test"]
    )
    return data, KnownScores(table)


@pytest.fixture
def ids_as_features(monkeypatch):
    monkeypatch.setattr(
        fullway, "represent", lambda texts, representation, encoder: torch.tensor([[int(t)] for t in texts]).double()
    )


def test_threshold_comes_from_validation_only_a_test_leak_would_change_it(ids_as_features):
    # Validation: in-scope confidences >= 0.6, out-of-scope <= 0.5 -> the val optimum is 0.6.
    val = ([0.6, 0.7, 0.8, 0.9, 0.95, 0.99], [0.4, 0.45, 0.5])
    # Test: in-scope as low as 0.55, out-of-scope up to 0.65 -> on test the best cut would be elsewhere.
    test = ([0.55, 0.58, 0.9, 0.95, 0.97, 0.99], [0.5, 0.62, 0.65])
    data, learner = toy_clinc(val, test)
    out = run_seed(learner, data, shots=2, seed=0, representation="embedding", encoder="none")
    assert out["threshold"] == pytest.approx(0.6)
    test_best = brute_force_threshold(np.array(test[0]), np.ones(6, bool), np.array(test[1]))
    assert test_best != pytest.approx(0.6)  # a leak of the test scores would have moved the threshold
    # Changing only the test scores leaves the threshold where validation put it.
    data2, learner2 = toy_clinc(val, ([0.3] * 6, [0.99, 0.98, 0.97]))
    assert run_seed(learner2, data2, 2, 0, "embedding", "none")["threshold"] == pytest.approx(0.6)
    # With 0.6: test in-scope 4/6 accepted and correct; out-of-scope 1/3 rejected (0.5 < 0.6).
    assert out["inscope_accuracy_with_rejection"] == pytest.approx(4 / 6)
    assert out["oos_recall"] == pytest.approx(1 / 3)
    assert out["accuracy"] == 1.0  # the plain 3-way accuracy has no rejection


def test_summarise_is_mean_and_sample_std():
    runs = [{"seed": 0, "accuracy": 0.8, "seconds": 1.0}, {"seed": 1, "accuracy": 0.9, "seconds": 3.0}]
    s = summarise(runs)
    assert s["accuracy"]["mean"] == pytest.approx(0.85)
    assert s["accuracy"]["std"] == pytest.approx(np.std([0.8, 0.9], ddof=1))
    assert "seed" not in s


def test_results_table_marks_shortened_cells(tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "text_table", Path(__file__).parent.parent / "benchmarks" / "text_table.py"
    )
    text_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(text_table)
    for method, seeds in (("encoder-finetune", 5), ("setfit", 1)):
        runs = [{"seed": s, "accuracy": 0.8 + 0.01 * s, "adapt_seconds": 10.0, "load": 1.0} for s in range(seeds)]
        cell = {
            "dataset": "banking77",
            "method": method,
            "shots": 10,
            "note": "",
            "runs": runs,
            "summary": summarise(runs),
        }
        (tmp_path / f"banking77_{method}_10shot.json").write_text(json.dumps(cell))
    text = text_table.table(text_table.read_cells(tmp_path))
    assert (
        f"| encoder-finetune | — | — | — | {100 * 0.82:.2f} ± {100 * np.std([0.8, 0.81, 0.82, 0.83, 0.84], ddof=1):.2f} |"
        in text
    )
    assert "| setfit | — | — | — | 80.00 (1 seed†) |" in text
    text_table.plot(text_table.read_cells(tmp_path), tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"


def test_held_out_dev_never_contains_the_support_and_leaves_test_alone():
    labels = np.repeat(np.arange(3), 40)
    train = TextCorpus([f"s{i}" for i in range(120)], labels, ["a", "b", "c"], "t/train")
    test = TextCorpus(["q"], np.zeros(1, np.int64), ["a", "b", "c"], "t/test")
    data = FullwayData("t", train, test)
    dev = fullway.held_out_dev(data, shots=5, seed=2, size=50)
    support = {train.texts[i] for i in draw_support(labels, 5, 2)}
    assert len(dev.test) == 50 and not support & set(dev.test.texts)
    assert dev.train is train and "q" not in dev.test.texts


def test_label_names_add_copies_of_each_intent_name_after_the_unchanged_draw():
    labels = np.repeat(np.arange(3), 6)
    train = TextCorpus([f"s{i}" for i in range(18)], labels, ["card_arrival", "top_up", "pin"], "t/train")
    data = FullwayData("t", train, TextCorpus(["q"], np.zeros(1, np.int64), train.class_names, "t/test"))
    plain_texts, plain_labels = fullway.support_set(data, 2, seed=1)
    index = draw_support(labels, 2, 1)
    assert plain_texts == [train.texts[i] for i in index] and np.array_equal(plain_labels, labels[index])
    texts, with_names = fullway.support_set(data, 2, seed=1, label_names=2)
    assert texts[:6] == plain_texts and np.array_equal(with_names[:6], plain_labels)
    assert texts[6:] == ["card arrival", "top up", "pin"] * 2 and with_names[6:].tolist() == [0, 1, 2, 0, 1, 2]
    assert with_names.dtype == np.int64
