"""Folders that appear whole: a tree written aside, then swapped in at its final path.

Why: a SavedModel or an OpenVINO IR is a directory, and a kill half-way through writing one
must leave the previous tree or the new one, never neither and never half of one (the
guarantee docs/reliability.md states for the export folders). ``fsio.atomic_path`` does this
for single files; a directory needs the swap and the start-up clean-up below.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from reprotrain import fsio
from reprotrain.fsio import TMP_MARK

logger = logging.getLogger(__name__)


def _old_path(target: Path) -> Path:
    """Where the two-rename swap parks the old tree (a fixed name, so the next writer finds
    it: not a ``.tmp-`` temporary that a clean-up may delete)."""
    return target.with_name(f".{target.name}.old")


def _fsync_tree(directory: Path) -> None:
    """Flush every file of a tree and the tree's folders: on disk before it is swapped in."""
    for path in [*sorted(directory.rglob("*"), reverse=True), directory]:
        if path.is_symlink():
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def replace_directory(new: Path, target: Path) -> None:
    """Put the complete tree ``new`` at ``target``, so a kill at any instant leaves ``target``
    holding the old tree or the new one.

    Why not two renames (old aside, new in): between them ``target`` does not exist, and a
    kill there left no SavedModel at all. Where the system can (:func:`reprotrain.fsio.exchange`,
    ``renameat2(RENAME_EXCHANGE)``) one step swaps the two trees and the old one, now at
    ``new``, is deleted after. Elsewhere the old tree goes to a fixed name beside ``target``
    before the new one moves in, and :func:`recover_directory` (run by the next writer, as
    Orbax cleans up at start-up) puts it back if the kill came between the renames. (Why not
    ``fsio.atomic_path``'s fallback: it parks the old tree inside the temporary, which the
    next clean-up deletes, so a kill between its renames loses both.)
    """
    new, target = Path(new), Path(target)
    _fsync_tree(new)
    if not target.exists():
        os.rename(new, target)
    elif fsio.exchange(new, target):
        shutil.rmtree(new)  # the old tree
    else:
        old = _old_path(target)
        shutil.rmtree(old, ignore_errors=True)
        os.rename(target, old)
        os.rename(new, target)
        shutil.rmtree(old)
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def recover_directory(target: Path) -> None:
    """Clean up after a writer of ``target`` that was killed: the old tree put back if the
    kill came between the two renames of :func:`replace_directory`'s fallback, deleted if
    the new one made it in, and half-written temporaries removed."""
    target = Path(target)
    old = _old_path(target)
    if old.is_dir():
        if target.exists():
            shutil.rmtree(old)
        else:
            logger.warning("%s: its writer was killed mid-swap; the previous one is back", target)
            os.rename(old, target)
    for leftover in target.parent.glob(f".{target.name}{TMP_MARK}*"):
        shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(target: Path | str) -> Iterator[Path]:
    """Yield a path to write a directory tree at; on success the tree replaces ``target``
    (:func:`replace_directory`), on an exception it is deleted and ``target`` untouched."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(target)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{target.name}{TMP_MARK}", dir=target.parent))
    try:
        yield tmp_dir / target.name
        replace_directory(tmp_dir / target.name, target)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
