"""Decoding for prepare: every candidate file read, hashed and normalised once, on all
cores, its JPEG bytes parked in a spool file and read back one shard at a time.

Why a module of its own: this is where prepare spends its time and memory. The worker pool,
the bounded in-order window (:func:`ordered_map`) and the spool keep peak memory flat
whatever the dataset size, and the output bytes independent of the number of workers; the
rest of prepare (:mod:`reprotrain.data.prepare`) only decides what becomes of each image.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

from reprotrain.config import PrepareConfig
from reprotrain.data import images, sources, tfrecords
from reprotrain.progress import progress as progress_bar

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Stored:
    """A normalised image whose JPEG bytes wait in the spool file, not in memory."""

    offset: int
    length: int
    height: int
    width: int


@dataclass(frozen=True)
class Decoded:
    """A candidate after decoding: its content hash and the stored image (or a reason)."""

    candidate: sources.Candidate
    sha256: str
    result: Stored | images.Rejected


class SpooledRecords(Sequence[tfrecords.Record]):
    """Records whose JPEG bytes are read from the spool only when a shard is written:
    ``write_split`` slices one shard at a time, so memory holds one shard, not the dataset."""

    def __init__(self, items: list[tuple[Decoded, int]], spool: BinaryIO) -> None:
        self._items, self._spool = items, spool

    def __len__(self) -> int:
        return len(self._items)

    def _record(self, d: Decoded, index: int) -> tfrecords.Record:
        stored = d.result
        assert isinstance(stored, Stored)
        self._spool.seek(stored.offset)
        jpeg = self._spool.read(stored.length)
        c = d.candidate
        return tfrecords.Record(jpeg, index, c.label, c.path, d.sha256, stored.height, stored.width)

    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, slice):
            return [self._record(*item) for item in self._items[key]]
        return self._record(*self._items[key])


def decode_one(
    path: Path, max_side: int | None, quality: int
) -> tuple[str, images.Normalized | images.Rejected]:
    """Read, hash and normalise one file (runs in a worker process)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return "", images.Rejected(f"cannot read the file ({exc.strerror})")
    return hashlib.sha256(data).hexdigest(), images.normalize(data, max_side, quality)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask: a container's or ``taskset``'s
    limit, which ``os.cpu_count()`` ignores)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def ordered_map(
    submit: Callable[[T], Future[R]], items: Iterable[T], window: int
) -> Iterator[tuple[T, R]]:
    """``(item, result)`` in input order, with at most ``window`` submitted and not yet yielded.

    Why not ``executor.map``: it submits every item up front, so 100k paths become 100k
    pending futures and, as workers outrun the consumer, 100k finished results (decoded
    JPEGs) held in memory at once. Here ``items`` is pulled lazily (it may be a generator)
    and the next one is submitted only when the oldest result is handed out, so memory holds
    ``window`` results whatever the dataset size, and the order (hence the output bytes) does
    not depend on which worker finished first.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    pending: deque[tuple[T, Future[R]]] = deque()
    todo = iter(items)
    for item in itertools.islice(todo, window):
        pending.append((item, submit(item)))
    while pending:
        item, future = pending.popleft()
        result = future.result()
        for nxt in itertools.islice(todo, 1):
            pending.append((nxt, submit(nxt)))
        yield item, result


def decode_all(
    raw_dir: Path,
    candidates: Sequence[sources.Candidate],
    cfg: PrepareConfig,
    spool: BinaryIO,
    workers: int | None = None,
) -> list[Decoded]:
    """Read, hash and normalise every candidate once, on all cores, keeping input order.

    Why processes: PIL's decode, resize and encode hold the GIL for much of their work, so
    threads used about one core. Why :func:`ordered_map` and a spool file: the normalised
    JPEGs are appended to ``spool`` as they arrive, in input order, and only their offsets
    stay in memory (~200 bytes per image), so peak memory does not grow with the dataset.
    The output is the same for any number of workers (each file is processed on its own).
    """
    workers = workers or available_cores()
    out: list[Decoded] = []
    # fork where available: spawn would re-import the caller's __main__ in every worker (the
    # stage script imports MLflow: seconds per worker) and breaks in unguarded scripts. The
    # pool starts before the progress bar's monitor thread exists; workers only run PIL and
    # hashlib, and logging re-creates its locks after a fork.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:

        def submit(c: sources.Candidate) -> Future:
            return pool.submit(decode_one, raw_dir / c.path, cfg.max_side, cfg.jpeg_quality)

        with progress_bar(len(candidates), f"decode ({workers} workers)", unit="img") as bar:
            # 4 per worker: enough queued that no worker idles while the parent writes.
            for c, (sha, result) in ordered_map(submit, candidates, window=workers * 4):
                if isinstance(result, images.Normalized):
                    offset = spool.seek(0, io.SEEK_END)
                    spool.write(result.jpeg)
                    stored = Stored(offset, len(result.jpeg), result.height, result.width)
                    out.append(Decoded(c, sha, stored))
                else:
                    out.append(Decoded(c, sha, result))
                bar.update(1)
    return out
