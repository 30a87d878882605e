"""Which process owns a RUNNING run, and marking the runs of dead processes KILLED.

Why: SIGKILL (``kill -9``, the OOM killer, a CI runner torn down, a power cut) cannot be
caught, so a stage run can stay RUNNING forever and the UI shows a training that is not
happening. Every run records its owner (host, pid, process start time: a pid the system has
since given to another process is not mistaken for the owner); the next stage run on the same
host marks a RUNNING run whose owner is gone KILLED, with a note and ``reprotrain.error``.
Runs from other hosts are never touched (their processes cannot be checked from here).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from reprotrain.tracking.tags import TAG_ERROR, TAG_HOST, TAG_NOTE, TAG_PID, TAG_PID_START

logger = logging.getLogger(__name__)


def process_tags(pid: int | None = None) -> dict[str, str]:
    """Host, pid and start time of the process that owns a run (start time: a pid reused by
    another process later is not mistaken for the owner)."""
    import psutil

    proc = psutil.Process(pid or os.getpid())
    return {
        TAG_HOST: socket.gethostname(),
        TAG_PID: str(proc.pid),
        TAG_PID_START: repr(proc.create_time()),
    }


def owner_alive(tags: Mapping[str, str]) -> bool:
    """Whether the process recorded in a run's tags still runs (True when unknown: a run
    from another host or without the tags is never touched)."""
    import psutil

    if tags.get(TAG_HOST) != socket.gethostname() or not tags.get(TAG_PID, "").isdigit():
        return True
    try:
        started = psutil.Process(int(tags[TAG_PID])).create_time()
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # AccessDenied, ZombieProcess: leave it alone
        return True
    try:
        return abs(started - float(tags.get(TAG_PID_START, "nan"))) < 0.01
    except ValueError:
        return True


def reap_dead_runs(client: Any, exp_id: str) -> list[str]:
    """Mark KILLED every RUNNING run of the experiment whose owning process on this host is
    gone (SIGKILL, OOM killer): a note and ``reprotrain.error`` say what happened."""
    host = socket.gethostname()
    running = client.search_runs(
        [exp_id],
        filter_string=f"attributes.status = 'RUNNING' and tags.`{TAG_HOST}` = '{host}'",
        max_results=500,
    )
    reaped = []
    for r in running:
        tags = r.data.tags
        if owner_alive(tags):
            continue
        when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        message = (
            f"process {tags.get(TAG_PID)} on {host} ended without closing this run (SIGKILL, "
            f"out of memory or power loss); marked KILLED at {when} by the next stage run"
        )
        client.set_tag(r.info.run_id, TAG_ERROR, message)
        client.set_tag(r.info.run_id, TAG_NOTE, f"**killed**: {message}")
        client.set_terminated(r.info.run_id, status="KILLED")
        logger.warning("MLflow run %s (%s): %s", r.info.run_id, r.info.run_name, message)
        reaped.append(r.info.run_id)
    return reaped
