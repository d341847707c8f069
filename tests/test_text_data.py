"""Text data: the embedding cache (a changed model file, changed texts or a corrupt cache file
recompute; an unchanged request is a cache hit), the shipped episodic intent splits (sizes,
disjointness, coverage of the real intents), the `textfile` loader's one-line errors naming file
and line, and its class splits. Uses the real bundled MiniLM encoder on a few sentences."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from fastadapt.config import config_from_dict
from fastadapt.data import build_suite
from fastadapt.data.safe_pickle import split_classes
from fastadapt.data.textfile import read_text_table
from fastadapt.errors import FastAdaptError
from fastadapt.text import encoder
from fastadapt.text.corpora import read_banking77, read_clinc150

SENTENCES = ["book a table for two tonight", "what is my account balance", "play some jazz"]
SIZES = {"banking77": (25, 25, 27), "clinc150": (50, 50, 50)}
TEXT_DATA = Path(os.environ.get("FASTADAPT_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


# ------------------------------------------------------------------------------ embedding cache


@pytest.fixture
def model_copy(tmp_path) -> Path:
    """The bundled MiniLM folder, small files copied and the 87 MB weights linked, so a test can
    change one of its files without touching the installed package."""
    source = Path(encoder.resolve_encoder(encoder.DEFAULT_ENCODER))
    target = tmp_path / "minilm"
    for path in source.rglob("*"):
        dest = target / path.relative_to(source)
        if path.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
        elif path.name == "model.safetensors":
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.symlink_to(path)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
    return target


def counting_encoder(monkeypatch, name: str) -> list[int]:
    """Wrap the (memoised) model's encode so the test sees how many texts were really encoded."""
    model = encoder.load_encoder(name)
    calls: list[int] = []
    real = model.encode

    def encode(texts, *args, **kwargs):
        calls.append(len(texts))
        return real(texts, *args, **kwargs)

    monkeypatch.setattr(model, "encode", encode)
    return calls


def test_cache_hit_then_model_file_change_recomputes(model_copy, tmp_path, monkeypatch):
    name, cache = str(model_copy), tmp_path / "cache"
    calls = counting_encoder(monkeypatch, name)
    first = encoder.embed(SENTENCES, name, cache_dir=cache)
    assert first.shape == (3, 384) and first.dtype == np.float32 and calls == [3]
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, rtol=1e-5)  # normalised
    again = encoder.embed(SENTENCES, name, cache_dir=cache)
    assert calls == [3] and np.array_equal(again, first)  # served from the cache file
    assert len(list(cache.glob("*.npy"))) == 1

    before = encoder.encoder_fingerprint(name)
    config = model_copy / "config_sentence_transformers.json"
    data = bytearray(config.read_bytes())
    data[data.index(b"}")] = ord(" ")  # one byte changed, same size
    config.write_bytes(bytes(data) + b"}")
    assert encoder.encoder_fingerprint(name) != before
    encoder.embed(SENTENCES, name, cache_dir=cache)
    assert calls == [3, 3] and len(list(cache.glob("*.npy"))) == 2  # recomputed under a new key

    vocab = model_copy / "vocab.txt"
    text = vocab.read_bytes()
    vocab.write_bytes(text[:-2] + bytes([text[-2] ^ 1]) + text[-1:])  # flip one bit of the last token
    assert encoder.encoder_fingerprint(name) != before
    encoder.embed(SENTENCES, name, cache_dir=cache)
    assert calls == [3, 3, 3]


def test_changed_texts_recompute_and_a_corrupt_cache_file_is_replaced(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    calls = counting_encoder(monkeypatch, encoder.DEFAULT_ENCODER)
    first = encoder.embed(SENTENCES, cache_dir=cache)
    encoder.embed(SENTENCES[:2] + ["play some blues"], cache_dir=cache)  # one sentence differs
    assert calls == [3, 3]
    files = sorted(cache.glob("*.npy"), key=lambda p: p.stat().st_mtime_ns)
    assert len(files) == 2
    files[0].write_bytes(b"\x93NUMPY garbage")  # truncated / overwritten
    repaired = encoder.embed(SENTENCES, cache_dir=cache)
    assert calls == [3, 3, 3]
    np.testing.assert_allclose(repaired, first, rtol=1e-5, atol=1e-6)
    assert np.array_equal(np.load(files[0], allow_pickle=False), repaired)  # the file was rewritten
    np.save(files[0], np.full((3, 384), np.nan, np.float32))  # well-formed but not finite: not trusted
    encoder.embed(SENTENCES, cache_dir=cache)
    assert calls == [3, 3, 3, 3]


# ------------------------------------------------------------------------------ shipped splits


@pytest.mark.parametrize("dataset", sorted(SIZES))
def test_shipped_class_splits_are_disjoint_with_the_published_sizes(dataset):
    seen = []
    for k in range(5):
        parts = {s: split_classes(dataset, f"{s}-{k}") for s in ("train", "val", "test")}
        assert tuple(len(parts[s]) for s in ("train", "val", "test")) == SIZES[dataset]
        sets = [set(parts[s]) for s in ("train", "val", "test")]
        assert all(len(s) == len(parts[n]) for s, n in zip(sets, ("train", "val", "test")))  # no duplicates
        assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
        seen.append(frozenset(sets[2]))
    assert len(set(seen)) == 5  # five different test splits


@pytest.mark.parametrize("dataset", sorted(SIZES))
def test_shipped_splits_cover_exactly_the_real_intents(dataset):
    if not (TEXT_DATA / "text" / dataset).is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{TEXT_DATA}/text/{dataset} missing; CI must check the splits against the data")
        pytest.skip(f"no {dataset} under {TEXT_DATA}/text")
    corpus = read_banking77(TEXT_DATA, "test") if dataset == "banking77" else read_clinc150(TEXT_DATA, "test")
    for k in range(5):
        union = {n for s in ("train", "val", "test") for n in split_classes(dataset, f"{s}-{k}")}
        assert union == set(corpus.class_names)


# ------------------------------------------------------------------------------ textfile loader


def suite(path: Path, shots: int = 1, queries: int = 2, **args):
    config = config_from_dict(
        {
            "data": {"dataset": "textfile", "val_split": None, "args": {"path": str(path), **args}},
            "train": {"episodes": {"ways": 2, "shots": shots, "queries": queries}},
            "eval": {"ways": 2, "shots": shots, "queries": queries},
            "model": {"backbone": "raw-input"},
        }
    )
    return build_suite(config)


def labelled_rows(n_classes: int = 5, per_class: int = 4) -> list[tuple[str, str]]:
    return [(f"sentence {j} about topic {c}", f"topic{c}") for c in range(n_classes) for j in range(per_class)]


def write_csv(path: Path, rows, header="text,label", sep=",") -> Path:
    path.write_text(header + "\n" + "".join(f'"{t}"{sep}{label}\n' for t, label in rows), encoding="utf-8")
    return path


def one_line_error(call) -> str:
    with pytest.raises(FastAdaptError) as error:
        call()
    message = str(error.value)
    assert len(message.splitlines()) == 1, message
    return message


def test_bad_utf8_names_file_line_and_byte(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"text,label\nfine,a\ncaf\xe9 latte,b\n")
    message = one_line_error(lambda: read_text_table(path))
    assert f"{path}:3:" in message and "0xe9" in message and "column 4" in message and "UTF-8" in message


def test_empty_text_missing_column_ragged_row_and_jsonl_errors(tmp_path):
    rows = labelled_rows()
    rows[5] = ("  ", rows[5][1])
    message = one_line_error(lambda: read_text_table(write_csv(tmp_path / "a.csv", rows)))
    assert f"{tmp_path / 'a.csv'}:7: empty text" in message  # header is line 1, row 5 is line 7
    path = write_csv(tmp_path / "b.csv", labelled_rows(), header="sentence,label")
    message = one_line_error(lambda: read_text_table(path))
    assert "no column 'text'" in message and "text_column" in message and str(path) in message
    path = tmp_path / "c.csv"
    path.write_text("text,label\nhello there,a\nan extra, field,b\n", encoding="utf-8")
    assert f"{path}:3: 3 fields but the header has 2" in one_line_error(lambda: read_text_table(path))
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "hi", "label": "a"}\n\n{"text": "yo"}\n', encoding="utf-8")
    assert f"{path}:3: no key 'label'" in one_line_error(lambda: read_text_table(path))
    path.write_text('{"text": "hi", "label": "a"}\n{"text": "yo", "label": \n', encoding="utf-8")
    assert f"{path}:2: not valid JSON" in one_line_error(lambda: read_text_table(path))


def test_tsv_jsonl_and_quoted_multiline_fields_read_alike(tmp_path):
    rows = [("a, with comma", "x"), ('say "hi"', "y"), ("two\nlines", "x")]
    csv_path = tmp_path / "r.csv"
    csv_path.write_text('text,label\n"a, with comma",x\n"say ""hi""",y\n"two\nlines",x\n', encoding="utf-8")
    tsv_path = tmp_path / "r.tsv"
    tsv_path.write_text('label\ttext\nx\ta, with comma\ny\tsay "hi"\nx\t"two\nlines"\n', encoding="utf-8")
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text("".join(json.dumps({"label": lab, "text": t}) + "\n" for t, lab in rows), encoding="utf-8")
    a, b = read_text_table(csv_path), read_text_table(tsv_path)
    assert a.texts == b.texts == [t for t, _ in rows] and a.labels == b.labels == ["x", "y", "x"]
    assert a.lines == [2, 3, 5]  # the line each row ends on
    assert read_text_table(jsonl).texts == a.texts and read_text_table(jsonl).lines == [1, 2, 3]
    semi = write_csv(tmp_path / "s.csv", rows[:2], header="text;label", sep=";")
    assert read_text_table(semi, delimiter=";").labels == ["x", "y"]
    lines = tmp_path / "q.txt"
    lines.write_text("first query\n\n  second query  \n", encoding="utf-8")
    table = read_text_table(lines, label_column=None)
    assert table.texts == ["first query", "second query"] and table.labels is None and table.lines == [1, 3]


def test_a_class_too_small_for_an_episode_names_its_first_line(tmp_path):
    rows = labelled_rows(per_class=4) + [("lonely sentence", "rare"), ("another rare one", "rare")]
    path = write_csv(tmp_path / "t.csv", rows)
    message = one_line_error(lambda: suite(path, shots=1, queries=2).split("all"))
    assert f"{path}:22: label 'rare'" in message and "has 2 examples" in message and "1 + 2" in message


def test_textfile_splits_by_lists_and_by_fractions(tmp_path):
    path = write_csv(tmp_path / "t.csv", labelled_rows(n_classes=10, per_class=3))
    s = suite(path, train_classes=["topic0", "topic1"], val_classes=["topic2"], test_classes=["topic3", "topic4"])
    assert s.texts("test").class_names == ["topic3", "topic4"]
    assert s.texts("train").texts[:3] == [f"sentence {j} about topic 0" for j in range(3)]
    message = one_line_error(lambda: suite(path, train_classes=["topic0", "nope"]).texts("train"))
    assert "data.args.train_classes: no label 'nope' in" in message
    message = one_line_error(lambda: suite(path, train_classes=["topic0", "topic1"]).texts("test"))
    assert "has no 'test' split: data.args lists labels for train only; add data.args.test_classes" in message
    ids = suite(path, split_fractions=[0.6, 0.2, 0.2], split_seed=3).class_split_ids(s.pool())
    assert [len(ids[k]) for k in ("train", "val", "test")] == [6, 2, 2]
    assert len(set(np.concatenate(list(ids.values())))) == 10  # disjoint and complete
    again = suite(path, split_fractions=[0.6, 0.2, 0.2], split_seed=3).class_split_ids(s.pool())
    assert all(np.array_equal(ids[k], again[k]) for k in ids)  # seeded
    missing = one_line_error(lambda: suite(tmp_path / "none.csv").texts("all"))
    assert "does not exist" in missing
    assert "data.args.path is required" in one_line_error(lambda: build_suite_without_path())


def build_suite_without_path():
    config = config_from_dict({"data": {"dataset": "textfile"}, "model": {"backbone": "raw-input"}})
    return build_suite(config).texts("all")


def test_text_items_are_embeddings_or_token_ids(tmp_path):
    path = write_csv(tmp_path / "t.csv", labelled_rows(n_classes=3, per_class=3))
    embedded = suite(path, split_fractions=[0.34, 0.33, 0.33]).split("all")
    assert embedded.modality == "vector" and embedded.items.shape == (9, 384)
    assert embedded.class_names == ["topic0", "topic1", "topic2"]
    tokens = suite(path, representation="tokens", max_length=6).split("all")
    pad = encoder.pad_token_id()
    assert tokens.modality == "tokens" and tokens.items.shape == (9, 6)  # truncated to max_length
    s = suite(path, representation="tokens")
    ids = s.items_from_texts(["hi", "a longer sentence than that"], item_shape=(12,))
    assert ids.shape == (2, 12) and (ids[0, 3:] == pad).all() and not (ids[1, :5] == pad).any()
    assert "sentence 1 is '  '" in one_line_error(lambda: s.items_from_texts(["ok", "  "]))
