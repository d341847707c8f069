"""`imagefolder`: the user's own class folders, checked against generated fixtures whose content
is known (each class draws its own shape in its own colour), not against earlier output."""

from __future__ import annotations

import io
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from fastadapt.config import apply_overrides, config_from_dict
from fastadapt.data import decode_pool, imagefolder
from fastadapt.data.imagefolder import ImageFolderSuite, load_image_folder
from fastadapt.data.images import decode_image
from fastadapt.errors import FastAdaptError
from fastadapt.registry import DATASETS

SIZE = 16
#: class -> (shape, colour); 5 images each, formats cycled, image 0 grayscale.
CLASSES = {
    "circles": ("ellipse", (220, 30, 30)),
    "squares": ("rectangle", (30, 170, 40)),
    "stars": ("polygon", (40, 60, 220)),
    "zigzags": ("line", (200, 160, 20)),
}
FORMATS = ["png", "jpg", "bmp", "webp", "tif", "pgm", "jpeg"]
PER_CLASS = 5


def drawing(shape: str, colour, w: int, h: int) -> Image.Image:
    """`shape` filled with `colour` on white, covering the centre of a w x h image."""
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    box = (w * 0.15, h * 0.15, w * 0.85, h * 0.85)
    if shape == "polygon":
        draw.polygon([(w / 2, h * 0.1), (w * 0.9, h * 0.9), (w * 0.1, h * 0.9)], fill=colour)
        draw.rectangle((w * 0.35, h * 0.35, w * 0.65, h * 0.7), fill=colour)
    elif shape == "line":
        draw.rectangle((w * 0.25, h * 0.25, w * 0.75, h * 0.75), fill=colour)
        draw.line([(0, 0), (w / 2, h), (w, 0)], fill=colour, width=3)
    else:
        getattr(draw, shape)(box, fill=colour)
    return img


def make_folder(root: Path, per_class: int = PER_CLASS, classes=CLASSES) -> Path:
    """Class folders of drawings in mixed formats and sizes, plus files that must be ignored."""
    for c, (name, (shape, colour)) in enumerate(classes.items()):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            fmt = FORMATS[(c + i) % len(FORMATS)]
            img = drawing(shape, colour, 24 + 7 * i, 40 - 3 * i)
            if i == 0 or fmt == "pgm":
                img = img.convert("L")
            where = folder / "nested" if i == per_class - 1 else folder  # images in sub-folders count too
            where.mkdir(exist_ok=True)
            img.save(where / f"{i:02d}.{fmt}")
    first = root / next(iter(classes))
    (first / "notes.txt").write_text("not an image")
    (first / ".hidden.png").write_bytes(b"junk")
    (root / ".thumbnails").mkdir()
    drawing("ellipse", (0, 0, 0), 20, 20).save(root / ".thumbnails" / "x.png")
    (root / "__MACOSX").mkdir()
    (root / "README.md").write_text("hi")
    return root


def built(*args, **kwargs) -> ImageFolderSuite:
    """A suite that has loaded its training split (as training does, through `check`)."""
    suite = ImageFolderSuite(config(*args, **kwargs))
    suite.check()
    return suite


def config(root, *overrides: str, size: int = SIZE, ways: int = 2, shots: int = 1, queries: int = 1, **args):
    values = {
        "data": {"dataset": "imagefolder", "image_size": size, "args": {"root": str(root), **args}},
        "train": {"episodes": {"ways": ways, "shots": shots, "queries": queries}},
    }
    return config_from_dict(apply_overrides(values, list(overrides)))


@pytest.fixture
def folder(tmp_path) -> Path:
    return make_folder(tmp_path / "shapes")


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_registered_and_loads_every_class_with_its_labels(folder):
    assert DATASETS.get("imagefolder") is ImageFolderSuite
    data = ImageFolderSuite(config(folder, split_fractions=[0.5, 0.25, 0.25])).split("all")
    assert data.class_names == sorted(CLASSES)
    assert data.items.dtype == torch.uint8
    assert tuple(data.items.shape) == (len(CLASSES) * PER_CLASS, 3, SIZE, SIZE)
    assert data.counts.tolist() == [PER_CLASS] * len(CLASSES)  # hidden, non-image, loose files ignored
    for i, (label, source) in enumerate(zip(data.labels, data.sources)):
        name = data.class_names[label]
        assert Path(source).is_file() and Path(source).relative_to(folder).parts[0] == name
        centre = data.items[i, :, SIZE // 2, SIZE // 2].numpy().astype(int)
        colour = np.array(CLASSES[name][1])
        if Path(source).stem == "00" or source.endswith(".pgm"):  # saved grayscale (see make_folder)
            assert centre[0] == centre[1] == centre[2]  # grayscale stays gray in RGB
            colour = np.full(3, round(colour @ [0.299, 0.587, 0.114]))
        assert np.abs(centre - colour).max() <= 40, (source, centre, colour)


def test_channels_1_gives_grayscale_items(folder):
    suite = ImageFolderSuite(config(folder, "data.args.channels=1"))
    assert suite.input_shape == (1, SIZE, SIZE)
    assert tuple(suite.split("all").items.shape) == (len(CLASSES) * PER_CLASS, 1, SIZE, SIZE)
    assert tuple(suite.train_task(0).support_x.shape) == (2, 1, SIZE, SIZE)


def test_resize_modes_squash_whole_image_and_center_crop_keeps_the_centre(tmp_path):
    # 80 x 20: red | green (the centre 20 columns) | blue
    array = np.zeros((20, 80, 3), np.uint8)
    array[:, :30] = (255, 0, 0)
    array[:, 30:50] = (0, 255, 0)
    array[:, 50:] = (0, 0, 255)
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        Image.fromarray(array).save(tmp_path / c / "wide.png")
    squash = load_image_folder(tmp_path, SIZE, 3, "squash").items[0].numpy().astype(int)
    crop = load_image_folder(tmp_path, SIZE, 3, "center_crop").items[0].numpy().astype(int)
    assert squash.shape == crop.shape == (3, SIZE, SIZE)
    assert squash[0, :, 0].min() > 200 and squash[2, :, -1].min() > 200  # both ends survive squashing
    inner = crop[:, :, 2:-2]  # away from the bicubic bleed at the cut edges
    assert inner[1].min() > 200 and inner[0].max() < 40 and inner[2].max() < 40  # only the green centre


def test_cache_is_reused_and_invalidated_by_a_changed_or_added_file(folder, monkeypatch):
    first = load_image_folder(folder, SIZE)

    def must_not_decode(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(imagefolder, "decode_files", must_not_decode)
    again = load_image_folder(folder, SIZE)
    assert (again.items == first.items).all() and again.sources == first.sources
    target = folder / "squares" / "01.bmp"
    drawing("ellipse", (0, 0, 0), 30, 30).save(target)  # same name, new content
    with pytest.raises(AssertionError, match="decoded again"):
        load_image_folder(folder, SIZE)
    with pytest.raises(AssertionError, match="decoded again"):  # another size is another cache
        load_image_folder(folder, SIZE + 1)
    monkeypatch.undo()
    changed = load_image_folder(folder, SIZE)
    row = changed.sources.index(str(target))
    assert changed.items[row, :, SIZE // 2, SIZE // 2].max() < 40  # the new black disc
    drawing("ellipse", (9, 9, 9), 30, 30).save(folder / "squares" / "99.png")
    assert len(load_image_folder(folder, SIZE)) == len(first) + 1


def test_corrupt_file_is_one_error_naming_it_or_skipped_and_counted(folder):
    good = _encoded(drawing("polygon", (40, 60, 220), 40, 40), "JPEG")
    bad = folder / "stars" / "broken.jpg"
    bad.write_bytes(good[: len(good) // 2])  # truncated, as by an interrupted copy
    with pytest.raises(FastAdaptError) as excinfo:
        built(folder)
    assert str(bad) in one_line_error(excinfo) and "skip_bad" in str(excinfo.value)
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image"):
        data = ImageFolderSuite(config(folder, skip_bad=True)).split("all")
    assert len(data) == len(CLASSES) * PER_CLASS and str(bad) not in data.sources
    with pytest.raises(FastAdaptError, match="broken.jpg"):  # the cache written above still reports it
        load_image_folder(folder, SIZE)


def test_class_with_only_unreadable_images_is_an_error_even_with_skip_bad(tmp_path):
    make_folder(tmp_path, classes=dict(list(CLASSES.items())[:2]))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.png").write_bytes(b"not a png")
    with pytest.raises(FastAdaptError, match="empty has no readable image"):
        load_image_folder(tmp_path, SIZE, skip_bad=True)


def test_fractional_splits_are_disjoint_cover_the_classes_and_follow_the_seed(tmp_path):
    classes = {f"c{i:02d}": ("ellipse", (10 * i, 100, 50)) for i in range(10)}
    root = make_folder(tmp_path / "ten", per_class=2, classes=classes)
    suite = ImageFolderSuite(config(root, ways=2, shots=1, queries=1))
    names = {s: suite.split(s).class_names for s in ("train", "val", "test")}
    assert [len(v) for v in names.values()] == [6, 2, 2]  # the default [0.6, 0.2, 0.2]
    assert sorted(sum(names.values(), [])) == sorted(classes) == suite.split("all").class_names
    same = ImageFolderSuite(config(root, split_seed=0))
    reseeded = ImageFolderSuite(config(root, split_seed=1))
    shares = ImageFolderSuite(config(root, split_fractions=[0.5, 0.3, 0.2]))
    assert same.split("test").class_names == names["test"]
    assert reseeded.split("test").class_names != names["test"]
    assert [shares.split(s).num_classes for s in ("train", "val", "test")] == [5, 3, 2]


def test_explicit_class_lists_give_exactly_those_classes(folder):
    suite = ImageFolderSuite(
        config(folder, train_classes=["stars", "circles"], val_classes=["squares"], test_classes=["zigzags"])
    )
    assert suite.split("train").class_names == ["circles", "stars"]
    assert suite.split("val").class_names == ["squares"] and suite.split("test").class_names == ["zigzags"]
    train = suite.split("train")
    assert all(
        Path(s).relative_to(folder).parts[0] == train.class_names[y] for s, y in zip(train.sources, train.labels)
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.args.rot=x"], "unknown setting data.args.rot; valid keys here: channels, invert, resize, root"),
        (["data.args.channels=2"], "data.args.channels must be one of 1, 3; got 2"),
        (["data.args.resize=crop"], "data.args.resize must be one of 'squash', 'center_crop'"),
        (["data.args.skip_bad=maybe"], "data.args.skip_bad must be bool"),
        (["data.args.root=null"], "data.args.root is required"),
        (["data.args.split_fractions=[0.5,0.6,0.1]"], "split_fractions must be 3 non-negative shares"),
        (["data.args.split_fractions=[0.5,0.5]"], "split_fractions must be 3 non-negative shares"),
        (["data.args.split_seed=-1"], "split_seed must be a non-negative integer"),
        (
            ["data.args.train_classes=[circles,squares]", "data.args.val_classes=[squares]"],
            "class folder 'squares' is listed in data.args.train_classes and in data.args.val_classes",
        ),
        (["data.args.train_classes=[circles,triangles]"], "data.args.train_classes: no class folder 'triangles'"),
        (["data.args.train_classes=[circles,7]"], "data.args.train_classes[1] must be a class folder name"),
        (["data.args.train_classes=circles"], "data.args.train_classes must be a non-empty list"),
        (["data.args.train_classes=[circles,circles]"], "class folder 'circles' is listed twice in data.args.train_"),
        (["data.args.train_classes=[circles,squares]", "data.args.split_fractions=[0.5,0.5,0]"], "not both"),
        (
            ["data.args.train_classes=[circles,squares]", "data.args.test_classes=[stars]"],
            "imagefolder has no 'val' split: data.args lists classes for train, test only",
        ),
        (
            ["data.val_split=valid"],
            "data.val_split: imagefolder has no split 'valid'; valid splits: train, val, test, all",
        ),
    ],
)
def test_bad_data_args_are_one_line_errors(folder, overrides, message):
    with pytest.raises(FastAdaptError) as excinfo:
        ImageFolderSuite(config(folder, *overrides)).split("val")
    assert message in one_line_error(excinfo)


def test_bad_roots_and_empty_class_folders_are_one_line_errors_naming_the_folder(tmp_path):
    for root, message in [
        (tmp_path / "nope", "does not exist"),
        (tmp_path / "file.png", "is not a folder"),
        (tmp_path / "flat", "no class folders in"),
        (tmp_path / "hollow", "has no images"),
    ]:
        if root.name == "file.png":
            root.write_bytes(b"")
        elif root.name == "flat":
            root.mkdir()
            drawing("ellipse", (1, 2, 3), 20, 20).save(root / "a.png")
        elif root.name == "hollow":
            make_folder(root, per_class=2)
            (root / "nothing_here").mkdir()
            (root / "nothing_here" / "x.txt").write_text("")
        with pytest.raises(FastAdaptError) as excinfo:
            built(root)
        assert message in one_line_error(excinfo) and root.name in str(excinfo.value)


def test_too_small_class_is_named_with_its_count_by_the_sampler(folder):
    (folder / "tiny").mkdir()
    for i in range(3):
        drawing("ellipse", (0, 0, 0), 20, 20).save(folder / "tiny" / f"{i}.png")
    with pytest.raises(FastAdaptError) as excinfo:
        built(
            folder,
            ways=2,
            shots=1,
            queries=3,
            train_classes=["tiny", "stars"],
            val_classes=["circles"],
            test_classes=["squares"],
        )
    assert "class 'tiny' of imagefolder/shapes/train has only 3" in one_line_error(excinfo)


def test_parallel_decoding_matches_one_process(folder, monkeypatch):
    paths = sorted(
        str(p)
        for p in folder.rglob("*")
        if p.suffix in (".png", ".jpg", ".bmp", ".webp") and "." not in p.parent.name + p.stem
    )
    paths.insert(3, str(folder / "README.md"))  # unreadable as an image
    serial_items, serial_bad = decode_pool._decode_chunk(paths, SIZE, 3, "squash")
    monkeypatch.setattr(decode_pool, "_PARALLEL_MIN_IMAGES", 1)
    monkeypatch.setattr(decode_pool, "_CHUNK", (2, 2))
    items, bad = decode_pool.decode_files(paths, SIZE, 3, "squash", workers=2)
    assert (items == serial_items).all() and bad == serial_bad and list(bad) == [3]


# ----------------------------------------------------------------------------- worker lifetime


def _slow_decode(marks: str, *args, **kwargs):
    Path(marks, str(os.getpid())).touch()
    time.sleep(30)


def _decode_in_child(marks: str, paths: list[str]) -> None:
    """Runs in a forked child: parallel decoding whose workers hang (so only killing ends them)."""
    decode_pool._PARALLEL_MIN_IMAGES = 1
    decode_pool._CHUNK = (1, 1)
    decode_pool.decode_image = lambda *a, **k: _slow_decode(marks)
    try:
        decode_pool.decode_files(paths, SIZE, 3, "squash", workers=2)
    except KeyboardInterrupt:
        Path(marks, "interrupted").touch()


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; forks")
@pytest.mark.parametrize("how", ["sigkill", "ctrl-c"])
def test_decode_workers_cannot_outlive_the_parent(tmp_path, how):
    marks = tmp_path / "marks"
    marks.mkdir()
    child = multiprocessing.get_context("fork").Process(target=_decode_in_child, args=(str(marks), ["a"] * 8))
    child.start()
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 10
        while len(workers) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
            workers = [int(p.name) for p in marks.iterdir() if p.name.isdigit()]
        assert len(workers) == 2, "the decode workers did not start"
        os.kill(child.pid, signal.SIGKILL if how == "sigkill" else signal.SIGINT)
        child.join(10)
        assert child.exitcode is not None, "the parent hung waiting for its workers"
        if how == "ctrl-c":
            assert (marks / "interrupted").exists()
        deadline = time.monotonic() + 5
        while any(map(_running, workers)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(map(_running, workers)), "a decode worker outlived its parent"
    finally:
        for pid in [child.pid, *workers]:
            if pid and _running(pid):
                os.kill(pid, signal.SIGKILL)


# ----------------------------------------------------------------------------- decode_image details


def _encoded(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def test_decode_applies_exif_orientation():
    img = Image.new("RGB", (40, 20), "white")
    img.paste((255, 0, 0), (0, 0, 20, 20))  # red on the left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": red ends up on top
    out = decode_image(_encoded(img, "JPEG", exif=exif), 8, 3).astype(int)
    assert out[0, 0].min() > 200 and out[1, 0].max() < 60 and out[1, -1].min() > 200


def test_decode_scales_16_bit_and_puts_transparency_on_white():
    ramp = np.tile(np.linspace(0, 65535, 32).astype(np.uint16), (32, 1))
    gray = decode_image(_encoded(Image.fromarray(ramp), "PNG"), 32, 1)[0].astype(int)
    assert gray[:, 0].max() <= 1 and gray[:, -1].min() >= 254 and 100 < gray[:, 16].mean() < 155
    rgba = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (4, 4, 12, 12))
    out = decode_image(_encoded(rgba, "PNG"), 16, 3)
    assert out[:, 0, 0].tolist() == [255, 255, 255] and out[:, 8, 8].tolist() == [0, 0, 255]
