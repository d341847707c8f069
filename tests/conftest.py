"""Shared fixtures: an isolated cache, a tiny fake Omniglot, and the real data when present."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]

#: The fake dataset: archive -> alphabet -> number of characters (20 drawings each).
FAKE_ALPHABETS = {"background": {"Alpha": 3, "Beta": 2}, "evaluation": {"Gamma": 2}}
FAKE_DRAWINGS = 20
#: Fake Lake runs: answers[i] = 0-based training class of test item i (bijections of 0..19).
FAKE_LAKE_ANSWERS = {"run01": [(7 * i + 3) % 20 for i in range(20)], "run02": [(3 * i + 11) % 20 for i in range(20)]}


def _png(rng: np.random.Generator) -> bytes:
    """A 105x105 mode "1" PNG like Omniglot's: white (1) paper with ~15% black (0) ink."""
    buffer = io.BytesIO()
    Image.fromarray(rng.random((105, 105)) > 0.15).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_zip(path: Path, members: dict[str, bytes], rng: np.random.Generator) -> None:
    """Members in shuffled order, so readers cannot rely on the archive's order."""
    with zipfile.ZipFile(path, "w") as archive:
        for name in rng.permutation(sorted(members)):
            archive.writestr(str(name), members[name])


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Point FASTADAPT_CACHE at a session temp dir: tests never touch the user's cache, and tests
    on real data share one cache, so the archives are decoded once per session."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FASTADAPT_CACHE", str(tmp_path_factory.mktemp("fastadapt-cache")))
        yield


@pytest.fixture(scope="session")
def omniglot_fixture_root(tmp_path_factory) -> Path:
    """A data root holding a tiny Omniglot in the official layout (see FAKE_ALPHABETS and
    FAKE_LAKE_ANSWERS): `omniglot/images_{background,evaluation}.zip` with
    `images_<archive>/<Alphabet>/characterNN/NNNN_DD.png` and `omniglot/all_runs.zip` with
    run01, run02 (test item i is a copy of its answer's training image)."""
    root = tmp_path_factory.mktemp("data")
    (root / "omniglot").mkdir()
    rng = np.random.default_rng(1234)
    number = 0
    for archive, alphabets in FAKE_ALPHABETS.items():
        members = {}
        for alphabet, n_characters in alphabets.items():
            for c in range(1, n_characters + 1):
                number += 1
                for d in range(1, FAKE_DRAWINGS + 1):
                    members[f"images_{archive}/{alphabet}/character{c:02d}/{number:04d}_{d:02d}.png"] = _png(rng)
        _write_zip(root / "omniglot" / f"images_{archive}.zip", members, rng)
    members = {}
    for run, answers in FAKE_LAKE_ANSWERS.items():
        classes = [_png(rng) for _ in range(20)]
        lines = []
        for i, answer in enumerate(answers):
            members[f"{run}/training/class{i + 1:02d}.png"] = classes[i]
            members[f"{run}/test/item{i + 1:02d}.png"] = classes[answer]
            lines.append(f"{run}/test/item{i + 1:02d}.png {run}/training/class{answer + 1:02d}.png")
        members[f"{run}/class_labels.txt"] = "\n".join(rng.permutation(lines)).encode() + b"\n"
    _write_zip(root / "omniglot" / "all_runs.zip", members, rng)
    return root


@pytest.fixture(scope="session")
def omniglot_fixture_facts() -> dict:
    """What `omniglot_fixture_root` contains, for tests to check loaders against."""
    return {"alphabets": FAKE_ALPHABETS, "drawings": FAKE_DRAWINGS, "lake_answers": FAKE_LAKE_ANSWERS}


@pytest.fixture(scope="session")
def real_data_root() -> Path:
    """The real data root ($FASTADAPT_DATA, else ../shared/data beside the checkout).

    Skips when it has no Omniglot, except under CI (CI set), where real-data tests must run.
    """
    root = Path(os.environ.get("FASTADAPT_DATA") or REPO_ROOT.parent / "shared" / "data")
    if not (root / "omniglot" / "images_background.zip").is_file():
        message = f"real Omniglot not found at {root}/omniglot/images_background.zip (set FASTADAPT_DATA)"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must run the real-data tests")
        pytest.skip(message)
    return root


@pytest.fixture
def float64():
    """Gradient checks in double precision; restored so other test modules are unaffected.
    Modules opt in with `pytestmark = pytest.mark.usefixtures("float64")`."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch) -> Path:
    """An empty disk cache and an empty in-process Omniglot memo, restored afterwards."""
    from fastadapt.data import omniglot

    cache = tmp_path / "cache"
    monkeypatch.setenv("FASTADAPT_CACHE", str(cache))
    omniglot._load_characters.cache_clear()
    yield cache
    omniglot._load_characters.cache_clear()
