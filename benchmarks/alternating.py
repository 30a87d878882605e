"""Two ways of doing the same work, timed in alternating rounds and written as one result
file: what ``process_exit.py`` and ``export_overlap.py`` share. Alternating (which way goes
first changes every round) lets a burst of other work on the shared machine fall on both."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def alternate(ways: tuple[str, str], rounds: int, seconds: Callable[[str], float]) -> dict:
    """``{way: [seconds per round]}``: ``seconds(way)`` called for both ways each round."""
    times: dict[str, list[float]] = {way: [] for way in ways}
    for i in range(rounds):
        for way in ways if i % 2 == 0 else ways[::-1]:
            times[way].append(round(seconds(way), 3))
            print(f"round {i + 1}: {way} {times[way][-1]:.2f} s", file=sys.stderr)
    return times


def write_result(path: Path, what: str, times: dict[str, list[float]], ratio: str) -> dict:
    """The result file: the rounds, their medians and ``ratio`` (``"a_vs_b"``: a's median
    over b's), the machine and the date."""
    medians = {way: round(statistics.median(t), 2) for way, t in times.items()}
    a, b = ratio.split("_vs_")
    data: dict[str, Any] = {
        "what": what,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        },
        "rounds": len(next(iter(times.values()))),
        "seconds": times,
        "median_s": medians,
        ratio: round(medians[a] / medians[b], 3),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps(medians))
    return data
