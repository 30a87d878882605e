"""Progress bars for long loops: downloads, snapshots, decoding, TFRecord writing, feature
extraction and prediction over a split.

tqdm, the way dvc and keras users know it: a live bar on a terminal. In CI logs (stderr is
not a terminal) tqdm would print a line per refresh, so there it redraws at most every
``CI_INTERVAL`` seconds: a handful of lines per task, not thousands of carriage returns.
``REPROTRAIN_PROGRESS=0`` switches the bars off.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm.auto import tqdm

#: Seconds between lines when stderr is not a terminal (CI logs, `dvc repro` piped).
CI_INTERVAL = 15.0


def progress(total: int | None, desc: str, unit: str = "it", **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr; ``unit="B"`` shows bytes with KB/MB scaling.

    Use as ``with progress(n, "decode") as bar: ... bar.update(1)``.
    """
    tty = sys.stderr.isatty()
    disable = os.environ.get("REPROTRAIN_PROGRESS", "1") == "0"
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=unit == "B",
        unit_divisor=1024,
        file=sys.stderr,
        dynamic_ncols=tty,
        mininterval=0.1 if tty else CI_INTERVAL,
        maxinterval=CI_INTERVAL if tty else CI_INTERVAL * 4,
        ascii=not tty,
        disable=disable,
        **kwargs,
    )
