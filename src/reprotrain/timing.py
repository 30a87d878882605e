"""Where a stage's wall time goes: imports, MLflow, data, model, training or scoring, logging.

Why: most of a small pipeline's time is not training (issue 12 measured imports, MLflow
start-up and model loads in every one of the stage processes), and nobody cuts what they
cannot see. The library functions that do each kind of work are wrapped in :func:`phase`
(or decorated with :func:`timed`), so the stage scripts stay recipes; ``cli.run_main`` ends
every stage with one log line of the breakdown and, when ``REPROTRAIN_TIMINGS`` names a
directory (``benchmarks/pipeline.py`` sets it), writes it there as ``<stage>.json``.

Phases nest: time spent in an inner phase (an MLflow metric logged from inside training)
counts to the inner one only, so the phases add up to the wall time without overlap.
Hand-written rather than a profiler: a profiler costs more than the work it would measure
in short processes, and its output names functions, not the phases a user acts on.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import psutil

from reprotrain.fsio import atomic_write_json

log = logging.getLogger(__name__)

#: The phases in report order (``imports`` is process start → ``main()``; ``other`` is the
#: rest of the wall time: Python's own start-up after imports, file I/O, lazy imports).
PHASES = ("imports", "mlflow", "data", "model", "train", "score", "export", "logging", "other")

_totals: dict[str, float] = defaultdict(float)
_stack: list[list[float]] = []  # [start, time spent in nested phases]
_started: list[float] = []  # process age when main() began

F = TypeVar("F", bound=Callable[..., Any])


def process_age() -> float:
    """Seconds since this process was created (includes the interpreter's start-up)."""
    return max(0.0, time.time() - psutil.Process().create_time())


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Count the wall time of the block to ``name`` (minus nested phases)."""
    if name not in PHASES:
        raise ValueError(f"unknown timing phase {name!r}: one of {', '.join(PHASES)}")
    frame = [time.perf_counter(), 0.0]
    _stack.append(frame)
    try:
        yield
    finally:
        _stack.pop()
        elapsed = time.perf_counter() - frame[0]
        _totals[name] += elapsed - frame[1]
        if _stack:
            _stack[-1][1] += elapsed


def timed(name: str) -> Callable[[F], F]:
    """Decorator form of :func:`phase`."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            with phase(name):
                return fn(*args, **kwargs)

        return inner  # type: ignore[return-value]

    return wrap


def start() -> None:
    """Mark the start of ``main()``: everything before it was imports and start-up."""
    _totals.clear()
    _started[:] = [process_age()]


def breakdown(total: float | None = None) -> dict[str, float]:
    """Seconds per phase, in :data:`PHASES` order, rounded to 0.1 s; sums to ``total``."""
    total = process_age() if total is None else total
    imports = _started[0] if _started else 0.0
    out = {"imports": imports, **{k: _totals.get(k, 0.0) for k in PHASES[1:-1]}}
    out["other"] = max(0.0, total - sum(out.values()))
    out["total"] = total
    return {k: round(v, 1) for k, v in out.items()}


def report(stage: str) -> dict[str, float]:
    """Log the breakdown in one line; write it to ``$REPROTRAIN_TIMINGS/<stage>.json``."""
    times = breakdown()
    shown = ", ".join(f"{k} {v:.1f}" for k, v in times.items() if v >= 0.05 and k != "total")
    log.info("%s took %.1f s: %s", stage, times["total"], shown)
    directory = os.environ.get("REPROTRAIN_TIMINGS")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(directory) / f"{stage}.json", times)
    return times
