"""How ``scale.py`` measures on a shared machine: wall time and the process tree's peak
RSS of a command, the load average beside every number, and the benchmark's environment.

Why its own module: every measurement (prepare, fetch, DVC, training input) runs its
subject the same way, so the way is written once.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_measured(cmd: list[str], cwd: Path | None = None, env=None) -> dict[str, Any]:
    """Run ``cmd``; wall time, the last stdout line as JSON (if any), and the process tree's
    peak RSS (sum over the process and its descendants, sampled every 0.1 s)."""
    import psutil

    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    peak, done = [0], threading.Event()

    def sample() -> None:
        try:
            parent = psutil.Process(proc.pid)
        except psutil.NoSuchProcess:
            return
        while not done.is_set():
            try:
                tree = [parent, *parent.children(recursive=True)]
                rss = 0
                for p in tree:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        rss += p.memory_info().rss
                peak[0] = max(peak[0], rss)
            except psutil.NoSuchProcess:
                return
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    done.set()
    sampler.join()
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{err[-4000:]}")
    lines = [line for line in out.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines else {}
    return result | {"wall_seconds": round(seconds, 2), "tree_peak_rss_mib": peak[0] >> 20}


def bench_env() -> dict[str, str]:
    """The environment every measured command runs in: this interpreter first on ``PATH``,
    no progress bars, no tracking server, a git identity for the DVC project."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["REPROTRAIN_PROGRESS"] = "0"
    env.pop("MLFLOW_TRACKING_URI", None)
    for k, v in {"NAME": "reprotrain-bench", "EMAIL": "bench@reprotrain.invalid"}.items():
        env.setdefault(f"GIT_AUTHOR_{k}", v)
        env.setdefault(f"GIT_COMMITTER_{k}", v)
    return env


def timed_command(cmd: list[str], cwd: Path) -> float:
    """Seconds ``cmd`` takes in ``cwd``; a failure stops the benchmark with its stderr."""
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=bench_env(), text=True, capture_output=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return round(time.perf_counter() - t, 2)
