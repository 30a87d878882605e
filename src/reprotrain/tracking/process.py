"""Process-level switches around a stage run: SIGTERM as Ctrl-C, MLflow's environment knobs
set only for one call, and the quick "is the server down?" check.

Split from :mod:`reprotrain.tracking.runs` (the run lifecycle), which uses them: these touch
the process (signal handlers, ``os.environ``), not MLflow runs.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from reprotrain.tracking import store

logger = logging.getLogger(__name__)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def interrupt_on_sigterm() -> Any:
    """Treat SIGTERM (``kill``, ``dvc queue kill``, a CI timeout) like Ctrl-C while a stage
    runs, so the run ends KILLED instead of staying RUNNING. Returns the previous handler
    (None when not in the main thread, where handlers cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_interrupt)


@contextmanager
def scoped_environ(**values: str | None) -> Iterator[None]:
    """Set (or, for None, unset) environment variables for one block, then restore exactly
    what was there: MLflow reads these knobs from the environment, not from arguments."""
    saved = {k: os.environ.get(k) for k in values}
    _apply(values)
    try:
        yield
    finally:
        _apply(saved)


def _apply(values: dict[str, str | None]) -> None:
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def sampling_interval(seconds: float) -> AbstractContextManager[None]:
    """MLflow's system-metrics monitor reads its sampling interval from the environment
    when ``start_run`` creates it; set it only for that call (a user's
    ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` wins)."""
    name = "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"
    return scoped_environ(**{name: os.environ.get(name, str(seconds))})


def no_http_retries() -> AbstractContextManager[None]:
    """MLflow retries a failing HTTP call for minutes; when the server is known to be down,
    the calls that close a run get one short try."""
    return scoped_environ(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="3")


def server_down(uri: str) -> str | None:
    """What is wrong with the tracking server at ``uri`` (logged), or None if it answers."""
    problem = store.server_problem(uri, timeout=3)
    if problem:
        logger.warning(
            "MLflow tracking server %s is down (%s): the run stays RUNNING until the next "
            "stage run marks it KILLED",
            uri,
            problem,
        )
    return problem
