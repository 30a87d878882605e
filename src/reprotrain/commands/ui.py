"""``python -m reprotrain ui``: the MLflow UI on loopback against the project's store.

Why a command and not "run mlflow ui yourself": the store is a SQLite file whose absolute
path and artifact root come from ``params.yaml`` (``tracking.store``); typing the right
``--backend-store-uri``/``--default-artifact-root`` by hand is where people go wrong and end
up looking at an empty, freshly created ``mlruns/`` somewhere else.

Why ``--allowed-hosts``: MLflow's default Host check also accepts every private address
(``10.*``, ``192.168.*``, ``172.16-31.*``), so a web page whose name a DNS-rebinding attacker
points at a private address can read the store from the user's browser. The command passes
only the loopback names with the port (and the bound host or ``--allowed-host`` names), and
warns when the UI is bound to every interface: it has no authentication (a shared server
should use MLflow's, see docs/scale-out.md).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from reprotrain import paths, tracking
from reprotrain.config import load_params
from reprotrain.errors import TrackingError

logger = logging.getLogger(__name__)

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
ALL_INTERFACES = ("0.0.0.0", "::", "[::]")


def allowed_hosts(host: str, port: int, extra: Sequence[str] = ()) -> list[str]:
    """The ``Host`` headers the server accepts: the loopback names with the port, the bound
    ``host`` (unless it is every interface) and ``extra`` names (``name`` or ``name:port``);
    nothing else, so a rebinding DNS name or a private address is refused (HTTP 403)."""
    names = [*LOOPBACK_NAMES]
    if host not in ALL_INTERFACES and host not in names:
        names.append(f"[{host}]" if ":" in host and not host.startswith("[") else host)
    hosts = [f"{name}:{port}" for name in names]
    if port == 80:  # a browser leaves the default port out of Host
        hosts += names
    hosts += [e if ":" in e.rsplit("]", 1)[-1] else f"{e}:{port}" for e in extra]
    return list(dict.fromkeys(hosts))


def exposure_warning(host: str, port: int) -> str | None:
    """The warning for a UI bound beyond this machine, None for loopback."""
    if host in LOOPBACK_NAMES or host.startswith("127.") or host in ("::1",):
        return None
    where = "every network interface" if host in ALL_INTERFACES else f"{host}"
    return (
        f"the MLflow UI listens on {where}, port {port}, WITHOUT authentication: anyone who "
        "can reach it can read and change the runs and the model registry. Keep it on "
        "127.0.0.1 (use an SSH tunnel), or run a shared server with MLflow's authentication "
        "(mlflow server --app-name basic-auth; docs/scale-out.md). Only the names passed "
        "with --allowed-host are accepted as Host headers besides the loopback names"
    )


def server_command(
    uri: str,
    host: str = "127.0.0.1",
    port: int = 5000,
    workers: int = 1,
    extra_hosts: Sequence[str] = (),
) -> list[str]:
    """The ``mlflow server`` command line for a SQLite ``uri`` (artifacts next to it)."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri]
    artifacts = tracking.artifact_location(uri)
    if artifacts:
        # Runs carry absolute file:// artifact URIs; new experiments created from the UI
        # get the same root.
        cmd += ["--default-artifact-root", artifacts, "--no-serve-artifacts"]
    cmd += ["--allowed-hosts", ",".join(allowed_hosts(host, port, extra_hosts))]
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
    parser.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME[:PORT]",
        help="also accept this Host header (e.g. the machine's name when --host 0.0.0.0); "
        "repeatable. Default: the loopback names with the port only",
    )
    args = parser.parse_args(argv)
    root = paths.project_root(args.root)
    uri = store_uri(root, args.store)
    if not uri.startswith("sqlite:///"):
        raise TrackingError(
            f"MLFLOW_TRACKING_URI={uri} is a server already: open it in a browser "
            "(unset the variable to serve the project's SQLite store)"
        )
    tracking.check_reachable(uri)
    cmd = server_command(uri, args.host, args.port, extra_hosts=args.allowed_host)
    if (warning := exposure_warning(args.host, args.port)) is not None:
        logger.warning(warning)
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
