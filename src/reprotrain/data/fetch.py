"""Snapshot ``data.source`` (URL, folder, archive or CSV manifest) into ``data/raw``.

Why a snapshot: the source lives outside the repo, where DVC cannot see it change; copying
it into a DVC-tracked folder gives every later stage a content hash (recorded in
``dvc.lock``) and makes a run reproducible after the source moved or changed. Unchanged
files are not copied again, downloads are cached, and the source is never modified.

``data/raw`` afterwards holds either the image tree (class folders, or ``train/ val/
[test/]`` with class folders) or, for a CSV source, ``snapshot.csv`` (:data:`SNAPSHOT_INDEX`)
plus the files it lists. (Not ``manifest.csv``: that name belongs to prepare's per-image
table in ``data/prepared``, which other stages read.)
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from reprotrain.data.origin import (
    default_cache_dir,
    extract_archive,
    resolve_origin,
    source_kind,
)
from reprotrain.errors import DataError
from reprotrain.fsio import atomic_write_json, file_sha256
from reprotrain.progress import progress as progress_bar
from reprotrain.timing import timed

log = logging.getLogger(__name__)

#: The CSV snapshot's index in ``data/raw``: ``path,label[,split]`` rows (paths relative to it).
SNAPSHOT_INDEX = "snapshot.csv"
#: Columns a CSV manifest may have (``split`` optional).
MANIFEST_COLUMNS = ("path", "label", "split")


@dataclass(frozen=True)
class FetchResult:
    """What was snapshotted, for the stage's summary line."""

    kind: str  # url | directory | archive | csv
    origin: str  # where the bytes actually came from (URL, mirror, path)
    files: int
    copied: int
    removed: int
    digest: str
    unchanged: int = 0  # files already in the snapshot with the same size and mtime


@dataclass(frozen=True)
class SyncCounts:
    """What :func:`sync_tree` did to the snapshot."""

    copied: int
    unchanged: int
    removed: int


def list_files(root: Path) -> list[Path]:
    """Every regular file under ``root`` as sorted relative paths (hidden files skipped).

    Hidden files (``.DS_Store``, ``._foo.jpg`` AppleDouble files) are OS litter, not data.
    Built from strings (``Path`` arithmetic per file is the slow part of a 100k-file walk).
    """
    base = os.fspath(root)
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = os.path.relpath(dirpath, base)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        out.extend(prefix + name for name in filenames if not name.startswith("."))
    out.sort()
    return [Path(p) for p in out]


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
    try:
        data = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("root") != str(root.resolve()):
        return {}
    files = data.get("files")
    return files if isinstance(files, dict) else {}


# --------------------------------------------------------------------------- syncing


def sync_tree(
    src: Path, dst: Path, files: Iterable[Path] | None = None, *, move: bool = False
) -> SyncCounts:
    """Make ``dst`` an exact copy of ``src`` (or of ``files`` in it).

    Files whose size and mtime (whole seconds) match are skipped (``shutil.copy2`` keeps
    mtimes), so a re-snapshot of an unchanged 100k-file folder costs two directory walks and
    a ``stat`` per file, not a copy; files gone from ``src`` are removed. Memory holds the
    relative paths, never file contents (``copy2`` streams). ``move=True`` renames instead
    of copying (for a staging tree of our own, e.g. an extracted archive, on the same
    filesystem).
    """
    wanted = list(files) if files is not None else list_files(src)
    dst.mkdir(parents=True, exist_ok=True)
    copied = 0
    with progress_bar(len(wanted), "snapshot", unit="file") as bar:
        for rel in wanted:
            s, d = src / rel, dst / rel
            if not _same_file(s.stat(), d):
                d.parent.mkdir(parents=True, exist_ok=True)
                if d.is_symlink() or d.exists():
                    d.unlink()
                if move and not s.is_symlink():
                    os.replace(s, d)
                else:
                    shutil.copy2(s, d)
                d.chmod(0o644)
                copied += 1
            bar.update(1)
    keep = {p.as_posix() for p in wanted}
    removed = 0
    for rel in list_files(dst):
        if rel.as_posix() not in keep:
            (dst / rel).unlink()
            removed += 1
    _remove_empty_dirs(dst)
    return SyncCounts(copied, len(wanted) - copied, removed)


def _same_file(src_stat: os.stat_result, dst: Path) -> bool:
    """``dst`` is a regular file with ``src``'s size and mtime (whole seconds: some
    filesystems and archive formats keep no more)."""
    try:
        st = dst.lstat()
    except FileNotFoundError:
        return False
    return (
        stat.S_ISREG(st.st_mode)
        and st.st_size == src_stat.st_size
        and int(st.st_mtime) == int(src_stat.st_mtime)
    )


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
            has_files.get(path / d, False) for d in dirnames if not d.startswith(".")
        )
    empty = sorted(p for p, ok in has_files.items() if not ok and p != root)
    if empty:
        rel = empty[0].relative_to(root).as_posix()
        raise DataError(
            f"folder {rel}/ in the data source is empty (a class without images?): "
            "add images or remove the folder"
        )


def _remove_empty_dirs(root: Path) -> None:
    for dirpath, _, _ in sorted(os.walk(root), key=lambda t: -len(t[0])):
        p = Path(dirpath)
        if p != root and not any(p.iterdir()):
            p.rmdir()


def snapshot_manifest(csv_path: Path, dst: Path) -> SyncCounts:
    """Copy a CSV manifest's files into ``dst`` and write ``dst/snapshot.csv`` pointing at them.

    Files are stored under ``files/<path relative to the CSV's folder>`` (or
    ``files/external/<hash>/<name>`` for paths outside it). Rows whose file is missing are
    kept with their original path, so prepare quarantines them with a reason instead of the
    row vanishing here.
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
    rows, links, missing = [], [], []
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
            if src.is_file():
                links.append((src, rel))
                stored = rel.as_posix()
            else:
                stored = f"missing:{raw}"
                missing.append(raw)
            rows.append({"path": stored, **{k: row[k].strip() for k in columns if k != "path"}})
        check_listed_files(csv_path, base, len(rows), missing)
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
        return sync_tree(stage_root, dst, files=_resolved_files(stage_root))
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
) -> FetchResult:
    """Snapshot ``source`` into ``dst`` and check ``sha256`` for URL sources.

    The digest is checked only for URL sources (a download can be truncated or replaced);
    a local folder is whatever the user put there. ``digest_cache``: see :func:`tree_digest`
    (the snapshot's digest is then computed from a ``stat`` per unchanged file).
    """
    kind = source_kind(source)
    origin_kind, origin = resolve_origin(source, mirror, cache_dir or default_cache_dir())
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fetch-", dir=dst.parent) as tmp:
        if origin_kind == "archive":
            log.info("extracting %s", origin)
            root = extract_archive(origin, Path(tmp) / "x")
        else:
            root = origin
        digest = None
        if kind == "url" and sha256:
            digest = tree_digest(root)  # checked before the snapshot is touched
            if digest != sha256:
                raise DataError(
                    f"{origin}: content digest {digest} does not match data.sha256 = {sha256} "
                    "(a truncated or different download?). Delete the cached file and retry, "
                    "or set data.sha256: null if you changed data.source on purpose"
                )
        if origin_kind == "csv":
            counts = snapshot_manifest(origin, dst)
        else:
            check_no_empty_dirs(root)
            # An extracted archive is our own staging tree: move its files, do not copy them.
            counts = sync_tree(root, dst, move=origin_kind == "archive")
    snapshot = list_files(dst)
    files = len(snapshot)
    if files == 0:
        raise DataError(f"data.source = {source!r}: no files found in {origin}")
    if digest is None or origin_kind == "csv":  # else dst is an exact copy of the checked root
        digest = tree_digest(dst, digest_cache, snapshot)
    return FetchResult(
        kind, str(origin), files, counts.copied, counts.removed, digest, counts.unchanged
    )
