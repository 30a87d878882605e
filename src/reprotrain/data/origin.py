"""Where a ``data.source``'s bytes come from: its form, the offline mirror, the download
cache or the network, and safe archive extraction.

Split from :mod:`reprotrain.data.fetch` (which snapshots the result into ``data/raw``) so
that each module holds one concern: this one never writes into the project.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from reprotrain.errors import DataError
from reprotrain.progress import progress as progress_bar

log = logging.getLogger(__name__)

#: Environment variable naming an offline copy (folder or archive) of a URL source.
MIRROR_ENV = "REPROTRAIN_DATA_MIRROR"
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


def source_kind(source: str) -> str:
    """``url``, ``csv``, ``archive`` or ``directory`` (by form; existence is checked later)."""
    lowered = source.lower()
    if lowered.startswith(("http://", "https://")):
        return "url"
    if lowered.endswith(".csv"):
        return "csv"
    if lowered.endswith(ARCHIVE_SUFFIXES):
        return "archive"
    return "directory"


# --------------------------------------------------------------------------- resolving


def resolve_origin(source: str, mirror: str | None, cache_dir: Path) -> tuple[str, Path]:
    """The local path (folder, archive or CSV) holding ``source``'s bytes, and its kind.

    A URL source is served, in order, from ``$REPROTRAIN_DATA_MIRROR``, ``data.mirror``, the
    download cache, or the network; offline without a mirror is a clear error.
    """
    kind = source_kind(source)
    if kind != "url":
        path = Path(source).expanduser()
        if not path.exists():
            raise DataError(
                f"data.source = {source!r}: no such file or directory "
                f"(relative paths are resolved from the project root, {Path.cwd()})"
            )
        if kind == "directory" and not path.is_dir():
            raise DataError(
                f"data.source = {source!r} is a file but not a .csv manifest or an archive "
                f"({', '.join(ARCHIVE_SUFFIXES)})"
            )
        return kind, path.resolve()
    mirror = os.environ.get(MIRROR_ENV) or mirror
    if mirror:
        path = Path(mirror).expanduser()
        if not path.exists():
            where = f"${MIRROR_ENV}" if os.environ.get(MIRROR_ENV) else "data.mirror"
            raise DataError(f"{where} = {mirror!r}: no such file or directory")
        log.info("using the offline mirror %s for %s", path, source)
        return ("directory" if path.is_dir() else "archive"), path.resolve()
    return "archive", download(source, cache_dir)


def download(url: str, cache_dir: Path) -> Path:
    """Download ``url`` once into ``cache_dir`` (atomically); later calls reuse the file.

    Why not ``keras.utils.get_file``: fetch runs on every ``dvc repro`` (``always_changed``)
    and would pay the ~15 s TensorFlow/Keras import for a cache hit; get_file keys its cache
    by file name only (two URLs ending in ``data.zip`` would share one file, where this keys
    by the URL's hash); and its checksum is of the archive, whereas ``data.sha256`` is a
    digest of the extracted tree, checked after extraction. What it would add (a tqdm bar,
    a ``.part`` file renamed when complete, a cache folder) is the twenty lines below.
    """
    name = url.rstrip("/").rsplit("/", 1)[-1] or "download"
    target = cache_dir / hashlib.sha256(url.encode()).hexdigest()[:16] / name
    if target.is_file():
        log.info("using cached download %s", target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".part")
    log.info("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, tmp.open("wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            progress = progress_bar(total, "download", unit="B")
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                out.write(chunk)
                progress.update(len(chunk))
            progress.close()
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        tmp.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise DataError(
            f"cannot download {url} ({reason}). Offline? Set {MIRROR_ENV} (or data.mirror in "
            "params.yaml) to a local copy of the dataset: its folder or its archive"
        ) from None
    tmp.replace(target)
    return target


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/reprotrain`` (``~/.cache/reprotrain``): downloads survive clean clones."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "reprotrain" / "downloads"


# --------------------------------------------------------------------------- extracting


def extract_archive(archive: Path, dest: Path) -> Path:
    """Extract a zip/tar safely into ``dest``; return the dataset root inside it.

    Members that would escape ``dest`` (``../``, absolute paths, links) are refused: an
    archive from the internet must not write outside the folder it was given. A single
    top-level folder (``hymenoptera_data/``) is taken as the root.

    Extraction streams member by member (never a whole member in memory), and every file
    keeps its archive mtime (``zipfile`` alone stamps the extraction time), so that
    :func:`reprotrain.data.fetch.sync_tree` sees an unchanged member as unchanged and a
    re-fetch copies nothing.
    """
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                members = zf.infolist()
                for member in members:
                    _check_member(member.filename, archive)
                for member in members:
                    path = zf.extract(member, dest)
                    if not member.is_dir():  # zip times are local time, 2 s resolution
                        mtime = time.mktime((*member.date_time, 0, 0, -1))
                        os.utime(path, (mtime, mtime))
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                tf.extractall(dest, filter="data")
        else:
            raise DataError(f"{archive}: not a zip or tar archive")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{archive}: cannot extract the archive ({exc})") from None
    entries = [p for p in dest.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return dest


def _check_member(name: str, archive: Path) -> None:
    parts = Path(name).parts
    if name.startswith(("/", "\\")) or ".." in parts:
        raise DataError(f"{archive}: refusing unsafe member path {name!r}")
