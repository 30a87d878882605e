"""Atomic state files and file digests: the two file operations every stage relies on.

Why atomic writes: a stage can be killed (SIGKILL, power loss, a CI timeout) at any instant.
A state file written in place can then be half-written, and the next run reads garbage
(a truncated JSON, an h5 file with a bad header). Writing to a temporary file in the same
directory, flushing it to disk and renaming it over the target is atomic on POSIX: a
reader sees the old file or the new one, never half of one (the pattern Orbax uses for
checkpoints). Leftover temporaries (``.*.tmp-*``) are harmless and removed by
:func:`remove_stale_temporaries`.

A directory cannot be replaced by ``rename`` while the target exists (``ENOTEMPTY``), and
two renames (target away, new one in) leave a moment with no target at all. On Linux the
two trees are swapped in one ``renameat2(RENAME_EXCHANGE)`` call (:func:`exchange`), so a
reader sees the old tree or the new one at every instant; elsewhere (or on a file system
without it) the two-rename swap is the fallback, and is said so in the log.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_MARK = ".tmp-"
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
#: errno values meaning "this kernel or file system cannot exchange": use the fallback.
_NO_EXCHANGE = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV}

logger = logging.getLogger(__name__)


def _tmp_name(target: Path) -> str:
    return f".{target.name}{TMP_MARK}"


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def exchange(a: Path | str, b: Path | str) -> bool:
    """Swap the paths ``a`` and ``b`` (files or directories) in one atomic step.

    ``renameat2(RENAME_EXCHANGE)`` (Linux 3.15+, glibc 2.28+, on ext4, xfs, btrfs, tmpfs).
    Returns False where the system cannot (then nothing changed); other errors raise
    ``OSError``. ctypes, because Python's ``os`` module has no ``renameat2``.
    """
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in _NO_EXCHANGE:
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def _replace_tree(tmp: Path, target: Path) -> None:
    """Put the tree ``tmp`` at ``target`` (which exists); the old tree ends up at ``tmp``."""
    if exchange(tmp, target):
        return
    logger.warning("no atomic directory exchange here: replacing %s in two renames", target)
    old = tmp.with_name(tmp.name + ".old")
    target.rename(old)
    tmp.rename(target)
    old.rename(tmp)


@contextlib.contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target`` atomically.

    For writers that want a path, not a file object (``model.save``, ``h5py``, a directory
    tree). On an exception the temporary is removed and ``target`` is untouched. A file
    replaces ``target`` by ``os.replace``; a tree replaces an existing ``target`` by
    :func:`exchange` (the old tree is deleted afterwards, from inside the temporary).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=_tmp_name(target), dir=target.parent))
    tmp = tmp_dir / target.name  # keeps the suffix: Keras checks for ``.keras``
    try:
        yield tmp
        if tmp.is_file():
            with tmp.open("rb") as f:
                os.fsync(f.fileno())
        if tmp.is_dir() and (target.is_dir() or target.is_file()):
            _replace_tree(tmp, target)
        else:
            os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def atomic_write_bytes(target: Path | str, data: bytes) -> Path:
    """Write ``data`` to ``target`` atomically (see the module docstring)."""
    target = Path(target)
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return target


def atomic_write_text(target: Path | str, text: str) -> Path:
    """Write UTF-8 ``text`` to ``target`` atomically."""
    return atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_json(target: Path | str, data: Any, indent: int | None = 2) -> Path:
    """Write ``data`` as JSON (with a final newline) to ``target`` atomically."""
    return atomic_write_text(target, json.dumps(data, indent=indent) + "\n")


def remove_stale_temporaries(directory: Path | str, target: str | None = None) -> list[Path]:
    """Delete temporaries left in ``directory`` by writers that were killed mid-write.

    ``target``: only those of that file name (``directory`` may hold other writers' live
    temporaries, e.g. ``data/`` while another stage writes there).
    """
    directory = Path(directory)
    prefix = _tmp_name(Path(target)) if target is not None else "."
    removed = []
    if directory.is_dir():
        for p in directory.iterdir():
            if p.name.startswith(prefix) and TMP_MARK in p.name:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def file_sha256(path: Path | str) -> str:
    """Hex SHA-256 of a file's bytes, streamed (``hashlib.file_digest``)."""
    with Path(path).open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
