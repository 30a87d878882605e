"""Snapshot ``data.source`` (URL, folder, archive or CSV manifest) into ``data/raw``.

Why a snapshot: the source lives outside the repo, where DVC cannot see it change; copying
it into a DVC-tracked folder gives every later stage a content hash (recorded in
``dvc.lock``) and makes a run reproducible after the source moved or changed. Unchanged
files are not copied again, downloads are cached, and the source is never modified.

``data/raw`` afterwards holds either the image tree (class folders, or ``train/ val/
[test/]`` with class folders) or, for a CSV source, ``snapshot.csv``
(:data:`reprotrain.data.csv_source.SNAPSHOT_INDEX`) plus the files it lists.

This module is the stage's recipe and the snapshot's digest; each step is its own module:
where the bytes come from (:mod:`~reprotrain.data.origin`), what a source may bring
(:mod:`~reprotrain.data.listing`, decided before ``data/raw`` is touched), the all-or-nothing
copy (:mod:`~reprotrain.data.sync`), CSV manifests (:mod:`~reprotrain.data.csv_source`) and
the report of what was left out, ``data/raw/.fetch-quarantine.csv``
(:mod:`~reprotrain.data.quarantine`), which prepare adds to its ``quarantine.csv``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from reprotrain.data.csv_source import snapshot_manifest
from reprotrain.data.listing import Listing, check_no_empty_dirs, list_files, walk
from reprotrain.data.origin import (
    ArchiveLimits,
    default_cache_dir,
    extract_archive,
    resolve_origin,
    source_kind,
)
from reprotrain.data.quarantine import FETCH_REPORT, Quarantined
from reprotrain.data.sync import read_stamps, sync_tree
from reprotrain.errors import DataError
from reprotrain.fsio import atomic_write_json, file_sha256
from reprotrain.timing import timed

if TYPE_CHECKING:
    from reprotrain.config import DataConfig

log = logging.getLogger(__name__)

__all__ = [
    "FetchResult",
    "SnapshotState",
    "fetch",
    "fetch_source",
    "quarantine_note",
    "summary",
    "tree_digest",
]

#: Quarantined entries :func:`quarantine_note` shows (all of them are in the report).
SHOWN = 10


@dataclass(frozen=True)
class FetchResult:
    """What was snapshotted, for the stage's summary line."""

    kind: str  # url | directory | archive | csv
    origin: str  # where the bytes actually came from (URL, mirror, path)
    files: int
    copied: int
    removed: int
    digest: str
    unchanged: int = 0  # files already in the snapshot with the same bytes
    quarantined: tuple[Quarantined, ...] = ()  # not snapshotted (see quarantine.FETCH_REPORT)


@dataclass(frozen=True)
class SnapshotState:
    """The two files that let a re-fetch of an unchanged source cost a ``stat`` per file
    instead of reading every byte (both kept outside ``data/raw``: they are not data).

    ``digest_cache``: see :func:`tree_digest` (the snapshot's digest from a ``stat`` per
    unchanged file). ``sync_state``: see :func:`reprotrain.data.sync.sync_tree` (without
    it, a file whose size and mtime match is compared by hash).
    """

    digest_cache: Path | None = None
    sync_state: Path | None = None


def tree_digest(root: Path, cache: Path | None = None, files: list[Path] | None = None) -> str:
    """SHA-256 over ``"<sha256>  <relative path>\\n"`` lines sorted by path.

    The same format as ``sha256sum`` output (relative to the dataset root), so a published
    checksum list can be compared by eye; independent of mtimes and archive packing.
    Files are hashed on a few threads (hashlib releases the GIL while hashing), in order.

    ``cache`` (a JSON file) remembers each file's digest with its size, mtime (ns) and
    inode, as DVC's state database does: fetch runs on every ``dvc repro``, and re-hashing
    an unchanged 100k-file snapshot would cost minutes; with the cache it costs a ``stat``
    per file. A file whose size, mtime or inode changed is hashed again. ``files``: the
    result of ``list_files(root)`` if the caller has it (one walk fewer).
    """
    files = list_files(root) if files is None else files
    known = _read_digest_cache(cache, root) if cache is not None else {}
    seen: dict[str, list] = {}

    def digest(rel: Path) -> str:
        path, key = root / rel, rel.as_posix()
        st = path.stat()
        stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
        hit = known.get(key)
        sha = hit[3] if hit is not None and hit[:3] == stamp else file_sha256(path)
        seen[key] = [*stamp, sha]
        return sha

    h = hashlib.sha256()
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for rel, sha in zip(files, pool.map(digest, files, chunksize=64), strict=True):
            h.update(f"{sha}  {rel.as_posix()}\n".encode())
    if cache is not None:
        atomic_write_json(cache, {"root": str(root.resolve()), "files": seen}, indent=None)
    return h.hexdigest()


def _read_digest_cache(cache: Path, root: Path) -> dict[str, list]:
    """The cached ``{relative path: [size, mtime_ns, inode, sha256]}`` for ``root`` ({} if
    none, unreadable or for another folder: the cache is an optimisation, never an error)."""
    return read_stamps(cache, "root", str(root.resolve()))


@timed("data")
def fetch(
    source: str,
    dst: Path,
    *,
    mirror: str | None = None,
    sha256: str | None = None,
    cache_dir: Path | None = None,
    state: SnapshotState | None = None,
    limits: ArchiveLimits | None = None,
) -> FetchResult:
    """Snapshot ``source`` into ``dst`` and check ``sha256`` for URL sources.

    The digest is checked only for URL sources (a download can be truncated or replaced);
    a local folder is whatever the user put there. ``state``: the files that make an
    unchanged re-fetch cheap (:class:`SnapshotState`; none by default). ``limits``: what
    an archive may expand to (``ArchiveLimits()``).

    The source is listed (and checked) completely before ``dst`` is touched: a source
    with nothing usable, a digest mismatch or an archive over its limits leaves the previous
    snapshot as it was.
    """
    state = state or SnapshotState()
    kind = source_kind(source)
    origin_kind, origin = resolve_origin(source, mirror, cache_dir or default_cache_dir())
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fetch-", dir=dst.parent) as tmp:
        digest = None
        if origin_kind == "csv":
            counts = snapshot_manifest(origin, dst, state.sync_state)
        else:
            root, left_out = _unpack(origin_kind, origin, Path(tmp) / "x", limits)
            listing = _usable_listing(source, origin, root, left_out)
            if kind == "url" and sha256:
                digest = _checked_digest(origin, root, listing, sha256)
            # An extracted archive is our own staging tree: move its files, do not copy
            # them (and keep no state: its inodes are new on every extraction).
            move = origin_kind == "archive"
            counts = sync_tree(
                root, dst, listing, move=move, state=None if move else state.sync_state
            )
            if len(counts.quarantined) != len(listing.quarantined):
                digest = None  # a file failed to copy: dst is not the checked root
    snapshot = list_files(dst)
    if not snapshot:
        raise DataError(f"data.source = {source!r}: no files found in {origin}")
    if digest is None:  # else dst is an exact copy of the checked root
        digest = tree_digest(dst, state.digest_cache, snapshot)
    return FetchResult(
        kind,
        str(origin),
        len(snapshot),
        counts.copied,
        counts.removed,
        digest,
        counts.unchanged,
        counts.quarantined,
    )


def fetch_source(data: DataConfig, dst: Path, state: SnapshotState) -> FetchResult:
    """The fetch stage: ``data.source`` snapshotted into ``dst`` as ``data.kind`` needs it
    (an image tree, :func:`fetch`; one table or series file,
    :func:`reprotrain.data.file_fetch.fetch_file`), within ``data.archive_max_*``."""
    limits = ArchiveLimits(
        max_gb=data.archive_max_gb,
        max_ratio=data.archive_max_ratio,
        max_members=data.archive_max_members,
    )
    if data.kind != "images":
        from reprotrain.data.file_fetch import fetch_file  # it imports this module

        return fetch_file(data.source, dst, mirror=data.mirror, sha256=data.sha256, limits=limits)
    return fetch(
        data.source, dst, mirror=data.mirror, sha256=data.sha256, state=state, limits=limits
    )


def summary(result: FetchResult, data_kind: str, dst: Path) -> str:
    """The stage's one line on what was snapshotted (a file kind's file, or the tree)."""
    if data_kind != "images":
        how = "unchanged" if result.unchanged else "copied"
        return f"fetch: {data_kind} source {result.origin} → {dst} ({how}), digest {result.digest}"
    return (
        f"fetch: {result.kind} source {result.origin} → {dst}: {result.files} files "
        f"({result.copied} copied, {result.unchanged} unchanged, {result.removed} removed), "
        f"digest {result.digest}"
    )


def quarantine_note(result: FetchResult, dst: Path, shown: int = SHOWN) -> str | None:
    """The warning on what the source brought that was left out (the first ``shown``; the
    report in ``dst`` lists them all); None when nothing was."""
    left_out = result.quarantined
    if not left_out:
        return None
    lines = "\n".join(f"  {q.path}: {q.reason}" for q in left_out[:shown])
    more = len(left_out) - shown
    return (
        f"fetch left out {len(left_out)} entr{'y' if len(left_out) == 1 else 'ies'} of the "
        f"source, listed in {dst / FETCH_REPORT} (prepare quarantines them):\n{lines}"
        + (f"\n  ... and {more} more" if more > 0 else "")
    )


def _unpack(
    origin_kind: str, origin: Path, staging: Path, limits: ArchiveLimits | None
) -> tuple[Path, list[Quarantined]]:
    """The tree to snapshot and the archive members left out: an archive is extracted
    into ``staging``, a folder is used where it is."""
    if origin_kind != "archive":
        return origin, []
    log.info("extracting %s", origin)
    extracted = extract_archive(origin, staging, limits)
    return extracted.root, extracted.quarantined


def _usable_listing(source: str, origin: Path, root: Path, left_out: list[Quarantined]) -> Listing:
    """:func:`walk` of ``root`` with ``left_out`` added to what it quarantines; an error when
    nothing in it can be snapshotted (or a class folder is empty)."""
    check_no_empty_dirs(root)
    listing = walk(root)
    quarantined = [*left_out, *listing.quarantined]
    if not listing.files:
        raise DataError(_nothing_usable(source, origin, quarantined))
    return Listing(listing.files, quarantined)


def _checked_digest(origin: Path, root: Path, listing: Listing, sha256: str) -> str:
    """The digest of the listed files of ``root``, which must be ``data.sha256``."""
    digest = tree_digest(root, files=[Path(f) for f in listing.files])
    if digest != sha256:
        raise DataError(
            f"{origin}: content digest {digest} does not match data.sha256 = "
            f"{sha256} (a truncated or different download?). Delete the cached "
            "file and retry, or set data.sha256: null if you changed data.source "
            "on purpose"
        )
    return digest


def _nothing_usable(source: str, origin: Path, quarantined: list[Quarantined]) -> str:
    if not quarantined:
        return f"data.source = {source!r}: no files found in {origin}"
    first = quarantined[0]
    return (
        f"data.source = {source!r}: no usable file in {origin}: all {len(quarantined)} "
        f"entries are left out (e.g. {first.path}: {first.reason})"
    )
