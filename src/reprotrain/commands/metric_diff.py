"""Metric histories of two MLflow runs, compared value by value: what ``reproduce`` reports.

Identical means identical: every final value and every per-step history, compared exactly
(NaN equals NaN), because on CPU with ``runtime.deterministic`` a reproduction is bit-exact
and anything looser would hide a real difference.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

#: MLflow's system-metrics prefix: samples of the machine, never expected to repeat.
SYSTEM_PREFIX = "system/"


def metric_histories(client: Any, run: Any) -> dict[str, list[tuple[int, float]]]:
    """``{metric: [(step, value), ...]}`` of a run's result metrics, ordered by step."""
    out = {}
    for key in sorted(k for k in run.data.metrics if not k.startswith(SYSTEM_PREFIX)):
        hist = client.get_metric_history(run.info.run_id, key)
        out[key] = sorted((int(m.step), float(m.value)) for m in hist)
    return out


def _same(a: list[tuple[int, float]] | None, b: list[tuple[int, float]] | None) -> bool:
    if a is None or b is None or len(a) != len(b):
        return False
    return all(
        sa == sb and (va == vb or (math.isnan(va) and math.isnan(vb)))
        for (sa, va), (sb, vb) in zip(a, b, strict=True)
    )


def compare(
    original: Mapping[str, list[tuple[int, float]]],
    reproduced: Mapping[str, list[tuple[int, float]]],
) -> list[tuple[str, float | None, float | None, bool]]:
    """Rows ``(metric, original last value, reproduced last value, identical history)``."""
    rows = []
    for key in sorted(set(original) | set(reproduced)):
        a, b = original.get(key), reproduced.get(key)
        last_a = a[-1][1] if a else None
        last_b = b[-1][1] if b else None
        rows.append((key, last_a, last_b, _same(a, b)))
    return rows


def format_table(rows: Sequence[tuple[str, float | None, float | None, bool]]) -> str:
    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.10g}"

    width = max([len("metric"), *(len(r[0]) for r in rows)])
    lines = [f"{'metric':<{width}}  {'original':>16}  {'reproduced':>16}  same"]
    for key, a, b, same in rows:
        lines.append(f"{key:<{width}}  {fmt(a):>16}  {fmt(b):>16}  {'yes' if same else 'NO'}")
    return "\n".join(lines)
