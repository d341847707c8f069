"""mini-ImageNet, CIFAR-FS and CUB from tiny fixtures in each official layout; the shipped class
splits; the restricted unpickler (a malicious pickle is refused and runs nothing); corrupt,
incomplete and missing files are one-line errors naming them; decoding happens once (cache).

Fixture images are flat colours coding (class, image): red = 4 * class index in the split's
list, green = 40 * image number, so a loaded item tells where it came from."""

from __future__ import annotations

import io
import pickle
import struct
import tarfile

import numpy as np
import pytest
from PIL import Image

from fastadapt.config import config_from_dict
from fastadapt.data import build_suite, cifarfs, cub, miniimagenet
from fastadapt.data.safe_pickle import safe_load, split_classes
from fastadapt.errors import FastAdaptError

SPLITS = ("train", "val", "test")


def suite(dataset, root, size=16, download=False, **args):
    config = config_from_dict({"data": {"dataset": dataset, "image_size": size, "args": {"root": str(root), **args}}})
    return build_suite(config, None, download)


def jpeg(red, green, size=(10, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (red, green, 100)).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def codes(data):
    """(red, green) code of every item: mean colour, rounded to the coding steps."""
    means = data.items.float().mean(dim=(2, 3)).numpy()
    return np.rint(means[:, 0] / 4).astype(int), np.rint(means[:, 1] / 40).astype(int)


def one_line_error(excinfo, *parts):
    message = str(excinfo.value)
    assert "\n" not in message, message
    for part in parts:
        assert str(part) in message, message
    return message


class Evil:
    """Unpickling this with pickle.load creates `path`."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def py2_pickle(obj) -> bytes:
    """`obj` as Python 2's cPickle protocol 2 wrote it (CIFAR-100's and MetaOptNet's files): str as
    byte strings, numpy uint8 arrays through numpy.core.multiarray._reconstruct."""
    out = [b"\x80\x02"]

    def emit(o):
        if isinstance(o, dict):
            out.append(b"}(")
            for k, v in o.items():
                emit(k)
                emit(v)
            out.append(b"u")
        elif isinstance(o, (list, tuple)):
            out.append(b"](" if isinstance(o, list) else b"(")
            for v in o:
                emit(v)
            out.append(b"e" if isinstance(o, list) else b"t")
        elif isinstance(o, str):
            out.append(b"T" + struct.pack("<i", len(o.encode("latin1"))) + o.encode("latin1"))
        elif isinstance(o, int):
            out.append(b"J" + struct.pack("<i", o))
        else:
            assert isinstance(o, np.ndarray) and o.dtype == np.uint8
            out.append(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R(K\x01")
            emit(tuple(int(s) for s in o.shape))
            out.append(
                b"cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89"
            )
            data = np.ascontiguousarray(o).tobytes()
            out.append(b"T" + struct.pack("<i", len(data)) + data + b"tb")

    emit(obj)
    return b"".join(out) + b"."


# ----------------------------------------------------------------------------- shipped splits


@pytest.mark.parametrize(
    "dataset, counts", [("miniimagenet", (64, 16, 20)), ("cifarfs", (64, 16, 20)), ("cub", (100, 50, 50))]
)
def test_shipped_splits_have_the_papers_counts_and_no_overlap(dataset, counts):
    lists = {s: split_classes(dataset, s) for s in SPLITS}
    assert tuple(len(lists[s]) for s in SPLITS) == counts
    union = set().union(*lists.values())
    assert len(union) == sum(counts)  # no class twice, within or across splits
    if dataset == "miniimagenet":
        assert all(len(c) == 9 and c[0] == "n" and c[1:].isdigit() for c in union)
    if dataset == "cub":  # Chen et al.'s rule over the 200 sorted folders
        ordered = sorted(union)
        assert [int(c[:3]) for c in ordered] == list(range(1, 201))
        assert lists["train"] == [c for i, c in enumerate(ordered) if i % 2 == 0]
        assert lists["val"] == [c for i, c in enumerate(ordered) if i % 4 == 1]
        assert lists["test"] == [c for i, c in enumerate(ordered) if i % 4 == 3]


# ----------------------------------------------------------------------------- restricted unpickler


def test_safe_load_reads_arrays_and_plain_values_in_every_protocol():
    value = {
        "image_data": np.arange(24, dtype=np.uint8).reshape(2, 2, 2, 3),
        "class_dict": {"n1": [0], "n2": [1]},
        "scalar": np.int64(3),
        "bytes": b"\xff\x00",
        "strided": np.ones((3, 4), ">f8")[:, ::2],
    }
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        loaded = safe_load(pickle.dumps(value, protocol=protocol))
        assert (loaded["image_data"] == value["image_data"]).all() and loaded["class_dict"] == value["class_dict"]
        assert loaded["scalar"] == 3 and loaded["bytes"] == b"\xff\x00" and loaded["strided"].shape == (3, 2)
    rng = np.random.default_rng(0)
    py2 = {"data": rng.integers(0, 256, (3, 7), dtype=np.uint8), "fine_labels": [1, 2, 3], "name": "caf\xe9"}
    loaded = safe_load(py2_pickle(py2))
    assert (loaded["data"] == py2["data"]).all() and loaded["fine_labels"] == [1, 2, 3] and loaded["name"] == "caf\xe9"


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(Evil(proof)))  # the payload is real: plain pickle runs it
    assert proof.exists()
    marker = tmp_path / "pwned"
    with pytest.raises(FastAdaptError) as excinfo:
        safe_load(pickle.dumps({"image_data": np.zeros(2, np.uint8), "x": [Evil(marker)]}), "evil.pkl")
    one_line_error(excinfo, "evil.pkl", "refusing")
    assert not marker.exists()
    with pytest.raises(FastAdaptError) as excinfo:
        safe_load(pickle.dumps(np.zeros(3))[:20], "cut.pkl")
    one_line_error(excinfo, "cut.pkl")


# ----------------------------------------------------------------------------- mini-ImageNet


def ravi_files(base, per_class=3):
    """Ravi's pre-resized layout: images/<wnid><id:08d>.jpg for every class, csv files listing ids 1 and 3."""
    (base / "images").mkdir(parents=True)
    for split in SPLITS:
        rows = ["filename,label"]
        for k, wnid in enumerate(split_classes("miniimagenet", split)):
            for j in range(1, per_class + 1):
                (base / "images" / f"{wnid}{j:08d}.jpg").write_bytes(jpeg(4 * k, 40 * j))
                if j != 2:
                    rows.append(f"{wnid}{j:08d}.jpg,{wnid}")
        (base / f"{split}.csv").write_text("\n".join(rows) + "\n")


def test_miniimagenet_ravi_images_and_csv(tmp_path):
    ravi_files(tmp_path / "mini")
    s = suite("miniimagenet", tmp_path / "mini")
    for split, n in zip(SPLITS, (64, 16, 20)):
        data = s.split(split)
        assert data.class_names == split_classes("miniimagenet", split) and data.name == f"miniimagenet/ravi-{split}"
        assert data.item_shape == (3, 16, 16) and len(data) == 2 * n and (data.counts == 2).all()
        red, green = codes(data)
        assert (red == data.labels).all() and set(green) == {1, 3}  # the csv's images only
        assert data.sources[0].endswith(f"{data.class_names[0]}00000001.jpg")


def test_miniimagenet_imagenet_folders_with_and_without_csv(tmp_path, monkeypatch):
    base = tmp_path / "mini"
    wnids = split_classes("miniimagenet", "test")
    for k, wnid in enumerate(wnids):
        (base / "train" / wnid).mkdir(parents=True)
        for number in (10, 2, 33):  # ImageNet order by number: 2, 10, 33
            (base / "train" / wnid / f"{wnid}_{number}.JPEG").write_bytes(jpeg(4 * k, 40 * (number % 6)))
    data = suite("miniimagenet", base).split("test")  # no csv: every image, in file-name order
    assert len(data) == 60 and (codes(data)[0] == data.labels).all()
    monkeypatch.setattr(miniimagenet, "PER_CLASS", 2)
    with pytest.raises(FastAdaptError) as excinfo:
        suite("miniimagenet", base).split("test")
    one_line_error(excinfo, "test.csv", "full ImageNet")
    rows = ["filename,label"] + [f"{w}{i:08d}.jpg,{w}" for w in wnids for i in (1, 3)]
    (base / "test.csv").write_text("\n".join(rows))
    data = suite("miniimagenet", base).split("test")  # csv ids 1 and 3: ImageNet images 2 and 33
    assert len(data) == 40 and list(codes(data)[1][:2]) == [2, 3]
    assert data.sources[1].endswith(f"{wnids[0]}_33.JPEG")
    (base / "test.csv").write_text(
        "filename,label\n" + "\n".join(rows[1:-1] + [f"{wnids[-1]}00000009.jpg,{wnids[-1]}"])
    )
    with pytest.raises(FastAdaptError) as excinfo:
        suite("miniimagenet", base).split("test")
    one_line_error(excinfo, "test.csv", f"{wnids[-1]}00000009.jpg")


def test_miniimagenet_pickles_and_npz(tmp_path):
    rng = np.random.default_rng(0)
    base = tmp_path / "mini"
    base.mkdir()
    val = split_classes("miniimagenet", "val")
    images = rng.integers(0, 256, (2 * len(val), 84, 84, 3), dtype=np.uint8)
    order = rng.permutation(len(images))
    class_dict = {w: [int(i) for i in order[2 * k : 2 * k + 2]] for k, w in enumerate(val)}
    (base / "mini-imagenet-cache-val.pkl").write_bytes(pickle.dumps({"image_data": images, "class_dict": class_dict}))
    data = suite("miniimagenet", base, size=84).split("val")
    assert data.class_names == val and data.item_shape == (3, 84, 84)
    expect = images[order].transpose(0, 3, 1, 2)
    assert np.array_equal(data.items.numpy(), expect) and list(data.labels[:4]) == [0, 0, 1, 1]
    assert suite("miniimagenet", base, size=16).split("val").item_shape == (3, 16, 16)
    test = split_classes("miniimagenet", "test")  # MetaOptNet's Python 2 pickle: data, labels, catname2label
    timages = rng.integers(0, 256, (len(test), 84, 84, 3), dtype=np.uint8)
    labels = [int(x) for x in rng.permutation(len(test)) + 80]
    meta = {"data": timages, "labels": labels, "catname2label": {w: 80 + k for k, w in enumerate(test)}}
    (base / "miniImageNet_category_split_test.pickle").write_bytes(py2_pickle(meta))
    data = suite("miniimagenet", base, size=84).split("test")
    assert np.array_equal(data.items.numpy()[0], timages[labels.index(80)].transpose(2, 0, 1))
    train = split_classes("miniimagenet", "train")
    np.savez(base / "mini-imagenet-train.npz", image_data=np.zeros((64, 84, 84, 3), np.uint8), labels=np.array(train))
    data = suite("miniimagenet", base, size=84, layout="npz").split("train")
    assert data.class_names == train and (data.counts == 1).all()
    with pytest.raises(FastAdaptError) as excinfo:  # the val pickle as the test split: wrong classes
        (base / "mini-imagenet-cache-test.pkl").write_bytes((base / "mini-imagenet-cache-val.pkl").read_bytes())
        suite("miniimagenet", base, size=84).split("test")
    one_line_error(excinfo, "mini-imagenet-cache-test.pkl", "another split")


def test_miniimagenet_malicious_pickle_is_refused(tmp_path):
    base, marker = tmp_path / "mini", tmp_path / "pwned"
    base.mkdir()
    payload = {"image_data": np.zeros((1, 84, 84, 3), np.uint8), "class_dict": Evil(marker)}
    (base / "mini-imagenet-cache-val.pkl").write_bytes(pickle.dumps(payload))
    with pytest.raises(FastAdaptError) as excinfo:
        suite("miniimagenet", base).split("val")
    one_line_error(excinfo, base / "mini-imagenet-cache-val.pkl", "refusing")
    assert not marker.exists()


def test_miniimagenet_corrupt_image_and_missing_dataset(tmp_path):
    ravi_files(tmp_path / "mini", per_class=2)
    bad = tmp_path / "mini" / "images" / f"{split_classes('miniimagenet', 'val')[3]}00000001.jpg"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated JPEG
    with pytest.raises(FastAdaptError) as excinfo:
        suite("miniimagenet", tmp_path / "mini").split("val")
    one_line_error(excinfo, bad)
    with pytest.raises(FastAdaptError) as excinfo:
        suite("miniimagenet", tmp_path / "nothing").split("val")
    one_line_error(
        excinfo,
        tmp_path / "nothing",
        "mini-imagenet-cache-val.pkl",
        "val.csv",
        "does not exist",
        "data.args.root",
        "meta-learning-lstm",
    )


# ----------------------------------------------------------------------------- CIFAR-FS


def cifar_parts():
    """CIFAR-100's train/test/meta pickles (Python 2 format) for all 100 classes: 2 train + 1 test
    image each; the red plane codes the fine label, the green plane the image (0, 1: train, 2: test)."""
    names = sorted(set().union(*(split_classes("cifarfs", s) for s in SPLITS)))
    parts = {}
    for part, per_class, first in (("train", 2, 0), ("test", 1, 2)):
        labels = [c for c in range(100) for _ in range(per_class)][::-1]  # not class-sorted, like the real files
        data = np.zeros((len(labels), 3, 32, 32), np.uint8)
        for i, c in enumerate(labels):
            data[i, 0], data[i, 1] = c, first + (i % per_class if per_class > 1 else 0)
        parts[part] = py2_pickle(
            {
                "data": data.reshape(len(labels), -1),
                "fine_labels": labels,
                "filenames": [f"img_{i}.png" for i in range(len(labels))],
            }
        )
    parts["meta"] = py2_pickle({"fine_label_names": names, "coarse_label_names": ["x"] * 20})
    return names, parts


def write_tar(path, members: dict[str, bytes]):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_cifarfs_archive_and_extracted_folder(tmp_path):
    names, parts = cifar_parts()
    (tmp_path / "fs").mkdir()
    write_tar(tmp_path / "fs" / "cifar-100-python.tar.gz", {f"cifar-100-python/{k}": v for k, v in parts.items()})
    s = suite("cifarfs", tmp_path / "fs", size=32)
    for split, n in zip(SPLITS, (64, 16, 20)):
        data = s.split(split)
        assert data.class_names == split_classes("cifarfs", split) and len(data) == 3 * n
        assert data.item_shape == (3, 32, 32) and data.name == f"cifarfs/bertinetto-{split}"
        red, green = data.items[:, 0, 0, 0].numpy(), data.items[:, 1, 0, 0].numpy()
        assert list(red) == [names.index(c) for c in data.class_names for _ in range(3)]
        assert list(green[:3]) == [0, 1, 2]  # per class: train images in file order, then test
    folder = tmp_path / "extracted" / "cifar-100-python"
    folder.mkdir(parents=True)
    for k, v in parts.items():
        (folder / k).write_bytes(v)
    again = suite("cifarfs", tmp_path / "extracted", size=32).split("val")
    assert np.array_equal(again.items.numpy(), s.split("val").items.numpy())
    assert suite("cifarfs", folder, size=20).split("test").item_shape == (3, 20, 20)  # root = the folder itself


def test_cifarfs_bad_files_and_download(tmp_path, monkeypatch):
    names, parts = cifar_parts()
    (tmp_path / "evil").mkdir()
    marker = tmp_path / "pwned"
    write_tar(
        tmp_path / "evil" / "cifar-100-python.tar.gz",
        {
            **{f"cifar-100-python/{k}": v for k, v in parts.items()},
            "cifar-100-python/train": pickle.dumps(Evil(marker)),
        },
    )
    with pytest.raises(FastAdaptError) as excinfo:
        suite("cifarfs", tmp_path / "evil").split("train")
    one_line_error(excinfo, "cifar-100-python.tar.gz:cifar-100-python/train", "refusing")
    assert not marker.exists()
    (tmp_path / "cut").mkdir()
    good = tmp_path / "good.tar.gz"
    write_tar(good, {f"cifar-100-python/{k}": v for k, v in parts.items()})
    (tmp_path / "cut" / "cifar-100-python.tar.gz").write_bytes(good.read_bytes()[:3000])
    with pytest.raises(FastAdaptError) as excinfo:
        suite("cifarfs", tmp_path / "cut").split("train")
    one_line_error(excinfo, tmp_path / "cut" / "cifar-100-python.tar.gz")
    with pytest.raises(FastAdaptError) as excinfo:
        suite("cifarfs", tmp_path / "none").split("train")
    one_line_error(
        excinfo,
        tmp_path / "none" / "cifar-100-python.tar.gz",
        tmp_path / "none" / "cifar-100-python",
        "--download",
        cifarfs.URL,
    )
    calls = []

    def fake_download(url, dest, md5, min_bytes=0):
        calls.append((url, md5))
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(good.read_bytes())
        return dest

    monkeypatch.setattr(cifarfs, "download_file", fake_download)
    assert suite("cifarfs", tmp_path / "fetched", download=True).split("val").num_classes == 16
    assert calls == [(cifarfs.URL, "eb9058c3a382ffc7106e4002c42a8d85")]


def test_cifarfs_png_folders(tmp_path):
    base = tmp_path / "fs"
    for k, c in enumerate(split_classes("cifarfs", "test")):
        (base / "data" / c).mkdir(parents=True)
        for j in (1, 2):
            Image.new("RGB", (32, 32), (4 * k, 40 * j, 0)).save(base / "data" / c / f"{c}_s_{j:06d}.png")
    data = suite("cifarfs", base, size=32).split("test")
    red, green = codes(data)
    assert len(data) == 40 and (red == data.labels).all() and list(green[:2]) == [1, 2]


# ----------------------------------------------------------------------------- CUB


def cub_folder(base):
    """CUB_200_2011/ with images/<NNN.Name>/<Name>_000j_<id>.jpg (2 per class) and its index files."""
    folder = base / "CUB_200_2011"
    classes = sorted(set().union(*(split_classes("cub", s) for s in SPLITS)))
    lines, image_id = [], 0
    for k, c in enumerate(classes):
        (folder / "images" / c).mkdir(parents=True)
        for j in (2, 1):
            image_id += 1
            rel = f"{c}/{c[4:]}_{j:04d}_{image_id}.jpg"
            (folder / "images" / rel).write_bytes(jpeg(k % 64 * 4, 40 * j, size=(12, 9)))
            lines.append(f"{image_id} {rel}")
    (folder / "images.txt").write_text("\n".join(lines) + "\n")
    (folder / "classes.txt").write_text("\n".join(f"{i + 1} {c}" for i, c in enumerate(classes)) + "\n")
    return folder


def test_cub_folder_archive_and_cache(tmp_path, monkeypatch):
    folder = cub_folder(tmp_path / "cub")
    data = suite("cub", tmp_path / "cub").split("val")
    assert data.class_names == split_classes("cub", "val") and len(data) == 100 and data.name == "cub/chen-val"
    red, green = codes(data)
    assert list(green[:2]) == [1, 2]  # file-name order within a class
    assert list(red[::2]) == [(int(c[:3]) - 1) % 64 for c in data.class_names]
    monkeypatch.setattr(cub, "decode_many", None)  # decoded once: the second load reads the cache
    assert np.array_equal(suite("cub", folder).split("val").items.numpy(), data.items.numpy())
    monkeypatch.undo()
    with tarfile.open(tmp_path / "CUB_200_2011.tgz", "w:gz") as tar:
        tar.add(folder, arcname="CUB_200_2011")
    (tmp_path / "arch").mkdir()
    (tmp_path / "CUB_200_2011.tgz").rename(tmp_path / "arch" / "CUB_200_2011.tgz")
    from_archive = suite("cub", tmp_path / "arch").split("val")
    assert np.array_equal(from_archive.items.numpy(), data.items.numpy())
    assert (
        from_archive.sources[0]
        == f"{tmp_path / 'arch' / 'CUB_200_2011.tgz'}:CUB_200_2011/images/" + data.sources[0].split("/images/")[1]
    )
    cropped = suite("cub", tmp_path / "cub", size=8, resize="center_crop").split("test")
    assert cropped.item_shape == (3, 8, 8) and cropped.num_classes == 50


def test_cub_corrupt_missing_and_not_found(tmp_path):
    folder = cub_folder(tmp_path / "cub")
    victim = sorted((folder / "images" / split_classes("cub", "test")[5]).iterdir())[0]
    victim.write_text("not a picture")
    with pytest.raises(FastAdaptError) as excinfo:
        suite("cub", tmp_path / "cub").split("test")
    one_line_error(excinfo, victim)
    with tarfile.open(tmp_path / "CUB_200_2011.tgz", "w:gz") as tar:
        tar.add(folder, arcname="CUB_200_2011")
    (tmp_path / "arch").mkdir()
    (tmp_path / "CUB_200_2011.tgz").rename(tmp_path / "arch" / "CUB_200_2011.tgz")
    with pytest.raises(FastAdaptError) as excinfo:
        suite("cub", tmp_path / "arch").split("test")
    one_line_error(excinfo, f"CUB_200_2011.tgz:CUB_200_2011/images/{victim.parent.name}/{victim.name}")
    gone = sorted((folder / "images" / split_classes("cub", "train")[7]).iterdir())[1]
    gone.unlink()
    with pytest.raises(FastAdaptError) as excinfo:
        suite("cub", folder).split("train")  # root = the extracted folder itself
    one_line_error(excinfo, gone, "images.txt")
    with pytest.raises(FastAdaptError) as excinfo:
        suite("cub", tmp_path / "none").split("train")
    one_line_error(
        excinfo, tmp_path / "none" / "CUB_200_2011.tgz", tmp_path / "none" / "CUB_200_2011" / "images", cub.URL
    )
