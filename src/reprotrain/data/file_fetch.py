"""fetch for the table and series kinds: ``data.source`` is one CSV/TSV/Parquet file (local,
a URL, or inside an archive or folder), snapshotted as ``data/raw/<its name>``.

Why not the image kind's tree snapshot: a table is one file, and a CSV source means rows
here, not a manifest of image paths. What is shared is where the bytes come from
(:func:`reprotrain.data.origin.resolve_origin`: mirror, download cache, archive limits) and
the all-or-nothing replacement of ``data/raw`` (:func:`reprotrain.fsio.atomic_path`).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from reprotrain.data.fetch import FetchResult
from reprotrain.data.origin import (
    ARCHIVE_SUFFIXES,
    ArchiveLimits,
    default_cache_dir,
    download,
    extract_archive,
)
from reprotrain.data.origin import MIRROR_ENV as _MIRROR_ENV
from reprotrain.errors import DataError
from reprotrain.fsio import atomic_path, file_sha256

log = logging.getLogger(__name__)

#: File types a table or series source may be.
DATA_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq", ".csv.gz")


def is_data_file(path: Path | str) -> bool:
    return str(path).lower().endswith(DATA_SUFFIXES)


def _url_path(source: str) -> str:
    return source.split("?", 1)[0].split("#", 1)[0]


def data_files(root: Path) -> list[Path]:
    """The data files under ``root`` (sorted; hidden files and folders skipped)."""
    found = [
        p
        for p in sorted(root.rglob("*"))
        if p.is_file()
        and is_data_file(p)
        and not any(part.startswith((".", "__MACOSX")) for part in p.relative_to(root).parts)
    ]
    return found


def _one(root: Path, source: str) -> Path:
    files = data_files(root)
    if not files:
        raise DataError(
            f"data.source = {source!r}: no CSV, TSV or Parquet file in it "
            f"({', '.join(DATA_SUFFIXES)})"
        )
    if len(files) > 1:
        names = ", ".join(str(f.relative_to(root)) for f in files[:5])
        raise DataError(
            f"data.source = {source!r} holds {len(files)} data files ({names}"
            f"{', …' if len(files) > 5 else ''}): point data.source at one of them"
        )
    return files[0]


def _local(source: str, mirror: str | None, cache_dir: Path) -> tuple[str, Path]:
    """(kind, path) of the bytes behind ``source``: a URL from the mirror or the cache."""
    if source.lower().startswith(("http://", "https://")):
        mirror = os.environ.get(_MIRROR_ENV) or mirror
        if mirror:
            path = Path(mirror).expanduser()
            if not path.exists():
                raise DataError(f"offline mirror {mirror!r}: no such file or directory")
            return "url", path.resolve()
        return "url", download(source, cache_dir)
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(
            f"data.source = {source!r}: no such file or directory "
            f"(relative paths are resolved from the project root, {Path.cwd()})"
        )
    return ("directory" if path.is_dir() else "file"), path.resolve()


def fetch_file(
    source: str,
    dst: Path,
    *,
    mirror: str | None = None,
    sha256: str | None = None,
    cache_dir: Path | None = None,
    limits: ArchiveLimits | None = None,
) -> FetchResult:
    """Snapshot the one data file behind ``source`` into ``dst`` (``dst/<file name>``, and
    nothing else: ``dst`` is replaced whole). ``sha256``, for a URL source, is the digest of
    that file; a mismatch leaves the previous snapshot as it was."""
    kind, origin = _local(source, mirror, cache_dir or default_cache_dir())
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fetch-", dir=dst.parent) as tmp:
        if origin.is_dir():
            found = _one(origin, source)
        elif str(origin).lower().endswith(ARCHIVE_SUFFIXES) and not is_data_file(origin):
            extracted = extract_archive(origin, Path(tmp) / "x", limits)
            found = _one(extracted.root, source)
        elif is_data_file(origin) or kind == "url":
            found = origin
        else:
            raise DataError(
                f"data.source = {source!r} is not a CSV, TSV or Parquet file, nor an archive "
                f"or folder holding one ({', '.join(DATA_SUFFIXES)})"
            )
        digest = file_sha256(found)
        if kind == "url" and sha256 and digest != sha256:
            raise DataError(
                f"data.source = {source!r}: sha256 {digest} does not match data.sha256 = "
                f"{sha256} (a changed or truncated download; data/raw is unchanged)"
            )
        name = found.name if is_data_file(found) else Path(_url_path(source)).name or "data.csv"
        previous = dst / name
        if previous.is_file() and file_sha256(previous) == digest and len(_entries(dst)) == 1:
            return FetchResult(kind, str(origin), 1, 0, 0, digest, unchanged=1)
        removed = len(_entries(dst)) if dst.is_dir() else 0
        with atomic_path(dst) as staged:
            staged.mkdir()
            shutil.copy2(found, staged / name)
    log.info("fetch: %s → %s/%s", found, dst, name)
    return FetchResult(kind, str(origin), 1, 1, removed, digest)


def _entries(root: Path) -> list[Path]:
    return [p for p in root.iterdir() if not p.name.startswith(".fetch-")] if root.is_dir() else []
