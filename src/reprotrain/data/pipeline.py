"""The tf.data input pipeline every training and evaluation stage reads through.

Order matters and is the point of this module::

    interleave(shards) → parse → decode → resize → cache → shuffle → batch → augment → prefetch

Decoding and resizing are the expensive, deterministic part, so they sit *before*
``cache()``: from epoch 2 on, images come from memory (or a cache file). Augmentation is
random and must differ every epoch, so it sits *after* the cache; caching augmented images
would replay the same "random" crops forever. ``shuffle`` reshuffles each epoch from a
seeded generator, so a run is reproducible yet not the same order every epoch.

Augmentation works on whole batches (:func:`augment_batch`): each op runs once per batch
with per-image random parameters drawn in one op, instead of a dozen small ops per image.
Determinism: ``Dataset.random(seed)`` (re-randomised each epoch) gives every batch one
``[2]`` seed, zipped to the batch in order; everything else is a stateless function of that
seed. Same ``seed`` and data → the same augmented batches, epoch by epoch; another epoch →
other augmentations.

Caching (``pipeline.cache``): ``auto`` (default) keeps the decoded split in memory when it
fits ``pipeline.cache_memory_mb`` and otherwise writes a tf.data cache file keyed by the
shards' digest (:func:`choose_cache`, :func:`cache_path`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import tensorflow as tf

from reprotrain.config import AugmentConfig, PipelineConfig
from reprotrain.data import schema, tfrecords
from reprotrain.data.images import decode_and_resize, to_uint8
from reprotrain.errors import DataError
from reprotrain.fsio import file_sha256

log = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE


def read_labels(prepared_dir: Path | str) -> list[str]:
    """Class names of a prepared dataset; list index = label id."""
    path = Path(prepared_dir) / "labels.json"
    if not path.is_file():
        raise DataError(f"{path} not found: run the prepare stage first (dvc repro prepare)")
    labels = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(labels, list) or not labels:
        raise DataError(f"{path}: expected a non-empty JSON list of class names")
    return [str(x) for x in labels]


# --------------------------------------------------------------------------- map functions
# Pure tensor → tensor functions: tested eagerly and inside tf.data (tests/data/).
# ``decode_and_resize`` lives in ``images`` (shared with predict and serving); re-exported.
__all__ = [
    "augment_batch",
    "choose_cache",
    "decode_and_resize",
    "make_dataset",
    "parse_example",
    "read_labels",
]


def parse_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """One serialized ``tf.train.Example`` → the schema's feature dict."""
    return tf.io.parse_single_example(serialized, schema.feature_spec())


def augment_batch(images: tf.Tensor, cfg: AugmentConfig, seed: tf.Tensor) -> tf.Tensor:
    """Random flip, rotation, zoom, brightness and contrast of a batch ``[B, H, W, 3]``.

    uint8 or float 0..255 in, float32 0..255 out. Every image gets its own parameters, all
    drawn at once from ``seed`` (a ``[2]`` int tensor) with stateless ops: the same seed
    gives the same batch, eagerly and in a graph. The pixel work is one XLA-compiled
    function per batch (:func:`_resample_adjust` or :func:`_flip_adjust`): flip, rotation
    and zoom are one inverse affine map per image, sampled bilinearly with reflected borders
    (``ImageProjectiveTransformV3``'s ``BILINEAR``/``REFLECT``, tested equal), and
    brightness/contrast are one multiply-add, ``(x - mean) * c + mean + b`` (the formula of
    ``tf.image.adjust_contrast`` after ``adjust_brightness``; ``mean`` is the input image's
    per-channel mean). Fused, each output pixel is computed in one pass over memory instead
    of one pass per op: on a CPU that is what makes augmentation cheap.
    """
    n = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(seed, num=5)
    flip = (
        tf.random.stateless_uniform([n], seeds[0]) < 0.5
        if cfg.flip
        else tf.zeros([n], dtype=tf.bool)
    )
    shape = tf.stack([n, 1, 1, 1])
    delta = tf.zeros(shape)
    if cfg.brightness > 0:
        top = cfg.brightness * 255.0
        delta = tf.random.stateless_uniform(shape, seeds[3], -top, top)
    factor = tf.ones(shape)
    if cfg.contrast > 0:
        factor = tf.random.stateless_uniform(
            shape, seeds[4], 1.0 - cfg.contrast, 1.0 + cfg.contrast
        )
    if cfg.rotation > 0 or cfg.zoom > 0:
        turn = cfg.rotation * 2 * math.pi
        angle = tf.random.stateless_uniform([n], seeds[1], -turn, turn)
        scale = tf.random.stateless_uniform([n], seeds[2], 1.0 - cfg.zoom, 1.0 + cfg.zoom)
        transforms = affine_transforms(tf.shape(images)[1:3], flip, angle, scale)
        return _resample_adjust(images, transforms, factor, delta)
    return _flip_adjust(images, flip, factor, delta)


def affine_transforms(
    size: tf.Tensor, flip: tf.Tensor, angle: tf.Tensor, scale: tf.Tensor
) -> tf.Tensor:
    """``[B, 8]`` inverse maps (``ImageProjectiveTransformV3``'s layout) that mirror (where
    ``flip``), rotate by ``angle`` and zoom by ``scale`` around the image centre: output
    pixel ``p`` samples the input at ``c + F·R(angle)·(p - c) / scale``, ``F`` the mirror."""
    h = tf.cast(size[0], tf.float32)
    w = tf.cast(size[1], tf.float32)
    mirror = tf.where(flip, -1.0, 1.0)
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    cx, cy = (w - 1) / 2, (h - 1) / 2
    a0, a1 = mirror * cos, -mirror * sin
    zeros = tf.zeros_like(cos)
    return tf.stack(
        [a0, a1, cx - a0 * cx - a1 * cy, sin, cos, cy - sin * cx - cos * cy, zeros, zeros],
        axis=1,
    )


def _adjust(images: tf.Tensor, pixels: tf.Tensor, factor: tf.Tensor, delta: tf.Tensor) -> Any:
    """``(x - mean) * factor + mean + delta``, clipped to 0..255 (mean of ``images``)."""
    mean = tf.reduce_mean(tf.cast(images, tf.float32), axis=[1, 2], keepdims=True)
    return tf.clip_by_value(pixels * factor + (mean * (1.0 - factor) + delta), 0.0, 255.0)


@tf.function(jit_compile=True, reduce_retracing=True)
def _flip_adjust(
    images: tf.Tensor, flip: tf.Tensor, factor: tf.Tensor, delta: tf.Tensor
) -> tf.Tensor:
    """Mirror where ``flip``, then brightness/contrast: one fused XLA pass."""
    x = tf.cast(images, tf.float32)
    x = tf.where(flip[:, None, None, None], tf.reverse(x, axis=[2]), x)
    return _adjust(images, x, factor, delta)


@tf.function(jit_compile=True, reduce_retracing=True)
def _resample_adjust(
    images: tf.Tensor, transforms: tf.Tensor, factor: tf.Tensor, delta: tf.Tensor
) -> tf.Tensor:
    """Bilinear affine resampling with reflected borders, then brightness/contrast.

    Why not ``ImageProjectiveTransformV3`` itself: it has no XLA kernel, and unfused it
    costs more per image than decoding the JPEG (benchmarks/input_pipeline.py). Here XLA
    compiles the coordinates, the four-neighbour gather and the blend into one loop.
    """
    shape = tf.shape(images)
    b, h, w = shape[0], shape[1], shape[2]
    xs = tf.range(w, dtype=tf.float32)[None, None, :]
    ys = tf.range(h, dtype=tf.float32)[None, :, None]
    t = [transforms[:, i][:, None, None] for i in range(6)]
    sx = _reflect(t[0] * xs + t[1] * ys + t[2], w)
    sy = _reflect(t[3] * xs + t[4] * ys + t[5], h)
    x0f, y0f = tf.floor(sx), tf.floor(sy)
    wx, wy = (sx - x0f)[..., None], (sy - y0f)[..., None]
    x0, y0 = tf.cast(x0f, tf.int32), tf.cast(y0f, tf.int32)
    x1, y1 = tf.minimum(x0 + 1, w - 1), tf.minimum(y0 + 1, h - 1)
    flat = tf.reshape(images, [-1, 3])
    first = (tf.range(b) * h * w)[:, None, None]

    def pixel(yy: tf.Tensor, xx: tf.Tensor) -> tf.Tensor:
        return tf.cast(tf.gather(flat, first + yy * w + xx), tf.float32)

    p00, p01, p10, p11 = pixel(y0, x0), pixel(y0, x1), pixel(y1, x0), pixel(y1, x1)
    top = p00 + (p01 - p00) * wx
    bottom = p10 + (p11 - p10) * wx
    return _adjust(images, top + (bottom - top) * wy, factor, delta)


def _reflect(coord: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    """Pixel-centre coordinates reflected into ``[0, size - 1]`` (``d c b a | a b c d | d c``:
    ``ImageProjectiveTransformV3``'s ``REFLECT``), for any distance outside the image."""
    n = tf.cast(size, tf.float32)
    period = 2.0 * n
    c = tf.math.floormod(coord + 0.5, period)
    c = tf.where(c >= n, period - c, c) - 0.5
    return tf.clip_by_value(c, 0.0, n - 1.0)


# --------------------------------------------------------------------------- caching

#: Where ``cache: auto`` writes its cache files when a split exceeds the memory budget:
#: the project's untracked state folder (relative to the working directory, the project
#: root when DVC runs a stage), beside the training checkpoints.
AUTO_CACHE_PREFIX = Path(".reprotrain") / "tfdata-cache" / "tfdata"


@dataclass(frozen=True)
class CacheChoice:
    """How one split is cached and why (logged)."""

    kind: Literal["memory", "file", "none"]
    reason: str
    prefix: str | None = None  # the file prefix when ``kind == "file"``


def cache_bytes(images: int, image_size: int) -> int:
    """What the cache holds per split: uint8 ``S×S×3`` pixels plus an int32 label each."""
    return images * (image_size * image_size * 3 + 4)


def choose_cache(setting: str, images: int | None, image_size: int, budget_mb: int) -> CacheChoice:
    """``pipeline.cache`` → memory, file or none, for a split of ``images`` images.

    ``auto`` caches in memory when the split's decoded pixels fit ``budget_mb`` and in a
    file (:data:`AUTO_CACHE_PREFIX`) otherwise; an unknown count (no ``shards.json``) goes
    to a file, which is safe for any size. Pure: tested without TensorFlow data.
    """
    if setting == "none":
        return CacheChoice("none", "pipeline.cache is 'none'")
    if setting == "memory":
        return CacheChoice("memory", "pipeline.cache is 'memory'")
    if setting != "auto":
        return CacheChoice("file", "pipeline.cache is a file prefix", setting)
    prefix = str(AUTO_CACHE_PREFIX)
    if images is None:
        return CacheChoice("file", "image count unknown (no shards.json record)", prefix)
    need = cache_bytes(images, image_size) / 2**20
    sizes = f"{images} images at {image_size}px ≈ {need:,.0f} MB"
    if need <= budget_mb:
        return CacheChoice("memory", f"{sizes} fit pipeline.cache_memory_mb={budget_mb}")
    return CacheChoice("file", f"{sizes} exceed pipeline.cache_memory_mb={budget_mb}", prefix)


def count_records(files: Sequence[Path | str]) -> int | None:
    """Examples in ``files``, from ``shards.json`` (None when a shard is not recorded)."""
    total = 0
    indexes: dict[Path, dict[str, dict]] = {}
    for f in (Path(x) for x in files):
        if f.parent not in indexes:
            try:
                index = tfrecords.read_shard_index(f.parent)
            except DataError:
                index = {}
            indexes[f.parent] = {e["file"]: e for es in index.values() for e in es}
        entry = indexes[f.parent].get(f.name)
        if not entry or "records" not in entry or entry.get("bytes") != f.stat().st_size:
            return None
        total += int(entry["records"])
    return total


# --------------------------------------------------------------------------- the pipeline


def make_dataset(  # noqa: PLR0913  (keyword-only knobs of one tf.data pipeline)
    files: Sequence[Path | str],
    cfg: PipelineConfig,
    training: bool,
    *,
    image_size: int,
    batch_size: int,
    seed: int,
    augment: bool | None = None,
    with_metadata: bool = False,
    augment_in: Literal["input", "model"] = "input",
) -> tf.data.Dataset:
    """Batches of ``(images, labels)`` (or ``(images, labels, metadata)``) from TFRecord shards.

    ``training`` turns on shuffling (and augmentation unless ``augment`` says otherwise);
    evaluation reads in file order, so predictions line up with the manifest. Images are
    float32 0..255 ``[B, S, S, 3]``; labels int32 ``[B]``; metadata ``{"path", "sha256"}``.

    ``augment_in="model"`` (with augmentation on) leaves the augmentation to the train step
    (:class:`reprotrain.training.AugmentingModel`): batches are then
    ``((uint8 images, seeds [B, 2]), labels)``, the seeds being the ones this pipeline
    would have used, so the step draws the same augmentation.
    """
    files = [str(f) for f in files]
    if not files:
        raise DataError("no TFRecord shards given: run the prepare stage first")
    augment = training if augment is None else augment
    options = tf.data.Options()
    options.deterministic = cfg.deterministic

    ds = tf.data.Dataset.from_tensor_slices(files)
    if training:
        # One seeded shard order, not a new one per epoch: what is cached is the first full
        # pass, and which pass that is differs between a run and its resumption (a resumed
        # run must see the same cached order). The element shuffle after the cache varies
        # the order every epoch.
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=False)
    # Interleave shard reads: sequential order when evaluating (cycle_length=1) keeps the
    # predictions aligned with the manifest; parallel when training.
    if training:
        ds = ds.interleave(
            tf.data.TFRecordDataset,
            cycle_length=min(len(files), 4),
            num_parallel_calls=AUTOTUNE,
            deterministic=cfg.deterministic,
        )
    else:
        ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=1)

    def _decode(serialized: tf.Tensor) -> tuple[Any, ...]:
        ex = parse_example(serialized)
        # Cached as uint8: a quarter of the memory and of the bytes copied per epoch
        # (rounding to whole pixel values is invisible to the model).
        image = to_uint8(decode_and_resize(ex[schema.IMAGE], image_size))
        label = tf.cast(ex[schema.LABEL], tf.int32)
        if not with_metadata:  # nothing per element that the consumer will not use
            return image, label
        meta = {"path": ex[schema.SOURCE_PATH], "sha256": ex[schema.SHA256]}
        return image, label, meta

    ds = ds.map(_decode, num_parallel_calls=AUTOTUNE, deterministic=cfg.deterministic)
    count = count_records(files)
    ds = _cache(ds, cfg, files, image_size, with_metadata, count)
    if training:
        ds = ds.shuffle(cfg.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, num_parallel_calls=AUTOTUNE, deterministic=cfg.deterministic)
    if count is not None:
        # Reading TFRecords, tf.data cannot know the length: Keras then learns it by running
        # out of data in the first epoch and warns "Your input ran out of data" in every
        # stage. shards.json records it (checked against each shard's size).
        ds = ds.apply(tf.data.experimental.assert_cardinality(math.ceil(count / batch_size)))
    if augment and augment_in == "model":
        ds = _with_seeds(ds, cfg, seed)
    elif augment:
        ds = _augment(ds, cfg, seed)
    else:  # float32 for the model, converted once per batch rather than per image.
        ds = ds.map(_to_float, num_parallel_calls=AUTOTUNE, deterministic=cfg.deterministic)
    return ds.prefetch(AUTOTUNE).with_options(options)


def _cache(
    ds: tf.data.Dataset,
    cfg: PipelineConfig,
    files: Sequence[str],
    image_size: int,
    with_metadata: bool,
    count: int | None,
) -> tf.data.Dataset:
    """Apply :func:`choose_cache`'s decision (``count``: images, if known), logging which
    cache and why."""
    choice = choose_cache(cfg.cache, count, image_size, cfg.cache_memory_mb)
    split = "+".join(sorted({Path(f).name.split("-")[0] for f in files}))
    if choice.kind == "memory":
        log.info("tf.data cache for %s: memory (%s)", split, choice.reason)
        return ds.cache()
    if choice.kind == "file":
        path = cache_path(choice.prefix, files, image_size, with_metadata)
        if not Path(f"{path}.index").exists() and not claim_cache(path):
            log.warning(
                "tf.data cache for %s: none: %s is being written by another live process "
                "(%s; e.g. a parallel experiment on the same data); reading the shards "
                "uncached instead of sharing or deleting its unfinished files",
                split,
                path,
                cache_owner(path),
            )
            return ds
        log.info("tf.data cache for %s: file %s (%s)", split, path, choice.reason)
        clear_unfinished_cache(path)
        return ds.cache(str(path))
    log.info("tf.data cache for %s: none (%s)", split, choice.reason)
    return ds


def _to_float(image: tf.Tensor, *rest: Any) -> tuple[Any, ...]:
    return (tf.cast(image, tf.float32), *rest)


def cache_path(
    prefix: str | Path, files: Sequence[Path | str], image_size: int, with_metadata: bool
) -> Path:
    """The tf.data cache file of one dataset: ``<prefix>-<split>-<S>px-<key>``.

    Why keyed: one ``pipeline.cache`` prefix serves every split and every run. With the bare
    prefix, train and val shared one cache and val silently read train's images; and a cache
    written before ``prepare`` reran would be read after it. The key hashes the shards'
    identity (name, size and sha256, taken from ``shards.json`` when its record matches the
    file's size, else computed), the image size and the element structure: other data,
    other split or other size → other file, so a stale cache is never read. Processes that
    reach the same key (parallel experiments on the same data with an absolute prefix)
    share the finished cache; while it is unfinished only its owner (:func:`claim_cache`)
    writes or deletes it, and the others read uncached.
    """
    recorded: dict[Path, dict[str, dict]] = {}
    identity = []
    for f in sorted(Path(x) for x in files):
        if f.parent not in recorded:
            try:
                index = tfrecords.read_shard_index(f.parent)
            except DataError:
                index = {}
            recorded[f.parent] = {e["file"]: e for es in index.values() for e in es}
        size = f.stat().st_size
        entry = recorded[f.parent].get(f.name)
        sha = entry["sha256"] if entry and entry["bytes"] == size else file_sha256(f)
        identity.append([f.name, size, sha])
    payload = json.dumps(
        {"format": 1, "shards": identity, "image_size": image_size, "meta": with_metadata},
        sort_keys=True,
    )
    key = hashlib.sha256(payload.encode()).hexdigest()[:16]
    split = sorted({Path(f).name.split("-")[0] for f in files})
    path = Path(f"{prefix}-{'+'.join(split)}-{image_size}px-{key}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


#: Owner locks of the caches this process writes (path → the open, flock'ed file): held
#: until the process exits, when the kernel releases them, however it dies.
_OWNED: dict[str, int] = {}
OWNER_SUFFIX = ".owner"


def claim_cache(path: Path) -> bool:
    """Make this process the writer of the cache file ``path``; False if a live process is.

    Why a lock: with an absolute ``pipeline.cache`` prefix, parallel experiments
    (``dvc queue start -j 2``, each in its own workdir) reach the same key for the same
    data, and one must not delete or co-write the cache the other is still writing. The
    lock is an ``flock`` on ``<path>.owner``, held for the life of the process: a killed
    owner's lock is free again at once (no pid file to go stale, no pid reuse), and it
    works across the processes of one host and on NFS (Linux maps it to POSIX locks).
    """
    key = os.path.realpath(path)  # one lock per file, however the path is spelled
    if key in _OWNED:
        return True
    fd = os.open(f"{path}{OWNER_SUFFIX}", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, cwd {Path.cwd()}\n".encode())
    _OWNED[key] = fd
    return True


def cache_owner(path: Path) -> str:
    """Who holds ``path``'s owner lock, as it wrote it (for messages)."""
    with contextlib.suppress(OSError):
        return Path(f"{path}{OWNER_SUFFIX}").read_text(encoding="utf-8").strip() or "unknown"
    return "unknown"


def clear_unfinished_cache(path: Path) -> list[Path]:
    """Delete what a dead writer left of the cache file ``path``; returns what was deleted.

    tf.data writes ``<path>.index`` last, when an epoch completes. A process killed during
    its first epoch leaves ``<path>_<n>.lockfile`` and partial ``.data`` files, and every
    later run then fails with "There appears to be a concurrent caching iterator running".
    Without the index the cache is unusable anyway, so its leftovers go, but only once this
    process holds the cache's owner lock (:func:`claim_cache`): the files of a writer that
    is still alive are never touched, nor is a complete cache.
    """
    if Path(f"{path}.index").exists() or not claim_cache(path):
        return []
    owner = f"{path.name}{OWNER_SUFFIX}"
    leftovers = [
        p for p in path.parent.glob(f"{path.name}[._]*") if p.is_file() and p.name != owner
    ]
    for p in leftovers:
        p.unlink(missing_ok=True)
    if leftovers:
        log.warning(
            "removed an unfinished tf.data cache (%s): a run stopped before its first epoch "
            "completed",
            ", ".join(p.name for p in leftovers),
        )
    return leftovers


def _batch_seeds(seed: int) -> tf.data.Dataset:
    """One ``[2]`` seed per batch and epoch.

    A ``tf.data`` random generator seeded once would replay the same sequence each epoch
    when the pipeline is re-iterated; ``Dataset.random(seed)`` with
    ``rerandomize_each_iteration`` yields fresh seeds every epoch and is still reproducible.
    The seeds are zipped to the batches in order, so which batch gets which seed does not
    depend on the parallel map's scheduling.
    """
    return tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)


def _per_batch(
    ds: tf.data.Dataset,
    cfg: PipelineConfig,
    seed: int,
    fn: Callable[[tf.Tensor, tf.Tensor], Any],
) -> tf.data.Dataset:
    """``(fn(images, batch_seed), labels, ...)`` for every batch (seeds: :func:`_batch_seeds`)."""
    zipped = tf.data.Dataset.zip((ds, _batch_seeds(seed)))

    def _apply(element: tuple[Any, ...], s: tf.Tensor) -> tuple[Any, ...]:
        image, *rest = element
        return (fn(image, s), *rest)

    return zipped.map(_apply, num_parallel_calls=AUTOTUNE, deterministic=cfg.deterministic)


def _augment(ds: tf.data.Dataset, cfg: PipelineConfig, seed: int) -> tf.data.Dataset:
    """Augment batches (:func:`augment_batch`) with one seed per batch and epoch."""
    return _per_batch(ds, cfg, seed, lambda image, s: augment_batch(image, cfg.augment, s))


def _with_seeds(ds: tf.data.Dataset, cfg: PipelineConfig, seed: int) -> tf.data.Dataset:
    """``((uint8 images, seeds), labels, ...)``: the batch's seed repeated on every row.

    Per row, not one ``[2]`` tensor: a distribution strategy splits every input along the
    batch axis, and each replica then still finds its seed in row 0.
    """

    def pair(image: tf.Tensor, s: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return image, tf.tile(s[tf.newaxis], [tf.shape(image)[0], 1])

    return _per_batch(ds, cfg, seed, pair)
