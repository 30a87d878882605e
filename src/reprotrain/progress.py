"""A dependency-free progress bar for long loops (downloads, snapshots, TFRecord writing).

Why not tqdm: one more pinned dependency for thirty lines. On a terminal it redraws one
line on stderr; in CI logs (not a TTY) it logs a line every 25 % instead of thousands of
carriage returns.
"""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger(__name__)


def _human(n: float, unit: str) -> str:
    if unit != "B":
        return f"{int(n)}"
    for suffix in ("B", "KB", "MB", "GB"):
        if n < 1024 or suffix == "GB":
            return f"{n:.0f} {suffix}" if suffix == "B" else f"{n:.1f} {suffix}"
        n /= 1024
    return f"{n:.1f} GB"  # pragma: no cover


class Progress:
    """``update(n)`` as work is done, ``close()`` at the end; ``total=None`` if unknown."""

    def __init__(self, total: int | None, label: str, unit: str = "", stream=None) -> None:
        self.total, self.label, self.unit = total, label, unit
        self.done = 0
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.monotonic()
        self._last_draw = 0.0
        self._next_log = 0.25

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.tty:
            now = time.monotonic()
            if now - self._last_draw > 0.1 or (self.total and self.done >= self.total):
                self._last_draw = now
                self.stream.write("\r" + self._line())
                self.stream.flush()
        elif self.total and self.done / self.total >= self._next_log:
            while self.done / self.total >= self._next_log:
                self._next_log += 0.25
            log.info("%s", self._line())

    def _line(self) -> str:
        elapsed = time.monotonic() - self.start
        if self.total:
            frac = min(1.0, self.done / self.total)
            bar = "#" * int(frac * 30)
            return (
                f"{self.label}: [{bar:<30}] {_human(self.done, self.unit)}/"
                f"{_human(self.total, self.unit)} ({frac:4.0%}) {elapsed:5.1f}s"
            )
        return f"{self.label}: {_human(self.done, self.unit)} {elapsed:5.1f}s"

    def close(self) -> None:
        if self.tty:
            self.stream.write("\r" + self._line() + "\n")
            self.stream.flush()
