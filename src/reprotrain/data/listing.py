"""What a source tree may bring into a snapshot, decided before ``data/raw`` is touched.

:func:`walk` is the one rule (fetch applies it to the source, prepare to the snapshot):
regular files of the tree only. A symbolic link (to a file or a folder) is followed when
its target is inside the tree, and quarantined otherwise; so are dangling links, link
loops, FIFOs, sockets, devices and names that are not UTF-8. Quarantined entries are never
opened. Kept apart from the copying (:mod:`reprotrain.data.sync`) so that deciding what a
source holds never writes anything.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from reprotrain.data.quarantine import Quarantined, printable
from reprotrain.errors import DataError


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
