"""The prepare stage's library: snapshot → validated, de-duplicated, split, sharded TFRecords.

Every file is accounted for: it becomes an example in exactly one split, or a row in
``quarantine.csv`` with a reason (undecodable, duplicate, no label, ...). ``stats.json``
counts both, and the summary logged at the end says what happened, so nothing is dropped
silently.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import logging
import multiprocessing
import os
import tempfile
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from reprotrain import fsio
from reprotrain.config import PrepareConfig
from reprotrain.data import images, sources, split, tfrecords
from reprotrain.data.schema import SPLITS
from reprotrain.errors import DataError
from reprotrain.progress import progress as progress_bar
from reprotrain.timing import timed

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("path", "label", "label_index", "split", "sha256", "height", "width")
SPLIT_ORDER = {s: i for i, s in enumerate(SPLITS)}
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


@dataclass
class Summary:
    """What prepare produced; also written as ``stats.json``."""

    layout: str
    labels: list[str]
    counts: dict[str, dict[str, int]]  # split → class → n
    quarantine: list[sources.Problem]
    duplicates: int
    files_seen: int
    bytes: dict[str, int] = field(default_factory=dict)
    shards: dict[str, int] = field(default_factory=dict)
    #: How images were normalised (``prepare.max_side``, ``jpeg_quality``): predict and
    #: serving read it from ``stats.json`` to see a photo exactly as training did.
    normalization: dict[str, Any] = field(default_factory=dict)

    def as_stats(self) -> dict[str, Any]:
        reasons = Counter(_reason_kind(p.reason) for p in self.quarantine)
        return {
            "layout": self.layout,
            "files_seen": self.files_seen,
            "images": sum(sum(c.values()) for c in self.counts.values()),
            "classes": self.labels,
            "splits": {
                s: {"total": sum(self.counts[s].values()), "classes": self.counts[s]}
                for s in SPLITS
            },
            "quarantined": len(self.quarantine),
            "quarantine_reasons": dict(sorted(reasons.items())),
            "duplicates": self.duplicates,
            "bytes": self.bytes,
            "shards": self.shards,
            "normalization": self.normalization,
        }


def _reason_kind(reason: str) -> str:
    """``"corrupt or truncated image (...)"`` → ``"corrupt or truncated image"``."""
    if reason.startswith("duplicate"):
        return "duplicate"
    return reason.split(" (")[0].split(":")[0]


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


def drop_duplicates(decoded: Sequence[Decoded]) -> tuple[list[Decoded], list[sources.Problem]]:
    """One example per content hash; the other copies are quarantined with the reason.

    Copies under different classes are all quarantined (the label is ambiguous). Copies under
    one class keep the first in (train, val, test, path) order: a duplicate shared by train
    and test would otherwise leak the answer into the evaluation.
    """
    groups: dict[str, list[Decoded]] = defaultdict(list)
    for d in decoded:
        groups[d.sha256].append(d)
    kept, problems = [], []
    for members in groups.values():
        members.sort(
            key=lambda d: (SPLIT_ORDER.get(d.candidate.split or "train"), d.candidate.path)
        )
        labels = sorted({d.candidate.label for d in members})
        if len(labels) > 1:
            for d in members:
                problems.append(
                    sources.Problem(
                        d.candidate.path,
                        f"duplicate: the same content is labelled {' and '.join(labels)}",
                    )
                )
            continue
        kept.append(members[0])
        for d in members[1:]:
            problems.append(
                sources.Problem(d.candidate.path, f"duplicate of {members[0].candidate.path}")
            )
    kept.sort(key=lambda d: d.candidate.path)
    return kept, problems


@timed("data")
def prepare(
    raw_dir: Path,
    out_dir: Path,
    cfg: PrepareConfig,
    seed: int,
    ledger: Path | None = None,
    workers: int | None = None,
) -> Summary:
    """Turn the snapshot in ``raw_dir`` into ``out_dir`` (recreated from scratch, then
    swapped in whole for the previous one: never a half-written folder).

    ``ledger`` (``data/splits.csv``) holds the previous split assignment: read, kept, and
    rewritten with the new images' splits (see :mod:`reprotrain.data.split`). Without
    it, the splits are assigned from scratch and not recorded. ``workers``: decoding
    processes (default: every available core); the output bytes do not depend on it.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    layout, candidates, quarantine = sources.scan(raw_dir)
    files_seen = len(candidates) + len(quarantine)
    if not candidates:
        raise DataError(f"{raw_dir}: no image files found (layout: {layout})")
    log.info("prepare: %d files (%s layout) in %s", files_seen, layout, raw_dir)

    with tempfile.TemporaryFile(prefix="prepare-spool-") as spool:
        return _prepare(
            raw_dir, out_dir, cfg, seed, ledger, layout, candidates, quarantine, spool, workers
        )


def _prepare(
    raw_dir: Path,
    out_dir: Path,
    cfg: PrepareConfig,
    seed: int,
    ledger: Path | None,
    layout: str,
    candidates: list[sources.Candidate],
    quarantine: list[sources.Problem],
    spool: BinaryIO,
    workers: int | None,
) -> Summary:
    files_seen = len(candidates) + len(quarantine)
    decoded = decode_all(raw_dir, candidates, cfg, spool, workers)
    usable = []
    for d in decoded:
        if isinstance(d.result, images.Rejected):
            quarantine.append(sources.Problem(d.candidate.path, d.result.reason))
        else:
            usable.append(d)
    all_labels = sorted({c.label for c in candidates})
    usable, dup_problems = drop_duplicates(usable)
    quarantine += dup_problems
    labels = sorted({d.candidate.label for d in usable})
    empty = [c for c in all_labels if c not in labels]
    if empty:
        raise DataError(
            f"class {', '.join(empty)} has no usable images (all quarantined; see the reasons "
            f"above). Fix or remove the class folder"
        )
    if len(labels) < 2:
        raise DataError(f"only one class ({labels[0]}): a classifier needs at least two")

    items = [split.Item(d.sha256, d.candidate.label, d.candidate.split) for d in usable]
    previous = split.read_ledger(ledger) if ledger is not None else {}
    assignment = split.assign_splits(
        items,
        previous,
        seed=seed,
        fractions=split.Fractions(cfg.val_fraction, cfg.test_fraction, cfg.test_from_val),
    )
    if ledger is not None:
        split.report(assignment, ledger)
    items: dict[str, list[tuple[Decoded, int]]] = {s: [] for s in SPLITS}
    rows = []
    counts = {s: {c: 0 for c in labels} for s in SPLITS}
    for d in usable:
        c, img = d.candidate, d.result
        assert isinstance(img, Stored)
        s = assignment.ledger[d.sha256].split
        index = labels.index(c.label)
        items[s].append((d, index))
        counts[s][c.label] += 1
        rows.append([c.path, c.label, index, s, d.sha256, img.height, img.width])
    by_split = {s: SpooledRecords(items[s], spool) for s in SPLITS}
    pinned = Counter(d.candidate.label for d in usable if d.sha256 in previous)
    split.check_coverage(
        {(s, c): n for s, cs in counts.items() for c, n in cs.items()}, labels, pinned, ledger
    )

    summary = Summary(
        layout,
        labels,
        counts,
        sorted(quarantine, key=lambda p: p.path),
        len(dup_problems),
        files_seen,
        normalization={"max_side": cfg.max_side, "jpeg_quality": cfg.jpeg_quality},
    )
    # Built beside the old folder and swapped in whole (fsio.atomic_path): a kill at any
    # moment leaves the previous data/prepared or the new one, never shards without metadata.
    fsio.remove_stale_temporaries(out_dir.parent, out_dir.name)
    with fsio.atomic_path(out_dir) as new_dir:
        write_prepared(new_dir, by_split, summary, rows, cfg.shard_size)
    if ledger is not None:  # last: a failed prepare leaves the previous ledger as it was
        split.write_ledger(ledger, assignment.ledger)
    log_summary(summary, out_dir)
    return summary


def write_prepared(
    out_dir: Path,
    by_split: dict[str, SpooledRecords],
    summary: Summary,
    rows: list[list[Any]],
    shard_size: int,
) -> None:
    """Every file of a prepared folder into the new, empty ``out_dir``: the shards of each
    split, ``shards.json``, then the metadata (:func:`write_metadata`)."""
    out_dir.mkdir(parents=True)
    progress = progress_bar(sum(len(r) for r in by_split.values()), "write TFRecords")
    index: dict[str, list[dict[str, Any]]] = {}
    for s in SPLITS:
        shards = tfrecords.write_split(by_split[s], out_dir, s, shard_size, progress.update)
        summary.shards[s] = len(shards)
        summary.bytes[s] = sum(p.stat().st_size for p in shards)
        index[s] = tfrecords.describe_shards(shards, len(by_split[s]), shard_size)
    progress.close()
    tfrecords.write_shard_index(out_dir, index)
    write_metadata(out_dir, summary, rows)


def write_metadata(out_dir: Path, summary: Summary, rows: list[list[Any]]) -> None:
    """``labels.json``, ``manifest.csv``, ``stats.json`` and ``quarantine.csv``."""
    (out_dir / "labels.json").write_text(json.dumps(summary.labels, indent=2) + "\n")
    with (out_dir / "manifest.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(MANIFEST_COLUMNS)
        w.writerows(sorted(rows, key=lambda r: (SPLIT_ORDER[r[3]], r[0])))
    with (out_dir / "quarantine.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(("path", "reason"))
        w.writerows((p.path, p.reason) for p in summary.quarantine)
    (out_dir / "stats.json").write_text(json.dumps(summary.as_stats(), indent=2) + "\n")


def log_summary(summary: Summary, out_dir: Path) -> None:
    """The readable end-of-stage report: a split × class table and the quarantine."""
    width = max(8, *(len(c) for c in summary.labels))
    lines = [f"{'class':<{width}} " + " ".join(f"{s:>7}" for s in SPLITS)]
    for c in summary.labels:
        lines.append(f"{c:<{width}} " + " ".join(f"{summary.counts[s][c]:>7}" for s in SPLITS))
    lines.append(
        f"{'total':<{width}} " + " ".join(f"{sum(summary.counts[s].values()):>7}" for s in SPLITS)
    )
    stats = summary.as_stats()
    log.info(
        "prepared %d images from %d files into %s:\n%s",
        stats["images"],
        summary.files_seen,
        out_dir,
        "\n".join(lines),
    )
    if summary.quarantine:
        shown = "\n".join(f"  {p.path}: {p.reason}" for p in summary.quarantine[:20])
        more = len(summary.quarantine) - 20
        log.warning(
            "quarantined %d file(s) (%s), listed in %s:\n%s%s",
            len(summary.quarantine),
            ", ".join(f"{k}: {v}" for k, v in stats["quarantine_reasons"].items()),
            out_dir / "quarantine.csv",
            shown,
            f"\n  ... and {more} more" if more > 0 else "",
        )
    else:
        log.info("quarantined 0 files")
