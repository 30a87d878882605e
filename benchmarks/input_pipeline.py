"""Input-pipeline throughput: Keras' directory loader vs reprotrain's TFRecord pipeline.

Run by hand (``make benchmarks`` or ``python benchmarks/input_pipeline.py [DATA_DIR]``).
Measures images/s at 224×224, batch 32, on the same photos (the hymenoptera train split):

* ``directory_loader``: ``keras.utils.image_dataset_from_directory``, which decodes every
  JPEG every epoch (no augmentation);
* ``cached_no_augmentation``: ``reprotrain.data.pipeline.make_dataset`` with augmentation
  off, served from its cache (epochs 2+);
* ``cached_per_image_augmentation``: the previous design, kept here as a reference copy:
  the same cached pipeline with the default augmentation applied per image (a map of
  stateless ``tf.image`` ops and one ``ImageProjectiveTransformV3`` per image) before
  ``batch()``;
* ``cached_batch_augmentation``: today's ``make_dataset`` with the default augmentation,
  applied per batch after ``batch()`` (:func:`reprotrain.data.augmentation.augment_batch`);
* ``cached_batch_geometric_only`` / ``cached_batch_photometric_only``: the same with only
  flip+rotation+zoom, or only flip+brightness+contrast, to show where the time goes;
* ``cached_for_augmentation_in_step``: ``pipeline.augment.placement: model`` (the default on
  a GPU): the pipeline delivers the cached uint8 batches and their seeds, and the train step
  augments them on the accelerator (the same function and seeds: the same pixels). What the
  host must sustain to keep a GPU fed; on a CPU-only machine the step would do the work of
  ``cached_batch_augmentation`` itself.

The machine may be shared, so absolute numbers drift: all variants are measured in one
process, interleaved round by round (each round: every variant once, ``EPOCHS`` epochs
through one iterator), and the report gives medians and ratios to the directory loader,
both in wall-clock images/s and in images per CPU-second of this process (less sensitive to
other processes' load), plus the load average before and after.
Writes ``benchmarks/results/input_pipeline.json``; ``docs/benchmarks.md`` shows it
(``benchmarks/report.py`` renders it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "assets" / "datasets" / "hymenoptera_data"
SIZE, BATCH, SEED = 224, 32, 42
EPOCHS = 3  # per measurement, through one iterator (steady state, no per-epoch start-up)


def measure(ds: Any, epochs: int = EPOCHS) -> tuple[float, float, int]:
    """Iterate ``epochs`` epochs; (wall images/s, images per CPU-second, images)."""
    wall, cpu, n = time.perf_counter(), time.process_time(), 0
    for batch in ds.repeat(epochs):
        images = batch[0][0] if isinstance(batch[0], tuple) else batch[0]
        n += int(images.shape[0])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return n / wall, n / max(cpu, 1e-9), n


# --------------------------------------------------------------------------- reference copy
# The per-image augmentation reprotrain used before batch-level augmentation, verbatim in
# behaviour, so the benchmark keeps comparing against it.


def _per_image_augment(image: Any, cfg: Any, seed: Any) -> Any:
    import tensorflow as tf

    size = tf.shape(image)[0:2]
    seeds = tf.random.experimental.stateless_split(seed, num=5)
    if cfg.flip:
        image = tf.image.stateless_random_flip_left_right(image, seeds[0])
    if cfg.rotation > 0 or cfg.zoom > 0:
        turn = cfg.rotation * 2 * math.pi
        angle = tf.random.stateless_uniform([], seeds[1], -turn, turn)
        scale = tf.random.stateless_uniform([], seeds[2], 1.0 - cfg.zoom, 1.0 + cfg.zoom)
        h, w = tf.cast(size[0], tf.float32), tf.cast(size[1], tf.float32)
        cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
        cx, cy = (w - 1) / 2, (h - 1) / 2
        transform = tf.stack(
            [cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0]
        )
        image = tf.raw_ops.ImageProjectiveTransformV3(
            images=image[tf.newaxis],
            transforms=transform[tf.newaxis],
            output_shape=size,
            fill_value=0.0,
            interpolation="BILINEAR",
            fill_mode="REFLECT",
        )[0]
    if cfg.brightness > 0:
        image = tf.image.stateless_random_brightness(image, cfg.brightness * 255.0, seeds[3])
    if cfg.contrast > 0:
        image = tf.image.stateless_random_contrast(
            image, 1.0 - cfg.contrast, 1.0 + cfg.contrast, seeds[4]
        )
    return tf.clip_by_value(image, 0.0, 255.0)


def per_image_pipeline(files: list[Path], cfg: Any) -> Any:
    """The old ``make_dataset`` training path: cache → shuffle → augment each image → batch."""
    import tensorflow as tf

    from reprotrain.data import schema
    from reprotrain.data.images import decode_and_resize, to_uint8
    from reprotrain.data.pipeline import parse_example

    autotune = tf.data.AUTOTUNE
    ds = tf.data.Dataset.from_tensor_slices([str(f) for f in files])
    ds = ds.shuffle(len(files), seed=SEED, reshuffle_each_iteration=True)
    ds = ds.interleave(
        tf.data.TFRecordDataset, cycle_length=min(len(files), 4), num_parallel_calls=autotune
    )

    def decode(serialized: Any) -> Any:
        ex = parse_example(serialized)
        image = to_uint8(decode_and_resize(ex[schema.IMAGE], SIZE))
        return image, tf.cast(ex[schema.LABEL], tf.int32)

    ds = ds.map(decode, num_parallel_calls=autotune).cache()
    ds = ds.shuffle(cfg.shuffle_buffer, seed=SEED, reshuffle_each_iteration=True)
    seeds = tf.data.Dataset.random(seed=SEED, rerandomize_each_iteration=True).batch(2)

    def augment(element: Any, s: Any) -> Any:
        image, label = element
        out = _per_image_augment(tf.cast(image, tf.float32), cfg.augment, s)
        return tf.cast(tf.round(out), tf.uint8), label

    ds = tf.data.Dataset.zip((ds, seeds)).map(augment, num_parallel_calls=autotune)
    ds = ds.batch(BATCH, num_parallel_calls=autotune)
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=autotune)
    return ds.prefetch(autotune)


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = os.environ.get("REPROTRAIN_DATA_MIRROR") or str(DEFAULT_DATA)
    parser.add_argument(
        "data", nargs="?", default=default, help="hymenoptera_data folder (train/ val/)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median)")
    parser.add_argument("--out", default=str(HERE / "results" / "input_pipeline.json"))
    args = parser.parse_args()
    data = Path(args.data)
    if not (data / "train").is_dir():
        sys.stderr.write(f"error: {data}/train not found: pass the hymenoptera_data folder\n")
        return 2

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    from reprotrain.config import AugmentConfig, PipelineConfig, PrepareConfig
    from reprotrain.data.fetch import fetch
    from reprotrain.data.pipeline import make_dataset
    from reprotrain.data.prepare import prepare
    from reprotrain.paths import split_files

    load_before = os.getloadavg()
    off = AugmentConfig(flip=False, rotation=0.0, zoom=0.0, brightness=0.0, contrast=0.0)
    default = PipelineConfig(cache="memory")
    geometric = dataclasses.replace(default.augment, brightness=0.0, contrast=0.0)
    photometric = dataclasses.replace(default.augment, rotation=0.0, zoom=0.0)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fetch(str(data), tmp / "raw")
        t = time.perf_counter()
        prepare(tmp / "raw", tmp / "prepared", PrepareConfig(), seed=SEED)
        prepare_seconds = time.perf_counter() - t
        files = split_files(tmp / "prepared", "train")

        def ours(augment: AugmentConfig, augment_in: str = "input") -> Any:
            cfg = dataclasses.replace(default, augment=augment)
            return make_dataset(
                files,
                cfg,
                True,
                image_size=SIZE,
                batch_size=BATCH,
                seed=SEED,
                augment_in=augment_in,
            )

        variants = {
            "directory_loader": keras.utils.image_dataset_from_directory(
                data / "train", image_size=(SIZE, SIZE), batch_size=BATCH, seed=SEED, verbose=False
            ).prefetch(tf.data.AUTOTUNE),
            "cached_no_augmentation": ours(off),
            "cached_per_image_augmentation": per_image_pipeline(files, default),
            "cached_batch_augmentation": ours(default.augment),
            "cached_batch_geometric_only": ours(geometric),
            "cached_batch_photometric_only": ours(photometric),
            "cached_for_augmentation_in_step": ours(default.augment, "model"),
        }
        epoch1 = {}
        for name, ds in variants.items():  # warm-up: tracing, file listing, filling caches
            wall, _, n = measure(ds, epochs=1)
            epoch1[name] = {"images_per_s": round(wall, 1), "images": n}
        walls: dict[str, list[float]] = {k: [] for k in variants}
        cpus: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.rounds):
            for name, ds in variants.items():
                wall, cpu, _ = measure(ds)
                walls[name].append(wall)
                cpus[name].append(cpu)

    wall = {k: statistics.median(v) for k, v in walls.items()}
    cpu = {k: statistics.median(v) for k, v in cpus.items()}
    base = "directory_loader"
    report = {
        "what": (
            f"images/s at {SIZE}x{SIZE}, batch {BATCH}, hymenoptera train split; median of "
            f"{args.rounds} interleaved rounds of {EPOCHS} epochs each (epochs 2+ for cached)"
        ),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "tensorflow": tf.__version__,
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "images_per_s": {k: round(v, 1) for k, v in wall.items()},
        "images_per_cpu_s": {k: round(v, 1) for k, v in cpu.items()},
        "rounds_images_per_s": {k: [round(x, 1) for x in v] for k, v in walls.items()},
        "first_epoch": epoch1,
        "prepare_seconds": round(prepare_seconds, 1),
        "ratio_to_directory_loader": {k: round(v / wall[base], 2) for k, v in wall.items()},
        "ratio_to_directory_loader_cpu": {k: round(v / cpu[base], 2) for k, v in cpu.items()},
        "summary": {
            "batch_vs_per_image_augmentation": round(
                wall["cached_batch_augmentation"] / wall["cached_per_image_augmentation"], 2
            ),
            "augmented_cached_vs_directory_loader": round(
                wall["cached_batch_augmentation"] / wall[base], 2
            ),
            "host_side_with_augmentation_in_step_vs_directory_loader": round(
                wall["cached_for_augmentation_in_step"] / wall[base], 2
            ),
            "target_augmented_cached_vs_directory_loader": 3,
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
