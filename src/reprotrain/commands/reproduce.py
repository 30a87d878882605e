"""``python -m reprotrain reproduce RUN_ID``: rerun an MLflow run's pipeline from its exact
inputs in a separate work tree and compare the metrics.

What "exact inputs" means here, and where each comes from:

- code and params: the run's ``reprotrain.git.commit`` tag, checked out with
  ``git worktree add --detach`` (a run made from a dirty tree is reproduced from its commit,
  with a warning);
- data: the content hashes the runs recorded (``reprotrain.data.<path>``, the md5 dvc.lock
  had), restored from the project's DVC cache (``dvc pull`` first when a remote is
  configured). The snapshot stage (``fetch``) is not rerun: its output *is* the input, and
  the source it reads may have changed since;
- the stages: the run's stage and every stage it depends on (DVC's own stage graph), each
  ``dvc repro --force --single-item`` in DAG order, with ``MLFLOW_TRACKING_URI`` pointing at
  the original store and ``REPROTRAIN_REPRODUCES=RUN_ID`` (the runs get a
  ``reprotrain.reproduces`` tag and a pipeline row of their own, and the registry aliases
  do not move).

The exit code is 0 when every metric (final values and per-step histories) is identical,
1 when any differs: on CPU with ``runtime.deterministic`` they are identical. MLflow's
``system/*`` metrics (CPU, memory, disk of the machine while it trained) are not compared:
they describe the machine at that moment, not the result.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from reprotrain import paths, tracking
from reprotrain.commands.metric_diff import compare, format_table, metric_histories
from reprotrain.config import load_params
from reprotrain.errors import ReprotrainError, TrackingError
from reprotrain.fsio import atomic_write_text

logger = logging.getLogger(__name__)

#: Stages that snapshot data from outside the repository: their outputs are restored from
#: the cache, not recomputed (the outside source may have changed since the run).
SNAPSHOT_STAGES = ("fetch",)


class ReproduceError(ReprotrainError):
    """The run cannot be reproduced (unknown commit, missing data, failed stage)."""


@dataclass(frozen=True)
class Target:
    """What to rerun for a run: its stage (the last stage, for a pipeline row)."""

    run_id: str
    stage: str
    is_pipeline: bool
    commit: str
    dirty: bool


# --------------------------------------------------------------------------- planning


def plan(work: Path, stage: str) -> list[str]:
    """``stage`` and every stage it depends on, dependencies first.

    From DVC's own stage graph (``Repo.index.graph``, via :func:`tracking.upstream_stages`),
    not from guessing which output path prefixes which dependency. Why not simply
    ``dvc repro --force STAGE``: it would force the snapshot stage too (``fetch`` re-reads an
    outside source that may have changed since the run), while here its output is restored
    from the DVC cache at the recorded hash and only the other stages are rerun, each with
    ``dvc repro --force --single-item`` in this order.
    """
    try:
        return tracking.upstream_stages(work, stage)
    except KeyError as exc:
        raise ReproduceError(str(exc.args[0])) from None


def target_of(run: Any, client: Any) -> Target:
    """The stage to reproduce for an MLflow run (stage run or pipeline row)."""
    tags = run.data.tags
    commit = tags.get(tracking.TAG_COMMIT, "unknown")
    dirty = tags.get(tracking.TAG_DIRTY) == "true"
    if tags.get(tracking.TAG_ROLE) == "pipeline":
        children = client.search_runs(
            [run.info.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{run.info.run_id}'",
        )
        stages = [c.data.tags.get(tracking.TAG_STAGE) for c in children]
        order = ("evaluate", "finetune", "train_head", "prepare", "fetch")
        stage = next((s for s in order if s in stages), None)
        if stage is None:
            raise ReproduceError(f"pipeline run {run.info.run_id} has no stage runs")
        return Target(run.info.run_id, stage, True, commit, dirty)
    stage = tags.get(tracking.TAG_STAGE)
    if not stage:
        raise ReproduceError(
            f"run {run.info.run_id} is not a reprotrain stage run (no {tracking.TAG_STAGE} tag)"
        )
    return Target(run.info.run_id, stage, False, commit, dirty)


def recorded_hashes(client: Any, run: Any, seen: set[str] | None = None) -> dict[str, str]:
    """``{path: md5}`` of every input recorded by ``run`` and its upstream runs (and, for a
    pipeline row, its stage runs)."""
    from mlflow.exceptions import MlflowException

    seen = set() if seen is None else seen
    if run.info.run_id in seen:
        return {}
    seen.add(run.info.run_id)
    out: dict[str, str] = {}
    related = []
    for key, value in run.data.tags.items():
        if key.startswith("reprotrain.data.") and value != "missing":
            out.setdefault(key[len("reprotrain.data.") :], value)
        elif key.startswith(("reprotrain.upstream.", "reprotrain.run.")) and len(value) == 32:
            related.append(value)
    for run_id in related:
        try:
            upstream = client.get_run(run_id)
        except MlflowException as exc:  # deleted run, or a store error: state it, go on
            logger.warning(
                "linked run %s of %s is not readable (%s): its input hashes are not used",
                run_id,
                run.info.run_id,
                exc.message,
            )
            continue
        for path, md5 in recorded_hashes(client, upstream, seen).items():
            out.setdefault(path, md5)
    return out


# --------------------------------------------------------------------------- running


def _run(
    cmd: Sequence[str], cwd: Path, env: Mapping[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    logger.info("$ %s  (in %s)", " ".join(cmd), cwd)
    proc = subprocess.run(
        list(cmd), cwd=cwd, env=dict(env or os.environ), text=True, capture_output=True
    )
    if check and proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        raise ReproduceError(
            f"`{' '.join(cmd)}` failed (exit {proc.returncode}) in {cwd}:\n" + "\n".join(tail)
        )
    return proc


def child_env(store_uri: str, run_id: str, worktree: Path) -> dict[str, str]:
    """Environment for the rerun: the original store, the reproduction marker, the work
    tree's own ``src/`` first on the import path (its code, not the installed one), and this
    interpreter's ``bin/`` first on PATH (stage commands call ``python`` and ``dvc``)."""
    env = dict(os.environ)
    for var in ("DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "DVC_STAGE"):
        env.pop(var, None)
    env["MLFLOW_TRACKING_URI"] = store_uri
    env[tracking.ENV_REPRODUCES] = run_id
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    src = worktree / "src"
    if (src / "reprotrain").is_dir():
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    return env


def make_worktree(repo: Path, commit: str, dest: Path, env: Mapping[str, str]) -> Path:
    """``git worktree add --detach dest commit`` (dest must not exist or be empty)."""
    if _run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], repo, env, check=False).returncode:
        raise ReproduceError(
            f"commit {commit} is not in the repository {repo}: fetch it (git fetch) or run "
            "reproduce from the clone the run was made in"
        )
    if dest.exists() and any(dest.iterdir()):
        raise ReproduceError(f"work directory {dest} exists and is not empty: pick another")
    dest.parent.mkdir(parents=True, exist_ok=True)
    _run(["git", "worktree", "add", "--detach", "--force", str(dest), commit], repo, env)
    return dest


def restore_inputs(
    repo: Path, work: Path, snapshot_outs: Mapping[str, tuple[str, str]], env: Mapping[str, str]
) -> list[str]:
    """Point the work tree at the project's DVC cache, pull if a remote is configured, and
    check out each snapshot output at its recorded hash. Returns the stages whose output
    could not be restored (to be rerun instead)."""
    cache = _run(["dvc", "cache", "dir"], repo, env).stdout.strip()
    _run(["dvc", "config", "--local", "cache.dir", cache], work, env)
    lock_path = work / "dvc.lock"
    lock = tracking.read_yaml(lock_path) or {"schema": "2.0", "stages": {}}
    lock.setdefault("stages", {})
    dvc_yaml = tracking.read_yaml(work / "dvc.yaml")
    for path, (stage, md5) in snapshot_outs.items():
        entry = lock["stages"].setdefault(stage, {"cmd": dvc_yaml["stages"][stage]["cmd"]})
        outs = [o for o in entry.get("outs") or [] if o.get("path") != path]
        old = next((o for o in entry.get("outs") or [] if o.get("path") == path), None)
        if old is None or old.get("md5") != md5:
            outs.append({"path": path, "hash": "md5", "md5": md5})
        else:
            outs.append(old)
        entry["outs"] = outs
    atomic_write_text(lock_path, yaml.safe_dump(lock, sort_keys=False))
    if _run(["dvc", "remote", "list"], work, env).stdout.strip():
        for path in snapshot_outs:
            _run(["dvc", "pull", path], work, env, check=False)
    missing = []
    for path, (stage, _) in snapshot_outs.items():
        proc = _run(["dvc", "checkout", "--force", path], work, env, check=False)
        if proc.returncode != 0 or not (work / path).exists():
            logger.warning("%s is not in the DVC cache: stage %s will be rerun", path, stage)
            missing.append(stage)
    return missing


def restore_params(uri: str, parent_id: str, work: Path) -> bool:
    """Write the run's own params.yaml (an artifact of its pipeline row) into the work tree:
    a run made with uncommitted params (``dvc exp run -S ...``) is reproduced with them.
    Returns whether the file differed from the commit's."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(
                run_id=parent_id,
                artifact_path=tracking.PARAMS_ARTIFACT,
                dst_path=tmp,
                tracking_uri=uri,
            )
            text = Path(local).read_text(encoding="utf-8")
    except (MlflowException, OSError) as exc:  # an older run without it: keep the commit's
        logger.warning(
            "no params.yaml recorded with run %s (%s): using the commit's", parent_id, exc
        )
        return False
    target = work / tracking.PARAMS_ARTIFACT
    if target.is_file() and target.read_text(encoding="utf-8") == text:
        return False
    target.write_text(text, encoding="utf-8")
    logger.info("params.yaml restored from the run (it differs from the commit's)")
    return True


# --------------------------------------------------------------------------- command


def reproduce(run_id: str, root: Path, workdir: Path | None = None) -> tuple[int, str, str]:
    """Rerun ``run_id``; return (exit code, comparison table, the reproduced run id)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    root = paths.project_root(root)
    params = load_params(root / "params.yaml")
    uri = tracking.store_uri(root, params.tracking.store)
    tracking.check_reachable(uri)
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise TrackingError(f"run {run_id} not found in {uri}: {exc.message}") from None
    target = target_of(run, client)
    if target.commit == "unknown":
        raise ReproduceError(f"run {run_id} has no git commit tag: it cannot be reproduced")
    _warn_if_dirty(run, target)
    repo = Path(run.data.tags.get(tracking.TAG_ROOT) or root)
    if not (repo / ".git").exists():
        repo = root
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="reprotrain-reproduce-"))
    work = work.resolve()
    make_worktree(repo, target.commit, work, child_env(uri, run_id, Path(".")))
    env = child_env(uri, run_id, work)
    logger.info("work tree %s at %s", work, target.commit[:12])
    parent_id = run.info.run_id if target.is_pipeline else run.data.tags.get("mlflow.parentRunId")
    if parent_id:
        restore_params(uri, parent_id, work)

    produced = tracking.stage_outputs(tracking.read_yaml(work / "dvc.yaml"))
    for stage in stages_to_rerun(repo, work, target, recorded_hashes(client, run), env):
        _run(["dvc", "repro", "--force", "--single-item", stage], work, env)

    new_id = reproduced_run_id(work, target, produced)
    rows = compare(metric_histories(client, run), metric_histories(client, client.get_run(new_id)))
    identical = bool(rows) and all(r[3] for r in rows)
    verdict = "identical" if identical else "differs"
    client.set_tag(new_id, "reprotrain.reproduction", verdict)
    client.set_tag(new_id, tracking.TAG_REPRODUCES, run_id)
    header = (
        f"run {run_id} ({target.stage}{' pipeline' if target.is_pipeline else ''}, commit "
        f"{target.commit[:12]}) reproduced as {new_id} in {work}: {verdict}"
    )
    return (0 if identical else 1), header + "\n" + format_table(rows), new_id


def _warn_if_dirty(run: Any, target: Target) -> None:
    """A run made from uncommitted code can only be reproduced from its commit: say so."""
    tags = run.data.tags
    dirty_code = [
        p
        for p in (tags.get(tracking.TAG_DIRTY_PATHS) or "").split(",")
        if p and p != tracking.PARAMS_ARTIFACT
    ]
    if target.dirty and (dirty_code or tracking.TAG_DIRTY_PATHS not in tags):
        logger.warning(
            "run %s was made from uncommitted changes (%s): reproducing the code of commit %s",
            run.info.run_id,
            ", ".join(dirty_code) or "unknown files",
            target.commit[:12],
        )


def stages_to_rerun(
    repo: Path, work: Path, target: Target, hashes: Mapping[str, str], env: Mapping[str, str]
) -> list[str]:
    """The stages to rerun, in order. Snapshot stages (fetch) are not rerun when their output
    was restored from the DVC cache at the hash the run recorded; they are when nothing was
    recorded (snapshot again) or the restore failed."""
    stages = plan(work, target.stage)
    produced = tracking.stage_outputs(tracking.read_yaml(work / "dvc.yaml"))
    snapshot = {
        path: (producer, hashes[path])
        for path, producer in produced.items()
        if producer in stages and producer in SNAPSHOT_STAGES and path in hashes
    }
    rerun_snapshots = restore_inputs(repo, work, snapshot, env)
    to_run = [s for s in stages if s not in SNAPSHOT_STAGES or s in rerun_snapshots]
    restored = {stage for stage, _ in snapshot.values()}
    for s in stages:
        if s in SNAPSHOT_STAGES and s not in restored and s not in to_run:
            to_run.insert(0, s)  # nothing recorded to restore: snapshot again
    logger.info("rerunning %s", " → ".join(to_run))
    return to_run


def reproduced_run_id(work: Path, target: Target, produced: Mapping[str, str]) -> str:
    """The new run's id, from the sidecar the target stage wrote in the work tree."""
    sidecars = [
        p
        for p, producer in produced.items()
        if producer == target.stage and p.endswith(".run.json")
    ]
    sidecar = tracking.read_sidecar(work / sidecars[0]) if sidecars else None
    if sidecar is None:
        raise ReproduceError(f"stage {target.stage} wrote no run sidecar in {work}")
    return sidecar["pipeline_run_id"] if target.is_pipeline else sidecar["run_id"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m reprotrain reproduce",
        description="Rerun an MLflow run's pipeline from its commit, dvc.lock and data in a "
        "separate work tree and compare its metrics (exit 0: identical, 1: different).",
    )
    parser.add_argument("run_id", help="an MLflow run id (a stage run or a pipeline row)")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="new directory for the work tree (a temp dir)"
    )
    parser.add_argument("--root", type=Path, default=None, help="project root (default: cwd)")
    args = parser.parse_args(argv)
    code, report, _ = reproduce(args.run_id, args.root or Path.cwd(), args.workdir)
    sys.stdout.write(report + "\n")
    return code
