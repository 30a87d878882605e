"""Multi-worker training for real: two worker processes on 127.0.0.1 with a real TF_CONFIG
run train_head (no feature cache) and finetune for two epochs with
MultiWorkerMirroredStrategy. The chief's stage runs also carry MLflow system metrics.

The non-chief worker runs in its own copy of the project (as on a second machine with the
same inputs), so "writes nothing" is checked on its files: its copy is unchanged after
both stages. Both workers log the same epoch metrics, which only happens when their
gradient and metric all-reduces ran together.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import free_port, run, subprocess_env

pytestmark = pytest.mark.slow

TIMEOUT = 900  # seconds per stage: two TF processes on 2 shared cores


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and mtime (what a write would change)."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file() and ".git" not in p.parts
    }


def _run_workers(stage: str, dirs: list[Path], logs_dir: Path) -> list[str]:
    """Start ``python stages/<stage>.py`` once per worker (worker i in ``dirs[i]``) with its
    TF_CONFIG; return each worker's log. Both must exit 0; when one fails, the others
    (left waiting in a collective op) are ended after a short grace period."""
    ports = [free_port(), free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs, logs = [], []
    for index, cwd in enumerate(dirs):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        logs.append(logs_dir / f"{stage}-{index}.log")
        with logs[-1].open("w") as out:
            procs.append(
                subprocess.Popen(
                    [sys.executable, f"stages/{stage}.py"],
                    cwd=cwd,
                    env=subprocess_env(TF_CONFIG=tf_config, PYTHONUNBUFFERED="1"),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
    deadline = time.monotonic() + TIMEOUT
    try:
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in procs):
                deadline = min(deadline, time.monotonic() + 30)
            time.sleep(1)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    texts = [log.read_text() for log in logs]
    codes = [proc.returncode for proc in procs]
    shown = "\n".join(
        f"--- worker {i} (exit {c})\n{t[-5000:]}"
        for i, (c, t) in enumerate(zip(codes, texts, strict=True))
    )
    assert codes == [0, 0], f"{stage}: workers exited {codes}\n{shown}"
    return texts


def _epoch_lines(log: str) -> list[str]:
    return re.findall(r"epoch \d+/\d+: .*", log)


def test_two_workers_train_head_and_finetune(tiny_project: Path, tmp_path: Path) -> None:
    chief_dir = tiny_project
    run(["dvc", "repro", "prepare"], chief_dir, subprocess_env())
    params = yaml.safe_load((chief_dir / "params.yaml").read_text())
    params["runtime"]["distribute"] = "multi_worker"
    params["train_head"]["feature_cache"] = "auto"  # resolves to off under multi_worker
    params["finetune"]["epochs"] = 2
    params["tracking"]["system_metrics_interval"] = 1  # a sample every second
    (chief_dir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    worker_dir = tmp_path / "worker1"
    shutil.copytree(chief_dir, worker_dir, symlinks=True)

    for stage, model in (("train_head", "head"), ("finetune", "finetuned")):
        before = _snapshot(worker_dir)
        chief_log, worker_log = _run_workers(stage, [chief_dir, worker_dir], tmp_path)

        assert "this is worker 0 of 2 (chief" in chief_log, chief_log
        assert "this is worker 1 of 2 (not chief" in worker_log, worker_log
        assert "Collective all_reduce" in worker_log, worker_log
        # Identical per-epoch metrics on both: the workers trained one model together.
        lines = _epoch_lines(chief_log)
        assert len(lines) == 2 and lines == _epoch_lines(worker_log), (chief_log, worker_log)
        assert _snapshot(worker_dir) == before, f"the non-chief worker wrote files in {stage}"

        metrics = json.loads((chief_dir / "metrics" / f"{stage}.json").read_text())
        assert metrics["epochs_run"] == 2 and 0.0 <= metrics["val_accuracy"] <= 1.0
        assert (chief_dir / "models" / f"{model}.keras").is_file()
        assert not (chief_dir / ".reprotrain" / "checkpoints" / stage).exists()
        if stage == "train_head":
            assert metrics["feature_cache"] is False
            # The non-chief worker's inputs for finetune, as a shared file system or
            # `dvc pull` would give it.
            (worker_dir / "models").mkdir(exist_ok=True)
            shutil.copy2(chief_dir / "models" / "head.keras", worker_dir / "models" / "head.keras")

    import keras

    model = keras.saving.load_model(chief_dir / "models" / "finetuned.keras", compile=False)
    assert tuple(model.input_shape) == (None, 32, 32, 3)
    assert tuple(model.output_shape) == (None, 2)

    client = MlflowClient(tracking_uri=f"sqlite:///{chief_dir / 'mlruns' / 'mlflow.db'}")
    for stage in ("train_head", "finetune"):
        runs = client.search_runs(
            [e.experiment_id for e in client.search_experiments()],
            filter_string=f"tags.`reprotrain.stage` = '{stage}'",
        )
        assert len(runs) == 1, f"{stage}: {len(runs)} MLflow runs (only the chief records one)"
        assert runs[0].data.tags["reprotrain.env.workers"] == "2"
        assert runs[0].info.status == "FINISHED"
        # The training stage's run sampled the (chief's) machine: MLflow system metrics.
        metrics = runs[0].data.metrics
        for key in ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"):
            assert key in metrics, sorted(metrics)
