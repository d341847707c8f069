"""Decoding an image folder the first time (cache build) and loading it from the cache.

Generates (unless `--dir` already holds it) a folder of `--classes` x `--per-class` JPEGs
(default 100 x 100 = 10,000) with photo-like content: a smooth random colour field, a few
drawn shapes and mild noise, each side 128-500 px (aspect ratios vary), quality 90, ~28 KB
each. Then, with a fresh cache in a temp dir, times `load_image_folder` at `--size` (84) RGB:
first load (scan, decode in worker processes, write the cache) and a second load (scan and stat
every file, read the cache). Files are in the OS page cache for both, as right after copying a
dataset. Prints one JSON line, with the CPU time of the first load (this process and its
workers: unlike wall time, not inflated by other jobs on the machine) and the 1-minute load
average before and after; `--out FILE` also appends it to FILE. `--serial` decodes in one
process (to measure the worker pool's speed-up).

    .venv/bin/python benchmarks/image_decode.py [--dir DIR] [--serial] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import PIL  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402


def write_class(folder: str, label: int, count: int, seed: int) -> int:
    """`count` photo-like JPEGs of one class into `folder`; returns the bytes written."""
    rng = np.random.default_rng([seed, label])
    Path(folder).mkdir(parents=True, exist_ok=True)
    total = 0
    for i in range(count):
        w, h = (int(v) for v in rng.integers(128, 501, 2))
        field = rng.integers(0, 256, (int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3), dtype=np.uint8)
        img = Image.fromarray(field).resize((w, h), Image.Resampling.BICUBIC)
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(2, 6))):
            x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
            box = (x0, y0, x0 + int(rng.integers(10, w - x0)), y0 + int(rng.integers(10, h - y0)))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
        pixels = np.asarray(img, np.int16) + rng.integers(-12, 13, (h, w, 3), dtype=np.int16)
        path = Path(folder) / f"{label:03d}_{i:04d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        total += path.stat().st_size
    return total


def generate(root: Path, classes: int, per_class: int, seed: int = 0) -> int:
    """Write the folder in parallel (one job per class); returns its size in bytes."""
    with ProcessPoolExecutor() as pool:
        return sum(
            pool.map(
                write_class,
                [str(root / f"class{c:03d}") for c in range(classes)],
                range(classes),
                [per_class] * classes,
                [seed] * classes,
            )
        )


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the decode workers)."""
    return sum(
        r.ru_utime + r.ru_stime
        for r in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, help="image folder to use (generated there if it has no class folders)")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--size", type=int, default=84)
    parser.add_argument("--serial", action="store_true", help="decode in one process")
    parser.add_argument("--out", type=Path, help="also append the JSON line to this file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fastadapt-image-decode-") as tmp:
        root = args.dir or Path(tmp) / "images"
        root.mkdir(parents=True, exist_ok=True)
        generated_s = None
        if not any(p.is_dir() for p in root.iterdir()):
            start = time.perf_counter()
            generate(root, args.classes, args.per_class)
            generated_s = round(time.perf_counter() - start, 1)
        os.environ["FASTADAPT_CACHE"] = str(Path(tmp) / "cache")  # a fresh cache: the first load decodes
        from fastadapt.data import decode_pool, imagefolder

        load_before = os.getloadavg()[0]  # other jobs on the machine slow the first load most
        if args.serial:
            decode_pool._PARALLEL_MIN_IMAGES = float("inf")
        start, cpu = time.perf_counter(), cpu_seconds()
        first = imagefolder.load_image_folder(root, args.size, 3)
        first_s, first_cpu = time.perf_counter() - start, cpu_seconds() - cpu
        start = time.perf_counter()
        cached = imagefolder.load_image_folder(root, args.size, 3)
        cached_s = time.perf_counter() - start
        assert (first.items == cached.items).all() and (first.labels == cached.labels).all()
        n = len(first)
        cache_bytes = sum(p.stat().st_size for p in (Path(tmp) / "cache").rglob("*.npz"))
        folder_bytes = sum(p.stat().st_size for p in root.rglob("*.jpg"))
        row = {
            "benchmark": "image_decode",
            "images": n,
            "classes": first.num_classes,
            "size": args.size,
            "channels": 3,
            "workers": 1 if args.serial else decode_pool._cores(),
            "first_s": round(first_s, 3),
            "first_images_per_s": round(n / first_s, 1),
            "cached_s": round(cached_s, 3),
            "cached_images_per_s": round(n / cached_s, 1),
            "first_over_cached": round(first_s / cached_s, 1),
            "first_cpu_s": round(first_cpu, 2),
            "first_cpu_ms_per_image": round(1000 * first_cpu / n, 3),
            "folder_mb": round(folder_bytes / 2**20, 1),
            "cache_mb": round(cache_bytes / 2**20, 1),
            "generated_s": generated_s,
            "pillow": PIL.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "cores": decode_pool._cores(),
            "load_avg_1min": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        }
    line = json.dumps(row)
    print(line)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
