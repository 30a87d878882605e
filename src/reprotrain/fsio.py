"""Atomic state files and file digests: the two file operations every stage relies on.

Why atomic writes: a stage can be killed (SIGKILL, power loss, a CI timeout) at any instant.
A state file written in place can then be half-written, and the next run reads garbage
(a truncated JSON, an h5 file with a bad header). Writing to a temporary file in the same
directory, flushing it to disk and renaming it over the target is atomic on POSIX: a
reader sees the old file or the new one, never half of one (the pattern Orbax uses for
checkpoints). Leftover temporaries (``.*.tmp-*``) are harmless and removed by
:func:`remove_stale_temporaries`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_MARK = ".tmp-"


def _tmp_name(target: Path) -> str:
    return f".{target.name}{TMP_MARK}"


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target`` atomically.

    For writers that want a path, not a file object (``model.save``, ``h5py``, a directory
    tree). On an exception the temporary is removed and ``target`` is untouched.
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
        if tmp.is_dir() and target.is_dir():
            old = target.with_name(_tmp_name(target) + "old")
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
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


def remove_stale_temporaries(directory: Path | str) -> list[Path]:
    """Delete temporaries left in ``directory`` by writers that were killed mid-write."""
    directory = Path(directory)
    removed = []
    if directory.is_dir():
        for p in directory.iterdir():
            if p.name.startswith(".") and TMP_MARK in p.name:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def file_sha256(path: Path | str) -> str:
    """Hex SHA-256 of a file's bytes, streamed (``hashlib.file_digest``)."""
    with Path(path).open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
