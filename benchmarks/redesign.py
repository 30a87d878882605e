"""Issue 22's proof, in one run: the quick start before and after the redesign, from fresh clones.

    .venv/bin/python benchmarks/redesign.py [--before 2f8f55d] [--after HEAD] [--rounds 3]
                                            [--work /tmp/redesign] [--recompare]

Why from fresh clones: the redesign must leave the behaviour unchanged for a new user, who
starts from ``git clone`` and the README's ``make repro``, not from this working tree. Each
commit is cloned from this repository into ``--work`` and runs the README's quick start
offline, the README's way (``REPROTRAIN_DATA_MIRROR`` and a ``KERAS_HOME`` whose
``models/`` links the cached weights, as ``.ci/run`` does). Each clone sets up its own
``.venv`` from its own ``uv.lock``; ``make setup`` is timed apart from the pipeline part
(``make repro`` once set up: for the after commit that also writes ``dvc.yaml``).

Same recipe on both sides: the after clone's ``params.yaml`` takes the before clone's value
for every key both have (the keys it changed are listed in the results), so defaults that
other issues changed on purpose do not hide or fake a difference; ``runtime.deterministic``
is true in both. Runs alternate (before, after, before, ...) so both see the same load;
a second round starts from a clean tree (``git clean``, the set-up ``.venv`` kept), so it
also shows what a commit does not reproduce of itself. After each pipeline, a second
``make repro`` and a ``dvc repro`` in the activated ``.venv`` time the no-op (``fetch`` is
``always_changed``, so it runs in both).

Every metric file (``metrics/*.json``) and the split ledger (``data/splits.csv``) are
compared key by key (``benchmarks/redesign_compare.py``, whose ``EXPLAINED`` notes say why a
key differs). Writes ``benchmarks/results/redesign.json`` (``benchmarks/report.py`` renders
it); every run's outputs and logs stay under ``--work`` (``--recompare`` rebuilds the JSON).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import shutil
import statistics
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from redesign_compare import compare_ledgers, compare_metrics, leaves

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results" / "redesign.json"
TARGET_RATIO = 1.10
TOOK = re.compile(r"(\d\d:\d\d:\d\d) INFO reprotrain\.timing: (\w+) took ([\d.]+) s")
log = logging.getLogger("redesign")


def sh(cmd: list[str], cwd: Path, env: Mapping[str, str], logfile: Path) -> float:
    """Run ``cmd`` (output to ``logfile``), failing loudly; its wall time in seconds."""
    start = time.perf_counter()
    with logfile.open("w") as out:
        proc = subprocess.run(cmd, cwd=cwd, env=dict(env), stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if proc.returncode:
        tail = logfile.read_text().splitlines()[-15:]
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd} ({logfile}):\n" + "\n".join(tail))
    return seconds


def resolve(ref: str, repo: Path = REPO) -> str:
    """The full hash of ``ref`` in ``repo``."""
    out = subprocess.run(["git", "rev-parse", ref], cwd=repo, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"not a commit in {repo}: {ref}")
    return out.stdout.strip()


def set_leaf(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        tree = tree[key]
    tree[last] = value


def align_params(before: Path, after: Path) -> dict[str, list[Any]]:
    """Give ``after`` the values of ``before`` for every key both have, determinism on in
    both; ``{key: [after's own value, the value it got]}`` for each key changed."""
    old = yaml.safe_load(before.read_text())
    new = yaml.safe_load(after.read_text())
    old_leaves = dict(leaves(old))
    changed = {}
    for key, value in leaves(new):
        if key in old_leaves and old_leaves[key] != value:
            set_leaf(new, key, old_leaves[key])
            changed[key] = [value, old_leaves[key]]
    for path, tree in ((before, old), (after, new)):
        if tree["runtime"]["deterministic"] is not True or path == after:
            tree["runtime"]["deterministic"] = True
            path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return changed


def keras_home(work: Path, assets: Path) -> Path:
    """A writable KERAS_HOME whose models/ links the cached weights (as ``.ci/run`` makes)."""
    home = work / "keras"
    (home / "models").mkdir(parents=True, exist_ok=True)
    for weights in sorted((assets / "keras" / "models").glob("*.h5")):
        link = home / "models" / weights.name
        if not link.exists():
            link.symlink_to(weights)
    return home


def user_env(work: Path, assets: Path) -> dict[str, str]:
    """A new user's environment: nothing of this tree's venv, MLflow or reprotrain settings,
    plus the README's two offline variables."""
    drop = ("VIRTUAL_ENV", "MLFLOW_", "REPROTRAIN_", "KERAS_HOME", "PYTHONPATH", "DVC_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if ".venv" not in p)
    env["REPROTRAIN_DATA_MIRROR"] = str(assets / "datasets" / "hymenoptera_data")
    env["KERAS_HOME"] = str(keras_home(work, assets))
    return env


def clone(commit: str, dest: Path, logs: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    env = dict(os.environ)
    sh(["git", "clone", "--quiet", str(REPO), str(dest)], dest.parent, env, logs / "clone.log")
    sh(["git", "checkout", "--quiet", commit], dest, env, logs / "checkout.log")


def clean(proj: Path, logs: Path) -> None:
    """Back to a fresh clone's tree, keeping the set-up environment (.venv, .uv)."""
    env = dict(os.environ)
    sh(["git", "checkout", "--quiet", "--", "."], proj, env, logs / "checkout.log")
    cmd = ["git", "clean", "-fdxq", "-e", ".venv", "-e", ".uv"]
    sh(cmd, proj, env, logs / "clean.log")


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def warnings_in(logfile: Path) -> int:
    """How many lines of a log say warning (a new user's warning flood, counted)."""
    return sum("warning" in line.lower() for line in logfile.read_text().splitlines())


def pipeline(proj: Path, env: Mapping[str, str], out: Path) -> dict[str, Any]:
    """The quick start's pipeline part (``make repro`` once set up), then its no-op twice
    (``make repro``, a bare ``dvc repro``); outputs and logs copied to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    timings = out / "timings"
    run_env = {**env, "REPROTRAIN_TIMINGS": str(timings)}
    load_before = load()
    repro_s = sh(["make", "repro"], proj, run_env, out / "repro.log")
    load_after = load()
    noop_make_s = sh(["make", "repro"], proj, env, out / "noop_make.log")
    # The README's "other commands": dvc in the activated environment.
    venv = proj / ".venv"
    active = {**env, "VIRTUAL_ENV": str(venv), "PATH": f"{venv / 'bin'}{os.pathsep}{env['PATH']}"}
    noop_dvc_s = sh(["dvc", "repro"], proj, active, out / "noop_dvc.log")
    shutil.copytree(proj / "metrics", out / "metrics", dirs_exist_ok=True)
    shutil.copy2(proj / "data" / "splits.csv", out / "splits.csv")
    stages = {
        p.stem: round(json.loads(p.read_text()).get("total", 0.0), 1)
        for p in sorted(timings.glob("*.json"))
    }
    return {
        "repro_s": round(repro_s, 1),
        "noop_make_repro_s": round(noop_make_s, 2),
        "noop_dvc_repro_s": round(noop_dvc_s, 2),
        "stage_s": stages,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "log_lines": len((out / "repro.log").read_text().splitlines()),
        "log_warning_lines": warnings_in(out / "repro.log"),
    }


def exit_gaps(logfile: Path) -> dict[str, float]:
    """Per stage, the seconds between the previous stage's last timing line and this stage's
    process start (its end minus its measured total): the previous process's exit plus DVC's
    own work on its outputs. Log lines have whole seconds, so each gap is ±1 s."""
    gaps, previous_end = {}, None
    for line in logfile.read_text().splitlines():
        found = TOOK.match(line)
        if not found:
            continue
        clock, stage, took = found.groups()
        hours, minutes, seconds = map(int, clock.split(":"))
        end = hours * 3600 + minutes * 60 + seconds
        if previous_end is not None:
            gaps[stage] = round(end - float(took) - previous_end, 1)
        previous_end = end
    return gaps


def outside_stages(runs: list[dict[str, Any]], work: Path) -> dict[str, Any]:
    """``make repro`` minus the stages' own measured totals, per run (DVC between stages,
    writing dvc.yaml, and each stage process's exit after its timing line: the interpreter
    teardown that before's ``os._exit`` skipped, a8c1c52), with the log-derived gaps."""
    per_run = {
        f"{r['side']} {r['round']}": {
            "outside_s": round(r["repro_s"] - sum(r["stage_s"].values()), 1),
            "gaps_after_each_stage_s": exit_gaps(work / f"runs/{r['side']}-{r['round']}/repro.log"),
        }
        for r in runs
    }
    median = {
        side: statistics.median(v["outside_s"] for k, v in per_run.items() if k.startswith(side))
        for side in ("before", "after")
    }
    before_repro = statistics.median(r["repro_s"] for r in runs if r["side"] == "before")
    return {
        "per_run": per_run,
        "median_outside_s": median,
        "extra_s_after": round(median["after"] - median["before"], 1),
        "extra_share_of_before_repro": round(
            (median["after"] - median["before"]) / before_repro, 3
        ),
    }


def summarise(runs: list[dict[str, Any]], work: Path) -> dict[str, Any]:
    """Ratios of the pipeline part, paired by round, and the comparisons of the outputs."""
    by = {(r["side"], r["round"]): r for r in runs}
    rounds = sorted({r["round"] for r in runs if ("after", r["round"]) in by})
    ratios = [by["after", i]["repro_s"] / by["before", i]["repro_s"] for i in rounds]
    noop = {
        side: statistics.median(r["noop_dvc_repro_s"] for r in runs if r["side"] == side)
        for side in ("before", "after")
    }
    first = rounds[0]
    return {
        "repro_ratio_after_vs_before": [round(x, 3) for x in ratios],
        "repro_ratio_median": round(statistics.median(ratios), 3),
        "target": f"<= {TARGET_RATIO}",
        "within_target": statistics.median(ratios) <= TARGET_RATIO,
        "noop_dvc_repro_s": noop,
        "stage_sum_ratio_after_vs_before": [
            round(
                sum(by["after", i]["stage_s"].values()) / sum(by["before", i]["stage_s"].values()),
                3,
            )
            for i in rounds
        ],
        "outside_stages": outside_stages(runs, work),
        "metrics": compare_metrics(work / f"runs/before-{first}", work / f"runs/after-{first}"),
        "ledger": compare_ledgers(work / f"runs/before-{first}", work / f"runs/after-{first}"),
        # Keys that differ between round 1 and each later round of the same commit: what
        # a commit does not reproduce of itself (run ids, latencies) cannot be a regression.
        "same_side_differences": {
            f"{side} 1 vs {i}": sorted(
                compare_metrics(work / f"runs/{side}-1", work / f"runs/{side}-{i}")["different"]
            )
            for side in ("before", "after")
            for i in rounds[1:]
        },
    }


def run_all(args: argparse.Namespace, commits: dict[str, str]) -> dict[str, Any]:
    """Clone, align params, set up each side, then the alternating pipeline rounds."""
    work: Path = args.work
    env = user_env(work, args.assets)
    projects = {side: work / side for side in commits}
    setup: dict[str, Any] = {}
    for side, commit in commits.items():
        logs = work / "logs" / side
        logs.mkdir(parents=True, exist_ok=True)
        clone(commit, projects[side], logs)
    changed = align_params(projects["before"] / "params.yaml", projects["after"] / "params.yaml")
    for side in commits:
        logfile = work / "logs" / side / "setup.log"
        setup[side] = {"load_average": load()}
        setup[side]["make_setup_s"] = round(sh(["make", "setup"], projects[side], env, logfile), 1)
        log.info("%s: make setup %.0f s", side, setup[side]["make_setup_s"])
    runs = []
    for i in range(1, args.rounds + 1):
        for side in commits:
            if i > 1:
                clean(projects[side], work / "logs" / side)
                align_params(projects["before"] / "params.yaml", projects["after"] / "params.yaml")
            result = pipeline(projects[side], env, work / "runs" / f"{side}-{i}")
            runs.append({"side": side, "round": i, **result})
            log.info("%s round %d: make repro %.0f s", side, i, result["repro_s"])
            (work / "runs.json").write_text(json.dumps(runs, indent=2))
    return {"params_aligned": changed, "setup": setup, "runs": runs}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default="2f8f55d")
    ap.add_argument("--after", default="HEAD")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("/tmp/redesign"))
    ap.add_argument("--assets", type=Path, default=REPO.parent / "shared" / "assets")
    ap.add_argument("--recompare", action="store_true", help="rebuild the JSON from --work")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    state = args.work / "state.json"
    if args.recompare:  # the commits the clones are at (HEAD may have moved since)
        commits = {side: resolve("HEAD", args.work / side) for side in ("before", "after")}
        done = json.loads(state.read_text())
    else:
        commits = {"before": resolve(args.before), "after": resolve(args.after)}
        done = run_all(args, commits)
        done["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        state.write_text(json.dumps(done, indent=2))
    out = {
        "commits": commits,
        "summary": summarise(done["runs"], args.work),
        **done,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
    }
    out.setdefault("date", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    log.info("wrote %s", RESULTS)


if __name__ == "__main__":
    main()
