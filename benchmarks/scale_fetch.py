"""``scale.py``'s fetch measurement: re-fetching an unchanged 20k-file folder with today's
fetch and with the one before issue 23, and an in-place edit that keeps size and mtime.

Why the legacy fetch is loaded from git: the cost of the stricter unchanged-file check is
only meaningful against the old check, measured in the same run on the same snapshot.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from scale_images import image_path, placeholder_files  # noqa: E402
from scale_measure import load  # noqa: E402

#: fetch before issue 23 (a file unchanged when its size and whole-second mtime match),
#: loaded from git to measure the cost of the stricter check in the same run.
LEGACY_FETCH_COMMIT = "468c3bc"


def legacy_fetch():
    """``reprotrain.data.fetch.fetch`` as of :data:`LEGACY_FETCH_COMMIT` (read by git, run
    against today's ``origin``, whose functions it calls keep their old signatures)."""
    import importlib.util

    code = subprocess.run(
        ["git", "show", f"{LEGACY_FETCH_COMMIT}:src/reprotrain/data/fetch.py"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    spec = importlib.util.spec_from_loader("legacy_fetch", loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules["legacy_fetch"] = module  # dataclasses look their module up
    exec(compile(code, "legacy_fetch.py", "exec"), module.__dict__)
    return module.fetch


def _fetch_run(fetch_fn, src: Path, dst: Path, **kwargs: Any) -> dict[str, Any]:
    before = load()
    t = time.perf_counter()
    r = fetch_fn(str(src), dst, **kwargs)
    return {
        "seconds": round(time.perf_counter() - t, 2),
        "files": r.files,
        "copied": r.copied,
        "unchanged": getattr(r, "unchanged", None),
        "removed": r.removed,
        "load_before": before,
    }


def measure_fetch(src: Path, work: Path, rounds: int = 3) -> dict[str, Any]:
    """First copy, then unchanged re-runs of today's fetch (with the stage's state file)
    and of the legacy one alternating on the same snapshot, one stateless re-run (every
    file compared by hash), and the stale-edit check: one file edited in place keeping
    its size and mtime, which the legacy check misses."""
    import statistics

    from reprotrain.data.fetch import SnapshotState, fetch

    legacy = legacy_fetch()
    dst, digests, state = work / "fetch-raw", work / "fetch-digests.json", work / "fetch-state.json"
    shutil.rmtree(dst, ignore_errors=True)
    digests.unlink(missing_ok=True)
    state.unlink(missing_ok=True)
    new = {"state": SnapshotState(digest_cache=digests, sync_state=state)}
    out: dict[str, Any] = {"first": _fetch_run(fetch, src, dst, **new)}
    logging.info("fetch (first): %s", out["first"])
    runs: dict[str, list[dict[str, Any]]] = {"unchanged_legacy": [], "unchanged": []}
    for _ in range(rounds):
        runs["unchanged_legacy"].append(_fetch_run(legacy, src, dst, digest_cache=digests))
        runs["unchanged"].append(_fetch_run(fetch, src, dst, **new))
        logging.info("fetch unchanged, legacy then today: %s", [r[-1] for r in runs.values()])
    ratios = [
        b["seconds"] / a["seconds"]
        for a, b in zip(runs["unchanged_legacy"], runs["unchanged"], strict=True)
    ]
    out |= runs
    out["unchanged_ratio_today_vs_legacy_per_round"] = [round(r, 2) for r in ratios]
    out["unchanged_ratio_today_vs_legacy_median"] = round(statistics.median(ratios), 2)
    stateless = {"state": SnapshotState(digest_cache=digests)}
    out["unchanged_without_state"] = _fetch_run(fetch, src, dst, **stateless)
    logging.info("fetch unchanged without state: %s", out["unchanged_without_state"])
    victim = image_path(src, 0)
    st, original = victim.stat(), victim.read_bytes()
    try:
        victim.write_bytes(bytes(b ^ 0xFF for b in original[:64]) + original[64:])
        os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
        missed = _fetch_run(legacy, src, dst, digest_cache=digests)["copied"]
        caught = _fetch_run(fetch, src, dst, **new)["copied"]
    finally:
        victim.write_bytes(original)
        os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    out["edit_keeping_size_and_mtime_copied"] = {"legacy": missed, "today": caught}
    logging.info(
        "edit keeping size and mtime, files copied: %s", out["edit_keeping_size_and_mtime_copied"]
    )
    shutil.rmtree(dst)
    return out


def fetch_only(args: argparse.Namespace, full: Path, machine: dict[str, Any]) -> int:
    """``--fetch-only``: the fetch measurements alone, merged into ``--out``."""
    if full.with_name(full.name + ".done").is_file():
        src, data = full, {"kind": "generated images", "files": args.images}
    else:
        src = args.work / f"placeholders-{args.images}-seed{args.seed}"
        data = placeholder_files(src, args.images, args.seed)
    report = json.loads(args.out.read_text()) if args.out.is_file() else {}
    result = measure_fetch(src, args.work, args.rounds)
    report["fetch"] = {"data": data, "machine": machine | {"load_average_at_end": load()}}
    report["fetch"] |= result
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    sys.stdout.write(json.dumps(report["fetch"], indent=2) + "\n")
    return 0
