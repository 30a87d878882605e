"""Small real tables for the table kind's tests: slices of the offline assets' churn,
topics8 and trump_tweets CSVs (rows spread over each file), plus :func:`write_csv` for
crafted messy files. Skipped without the assets."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import pytest

DATASETS = {
    "churn": "churn/churn.csv",
    "topics8": "fortunes/topics8.csv",
    "trump": "trump_tweets/trump_tweets.csv",
}
SLICE_ROWS = 300


def slice_csv(src: Path, dst: Path, rows: int = SLICE_ROWS) -> Path:
    """The header and ``rows`` records of ``src`` spread evenly over it (the assets are
    sorted by time or topic: a head would hold one class), re-written by the csv module."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with src.open(newline="", encoding="utf-8") as f:
        header, *records = list(csv.reader(f))
    step = max(1, len(records) // rows)
    with dst.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(records[::step][:rows])
    return dst


def _slice(assets: Path | None, tmp: pytest.TempPathFactory, name: str) -> Path:
    if assets is None:
        pytest.skip("offline assets (REPROTRAIN_ASSETS) not available")
    return slice_csv(assets / "datasets" / DATASETS[name], tmp.mktemp(name) / f"{name}.csv")


@pytest.fixture(scope="session")
def churn_csv(assets: Path | None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 rows of churn: 4 categorical and 15 numeric columns, label 0/1."""
    return _slice(assets, tmp_path_factory, "churn")


@pytest.fixture(scope="session")
def topics8_csv(assets: Path | None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 fortunes: one multi-line text column, 8 topics."""
    return _slice(assets, tmp_path_factory, "topics8")


@pytest.fixture(scope="session")
def trump_csv(assets: Path | None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 tweets: text and 3 numeric columns, 3 classes."""
    return _slice(assets, tmp_path_factory, "trump")


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    """A CSV written by the csv module (use ``path.write_bytes`` for malformed lines)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    return path
