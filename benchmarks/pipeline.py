"""Where the pipeline's time goes, and how it compares with the hand-written script.

    python benchmarks/pipeline.py [--assets ../shared/assets] [--rounds 1] [--script-bfc]
                                  [--keep]

Builds a throw-away project on the hymenoptera photos with the default params, runs a
first ``dvc repro`` (what a fresh clone pays, MLflow store creation included), then, round
by round and back to back so that background load hits both alike:

- the hand-written tutorial script (``benchmarks/reference_script.py``), timed, scored on
  the same test photos;
- with ``--script-bfc``, the same script again with ``TF_CPU_ALLOCATOR_USE_BFC=true``, the
  allocator reprotrain picks (``src/reprotrain/__init__.py``): how much of the ratio is that
  one setting, which a hand-written script could also make;
- ``dvc repro --force``, timed, with every stage's breakdown from ``reprotrain.timing``
  (imports, mlflow, data, model, train, score, export, logging, other; DVC's own share is
  the wall time minus the stages'). The "core" time leaves out the baseline and export
  stages' own totals: the stages that do what the script does (fetch, prepare, train,
  fine-tune, evaluate), like for like.

Then a no-op ``dvc repro`` (nothing changed), three times. Writes
``benchmarks/results/pipeline.json``, which ``docs/benchmarks.md`` shows
(``benchmarks/report.py`` renders it). Expect ≈ 15 min on 2 CPU cores (20 with ``--script-
bfc``). The machine is shared: compare ratios.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # for scripts.project_copy
from training import run  # noqa: E402

from scripts.project_copy import hymenoptera_project  # noqa: E402

RESULTS = HERE / "results" / "pipeline.json"
STAGES = ("fetch", "prepare", "train_head", "finetune", "baseline", "export", "evaluate")
#: Stages that do more than the script does (a from-scratch model; four verified serving
#: formats): the "core" figures leave their own totals out, the like-for-like comparison.
EXTRA_STAGES = ("baseline", "export")
TARGET_RATIO = 0.5
NOOP_TARGET_S = 5.0


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    """Run ``cmd`` to completion (failing loudly); its wall time in seconds."""
    start = time.perf_counter()
    run(cmd, cwd, env, timeout=3600)
    return time.perf_counter() - start


def test_list(proj: Path, out: Path) -> Path:
    """The raw files of the project's test split, one path per line."""
    with (proj / "data" / "prepared" / "manifest.csv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    out.write_text("".join(f"{proj / 'data' / 'raw' / r['path']}\n" for r in rows))
    return out


def stage_breakdown(directory: Path) -> dict[str, dict[str, float]]:
    return {
        s: json.loads((directory / f"{s}.json").read_text())
        for s in STAGES
        if (directory / f"{s}.json").is_file()
    }


def one_round(
    proj: Path, data: Path, env: dict[str, str], tmp: Path, i: int, script_bfc: bool = False
) -> dict:
    """The script (and with ``script_bfc`` the script on the BFC allocator), then
    ``dvc repro --force``, back to back."""
    script_out, bfc_out = tmp / f"script_{i}.json", tmp / f"script_bfc_{i}.json"
    cmd = [sys.executable, str(HERE / "reference_script.py"), str(data)]
    cmd += ["--test-list", str(test_list(proj, tmp / "test_list.txt"))]
    # The plain script runs on malloc whatever the caller's environment says.
    plain_env = {k: v for k, v in env.items() if k != "TF_CPU_ALLOCATOR_USE_BFC"}
    script_s = timed([*cmd, "--out", str(script_out)], tmp, plain_env)
    bfc_env = {**env, "TF_CPU_ALLOCATOR_USE_BFC": "true"}
    bfc_s = timed([*cmd, "--out", str(bfc_out)], tmp, bfc_env) if script_bfc else None
    timings = tmp / f"timings_{i}"
    force_env = {**env, "REPROTRAIN_TIMINGS": str(timings)}
    pipeline_s = timed(["dvc", "repro", "--force"], proj, force_env)
    extra: dict[str, float | None] = {}  # the BFC script's seconds, accuracy and ratio
    if bfc_s is not None:
        extra = {
            "script_bfc_s": round(bfc_s, 1),
            "script_bfc_test_accuracy": json.loads(bfc_out.read_text()).get("test_accuracy"),
            "ratio_vs_script_bfc": round(pipeline_s / bfc_s, 3),
        }
    stages = stage_breakdown(timings)
    core_s = pipeline_s - sum(stages[s]["total"] for s in EXTRA_STAGES if s in stages)
    evaluate = json.loads((proj / "metrics" / "evaluate.json").read_text())
    script = json.loads(script_out.read_text())
    return {
        "script_s": round(script_s, 1),
        "pipeline_s": round(pipeline_s, 1),
        "ratio": round(pipeline_s / script_s, 3),
        **extra,
        "core_s": round(core_s, 1),
        "core_ratio": round(core_s / script_s, 3),
        "dvc_overhead_s": round(pipeline_s - sum(t["total"] for t in stages.values()), 1),
        "stages": stages,
        "accuracy": {
            "pipeline_test": evaluate.get("accuracy"),
            "script_test": script.get("test_accuracy"),
            "script_val": script.get("val_accuracy"),
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--assets", type=Path, default=HERE.parent.parent / "shared" / "assets")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument(
        "--script-bfc",
        action="store_true",
        help="also time the script on TensorFlow's BFC CPU allocator (the one reprotrain uses)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary project")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="reprotrain-pipeline-"))
    proj, data, env = hymenoptera_project(tmp, args.assets)

    first = timed(["dvc", "repro"], proj, env)
    rounds = [one_round(proj, data, env, tmp, i, args.script_bfc) for i in range(args.rounds)]
    noop = [timed(["dvc", "repro"], proj, env) for _ in range(3)]
    ratio = statistics.median(r["ratio"] for r in rounds)
    acc = rounds[-1]["accuracy"]
    summary = {
        "pipeline_vs_script": ratio,
        "core_vs_script": statistics.median(r["core_ratio"] for r in rounds),
        "target": f"<= {TARGET_RATIO}",
        "accuracy_at_least_script": (acc["pipeline_test"] or 0) >= (acc["script_test"] or 0),
        "noop_repro_s": round(statistics.median(noop), 2),
        "noop_target_s": NOOP_TARGET_S,
        "first_repro_s": round(first, 1),
    }
    out = {
        "summary": summary,
        "rounds": rounds,
        "noop_repro_s": [round(t, 2) for t in noop],
        "machine": {
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    if args.keep:
        print(f"project kept in {proj}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except subprocess.TimeoutExpired as exc:
        raise SystemExit(f"timed out: {exc}") from exc
