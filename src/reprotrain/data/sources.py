"""Read the layout of a snapshot (``data/raw``) into a list of labelled candidate files.

Three layouts, decided by what is there (``reprotrain.data.fetch`` made the snapshot):

* ``snapshot.csv`` at the root (a CSV source's snapshot) → its rows (``path,label[,split]``);
* ``train/ [val/] [test/]`` folders → given splits, one sub-folder per class inside each;
* otherwise one sub-folder per class (no given splits).

Files directly at the root of a class-folder layout have no label: they are quarantined
(reported), never guessed. So are the entries fetch left out (its report,
``.fetch-quarantine.csv``), entries that are not regular files, and manifest rows whose path
does not name a regular file inside the snapshot: a ``snapshot.csv`` that came inside an
archive or a folder source must not bring files from elsewhere on the machine.
"""

from __future__ import annotations

import csv
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from reprotrain.data.csv_source import SNAPSHOT_INDEX
from reprotrain.data.listing import check_no_empty_dirs, file_kind, walk
from reprotrain.data.quarantine import read_report
from reprotrain.data.schema import SPLITS
from reprotrain.errors import DataError

log = logging.getLogger(__name__)

#: Folder names accepted for each split (``validation/`` is common in public datasets).
SPLIT_ALIASES = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}


#: In every reason a manifest path is refused for leading out of the snapshot.
OUTSIDE = "outside the dataset"


@dataclass(frozen=True)
class Candidate:
    """A file that should become an example (if it decodes)."""

    path: str  # relative to the snapshot root, POSIX separators
    label: str
    split: str | None  # given split, or None to assign by hash


@dataclass(frozen=True)
class Problem:
    """A file or manifest row that cannot become an example, with the reason."""

    path: str
    reason: str


def scan(root: Path) -> tuple[str, list[Candidate], list[Problem]]:
    """The layout name, the candidates and the unusable entries of a snapshot."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} not found: run the fetch stage first (dvc repro fetch)")
    check_no_empty_dirs(root)  # the same rule fetch applies to the source
    fetched = [Problem(q.path, q.reason) for q in read_report(root)]
    if (root / SNAPSHOT_INDEX).is_file():
        layout, (candidates, problems) = "manifest", scan_manifest(root, root / SNAPSHOT_INDEX)
    else:
        dirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if dirs and any(d.lower() in SPLIT_ALIASES for d in dirs):
            layout, (candidates, problems) = "splits", scan_split_folders(root, dirs)
        else:
            layout, (candidates, problems) = "classes", scan_class_folders(root, "")
    return layout, candidates, _one_per_path([*fetched, *problems])


def _one_per_path(problems: list[Problem]) -> list[Problem]:
    """The first reason given for each path (fetch's report comes first: a FIFO it left out
    is reported as a FIFO, not again as a manifest row whose file is missing)."""
    seen: dict[str, Problem] = {}
    for p in problems:
        seen.setdefault(p.path, p)
    return list(seen.values())


def scan_class_folders(
    root: Path, prefix: str, split: str | None = None
) -> tuple[list[Candidate], list[Problem]]:
    """``<prefix>/<class>/**/<file>`` → candidates labelled ``<class>``."""
    base = root / prefix if prefix else root
    listing = walk(base)
    lead = f"{prefix}/" if prefix else ""
    candidates: list[Candidate] = []
    problems = [Problem(lead + q.path, q.reason) for q in listing.quarantined]
    for name in listing.files:
        rel, full = PurePosixPath(name), lead + name
        if len(rel.parts) < 2:
            problems.append(
                Problem(full, "file outside a class folder (no label): move it into one")
            )
            continue
        candidates.append(Candidate(full, rel.parts[0], split))
    return candidates, problems


def scan_split_folders(root: Path, dirs: list[str]) -> tuple[list[Candidate], list[Problem]]:
    """``train/<class>/...``, ``val/<class>/...``, ``test/<class>/...``."""
    others = [d for d in dirs if d.lower() not in SPLIT_ALIASES]
    if others:
        raise DataError(
            f"{root}: mixes split folders with other folders ({', '.join(others)}). Use either "
            "train/ val/ [test/] each holding class folders, or class folders only"
        )
    if "train" not in {SPLIT_ALIASES[d.lower()] for d in dirs}:
        raise DataError(f"{root}: has {', '.join(dirs)} but no train/ folder")
    candidates, problems = [], []
    for d in dirs:
        c, p = scan_class_folders(root, d, SPLIT_ALIASES[d.lower()])
        candidates += c
        problems += p
    return candidates, problems


def scan_manifest(root: Path, manifest: Path) -> tuple[list[Candidate], list[Problem]]:
    """Rows of a snapshot manifest (written by ``csv_source.snapshot_manifest``, or found at the
    root of an archive or folder source).

    Each row's path must name a regular file inside ``root`` (:func:`check_path`); other
    rows are quarantined with the reason, and a manifest none of whose rows does is
    refused: it lists files from elsewhere (absolute or ``../`` paths are the user's own
    ``data.source`` CSV's privilege, where fetch copies the files in).
    """
    candidates, problems = [], []
    real_root = os.path.realpath(root)
    unsafe: list[str] = []
    with manifest.open(newline="", encoding="utf-8") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            path, label = row.get("path") or "", (row.get("label") or "").strip()
            split = (row.get("split") or "").strip().lower() or None
            if path.startswith("missing:"):
                problems.append(
                    Problem(path[len("missing:") :], "file listed in the manifest does not exist")
                )
                continue
            reason = check_path(real_root, path)
            if reason is not None:
                problems.append(Problem(path, f"{reason} (manifest line {line})"))
                if OUTSIDE in reason:
                    unsafe.append(f"line {line}: {path!r}: {reason}")
                continue
            if not label:
                problems.append(Problem(path, f"manifest line {line}: empty label"))
                continue
            if split is not None and split not in SPLIT_ALIASES:
                problems.append(
                    Problem(
                        path,
                        f"manifest line {line}: unknown split {split!r} "
                        f"(allowed: {', '.join(SPLITS)} or empty)",
                    )
                )
                continue
            candidates.append(Candidate(path, label, SPLIT_ALIASES[split] if split else None))
    if unsafe and not candidates:
        raise DataError(
            f"{manifest}: none of its rows names a file inside the dataset (e.g. {unsafe[0]}). "
            "A snapshot.csv inside an archive or folder source may list only paths relative "
            "to that source; to list files elsewhere, make your CSV the data.source itself"
        )
    return candidates, problems


def check_path(real_root: str, path: str) -> str | None:
    """Why a manifest path cannot be read from the snapshot ``real_root`` (resolved), or
    None: it must be relative, stay inside (no ``..``, no link leading out) and name a
    regular file. Nothing is opened: a FIFO is recognised by ``stat``, never read."""
    if not path.strip():
        return "empty path"
    if (
        PurePosixPath(path).is_absolute()
        or PureWindowsPath(path).is_absolute()
        or PureWindowsPath(path).drive
    ):
        return f"absolute path, {OUTSIDE}: not read"
    if ".." in PureWindowsPath(path).parts:
        return f"path leads {OUTSIDE} (..): not read"
    real = os.path.realpath(os.path.join(real_root, path))
    if not (real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)):
        return f"symbolic link to a path {OUTSIDE}: not read"
    try:
        mode = os.stat(real).st_mode
    except OSError:
        return "file listed in the manifest does not exist"
    if not stat.S_ISREG(mode):
        return f"not a regular file: {file_kind(mode)}, not read"
    return None
