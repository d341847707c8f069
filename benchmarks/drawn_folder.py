"""A user-style image folder of drawn glyphs, for cross-domain evaluation and `predict` timings.

One sub-folder per class: the 26 capital letters and 10 digits in Pillow's bundled font, plus 8
outline shapes; each image is a black glyph on white paper (as a user would scan or draw it),
at a random size (48-160 px), offset, scale, rotation (±15°) and stroke, saved as PNG or JPEG.
Nothing here is Omniglot: a model meta-trained on Omniglot's handwriting meets new symbols,
a new renderer and new file formats.

    python benchmarks/drawn_folder.py OUT_DIR [--per-class 20] [--seed 0]
"""

from __future__ import annotations

import argparse
import string
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SHAPES = ("circle", "square", "triangle", "cross", "diamond", "star", "ring", "arrow")
CLASSES = tuple(f"letter-{c}" for c in string.ascii_uppercase) + tuple(f"digit-{d}" for d in string.digits) + SHAPES


def _shape(d: ImageDraw.ImageDraw, shape: str, c: np.ndarray, r: float, w: int) -> None:
    x, y = c
    if shape == "circle":
        d.ellipse([x - r, y - r, x + r, y + r], outline=0, width=w)
    elif shape == "ring":
        d.ellipse([x - r, y - r, x + r, y + r], outline=0, width=w)
        d.ellipse([x - r / 2, y - r / 2, x + r / 2, y + r / 2], outline=0, width=w)
    elif shape == "square":
        d.rectangle([x - r, y - r, x + r, y + r], outline=0, width=w)
    elif shape == "triangle":
        d.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], outline=0, width=w)
    elif shape == "cross":
        d.line([x - r, y, x + r, y], fill=0, width=w)
        d.line([x, y - r, x, y + r], fill=0, width=w)
    elif shape == "diamond":
        d.polygon([(x, y - r), (x + r, y), (x, y + r), (x - r, y)], outline=0, width=w)
    elif shape == "star":
        angles = np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        d.polygon([(x + a * np.cos(t), y - a * np.sin(t)) for a, t in zip(radii, angles)], outline=0, width=w)
    else:  # arrow
        d.line([x - r, y, x + r, y], fill=0, width=w)
        d.line([x + r, y, x + r / 3, y - r / 2], fill=0, width=w)
        d.line([x + r, y, x + r / 3, y + r / 2], fill=0, width=w)


def draw(label: str, rng: np.random.Generator) -> Image.Image:
    """One jittered drawing of class `label` (see CLASSES), grayscale."""
    size = int(rng.integers(48, 161))
    canvas = 256  # draw large, then rotate and shrink: smooth strokes at every output size
    img = Image.new("L", (canvas, canvas), 255)
    d = ImageDraw.Draw(img)
    centre = canvas / 2 + rng.uniform(-0.08, 0.08, 2) * canvas
    scale = rng.uniform(0.6, 0.85)
    if label.startswith(("letter-", "digit-")):
        font = ImageFont.load_default(size=int(canvas * scale))
        d.text(
            tuple(centre),
            label[-1],
            fill=0,
            font=font,
            anchor="mm",
            stroke_width=int(rng.integers(2, 7)),
            stroke_fill=0,
        )
    else:
        _shape(d, label, centre, canvas * scale / 2.4, int(rng.integers(8, 16)))
    img = img.rotate(float(rng.uniform(-15, 15)), resample=Image.Resampling.BICUBIC, fillcolor=255)
    return img.resize((size, size), Image.Resampling.LANCZOS)


def make_folder(root: str | Path, per_class: int = 20, seed: int = 0, classes=CLASSES) -> Path:
    """Write `per_class` drawings of each class to root/<class>/NNN.{png,jpg}; returns root."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for label in classes:
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = draw(label, rng)
            img.save(root / label / f"{i:03d}.{'png' if i % 2 == 0 else 'jpg'}", quality=92)
    return root


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    make_folder(args.out, args.per_class, args.seed)
    print(f"wrote {len(CLASSES)} classes x {args.per_class} images to {args.out}")
