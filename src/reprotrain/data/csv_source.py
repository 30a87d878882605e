"""Snapshot a CSV manifest ``data.source`` (``path,label[,split]``) into ``data/raw``.

A manifest names files anywhere on the machine, so its snapshot differs from a folder's:
the listed files are gathered under ``files/`` and ``data/raw/snapshot.csv``
(:data:`SNAPSHOT_INDEX`) points at them. Kept apart from :mod:`reprotrain.data.fetch`
because reading, checking and re-pointing the user's rows is its own concern; the copying
itself is :func:`reprotrain.data.sync.sync_tree`'s. (Not ``manifest.csv``: that name
belongs to prepare's per-image table in ``data/prepared``, which other stages read.)
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from reprotrain.data.listing import Listing, file_kind
from reprotrain.data.quarantine import Quarantined
from reprotrain.data.sync import SyncCounts, sync_tree
from reprotrain.errors import DataError

log = logging.getLogger(__name__)

#: The CSV snapshot's index in ``data/raw``: ``path,label[,split]`` rows (paths relative to it).
SNAPSHOT_INDEX = "snapshot.csv"
#: Columns a CSV manifest may have (``split`` optional).
MANIFEST_COLUMNS = ("path", "label", "split")


@dataclass(frozen=True)
class RowPlan:
    """What a manifest's rows become in the snapshot, before anything is written.

    ``rows``: the index rows (a missing file keeps its path as ``missing:<path>``, so
    prepare quarantines the row with a reason instead of it vanishing here); ``links``:
    ``(source file, path in the snapshot)`` to gather; ``missing``: the listed paths that
    do not exist; ``special``: rows naming something that is not a regular file, never
    opened.
    """

    rows: list[dict[str, str]]
    links: list[tuple[Path, Path]]
    missing: list[str]
    special: list[Quarantined]


def snapshot_manifest(csv_path: Path, dst: Path, state: Path | None = None) -> SyncCounts:
    """Copy a CSV manifest's files into ``dst`` and write ``dst/snapshot.csv`` pointing at them.

    This CSV is the user's own ``data.source``: its paths may be absolute or lead out of its
    folder (``../photos/a.jpg``), and links are followed. (A ``snapshot.csv`` found inside an
    archive or folder source is not this: prepare checks that each of its paths stays inside
    the snapshot, see :mod:`reprotrain.data.sources`.) Files are stored under
    ``files/<path relative to the CSV's folder>`` (or ``files/external/<hash>/<name>`` for
    paths outside it). Rows whose file is missing are kept with their original path, so
    prepare quarantines them with a reason instead of the row vanishing here; a row naming
    something that is not a regular file (a FIFO, a device, a folder) is never opened and
    is quarantined in the fetch report.
    """
    columns, records = read_manifest(csv_path)
    base = csv_path.parent.resolve()
    plan = plan_rows(csv_path, base, columns, records)
    check_listed_files(
        csv_path,
        base,
        len(plan.rows) + len(plan.special),
        plan.missing + [q.path for q in plan.special],
    )
    stage_root = Path(tempfile.mkdtemp(prefix="manifest-", dir=dst.parent))
    try:
        # Mirror the referenced files into a temporary tree, then sync it (with mtimes)
        # into dst, so re-fetching an unchanged manifest copies nothing.
        _stage(stage_root, plan, columns)
        listing = Listing([p.as_posix() for p in _resolved_files(stage_root)], plan.special)
        return sync_tree(stage_root, dst, listing, state=state, state_key=str(csv_path))
    finally:
        shutil.rmtree(stage_root, ignore_errors=True)


def read_manifest(csv_path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The manifest's (stripped) column names and its rows, or a one-line error naming
    what is wrong with the header."""
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
    return columns, df.to_dict("records")


def plan_rows(
    csv_path: Path, base: Path, columns: list[str], records: list[dict[str, str]]
) -> RowPlan:
    """Decide, row by row, what each listed file becomes (see :class:`RowPlan`); reads
    only ``stat``, never a file."""
    plan = RowPlan([], [], [], [])
    for i, row in enumerate(records, start=2):
        raw = row["path"].strip()
        if not raw:
            raise DataError(f"{csv_path}: line {i}: empty path")
        src = (base / raw).resolve()
        mode = _mode(src)
        if mode is not None and not stat.S_ISREG(mode):
            plan.special.append(
                Quarantined(raw, f"not a regular file: {file_kind(mode)}, not read")
            )
            continue
        if mode is not None:
            rel = snapshot_path(base, src)
            plan.links.append((src, rel))
            stored = rel.as_posix()
        else:
            stored = f"missing:{raw}"
            plan.missing.append(raw)
        plan.rows.append({"path": stored, **{k: row[k].strip() for k in columns if k != "path"}})
    return plan


def snapshot_path(base: Path, src: Path) -> Path:
    """Where the listed file ``src`` goes in the snapshot: ``files/<path relative to the
    CSV's folder>``, or ``files/external/<hash>/<name>`` for a path outside it (absolute,
    or ``../photos/a.jpg``)."""
    try:
        return Path("files") / src.relative_to(base)
    except ValueError:
        tag = hashlib.sha256(str(src).encode()).hexdigest()[:12]
        return Path("files") / "external" / tag / src.name


def _mode(path: Path) -> int | None:
    """``path``'s mode (links followed), or None when there is nothing there."""
    try:
        return os.stat(path).st_mode
    except OSError:
        return None


def _stage(stage_root: Path, plan: RowPlan, columns: list[str]) -> None:
    """Links to the listed files and the snapshot's index, in the staging tree."""
    for src, rel in plan.links:
        (stage_root / rel).parent.mkdir(parents=True, exist_ok=True)
        if not (stage_root / rel).exists():
            os.symlink(src, stage_root / rel)
    with (stage_root / SNAPSHOT_INDEX).open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=[c for c in MANIFEST_COLUMNS if c in columns])
        writer.writeheader()
        writer.writerows(plan.rows)


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
