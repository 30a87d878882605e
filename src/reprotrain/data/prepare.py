"""The prepare stage's library: snapshot → validated, de-duplicated, split, sharded TFRecords.

Every file is accounted for: it becomes an example in exactly one split, or a row in
``quarantine.csv`` with a reason (undecodable, duplicate, no label, ...). ``stats.json``
counts both, and the summary logged at the end says what happened, so nothing is dropped
silently. Reading and normalising the files is :mod:`reprotrain.data.decoding`; this module
decides what becomes of each image (quarantine, de-duplication, split) and writes the folder.
"""

from __future__ import annotations

import csv
import json
import logging
import tempfile
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from reprotrain import fsio
from reprotrain.config import PrepareConfig
from reprotrain.data import images, sources, split, tfrecords
from reprotrain.data.decoding import Decoded, SpooledRecords, Stored, decode_all
from reprotrain.data.schema import SPLITS
from reprotrain.errors import DataError
from reprotrain.progress import progress as progress_bar
from reprotrain.timing import timed

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("path", "label", "label_index", "split", "sha256", "height", "width")
SPLIT_ORDER = {s: i for i, s in enumerate(SPLITS)}


@dataclass(frozen=True)
class Scan:
    """The snapshot as :func:`sources.scan` found it: the image files to decode and the files
    already quarantined (one value, because every later step needs them together)."""

    raw_dir: Path
    layout: str
    candidates: list[sources.Candidate]
    quarantine: list[sources.Problem]

    @property
    def files_seen(self) -> int:
        return len(self.candidates) + len(self.quarantine)


@dataclass(frozen=True)
class Target:
    """Where and how the prepared folder is made: :func:`prepare`'s arguments, as given."""

    out_dir: Path
    cfg: PrepareConfig
    seed: int
    ledger: Path | None
    workers: int | None


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
    raw_dir = Path(raw_dir)
    scan = Scan(raw_dir, *sources.scan(raw_dir))
    if not scan.candidates:
        raise DataError(f"{raw_dir}: no image files found (layout: {scan.layout})")
    log.info("prepare: %d files (%s layout) in %s", scan.files_seen, scan.layout, raw_dir)

    with tempfile.TemporaryFile(prefix="prepare-spool-") as spool:
        return _prepare(scan, Target(Path(out_dir), cfg, seed, ledger, workers), spool)


def _prepare(scan: Scan, target: Target, spool: BinaryIO) -> Summary:
    cfg, ledger, out_dir = target.cfg, target.ledger, target.out_dir
    candidates, quarantine = scan.candidates, list(scan.quarantine)
    decoded = decode_all(scan.raw_dir, candidates, cfg, spool, target.workers)
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
        seed=target.seed,
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
        scan.layout,
        labels,
        counts,
        sorted(quarantine, key=lambda p: p.path),
        len(dup_problems),
        scan.files_seen,
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
