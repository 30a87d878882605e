"""What fetch leaves out of a snapshot, and the report that keeps it from being lost.

Every step that refuses an entry of a source (:func:`reprotrain.data.listing.walk`, archive
extraction in :mod:`reprotrain.data.origin`, the sync into ``data/raw``, a CSV manifest's
special files) records it the same way, as a :class:`Quarantined` with its reason; fetch
writes them to ``data/raw/.fetch-quarantine.csv`` (:data:`FETCH_REPORT`) and prepare reads
them back into its ``quarantine.csv``. One module, so the writer and the reader cannot drift.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from reprotrain.errors import DataError
from reprotrain.fsio import atomic_write_text

#: fetch's quarantine report in ``data/raw`` (``path,reason``; hidden: not data, not a class).
FETCH_REPORT = ".fetch-quarantine.csv"


@dataclass(frozen=True)
class Quarantined:
    """An entry of a source that is not snapshotted, with the reason (reported, never lost).

    ``path`` is relative to the source root and printable: bytes of a name that are not
    UTF-8 are shown as ``\\xNN``.
    """

    path: str
    reason: str


def printable(name: str) -> str:
    """``name`` with bytes that are not UTF-8 (surrogate-escaped by ``os``) as ``\\xNN``:
    safe to log, print and write into a UTF-8 CSV."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def write_report(dst: Path, quarantined: Iterable[Quarantined]) -> None:
    """``dst/.fetch-quarantine.csv`` (``path,reason``) listing what fetch left out, or no
    such file when nothing was (so an unchanged clean source leaves ``data/raw`` as it was)."""
    rows = sorted(quarantined, key=lambda q: q.path)
    target = dst / FETCH_REPORT
    if not rows:
        target.unlink(missing_ok=True)
        return
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("path", "reason"))
    writer.writerows((q.path, q.reason) for q in rows)
    atomic_write_text(target, buf.getvalue())


def read_report(root: Path) -> list[Quarantined]:
    """The entries of ``root/.fetch-quarantine.csv`` ([] without one)."""
    try:
        with (root / FETCH_REPORT).open(newline="", encoding="utf-8") as f:
            return [Quarantined(r["path"], r["reason"]) for r in csv.DictReader(f)]
    except FileNotFoundError:
        return []
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(
            f"{root / FETCH_REPORT}: unreadable fetch report ({exc}): rerun fetch "
            "(dvc repro -f fetch)"
        ) from None
