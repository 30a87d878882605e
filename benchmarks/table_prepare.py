"""Table prepare at scale: peak memory and rows/s at 100k and 1M rows of a CSV resampled
from the offline assets' ``churn.csv``.

Why two sizes: prepare streams (three passes over the file, a chunk of rows at a time) and
keeps its per-row working set (keys, classes, splits, the ledger) in an on-disk SQLite
database with a bounded cache (``reprotrain.tables.rowstore``): the ratio of the peaks
shows whether any memory still grows with the rows (flat: close to 1). Each size runs in a
fresh process, so its peak RSS is its own.

Rows are drawn with replacement and one numeric cell jittered, so that nearly every row is
distinct (a million copies of 5,000 rows would measure the de-duplication instead).

    python benchmarks/table_prepare.py [--rows 100000 1000000] [--work DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results" / "table_prepare.json"

CHILD = """
import json, resource, sys, time
from pathlib import Path
from reprotrain.config_kinds import ColumnsConfig
from reprotrain.tables.prepare import Options, prepare_table
work = Path(sys.argv[1])
opts = Options(ColumnsConfig(), 0.15, 0.15, 0.5, 4096, 50, 200, 42)
t, cpu = time.perf_counter(), time.process_time()
stats = prepare_table(
    work / "raw", work / "prepared", opts, work / "splits.csv", work / "schema.json"
)
seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
print(json.dumps({
    "seconds": round(seconds, 2),
    "cpu_seconds": round(cpu, 2),
    "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    "rows_read": stats["rows_read"],
    "rows": stats["rows"],
    "duplicates": stats["duplicates"],
}))
"""


def assets() -> Path:
    env = os.environ.get("REPROTRAIN_ASSETS")
    root = Path(env) if env else REPO.parent / "shared" / "assets"
    path = root / "datasets" / "churn" / "churn.csv"
    if not path.is_file():
        sys.exit(f"churn.csv not found under {root}: set REPROTRAIN_ASSETS")
    return path


def resample(src: Path, dst: Path, rows: int, seed: int = 0) -> int:
    """``rows`` rows drawn from ``src`` with replacement, ``total_day_minutes`` jittered;
    written as it goes (the generator streams too). The file's size in bytes."""
    with src.open(newline="", encoding="utf-8") as f:
        header, *body = list(csv.reader(f))
    jitter = header.index("total_day_minutes")
    rng = random.Random(seed)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with dst.open("w", newline="", encoding="utf-8") as out:
        w = csv.writer(out, lineterminator="\n")
        w.writerow(header)
        for _ in range(rows):
            row = list(rng.choice(body))
            row[jitter] = f"{float(row[jitter]) + rng.random():.4f}"
            w.writerow(row)
    return dst.stat().st_size


def measure(rows: int, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    size = resample(assets(), work / "raw" / "churn.csv", rows)
    env = {**os.environ, "REPROTRAIN_PROGRESS": "0"}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(work)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        sys.exit(f"prepare of {rows} rows failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["csv_mb"] = round(size / 2**20, 1)
    out["prepared_mb"] = round(
        sum(p.stat().st_size for p in (work / "prepared").iterdir()) / 2**20, 1
    )
    out["rows_per_second"] = round(rows / out["seconds"])
    out["rows_per_cpu_second"] = round(rows / out["cpu_seconds"])
    shutil.rmtree(work)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    root = args.work or Path(tempfile.mkdtemp(prefix="table_prepare_"))
    runs = []
    for n in args.rows:
        result = measure(n, root / str(n))
        print(n, result, flush=True)
        runs.append({"rows_generated": n, **result})
    small, large = runs[0], runs[-1]
    data = {
        "what": "table prepare (3 streaming passes, rows in on-disk SQLite, TFRecords) on "
        "churn.csv resampled",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        },
        "runs": runs,
        "rss_ratio_large_over_small": round(large["peak_rss_mb"] / small["peak_rss_mb"], 2),
        "rows_ratio_large_over_small": round(large["rows_generated"] / small["rows_generated"], 1),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
