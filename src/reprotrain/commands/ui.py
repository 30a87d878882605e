"""``python -m reprotrain ui``: the MLflow UI on loopback against the project's store.

Why a command and not "run mlflow ui yourself": the store is a SQLite file whose absolute
path and artifact root come from ``params.yaml`` (``tracking.store``); typing the right
``--backend-store-uri``/``--default-artifact-root`` by hand is where people go wrong and end
up looking at an empty, freshly created ``mlruns/`` somewhere else.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from reprotrain import paths, tracking
from reprotrain.config import load_params
from reprotrain.errors import TrackingError

logger = logging.getLogger(__name__)


def server_command(
    uri: str, host: str = "127.0.0.1", port: int = 5000, workers: int = 1
) -> list[str]:
    """The ``mlflow server`` command line for a SQLite ``uri`` (artifacts next to it)."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri]
    artifacts = tracking.artifact_location(uri)
    if artifacts:
        # Runs carry absolute file:// artifact URIs; new experiments created from the UI
        # get the same root.
        cmd += ["--default-artifact-root", artifacts, "--no-serve-artifacts"]
    return [*cmd, "--host", host, "--port", str(port), "--workers", str(workers)]


def server_env() -> dict[str, str]:
    """The server's environment: no telemetry and no GenAI job workers (extra processes that
    a UI for training runs never uses, and that slow its start on a small machine)."""
    env = dict(os.environ)
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    return env


def store_uri(root: Path, store: str | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` or the project's SQLite store (``--store`` or params.yaml)."""
    if store is None:
        params_file = root / "params.yaml"
        store = load_params(params_file).tracking.store if params_file.is_file() else "mlruns"
    return tracking.store_uri(root, store)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reprotrain ui", description=__doc__)
    parser.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="interface (default 127.0.0.1, this machine only)"
    )
    parser.add_argument("--root", type=Path, default=None, help="project root (default: cwd)")
    parser.add_argument("--store", default=None, help="store directory (default: params.yaml)")
    args = parser.parse_args(argv)
    root = paths.project_root(args.root)
    uri = store_uri(root, args.store)
    if not uri.startswith("sqlite:///"):
        raise TrackingError(
            f"MLFLOW_TRACKING_URI={uri} is a server already: open it in a browser "
            "(unset the variable to serve the project's SQLite store)"
        )
    tracking.check_reachable(uri)
    cmd = server_command(uri, args.host, args.port)
    logger.info("MLflow UI on http://%s:%d (store %s); Ctrl-C stops it", args.host, args.port, uri)
    # Own process group: the server's uvicorn worker is a grandchild, and Ctrl-C/SIGTERM
    # must stop the whole group, not leave a server holding the port.
    proc = subprocess.Popen(cmd, env=server_env(), start_new_session=True)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return proc.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop_group(proc)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def stop_group(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM the process group of ``proc`` (SIGKILL after ``timeout`` seconds)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass
