"""The synthetic data of ``scale.py``: seeded JPEGs in class folders, their subsets, and
placeholder files of their sizes.

Why generated: the benchmark needs 20,000 photo-like files without a download, the same
bytes on every run (a fixed seed), so that runs on different days measure the code, not
the data. Kept apart from the measurements so they read as what they time.
"""

from __future__ import annotations

import io
import json
import logging
import multiprocessing
import os
import shutil
import time
from pathlib import Path
from typing import Any

CLASSES = 10


_NOISE: dict[int, Any] = {}
_NOISE_SIDE = 900


def _noise_bank(seed: int):
    """A fixed field of Gaussian noise; each image adds a seeded crop of it (drawing fresh
    noise per image would double the generation time)."""
    import numpy as np

    if seed not in _NOISE:
        rng = np.random.default_rng([seed, 10**9])
        _NOISE[seed] = rng.normal(0, 6, (_NOISE_SIDE, _NOISE_SIDE, 3)).astype(np.int16)
    return _NOISE[seed]


def make_image(index: int, seed: int) -> bytes:
    """JPEG bytes of image ``index``: the same bytes for the same (index, seed)."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng([seed, index])
    label = index % CLASSES
    w = int(rng.integers(400, 640))
    h = int(w * rng.uniform(0.62, 0.9))
    if rng.random() < 0.25:  # some portrait photos
        w, h = h, w
    phase = label * 0.63
    hue = np.array([np.cos(phase), np.cos(phase + 2.1), np.cos(phase + 4.2)]) * 70 + 128
    c0 = np.clip(hue + rng.normal(0, 30, 3), 0, 255).astype(np.float32)
    c1 = np.clip(255 - c0 + rng.normal(0, 30, 3), 0, 255).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    t = (np.arange(h, dtype=np.float32) * np.sin(angle))[:, None] + (
        np.arange(w, dtype=np.float32) * np.cos(angle)
    )[None, :]
    t -= t.min()
    t /= t.max() + 1e-6
    img = Image.fromarray((c0 + (c1 - c0) * t[..., None]).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        s = int(rng.integers(20, max(21, min(w, h) // 2)))
        colour = tuple(int(v) for v in np.clip(hue + rng.normal(0, 60, 3), 0, 255))
        box = [x0, y0, x0 + s, y0 + int(s * rng.uniform(0.5, 1.5))]
        kind = int(rng.integers(3))
        if kind == 0:
            draw.ellipse(box, fill=colour)
        elif kind == 1:
            draw.rectangle(box, fill=colour)
        else:
            points = [
                (x0 + int(rng.integers(-s, s)), y0 + int(rng.integers(-s, s))) for _ in "12345"
            ]
            draw.polygon(points, fill=colour)
    img = img.filter(ImageFilter.BoxBlur(float(rng.uniform(0.5, 2.0))))
    oy, ox = int(rng.integers(0, _NOISE_SIDE - h)), int(rng.integers(0, _NOISE_SIDE - w))
    arr = np.asarray(img).astype(np.int16) + _noise_bank(seed)[oy : oy + h, ox : ox + w]
    out = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


def image_path(root: Path, index: int) -> Path:
    return root / f"class_{index % CLASSES}" / f"img_{index:06d}.jpg"


def _write_one(job: tuple[str, int, int]) -> int:
    root, index, seed = job
    path = image_path(Path(root), index)
    data = make_image(index, seed)
    path.write_bytes(data)
    return len(data)


def generate(root: Path, n: int, seed: int) -> dict[str, Any]:
    """``n`` images under ``root`` (class folders), on all cores; skipped if already there."""
    marker = root.with_name(root.name + ".done")
    if marker.is_file():
        info = json.loads(marker.read_text())
        if info.get("images") == n and info.get("seed") == seed:
            logging.info("using the generated images in %s", root)
            return info | {"cached": True}
    shutil.rmtree(root, ignore_errors=True)
    for c in range(CLASSES):
        (root / f"class_{c}").mkdir(parents=True)
    start = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(os.cpu_count()) as pool:
        sizes = pool.imap_unordered(_write_one, ((str(root), i, seed) for i in range(n)), 64)
        total = sum(sizes)
    seconds = time.perf_counter() - start
    info = {
        "images": n,
        "seed": seed,
        "bytes": total,
        "mean_kib": round(total / n / 1024, 1),
        "seconds": round(seconds, 1),
    }
    marker.write_text(json.dumps(info) + "\n")
    logging.info("generated %d images (%.0f MiB) in %.0f s", n, total / 2**20, seconds)
    return info | {"cached": False}


def subset(full: Path, n: int) -> Path:
    """The first ``n`` images of ``full`` as a hard-linked tree (no copy, same bytes)."""
    root = full.with_name(f"{full.name}-first{n}")
    if root.is_dir() and sum(1 for _ in root.rglob("*.jpg")) == n:
        return root
    shutil.rmtree(root, ignore_errors=True)
    for i in range(n):
        target = image_path(root, i)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(image_path(full, i), target)
    return root


def placeholder_files(root: Path, n: int, seed: int) -> dict[str, Any]:
    """``n`` files of seeded random bytes (25-62 KiB, the generated JPEGs' mean 43.5 KiB) in
    the images' layout: fetch never decodes, so its cost is the file count and bytes.
    For ``--fetch-only`` without the generated images (generating them takes ~13 min of
    both cores)."""
    import random

    marker = root.with_name(root.name + ".done")
    if marker.is_file() and json.loads(marker.read_text()).get("files") == n:
        return json.loads(marker.read_text()) | {"cached": True}
    shutil.rmtree(root, ignore_errors=True)
    rng, total = random.Random(seed), 0
    for i in range(n):
        path = image_path(root, i)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = rng.randbytes(rng.randint(25 * 1024, 62 * 1024))
        path.write_bytes(data)
        total += len(data)
    info = {"files": n, "bytes": total, "kind": "placeholder (random bytes, not images)"}
    marker.write_text(json.dumps(info) + "\n")
    return info | {"cached": False}
