"""The prepare stage's library: snapshot → validated, de-duplicated, split, sharded TFRecords.

Every file is accounted for: it becomes an example in exactly one split, or a row in
``quarantine.csv`` with a reason (undecodable, duplicate, no label, ...). ``stats.json``
counts both, and the summary logged at the end says what happened, so nothing is dropped
silently.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reprotrain.config import PrepareConfig
from reprotrain.data import images, sources, split, tfrecords
from reprotrain.data.schema import SPLITS
from reprotrain.errors import DataError
from reprotrain.progress import progress as progress_bar

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("path", "label", "label_index", "split", "sha256", "height", "width")
SPLIT_ORDER = {s: i for i, s in enumerate(SPLITS)}


@dataclass(frozen=True)
class Decoded:
    """A candidate after decoding: its content hash and the normalised image (or a reason)."""

    candidate: sources.Candidate
    sha256: str
    result: images.Normalized | images.Rejected


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


def decode_all(
    raw_dir: Path,
    candidates: Sequence[sources.Candidate],
    cfg: PrepareConfig,
    workers: int | None = None,
) -> list[Decoded]:
    """Read, hash and normalise every candidate once, in parallel, keeping input order."""

    def work(c: sources.Candidate) -> Decoded:
        try:
            data = (raw_dir / c.path).read_bytes()
        except OSError as exc:
            return Decoded(c, "", images.Rejected(f"cannot read the file ({exc.strerror})"))
        sha = hashlib.sha256(data).hexdigest()
        return Decoded(c, sha, images.normalize(data, cfg.max_side, cfg.jpeg_quality))

    progress = progress_bar(len(candidates), "decode")
    out = []
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        for item in pool.map(work, candidates):
            out.append(item)
            progress.update(1)
    progress.close()
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


def prepare(
    raw_dir: Path,
    out_dir: Path,
    cfg: PrepareConfig,
    seed: int,
    ledger: Path | None = None,
) -> Summary:
    """Turn the snapshot in ``raw_dir`` into ``out_dir`` (recreated from scratch).

    ``ledger`` (``data/splits.csv``) holds the previous split assignment: read, kept, and
    rewritten with the new images' splits (see :mod:`reprotrain.data.split`). Without
    it, the splits are assigned from scratch and not recorded.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    layout, candidates, quarantine = sources.scan(raw_dir)
    files_seen = len(candidates) + len(quarantine)
    if not candidates:
        raise DataError(f"{raw_dir}: no image files found (layout: {layout})")
    log.info("prepare: %d files (%s layout) in %s", files_seen, layout, raw_dir)

    decoded = decode_all(raw_dir, candidates, cfg)
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
    by_split: dict[str, list[tfrecords.Record]] = {s: [] for s in SPLITS}
    rows = []
    for d in usable:
        c, img = d.candidate, d.result
        assert isinstance(img, images.Normalized)
        s = assignment.ledger[d.sha256].split
        index = labels.index(c.label)
        by_split[s].append(
            tfrecords.Record(img.jpeg, index, c.label, c.path, d.sha256, img.height, img.width)
        )
        rows.append([c.path, c.label, index, s, d.sha256, img.height, img.width])
    counts = {s: {c: 0 for c in labels} for s in SPLITS}
    for s, recs in by_split.items():
        for r in recs:
            counts[s][r.label_name] += 1
    split.check_coverage({(s, c): n for s, cs in counts.items() for c, n in cs.items()}, labels)

    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    summary = Summary(
        layout,
        labels,
        counts,
        sorted(quarantine, key=lambda p: p.path),
        len(dup_problems),
        files_seen,
        normalization={"max_side": cfg.max_side, "jpeg_quality": cfg.jpeg_quality},
    )
    import tensorflow  # noqa: F401  (imported here so the progress clock excludes it)

    progress = progress_bar(len(usable), "write TFRecords")
    index: dict[str, list[dict[str, Any]]] = {}
    for s in SPLITS:
        shards = tfrecords.write_split(by_split[s], out_dir, s, cfg.shard_size, progress.update)
        summary.shards[s] = len(shards)
        summary.bytes[s] = sum(p.stat().st_size for p in shards)
        index[s] = tfrecords.describe_shards(shards, len(by_split[s]), cfg.shard_size)
    progress.close()
    tfrecords.write_shard_index(out_dir, index)
    write_metadata(out_dir, summary, rows)
    if ledger is not None:  # last: a failed prepare leaves the previous ledger as it was
        split.write_ledger(ledger, assignment.ledger)
    log_summary(summary, out_dir)
    return summary


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
