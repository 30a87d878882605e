"""evaluate's pieces on a known series: the model and both baselines on the same windows,
MASE on the train scale, coverage, plots and card; a champion of another kind, window or
horizon is not comparable; the gate's verdict goes through the shared policy."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reprotrain.errors import DataError
from reprotrain.evaluation import decision
from reprotrain.evaluation.gate import GateRule
from reprotrain.series import card, evaluation, gate, metrics, plots

WINDOW, HORIZON, SEASON = 4, 3, 6


@dataclass(frozen=True)
class Meta:
    window: int = WINDOW
    horizon: int = HORIZON
    frequency: str = "D"
    time: str = "t"
    target: str = "y"
    covariates: tuple[str, ...] = ()

    @property
    def channels(self) -> tuple[str, ...]:
        return (self.target, *self.covariates)


@dataclass(frozen=True)
class Split:
    x: np.ndarray
    y: np.ndarray
    times: np.ndarray
    origin: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


def _series(n: int = 40) -> pd.DataFrame:
    t = pd.date_range("2024-01-01", periods=n, freq="D")
    y = 10 + np.sin(2 * np.pi * np.arange(n) / SEASON) + 0.1 * np.arange(n)
    period = np.where(np.arange(n) < 24, "train", np.where(np.arange(n) < 30, "val", "test"))
    return pd.DataFrame({"t": t, "y": y, "period": period})


def _test_windows(series: pd.DataFrame, first: int) -> Split:
    v, t = series["y"].to_numpy(), series["t"].to_numpy()
    starts = range(first, len(series) - WINDOW - HORIZON + 1)
    x = np.stack([v[s : s + WINDOW, None] for s in starts]).astype(np.float32)
    y = np.stack([v[s + WINDOW : s + WINDOW + HORIZON] for s in starts])
    times = np.stack([t[s + WINDOW : s + WINDOW + HORIZON] for s in starts])
    return Split(x, y, times, times[:, 0])


def test_report_puts_the_baselines_beside_the_model_on_the_same_windows(tmp_path: Path) -> None:
    series = _series()
    test = _test_windows(series, 0)  # the first windows have no value a season back
    perfect = test.y.copy()
    scored = evaluation.test_forecasts(test, perfect, series, Meta(), SEASON)
    # Step 1 of window s reads position s + WINDOW + 1 - SEASON: s < 2 has none.
    assert scored.dropped == 2 and scored.keep.sum() == len(test) - 2
    assert np.all(scored.naive == test.x[scored.keep, -1, :1])
    scale, used = metrics.mase_scale(evaluation.train_values(series, Meta()), SEASON)
    assert used == SEASON and scale == pytest.approx(0.1 * SEASON)  # the trend per season
    intervals = {"80": {"level": 0.8, "width": [0.1] * HORIZON, "guaranteed": True}}
    report = evaluation.report(scored, scale, used, intervals)
    assert report["mae"] == 0 and report["mase"] == 0 and report["beats_seasonal_naive"]
    assert report["baselines"]["seasonal_naive"]["mase"] == pytest.approx(1.0)
    assert report["intervals"]["80"]["coverage"] == 1.0
    flat = evaluation.flat(report)
    assert flat["baselines.naive.by_step.mae.step_3"] > 0
    json.dumps(report)  # JSON-able

    figs = plots.write_plots(scored, report, tmp_path / "plots", tmp_path / "plots" / "series")
    rows = pd.read_csv(figs["forecast_csv"])
    assert len(rows) == scored.y.size and rows["lower_80"].iloc[0] < rows["forecast"].iloc[0]
    assert pd.read_csv(figs["error_csv"]).columns.tolist() == [
        "step",
        "model",
        "naive",
        "seasonal_naive",
    ]
    path = card.write_card(
        tmp_path / "reports" / "model_card.md",
        card.SeriesCard(
            "series_lstm",
            "demand",
            {"model": "lstm", "units": 8, "loss": "mse", "anchor": "last"},
            Meta(),
            report,
            {"registered_model": "demand", "version": 3, "alias": "champion", "reason": "ok"},
            None,
            "data.csv",
            "abc",
            figures=[figs["forecast"]],
        ),
    )
    text = path.read_text()
    assert "seasonal naive" in text and "| 80% | 100.0%" in text and "v3 → **champion**" in text
    assert (path.parent / "model_card" / "forecast.png").is_file()


def test_no_window_with_a_seasonal_value_is_an_error() -> None:
    series = _series(12)
    test = _test_windows(series, 0)
    with pytest.raises(DataError, match=r"lower series\.season"):
        evaluation.test_forecasts(test, test.y, series, Meta(), 50)


def test_other_kind_window_or_horizon_is_not_comparable() -> None:
    ours = evaluation.inputs_tag(Meta())
    policy = decision.Policy("series_paired", GateRule(0.0), "demand")
    images = decision.ChampionSnapshot(1, labels=("a", "b"), image_size=224)
    assert "data.kind images" in decision.comparability_problem(images, (), 0, "series", ours)
    other = decision.ChampionSnapshot(
        2, kind="series", inputs=evaluation.inputs_tag(Meta(window=8))
    )
    problem = decision.comparability_problem(other, (), 0, "series", ours)
    assert problem is not None and "other inputs" in problem
    longer = evaluation.inputs_tag(Meta(horizon=5))
    assert decision.comparability_problem(other, (), 0, "series", longer) is not None
    same = decision.ChampionSnapshot(3, kind="series", inputs=ours)
    assert decision.comparability_problem(same, (), 0, "series", ours) is None
    verdict = decision.not_comparable(problem, 2, policy)
    assert verdict.alias is None and not verdict.comparable


def test_gate_verdict_through_the_shared_policy() -> None:
    rng = np.random.default_rng(0)
    theirs = 1 + rng.random(40)
    stats = gate.decide(0.8, theirs - 0.5, theirs, horizon=HORIZON, alpha=0.05, champion_version=1)
    policy = decision.Policy("series_paired", GateRule(0.0), "demand", reproduces="run1")
    d = decision.apply_policy(stats, stats["promoted"], stats["reason"], 1, 0.9, policy)
    assert stats["promoted"] and not d.promote and d.alias is None  # a reproduction
    review = decision.Policy("series_paired", GateRule(0.0), "demand", mode="challenger")
    d = decision.apply_policy(stats, stats["promoted"], stats["reason"], 1, 0.9, review)
    assert d.proposed and d.alias == "challenger" and d.champion_accuracy == 0.9
