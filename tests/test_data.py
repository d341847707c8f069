"""Data layer tests: checked against the file layout, the maths and known facts about Omniglot,
not against the code's own earlier output."""

from __future__ import annotations

import hashlib
import math
import shutil
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastadapt.data import (
    EpisodeSampler,
    FixedEpisodes,
    LabelledDataset,
    SinusoidTasks,
    download_file,
    lake_episode,
    load_lake_runs,
    load_omniglot_characters,
    omniglot,
    omniglot_pool,
    preprocess_image,
    score_lake,
)
from fastadapt.data import download as download_module
from fastadapt.errors import FastAdaptError


def _decode_file(archive: Path, member: str, size: int) -> np.ndarray:
    with zipfile.ZipFile(archive) as z, Image.open(z.open(member)) as img:
        return preprocess_image(img, size)


def coded_pool(n_classes: int = 10, per_class: int = 20) -> LabelledDataset:
    """A dataset whose 2x2 images spell out where they came from: pixel (0,0) = class, (0,1) = example."""
    images = torch.zeros(n_classes, per_class, 1, 2, 2, dtype=torch.uint8)
    images[:, :, 0, 0, 0] = torch.arange(n_classes)[:, None]
    images[:, :, 0, 0, 1] = torch.arange(per_class)
    return LabelledDataset.from_class_array(images, [f"c{i}" for i in range(n_classes)], "coded")


def grid(dataset: LabelledDataset) -> torch.Tensor:
    """Items of an equal-size dataset as (n_classes, per_class, ...)."""
    return dataset.items.view(dataset.num_classes, int(dataset.counts[0]), *dataset.item_shape)


def origins(x: torch.Tensor) -> list[tuple[int, int]]:
    """(class, example) of each image of a coded pool episode."""
    codes = (x[:, 0, 0, :2] * 255).round().long()
    return [tuple(pair) for pair in codes.tolist()]


# ----------------------------------------------------------------------------- preprocessing


def test_preprocess_resizes_to_uint8_with_ink_high():
    paper = np.ones((105, 105), bool)
    paper[30:75, 30:75] = False  # Omniglot ink is black (0) on white (1)
    out = preprocess_image(Image.fromarray(paper), 28)
    assert out.shape == (28, 28) and out.dtype == np.uint8
    assert out[14, 14] == 255 and out[0, 0] == 0 and out[27, 27] == 0


def test_preprocess_at_native_size_only_inverts():
    values = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    assert np.array_equal(preprocess_image(Image.fromarray(values), 28), 255 - values)


# ----------------------------------------------------------------------------- loading and caching


def test_characters_follow_the_archive_layout(omniglot_fixture_root, omniglot_fixture_facts, fresh_cache):
    chars = load_omniglot_characters(omniglot_fixture_root, size=20)
    alphabets = omniglot_fixture_facts["alphabets"]
    expected = [
        (archive, f"{alphabet}/character{c:02d}")
        for archive, by_alphabet in alphabets.items()
        for alphabet, n in sorted(by_alphabet.items())
        for c in range(1, n + 1)
    ]
    assert list(zip(chars.archive, chars.names)) == expected
    assert chars.images.shape == (len(expected), omniglot_fixture_facts["drawings"], 20, 20)
    assert chars.images.dtype == np.uint8
    # Drawings in file-name order: Beta/character02 is the 5th character overall, files 0005_DD.png.
    zip_path = omniglot_fixture_root / "omniglot" / "images_background.zip"
    drawings = [
        _decode_file(zip_path, f"images_background/Beta/character02/0005_{d:02d}.png", 20) for d in range(1, 21)
    ]
    assert np.array_equal(chars.images[chars.names.index("Beta/character02")], np.stack(drawings))


def test_extracted_folders_load_like_the_zips(omniglot_fixture_root, tmp_path, fresh_cache):
    for archive in ("images_background", "images_evaluation"):
        with zipfile.ZipFile(omniglot_fixture_root / "omniglot" / f"{archive}.zip") as z:
            z.extractall(tmp_path / "root" / "omniglot")
    from_folders = load_omniglot_characters(tmp_path / "root", size=14)
    from_zips = load_omniglot_characters(omniglot_fixture_root, size=14)
    assert from_folders.names == from_zips.names
    assert np.array_equal(from_folders.images, from_zips.images)


def test_cache_is_written_once_then_reused_without_decoding(omniglot_fixture_root, fresh_cache, monkeypatch):
    first = load_omniglot_characters(omniglot_fixture_root, size=16)
    cached = list((fresh_cache / "omniglot").iterdir())
    assert len(cached) == 1 and cached[0].suffix == ".npz"  # and no temp file left behind
    assert load_omniglot_characters(omniglot_fixture_root, size=16) is first  # in-process memo

    omniglot._load_characters.cache_clear()  # as a new process would

    def no_decoding(*args):
        raise AssertionError("decoded although the cache exists")

    monkeypatch.setattr(omniglot, "_decode_characters", no_decoding)
    second = load_omniglot_characters(omniglot_fixture_root, size=16)
    assert np.array_equal(second.images, first.images) and second.names == first.names
    assert second.archive == first.archive
    assert list((fresh_cache / "omniglot").iterdir()) == cached


def test_cache_key_changes_with_size_and_archive_bytes(omniglot_fixture_root, tmp_path, fresh_cache):
    load_omniglot_characters(omniglot_fixture_root, size=12)
    load_omniglot_characters(omniglot_fixture_root, size=13)
    assert len(list((fresh_cache / "omniglot").glob("*.npz"))) == 2
    copy = tmp_path / "copy"
    shutil.copytree(omniglot_fixture_root / "omniglot", copy / "omniglot")
    sources = {label: omniglot.locate(copy, stem) for label, stem in omniglot.ARCHIVES.items()}
    before = omniglot.cache_path(sources, 12)
    with zipfile.ZipFile(sources["evaluation"], "a") as z:
        z.writestr("images_evaluation/readme.txt", "changed")
    assert omniglot.cache_path(sources, 12) != before


def test_failed_cache_write_leaves_no_partial_file(omniglot_fixture_root, fresh_cache, monkeypatch):
    def disk_full(file, **arrays):
        file.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(omniglot.np, "savez", disk_full)
    with pytest.warns(UserWarning, match="could not write the Omniglot cache"):
        chars = load_omniglot_characters(omniglot_fixture_root, size=10)
    assert chars.images.shape[2:] == (10, 10)
    assert list((fresh_cache / "omniglot").iterdir()) == []


def test_missing_archive_error_names_file_places_and_fixes(tmp_path):
    with pytest.raises(FastAdaptError) as error:
        load_omniglot_characters(tmp_path)
    message = str(error.value)
    assert "\n" not in message and "images_background.zip" in message
    assert str(tmp_path / "omniglot" / "images_background.zip") in message
    assert str(tmp_path / "omniglot" / "images_background") + "/" in message
    assert "--data-root" in message and "FASTADAPT_DATA" in message and "download=True" in message


def test_download_flag_fetches_the_official_archives(omniglot_fixture_root, tmp_path, monkeypatch, fresh_cache):
    fetched = []

    def fake_download(url, dest, md5, min_bytes=0):
        fetched.append((url, dest, md5))
        shutil.copy(omniglot_fixture_root / "omniglot" / dest.name, dest)
        return dest

    monkeypatch.setattr(omniglot, "download_file", fake_download)
    (tmp_path / "omniglot").mkdir()
    load_omniglot_characters(tmp_path, size=8, download=True)
    base = "https://github.com/brendenlake/omniglot/raw/master/python/"
    assert fetched == [
        (
            base + "images_background.zip",
            tmp_path / "omniglot" / "images_background.zip",
            "68d2efa1b9178cc56df9314c21c6e718",
        ),
        (
            base + "images_evaluation.zip",
            tmp_path / "omniglot" / "images_evaluation.zip",
            "6b91aef0f799c5bb55b94e3f2daec811",
        ),
    ]


def test_corrupt_archive_is_a_clear_error(tmp_path):
    (tmp_path / "omniglot").mkdir()
    for stem in ("images_background", "images_evaluation"):
        (tmp_path / "omniglot" / f"{stem}.zip").write_bytes(b"<html>not a zip</html>")
    with pytest.raises(FastAdaptError, match="not a readable zip file"):
        load_omniglot_characters(tmp_path)


# ----------------------------------------------------------------------------- download_file


def test_download_file_verifies_md5(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(b"omniglot" * 1000)
    dest = tmp_path / "out" / "file.zip"
    download_file(source.as_uri(), dest, hashlib.md5(source.read_bytes()).hexdigest())
    assert dest.read_bytes() == source.read_bytes()

    bad = tmp_path / "out" / "bad.zip"
    with pytest.raises(FastAdaptError, match="corrupt") as error:
        download_file(source.as_uri(), bad, "0" * 32)
    assert str(bad) in str(error.value)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["file.zip"]  # nothing partial left


def test_download_file_network_error_says_where_to_put_the_file(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(download_module.urllib.request, "urlopen", offline)
    url, dest = "https://example.org/images_background.zip", tmp_path / "omniglot" / "images_background.zip"
    with pytest.raises(FastAdaptError) as error:
        download_file(url, dest, None)
    assert url in str(error.value) and str(dest) in str(error.value)
    assert not dest.exists() and list(dest.parent.iterdir()) == []


# ----------------------------------------------------------------------------- class pools


def test_unknown_split_lists_valid_ones(omniglot_fixture_root):
    with pytest.raises(
        FastAdaptError, match="unknown Omniglot split 'tran'.*train, val, test, trainval, background, evaluation"
    ):
        omniglot_pool("tran", omniglot_fixture_root)


def test_lake_split_pools_are_unrotated_archive_characters(omniglot_fixture_root, fresh_cache):
    chars = load_omniglot_characters(omniglot_fixture_root, size=12)
    pool = omniglot_pool("evaluation", omniglot_fixture_root, size=12)
    assert pool.name == "omniglot/evaluation" and pool.class_names == ["Gamma/character01", "Gamma/character02"]
    assert pool.items.dtype == torch.uint8 and tuple(grid(pool).shape) == (2, 20, 1, 12, 12)
    assert np.array_equal(grid(pool)[:, :, 0].numpy(), chars.images[-2:])
    assert omniglot_pool("background", omniglot_fixture_root, size=12).num_classes == 5


def test_vinyals_rotations_are_counter_clockwise_quarter_turns(
    omniglot_fixture_root, tmp_path, monkeypatch, fresh_cache
):
    classes = [f"Gamma/character02/rot{d:03d}" for d in (0, 90, 180, 270)] + ["Alpha/character01/rot090"]
    (tmp_path / "train.txt").write_text("\n".join(classes) + "\n")
    monkeypatch.setattr(omniglot, "SPLITS_DIR", tmp_path)
    pool = omniglot_pool("train", omniglot_fixture_root, size=28)
    assert pool.name == "omniglot/vinyals-train" and pool.class_names == classes
    upright = grid(pool)[0, :, 0].numpy()
    for k, degrees in enumerate((0, 90, 180, 270)):
        pil = [np.asarray(Image.fromarray(image).rotate(degrees)) for image in upright]  # PIL: counter-clockwise
        assert np.array_equal(grid(pool)[k, :, 0].numpy(), np.stack(pil))
    alpha = load_omniglot_characters(omniglot_fixture_root, size=28).images[0]
    assert np.array_equal(grid(pool)[4, :, 0].numpy(), np.rot90(alpha, 1, axes=(1, 2)))


def test_split_class_missing_from_archives_is_an_error(omniglot_fixture_root, tmp_path, monkeypatch, fresh_cache):
    (tmp_path / "val.txt").write_text("Alpha/character01/rot000\nKlingon/character07/rot180\n")
    monkeypatch.setattr(omniglot, "SPLITS_DIR", tmp_path)
    with pytest.raises(FastAdaptError, match="Klingon/character07/rot180"):
        omniglot_pool("val", omniglot_fixture_root, size=8)


# ----------------------------------------------------------------------------- episode sampling


def test_episodes_are_class_major_disjoint_and_correctly_labelled():
    sampler = EpisodeSampler(coded_pool(), ways=5, shots=3, queries=4, seed=7)
    for index in range(20):
        episode = sampler(index)
        assert episode.support_x.shape == (15, 1, 2, 2) and episode.query_x.shape == (20, 1, 2, 2)
        assert episode.support_x.dtype == torch.float32 and 0 <= episode.support_x.min() <= episode.support_x.max() <= 1
        assert episode.support_y.dtype == torch.long and episode.ways == 5 and episode.shots == 3
        assert episode.support_y.tolist() == [c for c in range(5) for _ in range(3)]
        assert episode.query_y.tolist() == [c for c in range(5) for _ in range(4)]
        support, query = origins(episode.support_x), origins(episode.query_x)
        classes = episode.info["classes"].tolist()
        assert len(set(classes)) == 5
        assert [classes[y] for y in episode.support_y.tolist()] == [c for c, _ in support]
        assert [classes[y] for y in episode.query_y.tolist()] == [c for c, _ in query]
        assert not set(support) & set(query) and len(set(support + query)) == 35


def test_episodes_are_a_pure_function_of_seed_and_index():
    pool = coded_pool(30)
    a, b = EpisodeSampler(pool, 5, 1, 5, seed=3), EpisodeSampler(pool, 5, 1, 5, seed=3)
    for index in (0, 1, 12345):
        assert torch.equal(b(index).support_x, a(index).support_x) and torch.equal(b(index).query_x, a(index).query_x)
    draws = {tuple(np.concatenate([c[:, None], e], 1).ravel()) for c, e in map(a.indices, range(50))}
    assert len(draws) == 50
    assert not np.array_equal(EpisodeSampler(pool, 5, 1, 5, seed=4).indices(0)[1], a.indices(0)[1])


def test_impossible_requests_name_the_numbers():
    pool = coded_pool(n_classes=10, per_class=20)
    with pytest.raises(FastAdaptError, match=r"11-way.*coded.*only 10 classes"):
        EpisodeSampler(pool, ways=11, shots=1, queries=1)
    with pytest.raises(FastAdaptError, match=r"5 \+ 16 = 21.*coded.*only 20"):
        EpisodeSampler(pool, ways=5, shots=5, queries=16)
    with pytest.raises(FastAdaptError, match=r"shots=0"):
        EpisodeSampler(pool, ways=5, shots=0, queries=1)


def test_fixed_episodes_are_reproducible_and_round_trip(tmp_path):
    pool = coded_pool(12)
    fixed = FixedEpisodes.generate(pool, ways=4, shots=2, queries=3, n_episodes=25, seed=11)
    again = FixedEpisodes.generate(pool, ways=4, shots=2, queries=3, n_episodes=25, seed=11)
    assert np.array_equal(fixed.classes, again.classes) and np.array_equal(fixed.examples, again.examples)
    assert fixed.classes.shape == (25, 4) and fixed.examples.shape == (25, 4, 5) and len(fixed) == 25
    assert fixed.pool_name == "coded" and (fixed.ways, fixed.shots, fixed.queries, fixed.seed) == (4, 2, 3, 11)

    path = tmp_path / "episodes.npz"
    fixed.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["episodes.npz"]
    loaded = FixedEpisodes.load(path, pool)
    assert (loaded.ways, loaded.shots, loaded.queries, loaded.seed) == (4, 2, 3, 11)
    for original, restored in zip(fixed, loaded, strict=True):
        assert origins(original.support_x) == origins(restored.support_x)
        assert origins(original.query_x) == origins(restored.query_x)
        assert torch.equal(original.query_y, restored.query_y)

    with pytest.raises(FastAdaptError, match="drawn from coded"):
        FixedEpisodes.load(path, coded_pool(13))


def uneven_pool(sizes=(3, 9, 4, 12, 5, 7)) -> LabelledDataset:
    """Classes of the given sizes, shuffled item order; item i's pixel (0,0) = class, (0,1) = i."""
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(len(sizes)), sizes))
    items = torch.zeros(len(labels), 1, 2, 2, dtype=torch.uint8)
    items[:, 0, 0, 0] = torch.from_numpy(labels)
    items[:, 0, 0, 1] = torch.arange(len(labels))
    return LabelledDataset(items, labels, [f"k{i}" for i in range(len(sizes))], "uneven")


def test_uneven_classes_draw_disjoint_support_and_query_of_the_right_class():
    pool = uneven_pool()
    sampler = EpisodeSampler(pool, ways=4, shots=2, queries=1, seed=5)
    seen_classes = set()
    for index in range(200):
        episode = sampler(index)
        classes = episode.info["classes"].tolist()
        support, query = origins(episode.support_x), origins(episode.query_x)
        assert [classes[y] for y in episode.support_y.tolist()] == [c for c, _ in support]
        assert [classes[y] for y in episode.query_y.tolist()] == [c for c, _ in query]
        items = [i for _, i in support + query]
        assert len(set(items)) == len(items) == 12  # no item twice, never both support and query
        seen_classes.update(classes)
    assert seen_classes == set(range(6))  # the 3-example class is drawn too (it has shots + queries)


def test_too_few_classes_for_the_ways_is_one_line_that_says_how_to_fix_it():
    with pytest.raises(FastAdaptError) as few:
        EpisodeSampler(uneven_pool(sizes=(3, 4)), ways=3, shots=1, queries=1, seed=0)
    assert "it has only 2 classes; lower ways to at most 2" in str(few.value)
    with pytest.raises(FastAdaptError) as one:
        EpisodeSampler(uneven_pool(sizes=(4,)), ways=2, shots=1, queries=1, seed=0)
    assert "it has only 1 class; give that split more classes" in str(one.value) and "\n" not in str(one.value)


def test_uneven_draw_equals_the_equal_size_draw_when_sizes_are_equal():
    """The per-class draw reads the same random stream as the (ways, size) draw, so Omniglot's
    episodes did not change when the sampler learned about uneven classes."""
    from fastadapt.data.sampler import draw

    for seed in range(20):
        counts = np.full(30, 20)
        a = draw(np.random.default_rng([seed, 1]), counts, 5, 6)
        rng = np.random.default_rng([seed, 1])
        classes = rng.choice(30, size=5, replace=False)
        examples = np.stack([np.argsort(rng.random(20))[:6] for _ in classes])
        assert np.array_equal(a[0], classes) and np.array_equal(a[1], examples)


def test_too_small_class_is_named_with_its_count():
    with pytest.raises(FastAdaptError, match=r"2 \+ 2 = 4 examples per class but class 'k0' of uneven has only 3; "):
        EpisodeSampler(uneven_pool(), ways=3, shots=2, queries=2)
    with pytest.raises(FastAdaptError, match=r"class 'k0' of uneven has only 3 \(3 classes have fewer\)"):
        FixedEpisodes.generate(uneven_pool(), ways=3, shots=3, queries=3, n_episodes=2)


def test_labelled_dataset_checks_its_labels():
    items = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
    with pytest.raises(FastAdaptError, match="labels must lie in 0..1"):
        LabelledDataset(items, np.array([0, 1, 2, 0]), ["a", "b"], "bad")
    with pytest.raises(FastAdaptError, match="class 'b' has no examples"):
        LabelledDataset(items, np.array([0, 0, 2, 0]), ["a", "b", "c"], "bad")
    with pytest.raises(FastAdaptError, match="must be uint8 images"):
        LabelledDataset(torch.zeros(4, 5, 2, 2), np.zeros(4, np.int64), ["a"], "bad")
    vectors = LabelledDataset(torch.randn(6, 8), np.array([0, 1, 0, 1, 2, 2]), ["a", "b", "c"], "emb")
    assert vectors.modality == "vector" and vectors.counts.tolist() == [2, 2, 2]
    episode = EpisodeSampler(vectors, ways=3, shots=1, queries=1).episode(0)
    assert episode.support_x.shape == (3, 8) and episode.support_x.dtype == torch.float32
    tokens = LabelledDataset(torch.arange(12).view(6, 2), np.array([0, 1, 0, 1, 2, 2]), ["a", "b", "c"], "tok")
    assert tokens.modality == "tokens"
    assert EpisodeSampler(tokens, ways=2, shots=1, queries=1).episode(3).query_x.dtype == torch.int64


# ----------------------------------------------------------------------------- sinusoid


def test_sinusoid_tasks_follow_the_formula_within_ranges():
    tasks = SinusoidTasks(shots=10, queries=7, seed=5)
    amplitudes, phases = [], []
    for index in range(200):
        task = tasks(index)
        assert task.support_x.shape == (10, 1) and task.query_x.shape == (7, 1) and task.ways is None
        assert task.support_x.dtype == torch.float32 and task.shots == 10
        a, p = task.info["amplitude"], task.info["phase"]
        for x, y in ((task.support_x, task.support_y), (task.query_x, task.query_y)):
            assert torch.allclose(y.double(), a * torch.sin(x.double() - p), atol=1e-6)
            assert -5 <= x.min() and x.max() <= 5
        amplitudes.append(a)
        phases.append(p)
    assert 0.1 <= min(amplitudes) and max(amplitudes) <= 5 and 0 <= min(phases) and max(phases) <= math.pi
    assert np.std(amplitudes) > 1 and np.std(phases) > 0.5  # actually spread over the ranges
    assert torch.equal(SinusoidTasks(10, 7, seed=5)(3).query_y, tasks(3).query_y)


# ----------------------------------------------------------------------------- Lake benchmark (fake)


def test_lake_runs_parse_answers(omniglot_fixture_root, omniglot_fixture_facts):
    runs = load_lake_runs(omniglot_fixture_root, size=16)
    assert [run.name for run in runs] == ["run01", "run02"]
    for run in runs:
        assert run.answers.tolist() == omniglot_fixture_facts["lake_answers"][run.name]
        assert run.support.shape == (20, 1, 16, 16) and run.query.shape == (20, 1, 16, 16)
        assert torch.equal(run.query, run.support[run.answers])  # each test item copies its class image
        episode = lake_episode(run)
        assert episode.support_y.tolist() == list(range(20)) and torch.equal(episode.query_y, run.answers)
        assert (episode.ways, episode.shots) == (20, 1)


def test_score_lake_matches_the_official_demo_arithmetic(omniglot_fixture_root):
    runs = load_lake_runs(omniglot_fixture_root, size=8)
    perfect = score_lake([run.answers for run in runs], runs)
    assert perfect["accuracy"] == 1.0 and perfect["error_per_run"] == [0.0, 0.0] and perfect["mean_error"] == 0.0
    wrong = runs[1].answers.clone()
    wrong[:5] = (wrong[:5] + 1) % 20
    logits = torch.nn.functional.one_hot(runs[0].answers, 20).float()
    known = score_lake([logits, wrong], runs)
    assert known["error_per_run"] == [0.0, 25.0] and known["mean_error"] == 12.5
    assert known["accuracy"] == 35 / 40


# ----------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def real_characters(real_data_root):
    return load_omniglot_characters(real_data_root, size=28)


def test_real_omniglot_counts(real_characters):
    assert real_characters.archive.count("background") == 964
    assert real_characters.archive.count("evaluation") == 659
    assert real_characters.images.shape == (1623, 20, 28, 28)
    assert real_characters.images.shape[0] * real_characters.images.shape[1] == 32460
    assert len(set(real_characters.names)) == 1623


def test_real_vinyals_splits(real_data_root, real_characters):
    pools = {split: omniglot_pool(split, real_data_root) for split in ("train", "val", "test", "trainval")}
    assert {s: p.num_classes for s, p in pools.items()} == {"train": 4112, "val": 688, "test": 1692, "trainval": 4800}
    assert pools["trainval"].class_names == pools["train"].class_names + pools["val"].class_names
    characters = {s: {n.rsplit("/", 1)[0] for n in p.class_names} for s, p in pools.items()}
    assert not characters["train"] & characters["val"] and not characters["trainval"] & characters["test"]
    archive_of = dict(zip(real_characters.names, real_characters.archive))
    assert {archive_of[c] for c in characters["train"]} == {"background", "evaluation"}  # the split mixes both

    pool = pools["train"]
    where = {name: i for i, name in enumerate(pool.class_names)}
    upright = [n for n in pool.class_names if n.endswith("rot000")]
    for k, degrees in enumerate(("rot000", "rot090", "rot180", "rot270")):
        turned = grid(pool)[[where[n[:-6] + degrees] for n in upright], :, 0].numpy()
        assert np.array_equal(turned, np.rot90(grid(pool)[[where[n] for n in upright], :, 0].numpy(), k, axes=(2, 3)))
    first = upright[0].rsplit("/", 1)[0]
    assert np.array_equal(
        grid(pool)[where[upright[0]], :, 0].numpy(), real_characters.images[real_characters.names.index(first)]
    )


def test_real_lake_benchmark(real_data_root, real_characters):
    runs = load_lake_runs(real_data_root)
    assert len(runs) == 20 and sum(len(run) for run in runs) == 400
    # Every benchmark image is a drawing of the evaluation set, and each test item shows the same
    # character as the training image its answer points to.
    character_of = {
        image.tobytes(): name
        for name, archive, images in zip(real_characters.names, real_characters.archive, real_characters.images)
        if archive == "evaluation"
        for image in images
    }
    for run in runs:
        assert sorted(run.answers.tolist()) == list(range(20))
        pixels = lambda x: [
            character_of[image.tobytes()]
            for image in (x[:, 0] * 255).round().to(torch.uint8).numpy()  # noqa: E731
        ]
        support, query = pixels(run.support), pixels(run.query)
        assert [support[a] for a in run.answers.tolist()] == query
        assert len({name.split("/")[0] for name in support}) == 1  # within one alphabet
    # Nearest neighbour in pixel space: far above the 5% chance rate, far below a real model.
    predictions = [torch.cdist(run.query.flatten(1), run.support.flatten(1)).argmin(1) for run in runs]
    scores = score_lake(predictions, runs)
    assert 0.12 < scores["accuracy"] < 0.5 and len(scores["error_per_run"]) == 20
    assert scores["mean_error"] == pytest.approx(100 * (1 - scores["accuracy"]))
