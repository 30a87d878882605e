"""Make ``data/raw`` an exact copy of a listed source tree, all or nothing, copying only
what changed.

Why its own module: the sync is where a snapshot can be half-written or silently stale,
so its rules (an atomic swap, one sync of a folder at a time, "in doubt, hash") live in one
place that :mod:`reprotrain.data.fetch` (folders, archives) and
:mod:`reprotrain.data.csv_source` (CSV manifests) both call. What may be copied is decided
before, by :func:`reprotrain.data.listing.walk`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from reprotrain.data.listing import Listing, file_kind, walk
from reprotrain.data.quarantine import Quarantined, write_report
from reprotrain.errors import DataError
from reprotrain.fsio import atomic_path, atomic_write_json, file_sha256, remove_stale_temporaries
from reprotrain.progress import progress as progress_bar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyncCounts:
    """What :func:`sync_tree` did to the snapshot."""

    copied: int
    unchanged: int
    removed: int
    quarantined: tuple[Quarantined, ...] = ()


def read_stamps(path: Path, key: str, value: str) -> dict[str, list]:
    """The ``files`` table of a JSON stamp file whose ``key`` is ``value`` ({} if there is
    none, it is unreadable or it belongs to another folder: stamps are an optimisation,
    never an error). Shared by the sync state and :func:`reprotrain.data.fetch.tree_digest`'s
    cache."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get(key) != value:
        return {}
    files = data.get("files")
    return files if isinstance(files, dict) else {}


def sync_tree(
    src: Path,
    dst: Path,
    listing: Listing | None = None,
    *,
    move: bool = False,
    state: Path | None = None,
    state_key: str | None = None,
) -> SyncCounts:
    """Make ``dst`` an exact copy of ``src``'s regular files (or of ``listing``'s, a
    :func:`walk` of it already made), with the fetch report of what was left out.

    All or nothing: the new snapshot is built beside ``dst`` (``.raw.tmp-*``) and swapped in
    with one atomic exchange (:func:`reprotrain.fsio.atomic_path`), so a reader, a kill or
    an error sees the old snapshot or the new one, never a mix. An unchanged file is not
    copied but hard-linked from the old snapshot (same inode: DVC's and
    :func:`reprotrain.data.fetch.tree_digest`'s caches stay valid); a leftover of a killed
    run is removed first.

    A file is unchanged only when its bytes are known to be the same: the old copy has
    ``src``'s size and mtime in nanoseconds, and ``state`` (a JSON file) recorded, at the
    last sync, the same size, mtime, inode and ctime for the source file and the same inode
    for the copy. ``ctime`` cannot be set by hand: an edit in place that restores the size
    and the mtime (``touch -r``, ``rsync -t``, a coarse clock) still changes it. When only
    size and mtime match (no state, or another stamp), the two files are compared by
    SHA-256 ("in doubt, hash"); anything else is copied. So a re-snapshot of an unchanged
    100k-file folder costs two directory walks, two ``stat`` and a hard link per file, and
    changed bytes always reach ``dst``.

    Memory holds the relative paths, never file contents (copies stream). Only regular
    files are opened (``O_NONBLOCK``, then checked: a FIFO swapped in after the walk cannot
    block the copy); one that cannot be read is quarantined. ``move=True`` renames instead
    of copying (for a staging tree of our own, e.g. an extracted archive, on the same
    filesystem). ``state_key``: what ``state`` belongs to (default: ``src`` resolved).
    """
    listing = walk(src) if listing is None else listing
    key = f"{state_key or src.resolve()} -> {dst.resolve()}"
    dst.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(dst):
        remove_stale_temporaries(dst.parent, dst.name)  # a killed run's, never a live one
        return _sync(src, dst, listing, move, state, key)


@contextlib.contextmanager
def _exclusive(dst: Path) -> Iterator[None]:
    """One sync of ``dst`` at a time (two ``dvc repro`` may both run fetch): a ``flock``
    on a file named after ``dst`` in the temporary folder (not beside it, where git would
    see it), released by the kernel if the process dies. Another user's lock file that we
    cannot open means no lock, not a failed fetch."""
    tag = hashlib.sha256(str(dst.resolve()).encode()).hexdigest()[:16]
    try:
        lock = open(Path(tempfile.gettempdir()) / f"reprotrain-sync-{tag}.lock", "a")  # noqa: SIM115
    except OSError as exc:
        log.debug("no sync lock for %s (%s)", dst, exc)
        yield
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _sync(
    src: Path, dst: Path, listing: Listing, move: bool, state: Path | None, key: str
) -> SyncCounts:
    known = read_stamps(state, "sync", key) if state is not None else {}
    before = set(walk(dst).files) if dst.is_dir() else set()
    stamps: dict[str, list[int]] = {}
    bad = list(listing.quarantined)
    copied = 0
    with atomic_path(dst) as new, progress_bar(len(listing.files), "snapshot", unit="file") as bar:
        made: set[str] = set()
        for rel in listing.files:
            s, old, d = os.path.join(src, rel), os.path.join(dst, rel), os.path.join(new, rel)
            parent = os.path.dirname(d)
            if parent not in made:
                os.makedirs(parent, exist_ok=True)
                made.add(parent)
            try:
                st = os.stat(s)
                if _same_bytes(st, s, old, known.get(rel)):
                    _link(old, d)
                else:
                    _put(s, d, move)
                    copied += 1
                ino = os.lstat(d).st_ino
            except _Unreadable as exc:
                bad.append(Quarantined(rel, str(exc)))
            except OSError as exc:
                raise DataError(f"cannot snapshot {rel} into {dst} ({exc.strerror})") from None
            else:
                stamps[rel] = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, ino]
            bar.update(1)
        new.mkdir(exist_ok=True)  # an empty listing still makes a (checked) snapshot
        write_report(new, bad)
    if state is not None:
        atomic_write_json(state, {"sync": key, "files": stamps}, indent=None)
    kept = len(stamps)
    removed = len(before - stamps.keys())
    return SyncCounts(copied, kept - copied, removed, tuple(sorted(bad, key=lambda q: q.path)))


def _link(old: str, new: str) -> None:
    """``new`` as a hard link to the unchanged ``old`` (a copy where links are refused)."""
    try:
        os.link(old, new)
    except OSError:
        shutil.copy2(old, new)


class _Unreadable(Exception):
    """A source file that cannot be opened as a regular file (the message is the reason)."""


def _same_bytes(st: os.stat_result, src: str, dst: str, recorded: list | None) -> bool:
    """``dst`` holds ``src``'s bytes (see :func:`sync_tree` for when that is known)."""
    try:
        dl = os.lstat(dst)
    except FileNotFoundError:
        return False
    same_stat = (dl.st_size, dl.st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    if not stat.S_ISREG(dl.st_mode) or not same_stat:
        return False
    stamp = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, dl.st_ino]
    if recorded == stamp:
        return True
    with _open_regular(src) as f:  # in doubt: compare the bytes
        return hashlib.file_digest(f, "sha256").hexdigest() == file_sha256(dst)


def _open_regular(path: str) -> io.BufferedReader:
    """``path`` opened for reading if it is a regular file, else :class:`_Unreadable`.

    ``O_NONBLOCK``: opening a FIFO for reading would otherwise wait for a writer forever;
    the type is then checked on the open file itself, so nothing swapped in is read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise _Unreadable(f"cannot read the file ({exc.strerror})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise _Unreadable(f"not a regular file: {file_kind(mode)}, not read")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _put(src: str, dst: str, move: bool) -> None:
    """Copy (or move) the regular file ``src`` to ``dst``, keeping its mtime (ns)."""
    with _open_regular(src) as fsrc:
        st = os.fstat(fsrc.fileno())
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if os.path.lexists(dst):
            os.unlink(dst)
        if move and not os.path.islink(src):
            os.replace(src, dst)
        else:  # from the open file: a link's target, as a regular file
            with open(dst, "wb") as fdst:
                shutil.copyfileobj(fsrc, fdst, 1 << 20)
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.chmod(dst, 0o644)
