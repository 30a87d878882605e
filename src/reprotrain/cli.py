"""Shared plumbing for command-line entry points (stages and ``python -m reprotrain``).

Why: a user who mistypes a param should see one actionable line and a non-zero exit code,
not a 40-line TensorFlow traceback. :func:`run` gives every entry point that behaviour and
returns the exit code; :func:`run_main` is the process-level wrapper a stage script's
``if __name__ == "__main__":`` block calls.

Two layers, so that nothing a library or notebook user calls ends their process or edits
their environment: :func:`run` only catches and reports, while the process set-up
(:func:`configure_process`, :func:`setup_logging`) and ``sys.exit`` live in
:func:`run_main` and in ``reprotrain.__main__``'s entry, which run only when this process
*is* a stage or a command.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NoReturn

from reprotrain import timing
from reprotrain.errors import ReprotrainError

#: Exit code for errors the user can fix (bad params, bad data, missing weights, ...).
EXIT_USER_ERROR = 2
#: Exit code when the user interrupts with Ctrl-C (the shell convention 128 + SIGINT).
EXIT_INTERRUPTED = 130

#: What a stage or command process sets for TensorFlow unless the user set it (their value
#: wins). ``TF_CPU_ALLOCATOR_USE_BFC``: TensorFlow's CPU tensors then come from its own
#: best-fit-with-coalescing allocator, which keeps and reuses the memory, instead of malloc,
#: which serves each block over 32 MB (MobileNetV2's activations) as fresh zeroed pages and
#: unmaps it after every step; the results are bit-identical, the training stages faster
#: (``benchmarks/pipeline.py --script-bfc``), and each run records which one it got as the
#: ``reprotrain.env.cpu_allocator`` tag. TensorFlow reads it when it creates its CPU
#: allocator (its first op), so setting it at the start of ``main`` is in time even though a
#: stage script has imported TensorFlow by then. ``TF_CPP_MIN_LOG_LEVEL=2`` hides
#: TensorFlow's C++ info and warning lines in the processes a stage starts (export's
#: converter); it is read once per process, at TensorFlow's import.
PROCESS_ENV: Mapping[str, str] = {
    "TF_CPU_ALLOCATOR_USE_BFC": "true",
    "TF_CPP_MIN_LOG_LEVEL": "2",
}


def configure_process(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Set :data:`PROCESS_ENV`'s defaults in ``environ`` (``os.environ``); returns it.

    Only for a process that is a stage or a command (``run_main``, ``python -m
    reprotrain``); :mod:`reprotrain.api` passes the same values to the processes it starts
    instead of changing the caller's environment.
    """
    env = os.environ if environ is None else environ
    for key, value in PROCESS_ENV.items():
        env.setdefault(key, value)
    return env  # type: ignore[return-value]


def setup_logging(level: int | str | None = None) -> None:
    """Configure root logging for this process; ``REPROTRAIN_LOG_LEVEL`` overrides INFO.

    ``force=True`` replaces handlers an import added, so it belongs to process entry
    points only, never to a function a notebook calls.
    """
    level = level or os.environ.get("REPROTRAIN_LOG_LEVEL", "INFO")
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("absl", "h5py", "urllib3", "git", "alembic", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run(main: Callable[[], int | None], name: str) -> int:
    """Call ``main`` and return its exit code; user errors become one ``error:`` line
    on stderr and :data:`EXIT_USER_ERROR`, Ctrl-C :data:`EXIT_INTERRUPTED`, a
    ``SystemExit`` inside (argparse's usage errors, ``--help``) its code.

    A run that ends normally logs where its time went (:mod:`reprotrain.timing`) as
    ``name``. Never exits: safe to call from a notebook or another program.
    """
    timing.start()
    try:
        code = main()
    except ReprotrainError as exc:
        # One line, once (not also as a log record): what the user has to fix.
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return EXIT_INTERRUPTED
    except SystemExit as exc:  # argparse's usage errors and --help: the code, not an exit
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    timing.report(name)
    return code or 0


def start_process() -> None:
    """Set up a stage or command process: :func:`configure_process`, then logging."""
    configure_process()
    setup_logging()


def exit_process(code: int) -> NoReturn:
    """End a stage or command process with ``code``, its standard streams flushed.

    The exit is the normal one (``atexit`` handlers run, threads are joined, files are
    closed); only the cyclic garbage collector is told, by ``gc.freeze()``, that the objects
    alive now need no more collections. Why: a process that imported TensorFlow, Keras and
    MLflow otherwise spends seconds at shutdown walking their object graphs (collections
    of memory the exit releases anyway), once per stage, between every two stages of
    ``dvc repro`` (``benchmarks/process_exit.py``). Everything a stage writes is closed and
    renamed into place before this (``reprotrain.fsio``).
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing to flush into
            stream.flush()
    gc.freeze()
    sys.exit(code)


def run_main(main: Callable[[], int | None], name: str | None = None) -> NoReturn:
    """A stage or command process: set it up, :func:`run` ``main``, exit with its code.

    Called from a script's ``if __name__ == "__main__":`` block, where ending the process
    is the point. ``name`` defaults to the script's file name (the stage).
    """
    start_process()
    exit_process(run(main, name or Path(sys.argv[0]).stem))
