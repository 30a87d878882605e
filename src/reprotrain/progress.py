"""Progress bars for long loops: downloads, snapshots, decoding, TFRecord writing, feature
extraction, prediction over a split, and the stages of a ``dvc repro`` run from Python.

tqdm, the way dvc and keras users know it: a live bar on a terminal, and in a Jupyter
notebook tqdm's notebook widget (``tqdm.auto`` picks it when ``ipywidgets`` is installed;
without it, the same text bar, redrawn in place like on a terminal). In CI logs (stderr is
neither a terminal nor a notebook) tqdm would print a line per refresh, so there it redraws
at most every ``CI_INTERVAL`` seconds: a handful of lines per task, not thousands of
carriage returns. ``REPROTRAIN_PROGRESS=0`` switches the bars off.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm.auto import tqdm

#: Seconds between lines when stderr is not a terminal (CI logs, `dvc repro` piped).
CI_INTERVAL = 15.0


def in_notebook() -> bool:
    """True inside a Jupyter kernel (notebook, lab, VS Code), where output is shown live.

    The test tqdm's own ``tqdm.autonotebook`` makes: IPython's kernel shell is loaded.
    """
    return "ipykernel.zmqshell" in sys.modules


def live() -> bool:
    """Whether a person watches the bar as it moves: a terminal or a notebook."""
    return sys.stderr.isatty() or in_notebook()


def progress(total: int | None, desc: str, unit: str = "it", **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr; ``unit="B"`` shows bytes with KB/MB scaling.

    Use as ``with progress(n, "decode") as bar: ... bar.update(1)``.
    """
    shown = live()
    disable = os.environ.get("REPROTRAIN_PROGRESS", "1") == "0"
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=unit == "B",
        unit_divisor=1024,
        file=sys.stderr,
        dynamic_ncols=shown,
        mininterval=0.1 if shown else CI_INTERVAL,
        maxinterval=CI_INTERVAL if shown else CI_INTERVAL * 4,
        ascii=not shown,
        disable=disable,
        **kwargs,
    )
