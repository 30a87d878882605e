"""Which tf.data cache a split gets (memory, a file, none) and the cache files' safety.

Why a module of its own: the cache is where the pipeline's correctness depends on the
file system, not on tensors. ``pipeline.cache: auto`` (default) keeps the decoded split in
memory when it fits ``pipeline.cache_memory_mb`` and otherwise writes a tf.data cache file
keyed by the shards' digest (:func:`choose_cache`, :func:`cache_path`), so a stale cache is
never read; parallel experiments share a finished file, and only its owner writes or clears
an unfinished one (:func:`claim_cache`, :func:`clear_unfinished_cache`).
:func:`cache_dataset` is the pipeline's cache step (:mod:`reprotrain.data.pipeline`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tensorflow as tf

from reprotrain.config import PipelineConfig
from reprotrain.data import tfrecords
from reprotrain.errors import DataError
from reprotrain.fsio import file_sha256

log = logging.getLogger(__name__)

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


def recorded_shards(folders: Iterable[Path]) -> dict[Path, dict[str, dict]]:
    """Each folder's ``shards.json`` entries by shard file name (``{}`` without a record)."""
    recorded: dict[Path, dict[str, dict]] = {}
    for folder in folders:
        if folder not in recorded:
            try:
                index = tfrecords.read_shard_index(folder)
            except DataError:
                index = {}
            recorded[folder] = {e["file"]: e for es in index.values() for e in es}
    return recorded


def count_records(files: Sequence[Path | str]) -> int | None:
    """Examples in ``files``, from ``shards.json`` (None when a shard is not recorded)."""
    paths = [Path(x) for x in files]
    recorded = recorded_shards(f.parent for f in paths)
    total = 0
    for f in paths:
        entry = recorded[f.parent].get(f.name)
        if not entry or "records" not in entry or entry.get("bytes") != f.stat().st_size:
            return None
        total += int(entry["records"])
    return total


def cache_dataset(
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
    shards = sorted(Path(x) for x in files)
    recorded = recorded_shards(f.parent for f in shards)
    identity = []
    for f in shards:
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
