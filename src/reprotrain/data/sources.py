"""Read the layout of a snapshot (``data/raw``) into a list of labelled candidate files.

Three layouts, decided by what is there (``reprotrain.data.fetch`` made the snapshot):

* ``snapshot.csv`` at the root (a CSV source's snapshot) → its rows (``path,label[,split]``);
* ``train/ [val/] [test/]`` folders → given splits, one sub-folder per class inside each;
* otherwise one sub-folder per class (no given splits).

Files directly at the root of a class-folder layout have no label: they are quarantined
(reported), never guessed.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

from reprotrain.data.fetch import SNAPSHOT_INDEX, check_no_empty_dirs, list_files
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
    if (root / SNAPSHOT_INDEX).is_file():
        return ("manifest", *scan_manifest(root, root / SNAPSHOT_INDEX))
    dirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if dirs and any(d.lower() in SPLIT_ALIASES for d in dirs):
        return ("splits", *scan_split_folders(root, dirs))
    return ("classes", *scan_class_folders(root, ""))


def scan_class_folders(
    root: Path, prefix: str, split: str | None = None
) -> tuple[list[Candidate], list[Problem]]:
    """``<prefix>/<class>/**/<file>`` → candidates labelled ``<class>``."""
    base = root / prefix if prefix else root
    candidates, problems = [], []
    for rel in list_files(base):
        full = (Path(prefix) / rel).as_posix() if prefix else rel.as_posix()
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
    """Rows of a snapshot manifest (written by ``fetch.snapshot_manifest``)."""
    candidates, problems = [], []
    with manifest.open(newline="", encoding="utf-8") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            path, label = row.get("path", ""), (row.get("label") or "").strip()
            split = (row.get("split") or "").strip().lower() or None
            if path.startswith("missing:"):
                problems.append(
                    Problem(path[len("missing:") :], "file listed in the manifest does not exist")
                )
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
    return candidates, problems
