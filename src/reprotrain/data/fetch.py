"""Snapshot ``data.source`` (URL, folder, archive or CSV manifest) into ``data/raw``.

Why a snapshot: the source lives outside the repo, where DVC cannot see it change; copying
it into a DVC-tracked folder gives every later stage a content hash (recorded in
``dvc.lock``) and makes a run reproducible after the source moved or changed. Unchanged
files are not copied again, downloads are cached, and the source is never modified.

``data/raw`` afterwards holds either the image tree (class folders, or ``train/ val/
[test/]`` with class folders) or, for a CSV source, ``snapshot.csv`` (:data:`SNAPSHOT_INDEX`)
plus the files it lists. (Not ``manifest.csv``: that name belongs to prepare's per-image
table in ``data/prepared``, which other stages read.)

What a snapshot may contain (:func:`walk` decides, before ``data/raw`` is touched): regular
files of the source only. A symbolic link (to a file or a folder) is followed when its
target is inside the source, and quarantined otherwise; so are dangling links, link loops,
FIFOs, sockets, devices and names that are not UTF-8. Quarantined entries are never opened;
they are listed with their reason in ``data/raw/.fetch-quarantine.csv``
(:data:`FETCH_REPORT`), which prepare adds to its ``quarantine.csv``.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from reprotrain.data.origin import (
    ArchiveLimits,
    Quarantined,
    default_cache_dir,
    extract_archive,
    printable,
    resolve_origin,
    source_kind,
)
from reprotrain.errors import DataError
from reprotrain.fsio import (
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    file_sha256,
    remove_stale_temporaries,
)
from reprotrain.progress import progress as progress_bar
from reprotrain.timing import timed

log = logging.getLogger(__name__)

#: The CSV snapshot's index in ``data/raw``: ``path,label[,split]`` rows (paths relative to it).
SNAPSHOT_INDEX = "snapshot.csv"
#: fetch's quarantine report in ``data/raw`` (``path,reason``; hidden: not data, not a class).
FETCH_REPORT = ".fetch-quarantine.csv"
#: Columns a CSV manifest may have (``split`` optional).
MANIFEST_COLUMNS = ("path", "label", "split")

__all__ = ["FETCH_REPORT", "SNAPSHOT_INDEX", "FetchResult", "Quarantined", "fetch", "walk"]


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
    quarantined: tuple[Quarantined, ...] = ()  # not snapshotted (see FETCH_REPORT)


@dataclass(frozen=True)
class SyncCounts:
    """What :func:`sync_tree` did to the snapshot."""

    copied: int
    unchanged: int
    removed: int
    quarantined: tuple[Quarantined, ...] = ()


@dataclass(frozen=True)
class Listing:
    """A source tree as :func:`walk` sees it: the files to snapshot and what is left out."""

    files: list[str]  # relative POSIX paths, sorted
    quarantined: list[Quarantined] = field(default_factory=list)


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # os gave undecodable bytes as surrogates
        return False
    return True


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


def walk(root: Path) -> Listing:
    """Every regular file under ``root`` (sorted relative paths) and the entries left out.

    The one place that decides what a source may bring (module docstring): regular files;
    links whose target (resolved) stays inside ``root``, files or folders, followed; the rest
    quarantined with the reason, never opened: links leaving ``root``, dangling links, link
    loops, FIFOs, sockets, devices, names that are not UTF-8, unreadable folders. Hidden
    entries (``.DS_Store``, ``._foo.jpg`` AppleDouble files, ``.git``) are OS litter, not
    data, and skipped. It never raises: a listing is complete before anything is copied.

    Built from ``os.scandir`` strings: the entry types come from the directory itself, so a
    100k-file walk costs no ``stat`` per regular file.
    """
    base = os.path.realpath(root)
    files: list[str] = []
    bad: list[Quarantined] = []
    # (path to list, its relative prefix, its resolved path, resolved folders above it)
    stack: list[tuple[str, str, str, tuple[str, ...]]] = [(os.fspath(root), "", base, (base,))]
    while stack:
        path, prefix, real, above = stack.pop()
        try:
            with os.scandir(path) as it:
                entries = list(it)
        except OSError as exc:
            bad.append(
                Quarantined(printable(prefix or "."), f"cannot list the folder ({exc.strerror})")
            )
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            rel = prefix + entry.name
            if not _is_utf8(entry.name):
                what = "folder" if entry.is_dir(follow_symlinks=False) else "file"
                bad.append(
                    Quarantined(printable(rel), f"{what} name is not valid UTF-8: rename it")
                )
                continue
            if entry.is_symlink():
                found = _follow(entry, base, above)
                if isinstance(found, str):
                    bad.append(Quarantined(rel, found))
                elif found[0]:
                    stack.append((entry.path, rel + "/", found[1], (*above, found[1])))
                else:
                    files.append(rel)
            elif entry.is_dir(follow_symlinks=False):
                sub = os.path.join(real, entry.name)
                stack.append((entry.path, rel + "/", sub, (*above, sub)))
            elif entry.is_file(follow_symlinks=False):
                files.append(rel)
            else:
                mode = _lstat_mode(entry)
                bad.append(Quarantined(rel, f"not a regular file: {file_kind(mode)}, not read"))
    files.sort()
    bad.sort(key=lambda q: q.path)
    return Listing(files, bad)


def _lstat_mode(entry: os.DirEntry) -> int:
    try:
        return entry.stat(follow_symlinks=False).st_mode
    except OSError:
        return 0


def _follow(entry: os.DirEntry, base: str, above: tuple[str, ...]) -> tuple[bool, str] | str:
    """A symbolic link's verdict: ``(is_folder, resolved target)`` to follow it, or why not."""
    target = os.path.realpath(entry.path)
    try:
        shown = printable(os.readlink(entry.path))
    except OSError:
        shown = "?"
    if not _inside(target, base):
        return f"symbolic link outside the source, not followed (to {shown})"
    try:
        st = os.stat(entry.path)
    except FileNotFoundError:
        return f"dangling symbolic link, nothing to read (to {shown})"
    except OSError as exc:
        return f"symbolic link that cannot be followed ({exc.strerror}: to {shown})"
    if stat.S_ISDIR(st.st_mode):
        if target in above:
            return f"symbolic link loop, not followed (to {shown}, a folder that contains it)"
        return True, target
    if stat.S_ISREG(st.st_mode):
        return False, target
    return f"not a regular file: a symbolic link to {file_kind(st.st_mode)}, not read"


def list_files(root: Path) -> list[Path]:
    """The regular files :func:`walk` finds under ``root``, as sorted relative paths."""
    return [Path(p) for p in walk(root).files]


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
    return _read_keyed_json(cache, "root", str(root.resolve()))


def _read_keyed_json(path: Path, key: str, value: str) -> dict[str, list]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get(key) != value:
        return {}
    files = data.get("files")
    return files if isinstance(files, dict) else {}


# --------------------------------------------------------------------------- syncing


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
    :func:`tree_digest`'s caches stay valid); a leftover of a killed run is removed first.

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
    known = _read_keyed_json(state, "sync", key) if state is not None else {}
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


def check_no_empty_dirs(root: Path) -> None:
    """An empty folder is most likely a class whose images were not copied yet.

    A snapshot cannot keep it (DVC does not track empty folders), so it would vanish
    silently; say so instead.
    """
    has_files: dict[Path, bool] = {}
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        path = Path(dirpath)
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        has_files[path] = any(not f.startswith(".") for f in filenames) or any(
            has_files.get(path / d, True) for d in dirnames if not d.startswith(".")
        )
    empty = sorted(p for p, ok in has_files.items() if not ok and p != root)
    if empty:
        rel = printable(empty[0].relative_to(root).as_posix())
        raise DataError(
            f"folder {rel}/ in the data source is empty (a class without images?): "
            "add images or remove the folder"
        )


def write_report(dst: Path, quarantined: Iterable[Quarantined]) -> None:
    """``dst/.fetch-quarantine.csv`` (``path,reason``) listing what fetch left out, or no
    such file when nothing was (so an unchanged clean source leaves ``data/raw`` as it was)."""
    rows = sorted(quarantined, key=lambda q: q.path)
    target = dst / FETCH_REPORT
    if not rows:
        target.unlink(missing_ok=True)
        return
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("path", "reason"))
    writer.writerows((q.path, q.reason) for q in rows)
    atomic_write_text(target, buf.getvalue())


def read_report(root: Path) -> list[Quarantined]:
    """The entries of ``root/.fetch-quarantine.csv`` ([] without one)."""
    try:
        with (root / FETCH_REPORT).open(newline="", encoding="utf-8") as f:
            return [Quarantined(r["path"], r["reason"]) for r in csv.DictReader(f)]
    except FileNotFoundError:
        return []
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(
            f"{root / FETCH_REPORT}: unreadable fetch report ({exc}): rerun fetch "
            "(dvc repro -f fetch)"
        ) from None


def snapshot_manifest(csv_path: Path, dst: Path, state: Path | None = None) -> SyncCounts:
    """Copy a CSV manifest's files into ``dst`` and write ``dst/snapshot.csv`` pointing at them.

    This CSV is the user's own ``data.source``: its paths may be absolute or lead out of its
    folder (``../photos/a.jpg``), and links are followed. (A ``snapshot.csv`` found inside an
    archive or folder source is not this: prepare checks that each of its paths stays inside
    the snapshot, see :mod:`reprotrain.data.sources`.) Files are stored under
    ``files/<path relative to the CSV's folder>`` (or ``files/external/<hash>/<name>`` for
    paths outside it). Rows whose file is missing are kept with their original path, so
    prepare quarantines them with a reason instead of the row vanishing here; a row naming
    something that is not a regular file (a FIFO, a device, a folder) is never opened and
    is quarantined in the fetch report.
    """
    import pandas as pd

    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{csv_path}: cannot read the CSV manifest ({exc})") from None
    columns = [c.strip() for c in df.columns]
    df.columns = columns
    unknown = [c for c in columns if c not in MANIFEST_COLUMNS]
    missing = [c for c in ("path", "label") if c not in columns]
    if missing or unknown:
        problems = []
        if missing:
            problems.append(f"missing column(s) {', '.join(missing)}")
        if unknown:
            problems.append(f"unknown column(s) {', '.join(unknown)}")
        raise DataError(
            f"{csv_path}: {'; '.join(problems)}. Expected a header line "
            "'path,label' or 'path,label,split' (split: train, val or test)"
        )
    base = csv_path.parent.resolve()
    staging = tempfile.mkdtemp(prefix="manifest-", dir=dst.parent)
    stage_root = Path(staging)
    rows, links, missing, special = [], [], [], []
    try:
        for i, row in enumerate(df.to_dict("records"), start=2):
            raw = row["path"].strip()
            if not raw:
                raise DataError(f"{csv_path}: line {i}: empty path")
            src = (base / raw).resolve()
            try:
                rel = Path("files") / src.relative_to(base)
            except ValueError:
                tag = hashlib.sha256(str(src).encode()).hexdigest()[:12]
                rel = Path("files") / "external" / tag / src.name
            try:
                mode = os.stat(src).st_mode
            except OSError:
                mode = None
            if mode is not None and not stat.S_ISREG(mode):
                special.append(Quarantined(raw, f"not a regular file: {file_kind(mode)}, not read"))
                continue
            if mode is not None:
                links.append((src, rel))
                stored = rel.as_posix()
            else:
                stored = f"missing:{raw}"
                missing.append(raw)
            rows.append({"path": stored, **{k: row[k].strip() for k in columns if k != "path"}})
        check_listed_files(
            csv_path, base, len(rows) + len(special), missing + [q.path for q in special]
        )
        # Mirror the referenced files into a temporary tree, then sync it (with mtimes)
        # into dst, so re-fetching an unchanged manifest copies nothing.
        for src, rel in links:
            (stage_root / rel).parent.mkdir(parents=True, exist_ok=True)
            if not (stage_root / rel).exists():
                os.symlink(src, stage_root / rel)
        with (stage_root / SNAPSHOT_INDEX).open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=[c for c in MANIFEST_COLUMNS if c in columns])
            writer.writeheader()
            writer.writerows(rows)
        listing = Listing([p.as_posix() for p in _resolved_files(stage_root)], special)
        return sync_tree(stage_root, dst, listing, state=state, state_key=str(csv_path))
    finally:
        shutil.rmtree(stage_root, ignore_errors=True)


def check_listed_files(csv_path: Path, base: Path, listed: int, missing: list[str]) -> None:
    """Stop when no file a manifest lists exists (paths resolved against the wrong folder,
    most likely); warn when some are missing (prepare quarantines those rows)."""
    if not missing:
        return
    example = f"{missing[0]!r} → {base / missing[0]}"
    if len(missing) == listed:
        raise DataError(
            f"{csv_path}: none of the {listed} files it lists exists (e.g. {example}). "
            f"Paths are relative to the CSV's own folder {base}, or absolute"
        )
    log.warning(
        "%s: %d of %d listed files do not exist (e.g. %s): prepare quarantines those rows",
        csv_path,
        len(missing),
        listed,
        example,
    )


def _resolved_files(root: Path) -> list[Path]:
    out = []
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            out.append((Path(dirpath) / name).relative_to(root))
    return sorted(out, key=lambda p: p.as_posix())


# --------------------------------------------------------------------------- the stage


@timed("data")
def fetch(
    source: str,
    dst: Path,
    *,
    mirror: str | None = None,
    sha256: str | None = None,
    cache_dir: Path | None = None,
    digest_cache: Path | None = None,
    sync_state: Path | None = None,
    limits: ArchiveLimits | None = None,
) -> FetchResult:
    """Snapshot ``source`` into ``dst`` and check ``sha256`` for URL sources.

    The digest is checked only for URL sources (a download can be truncated or replaced);
    a local folder is whatever the user put there. ``digest_cache``: see :func:`tree_digest`
    (the snapshot's digest is then computed from a ``stat`` per unchanged file).
    ``sync_state``: see :func:`sync_tree` (without it, a file whose size and mtime match is
    compared by hash). ``limits``: what an archive may expand to (``ArchiveLimits()``).

    The source is listed (and checked) completely before ``dst`` is touched: a source
    with nothing usable, a digest mismatch or an archive over its limits leaves the previous
    snapshot as it was.
    """
    kind = source_kind(source)
    origin_kind, origin = resolve_origin(source, mirror, cache_dir or default_cache_dir())
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fetch-", dir=dst.parent) as tmp:
        left_out: list[Quarantined] = []
        if origin_kind == "archive":
            log.info("extracting %s", origin)
            extracted = extract_archive(origin, Path(tmp) / "x", limits)
            root, left_out = extracted.root, extracted.quarantined
        else:
            root = origin
        digest = None
        if origin_kind == "csv":
            counts = snapshot_manifest(origin, dst, sync_state)
        else:
            check_no_empty_dirs(root)
            listing = walk(root)
            if not listing.files:
                raise DataError(_nothing_usable(source, origin, [*left_out, *listing.quarantined]))
            if kind == "url" and sha256:
                digest = tree_digest(root, files=[Path(f) for f in listing.files])
                if digest != sha256:
                    raise DataError(
                        f"{origin}: content digest {digest} does not match data.sha256 = "
                        f"{sha256} (a truncated or different download?). Delete the cached "
                        "file and retry, or set data.sha256: null if you changed data.source "
                        "on purpose"
                    )
            # An extracted archive is our own staging tree: move its files, do not copy
            # them (and keep no state: its inodes are new on every extraction).
            move = origin_kind == "archive"
            listing = Listing(listing.files, [*left_out, *listing.quarantined])
            counts = sync_tree(root, dst, listing, move=move, state=None if move else sync_state)
            if len(counts.quarantined) != len(listing.quarantined):
                digest = None  # a file failed to copy: dst is not the checked root
    quarantined = counts.quarantined
    snapshot = list_files(dst)
    if not snapshot:
        raise DataError(f"data.source = {source!r}: no files found in {origin}")
    if digest is None:  # else dst is an exact copy of the checked root
        digest = tree_digest(dst, digest_cache, snapshot)
    return FetchResult(
        kind,
        str(origin),
        len(snapshot),
        counts.copied,
        counts.removed,
        digest,
        counts.unchanged,
        quarantined,
    )


def _nothing_usable(source: str, origin: Path, quarantined: list[Quarantined]) -> str:
    if not quarantined:
        return f"data.source = {source!r}: no files found in {origin}"
    first = quarantined[0]
    return (
        f"data.source = {source!r}: no usable file in {origin}: all {len(quarantined)} "
        f"entries are left out (e.g. {first.path}: {first.reason})"
    )
