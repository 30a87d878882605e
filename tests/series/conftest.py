"""Series fixtures shared by the series tests (the data side's and the model side's): a
slice of the real weekly co2 series, a synthetic daily series with covariates, and a helper
that runs the real prepare on a CSV.

Small on purpose: window 8, horizon 3 prepare a few hundred steps in well under a second
once TensorFlow is imported.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

#: Weeks of the co2 slice (1958-03-29 onwards; weekly, no gaps in the source).
CO2_WEEKS = 260
#: Series knobs that keep tests fast.
SMALL: dict[str, Any] = {"window": 8, "horizon": 3, "season": 7, "max_gap": 2}


def synthetic(
    n: int = 240, seed: int = 0, start: str = "2020-01-01", freq: str = "D"
) -> pd.DataFrame:
    """A daily demand series: weekly season + trend + the effect of a temperature-like
    covariate (seasonal itself) and a workday flag, plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    time = pd.date_range(start, periods=n, freq=freq)
    temperature = 12 + 8 * np.sin(2 * np.pi * t / 365.25) + rng.normal(0, 1.0, n)
    workday = (time.dayofweek < 5).astype(int)
    demand = (
        100
        + 0.05 * t
        + 10 * np.sin(2 * np.pi * t / 7)
        - 1.5 * temperature
        + 6 * workday
        + rng.normal(0, 1.0, n)
    )
    return pd.DataFrame(
        {
            "time": time.strftime("%Y-%m-%d"),
            "demand": demand.round(3),
            "temperature": temperature.round(3),
            "workday": workday,
        }
    )


def write_csv(path: Path, frame: pd.DataFrame | str) -> Path:
    """``frame`` (or CSV text) as ``path`` (created with its folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(frame, str):
        path.write_text(frame, encoding="utf-8")
    else:
        frame.to_csv(path, index=False)
    return path


def run_prepare(
    root: Path,
    source: Path | pd.DataFrame | str,
    *,
    columns: Mapping[str, Any] | None = None,
    cuts: bool = True,
    **series: Any,
) -> tuple[Path, dict[str, Any]]:
    """The real series prepare on ``source`` in ``root`` (raw/, prepared/, cuts.json, the
    latter kept across calls with the same root): the prepared folder and its stats."""
    from reprotrain.config_kinds import ColumnsConfig, SeriesConfig
    from reprotrain.series.prepare import prepare

    raw = root / "raw"
    if raw.exists():
        shutil.rmtree(raw)
    raw.mkdir(parents=True)
    if isinstance(source, Path):
        shutil.copy2(source, raw / source.name)
    else:
        write_csv(raw / "series.csv", source)
    cfg = SeriesConfig(**{**SMALL, **series})
    stats = prepare(
        raw,
        root / "prepared",
        ColumnsConfig(**(columns or {})),
        cfg,
        root / "cuts.json" if cuts else None,
    )
    return root / "prepared", stats


@pytest.fixture(scope="session")
def co2_csv(assets: Path | None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first :data:`CO2_WEEKS` weeks of the real weekly co2 series (date,co2)."""
    if assets is None:
        pytest.skip("offline assets not available (REPROTRAIN_ASSETS)")
    frame = pd.read_csv(assets / "datasets" / "co2" / "co2_weekly.csv", dtype=str)
    return write_csv(tmp_path_factory.mktemp("co2") / "co2_weekly.csv", frame.head(CO2_WEEKS))


@pytest.fixture(scope="session")
def synthetic_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """:func:`synthetic` as demand.csv (time,demand,temperature,workday; 240 days)."""
    return write_csv(tmp_path_factory.mktemp("synthetic") / "demand.csv", synthetic())


@pytest.fixture(scope="session")
def synthetic_prepared(tmp_path_factory: pytest.TempPathFactory, synthetic_csv: Path) -> Path:
    """:func:`synthetic` prepared with covariates temperature, workday (window 8, horizon 3)."""
    prepared, _ = run_prepare(
        tmp_path_factory.mktemp("synthetic_prepared"),
        synthetic_csv,
        columns={"target": "demand", "covariates": ["temperature", "workday"]},
    )
    return prepared


@pytest.fixture(scope="session")
def co2_prepared(tmp_path_factory: pytest.TempPathFactory, co2_csv: Path) -> Path:
    """The co2 slice prepared (window 8, horizon 3; weekly, no covariates)."""
    prepared, _ = run_prepare(tmp_path_factory.mktemp("co2_prepared"), co2_csv)
    return prepared
