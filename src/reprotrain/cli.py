"""Shared plumbing for command-line entry points (stages and ``python -m reprotrain``).

Why: a user who mistypes a param should see one actionable line and a non-zero exit code,
not a 40-line TensorFlow traceback. ``run_main`` gives every entry point that behaviour and
the same logging format.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from reprotrain import timing
from reprotrain.errors import ReprotrainError

log = logging.getLogger("reprotrain")

#: Exit code for errors the user can fix (bad params, bad data, missing weights, ...).
EXIT_USER_ERROR = 2
#: Exit code when the user interrupts with Ctrl-C (the shell convention 128 + SIGINT).
EXIT_INTERRUPTED = 130


def setup_logging(level: int | str | None = None) -> None:
    """Configure root logging once; ``REPROTRAIN_LOG_LEVEL`` overrides the default INFO."""
    level = level or os.environ.get("REPROTRAIN_LOG_LEVEL", "INFO")
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    # TensorFlow's C++ and absl chatter drowns the useful lines on CPU machines.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for noisy in ("absl", "h5py", "urllib3", "git", "alembic", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_main(main: Callable[[], int | None], name: str | None = None) -> None:
    """Run ``main`` and exit; user errors become one ``error:`` line and exit code 2.

    A run that ends normally logs where its time went (:mod:`reprotrain.timing`), named
    ``name`` or, for a stage script, after the script.
    """
    setup_logging()
    timing.start()
    try:
        code = main()
    except ReprotrainError as exc:
        log.error("%s", exc)
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(EXIT_INTERRUPTED)
    timing.report(name or Path(sys.argv[0]).stem)
    sys.exit(code or 0)
