"""Where a ``data.source``'s bytes come from: its form, the offline mirror, the download
cache or the network, and safe archive extraction.

Split from :mod:`reprotrain.data.fetch` (which snapshots the result into ``data/raw``) so
that each module holds one concern: this one never writes into the project.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from reprotrain.data.quarantine import Quarantined, printable
from reprotrain.errors import DataError
from reprotrain.progress import progress as progress_bar

log = logging.getLogger(__name__)

#: Environment variable naming an offline copy (folder or archive) of a URL source.
MIRROR_ENV = "REPROTRAIN_DATA_MIRROR"
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
#: Below this many extracted bytes the compression ratio is not checked: a small archive
#: cannot fill a disk, and a few highly compressible files (a CSV, a blank image) are normal.
RATIO_FLOOR_BYTES = 16 * 2**20
_GB = 2**30


@dataclass(frozen=True)
class ArchiveLimits:
    """What an archive may expand to (``data.archive_max_gb``, ``archive_max_ratio``,
    ``archive_max_members``): a 200 KB zip must not become 200 GB on disk.

    ``max_ratio`` is extracted bytes per archive byte (checked above
    :data:`RATIO_FLOOR_BYTES`, for the whole archive and for each zip member): photos barely
    compress (JPEG/PNG in a zip: about 1), so a ratio in the hundreds is a decompression bomb.
    """

    max_gb: float = 50.0
    max_ratio: float = 100.0
    max_members: int = 1_000_000

    @property
    def max_bytes(self) -> int:
        return int(self.max_gb * _GB)


@dataclass(frozen=True)
class Extracted:
    """An extracted archive: the dataset root inside it and the members left out."""

    root: Path
    quarantined: list[Quarantined] = field(default_factory=list)


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
    digest of the extracted tree, checked after extraction.

    Only a complete body is ever cached: each download writes its own temporary file (a
    unique name, so two fetches downloading at once never write into one file), checks the
    byte count against ``Content-Length`` (``http.client`` ends a body cut short without an
    error), and renames it into place; the last complete copy wins, and both are the same.
    """
    name = url.rstrip("/").rsplit("/", 1)[-1] or "download"
    target = cache_dir / hashlib.sha256(url.encode()).hexdigest()[:16] / name
    if target.is_file():
        log.info("using cached download %s", target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    log.info("downloading %s", url)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            expected = int(resp.headers.get("Content-Length") or 0) or None
            received = _copy_body(resp, out, expected)
        if expected is not None and received != expected:
            raise DataError(
                f"download of {url} ended after {received} of {expected} bytes "
                "(Content-Length): the connection dropped or the server is broken; nothing "
                "was cached, retry"
            )
        os.replace(tmp, target)
    except (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataError(
            f"cannot download {url} ({reason}). Offline? Set {MIRROR_ENV} (or data.mirror in "
            "params.yaml) to a local copy of the dataset: its folder or its archive"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _copy_body(resp: http.client.HTTPResponse, out, total: int | None) -> int:
    """Stream the response body into ``out``; the number of bytes received."""
    received = 0
    with progress_bar(total, "download", unit="B") as progress:
        for chunk in iter(lambda: resp.read(1 << 20), b""):
            out.write(chunk)
            received += len(chunk)
            progress.update(len(chunk))
    return received


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/reprotrain`` (``~/.cache/reprotrain``): downloads survive clean clones."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "reprotrain" / "downloads"


# --------------------------------------------------------------------------- extracting


def extract_archive(archive: Path, dest: Path, limits: ArchiveLimits | None = None) -> Extracted:
    """Extract a zip/tar safely into ``dest``; return the dataset root inside it.

    Members that would escape ``dest`` (``../``, absolute paths) are refused: an archive from
    the internet must not write outside the folder it was given. A tar's links that leave
    the archive and its special files (FIFOs, devices) are not extracted but quarantined
    with the reason (``tarfile``'s ``data`` filter decides). ``limits`` bound the total
    size, the compression ratio and the member count, checked before a member is written
    (for a zip, from its central directory before anything is written), so a decompression
    bomb is refused with one line instead of filling the disk. A single top-level folder
    (``hymenoptera_data/``) is taken as the root.

    Extraction streams member by member (never a whole member in memory), and every file
    keeps its archive mtime (``zipfile`` alone stamps the extraction time), so that
    :func:`reprotrain.data.sync.sync_tree` sees an unchanged member as unchanged and a
    re-fetch copies nothing.
    """
    limits = limits or ArchiveLimits()
    dest.mkdir(parents=True, exist_ok=True)
    quarantined: list[Quarantined] = []
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, dest, limits)
        elif tarfile.is_tarfile(archive):
            guard = _TarGuard(archive, limits)
            with tarfile.open(archive) as tf:
                tf.extractall(dest, filter=guard)
            quarantined = guard.quarantined
        else:
            raise DataError(f"{archive}: not a zip or tar archive")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{archive}: cannot extract the archive ({exc})") from None
    entries = [p for p in dest.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    root = entries[0] if len(entries) == 1 and entries[0].is_dir() else dest
    if root != dest:  # members' paths are reported relative to the dataset root
        prefix = root.name + "/"
        quarantined = [Quarantined(q.path.removeprefix(prefix), q.reason) for q in quarantined]
    return Extracted(root, quarantined)


def _extract_zip(archive: Path, dest: Path, limits: ArchiveLimits) -> None:
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        for member in members:
            _check_member(member.filename, archive)
        size = archive.stat().st_size
        check_limits(archive, limits, len(members), sum(m.file_size for m in members), size)
        for m in members:
            ratio = m.file_size / max(m.compress_size, 1)
            if m.file_size > RATIO_FLOOR_BYTES and ratio > limits.max_ratio:
                raise DataError(
                    f"{archive}: member {m.filename!r} expands {ratio:.0f}-fold (more than "
                    f"data.archive_max_ratio = {limits.max_ratio:g}): a decompression bomb? "
                    "Raise the limit if the archive is genuine"
                )
        free = shutil.disk_usage(dest).free
        total = sum(m.file_size for m in members)
        if total > free:
            raise DataError(
                f"{archive}: extracting needs {total / _GB:.1f} GB but {dest} has "
                f"{free / _GB:.1f} GB free"
            )
        for member in members:
            path = zf.extract(member, dest)  # reads at most the member's declared size
            if not member.is_dir():  # zip times are local time, 2 s resolution
                mtime = time.mktime((*member.date_time, 0, 0, -1))
                os.utime(path, (mtime, mtime))


def check_limits(archive: Path, limits: ArchiveLimits, members: int, total: int, size: int) -> None:
    """Refuse an archive with more members, more extracted bytes, or a higher overall
    compression ratio than ``limits`` allow (one line naming the param to raise)."""
    if members > limits.max_members:
        raise DataError(
            f"{archive}: more than {limits.max_members} members (data.archive_max_members): "
            "raise the limit if the archive is genuine"
        )
    if total > limits.max_bytes:
        raise DataError(
            f"{archive}: expands to more than {limits.max_gb:g} GB (data.archive_max_gb): "
            "a decompression bomb? Raise the limit if the archive is genuine"
        )
    size = max(size, 1)
    if total > RATIO_FLOOR_BYTES and total > limits.max_ratio * size:
        raise DataError(
            f"{archive}: {size} bytes expand to {total} ({total / size:.0f}-fold, more than "
            f"data.archive_max_ratio = {limits.max_ratio:g}): a decompression bomb? Raise "
            "the limit if the archive is genuine"
        )


class _TarGuard:
    """A ``tarfile`` extraction filter: the ``data`` filter, the limits, and quarantine.

    Called on each member just before it is extracted, so limits are checked on the
    running totals before the bytes that would exceed them are written.
    """

    def __init__(self, archive: Path, limits: ArchiveLimits) -> None:
        self.archive, self.limits = archive, limits
        self.members = self.total = 0
        self.size = archive.stat().st_size
        self.quarantined: list[Quarantined] = []

    def __call__(self, member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
        self.members += 1
        self.total += member.size if member.isreg() else 0
        check_limits(self.archive, self.limits, self.members, self.total, self.size)
        _check_member(member.name, self.archive)
        try:
            return tarfile.data_filter(member, dest)
        except (tarfile.AbsolutePathError, tarfile.OutsideDestinationError):
            raise DataError(
                f"{self.archive}: refusing unsafe member path {member.name!r}"
            ) from None
        except tarfile.SpecialFileError:
            reason = (
                "not a regular file: a special file (FIFO or device) in the archive, not extracted"
            )
        except (tarfile.AbsoluteLinkError, tarfile.LinkOutsideDestinationError):
            reason = f"link outside the archive, not extracted (to {member.linkname!r})"
        except tarfile.FilterError as exc:
            reason = f"not extracted ({exc})"
        self.quarantined.append(Quarantined(printable(member.name.rstrip("/")), reason))
        return None


def _check_member(name: str, archive: Path) -> None:
    parts = Path(name).parts
    if name.startswith(("/", "\\")) or ".." in parts:
        raise DataError(f"{archive}: refusing unsafe member path {name!r}")
