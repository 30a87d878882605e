"""Shared fixtures: tiny generated images, offline assets, throw-away project copies.

Offline assets (real ImageNet weights, the hymenoptera photos) come from
``$REPROTRAIN_ASSETS`` (set by ``.ci/run``) or ``../shared/assets`` next to the repo: the
way a CI restores a cache. Without them, Keras downloads the weights and the data comes
from its public URL, as on a user's machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

# The project-copy helpers live outside the tests (benchmarks use them too); re-exported
# here, where the test modules import them from.
from scripts.project_copy import deep_update, linked_keras_home, make_project, subprocess_env

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The test process runs TensorFlow as a stage process does (the BFC CPU allocator), and the
# stages, scripts and workers it starts inherit it: what ``cli.run_main`` sets.
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


def _assets() -> Path | None:
    env = os.environ.get("REPROTRAIN_ASSETS")
    candidates = [Path(env)] if env else [REPO.parent / "shared" / "assets"]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    return None


ASSETS = _assets()


#: Test groups that take longest, started first so that the two xdist workers finish
#: together (`make test` runs `-n 2 --dist loadgroup`).
LONGEST_FIRST = (
    "promoted",
    "e2e/test_pipeline.py",
    "training/test_multiworker.py",
    "test_chaos.py",
)


def _group(item: pytest.Item) -> str | None:
    """The xdist group of a test: the tests that use the session's promoted project are one
    group (it is built once), a module with module-scoped fixtures is one group (they are
    built once), any other test has none (free to run on either worker)."""
    module = Path(str(item.path)).relative_to(REPO / "tests").as_posix()
    if "promoted_project" in getattr(item, "fixturenames", ()):
        return "promoted"
    info = getattr(item, "_fixtureinfo", None)
    defs = info.name2fixturedefs.values() if info is not None else [[]]
    if info is None or any(d.scope == "module" for ds in defs for d in ds):
        return module
    return None


def _rank(item: pytest.Item) -> int:
    module = Path(str(item.path)).relative_to(REPO / "tests").as_posix()
    group = _group(item)
    for i, name in enumerate(LONGEST_FIRST):
        if name in (group, module):
            return i
    return len(LONGEST_FIRST)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if (group := _group(item)) is not None:
            item.add_marker(pytest.mark.xdist_group(group))
    items.sort(key=_rank)  # stable: the order within a group is kept


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """Fail loudly when xdist does not group: each worker would then build the session's
    pipelines itself (pytest 9.2 with xdist 3.8 did that silently, doubling the suite time;
    pytest-dev/pytest-xdist#1386, hence the `pytest<9.2` pin in pyproject.toml)."""
    if not session.config.getoption("loadgroup", default=False):
        return  # the controller, or a run without `--dist loadgroup`
    grouped = [i.nodeid for i in session.items if i.get_closest_marker("xdist_group")]
    ungrouped = [nodeid for nodeid in grouped if "@" not in nodeid]
    if ungrouped:
        raise pytest.UsageError(
            f"pytest-xdist did not tag {len(ungrouped)} tests with their xdist_group "
            f"(e.g. {ungrouped[0]}); this pytest/pytest-xdist pair cannot group, see "
            "pytest-dev/pytest-xdist#1386"
        )


@pytest.fixture(scope="session")
def assets() -> Path | None:
    """The offline asset cache, or None on a machine that downloads instead."""
    return ASSETS


@pytest.fixture(scope="session")
def keras_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A writable KERAS_HOME whose models/ holds the cached ImageNet weights (symlinks)."""
    return linked_keras_home(tmp_path_factory.mktemp("keras_home"), ASSETS)


@pytest.fixture(scope="session")
def hymenoptera(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the hymenoptera dataset (train/ val/ with ants/ bees/).

    From the offline assets when present; otherwise downloaded from its public URL (once,
    into the user's download cache) and checked against its digest, as the pipeline does.
    """
    dst = tmp_path_factory.mktemp("data") / "hymenoptera_data"
    if ASSETS is None:
        from reprotrain.config import HYMENOPTERA_DIGEST, HYMENOPTERA_URL
        from reprotrain.data.fetch import fetch

        fetch(HYMENOPTERA_URL, dst, sha256=HYMENOPTERA_DIGEST)
        return dst
    shutil.copytree(ASSETS / "datasets" / "hymenoptera_data", dst)
    return dst


def write_image(
    path: Path, seed: int, size: int = 32, mode: str = "RGB", fmt: str | None = None
) -> Path:
    """Write a small image whose content depends on ``seed`` (distinct seeds → distinct files)."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, "RGB").convert(mode).save(path, format=fmt)
    return path


def make_class_tree(
    root: Path,
    classes: Mapping[str, int] | None = None,
    size: int = 32,
    seed: int = 0,
    splits: Mapping[str, Mapping[str, int]] | None = None,
) -> Path:
    """Folder-per-class images (or ``splits``: {"train": {"a": 5}, "val": {...}}).

    Classes differ by colour so that a tiny model can actually learn them.
    """
    layout = {"": classes or {"cats": 12, "dogs": 12}} if splits is None else dict(splits)
    counter = seed * 100_000
    for split, cls_counts in layout.items():
        for ci, (name, n) in enumerate(cls_counts.items()):
            for _ in range(n):
                counter += 1
                rng = np.random.default_rng(counter)
                base = np.zeros((size, size, 3), dtype=np.int16)
                base[..., ci % 3] = 200
                noise = rng.integers(-40, 40, size=(size, size, 3))
                arr = np.clip(base + noise, 0, 255).astype(np.uint8)
                out = (
                    root / split / name / f"img_{counter:06d}.jpg"
                    if split
                    else root / name / f"img_{counter:06d}.jpg"
                )
                out.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(out, quality=95)
    return root


def prepared_tree(
    tmp: Path, classes: Mapping[str, int], *, shard_size: int, seed: int = 42
) -> Path:
    """``tmp/prepared``: a generated 40 px class tree through the real fetch and prepare
    (images kept at full size), for tests that need TFRecord shards."""
    from reprotrain.config import PrepareConfig
    from reprotrain.data.fetch import fetch
    from reprotrain.data.prepare import prepare

    src = make_class_tree(tmp / "src", classes, size=40)
    fetch(str(src), tmp / "raw")
    cfg = PrepareConfig(shard_size=shard_size, max_side=None)
    prepare(tmp / "raw", tmp / "prepared", cfg, seed)
    return tmp / "prepared"


@pytest.fixture
def class_tree(tmp_path: Path) -> Path:
    """24 tiny JPEGs in cats/ and dogs/."""
    return make_class_tree(tmp_path / "images")


#: Params for pipeline runs that must finish in seconds on 2 CPU cores.
TINY_PARAMS: dict[str, Any] = {
    "model": {"alpha": 0.35, "image_size": 32, "weights": "none"},
    "prepare": {"shard_size": 16, "max_side": 64},
    "pipeline": {"shuffle_buffer": 64},
    "train_head": {"epochs": 2, "batch_size": 8},
    "finetune": {"epochs": 1, "batch_size": 8, "unfreeze_top": 10},
    "evaluate": {"batch_size": 16, "min_accuracy": 0.0, "worst_examples": 4},
    "baseline": {"image_size": 32, "epochs": 2, "batch_size": 8, "filters": [8, 16]},
    # One of the four formats (tests/serving/test_export.py converts and checks all four in
    # process): a tiny export takes ~26 s instead of ~39 s with tflite_float32 too.
    "export": {
        "formats": ["saved_model"],
        "calibration_samples": 8,
        "latency_samples": 3,
    },
}


def run(
    cmd: list[str],
    cwd: Path,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    timeout: float = 900,
) -> subprocess.CompletedProcess[str]:
    """Run a real subprocess; on failure show its output in the assertion message."""
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        env=dict(env or subprocess_env()),
        text=True,
        capture_output=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}"
            f"\n--- stderr\n{proc.stderr[-6000:]}"
        )
    return proc


@pytest.fixture
def tiny_project(tmp_path: Path) -> Iterator[Path]:
    """A project copy on 24 tiny generated images, untrained MobileNetV2 0.35 at 32×32."""
    data = make_class_tree(tmp_path / "images", {"cats": 16, "dogs": 16})
    proj = make_project(
        tmp_path / "proj", deep_update(TINY_PARAMS, {"data": {"source": str(data), "sha256": None}})
    )
    yield proj


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def http_server(
    cmd: Sequence[str],
    cwd: Path,
    env: Mapping[str, str],
    ready_url: str,
    timeout: float,
    what: str = "server",
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a real server process, wait until ``ready_url`` answers 200, stop it afterwards.

    The process gets its own session so that SIGTERM reaches the workers it forks (gunicorn,
    uvicorn); a server that dies or never answers fails the test with its output.
    """
    proc = subprocess.Popen(
        list(cmd),
        cwd=cwd,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(ready_url, timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                out = proc.stdout.read().decode() if proc.stdout else ""
                pytest.fail(f"{what} did not come up (exit {proc.poll()}):\n{out[-3000:]}")
            time.sleep(0.5)
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):  # it died: its output is the failure
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# ----------------------------------------------------------------- the promoted tiny project
# scripts/retrain.sh end to end on a tiny project: real git, real `dvc repro`, a real local
# DVC remote and a bare git "origin" in tmp. The only stand-in is ``gh``: GitHub is not
# reachable from tests, so a 3-line script records the arguments it is called with.

FAKE_PR_URL = "https://github.com/example/reprotrain/pull/1"
#: What the scheduled job runs with: GitHub Actions' variables, a token for the PR step only.
GH = f"""#!/usr/bin/env bash
echo "$*" >> "$(dirname "$0")/gh.log"
if [ "$1 $2" = "pr create" ]; then echo {FAKE_PR_URL}; fi
"""


@dataclass
class Project:
    """The shared tiny project and what its first retraining produced."""

    root: Path  # the project (git repo on the retrain branch after the first run)
    remote: Path  # the DVC remote (a local directory)
    origin: Path  # bare git repo standing in for GitHub
    env: dict[str, str]
    first: subprocess.CompletedProcess[str]
    open_pr: subprocess.CompletedProcess[str]
    summary: Path  # $GITHUB_STEP_SUMMARY of the first run
    outputs: Path  # $GITHUB_OUTPUT of the first run
    # `scripts/retrain.sh promote` after the "merge" (what .github/workflows/promote.yml runs)
    merged: subprocess.CompletedProcess[str] | None = None


def retrain(
    proj: Path, env: dict[str, str], *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run the project's copy of the script from another directory (it must find its root)."""
    # A hang guard, not a speed bar: a busy shared machine can take 10x the ~1.5 min.
    cmd = [str(proj / "scripts" / "retrain.sh"), *args]
    return run(cmd, proj.parent, env, check=check, timeout=2400)


@pytest.fixture(scope="session")
def promoted_project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """The tiny project pointed at a fresh DVC remote and a bare git origin, after one real
    `scripts/retrain.sh` run (proposed as challenger, committed on a branch, pushed, PR
    opened) and the merge job's `scripts/retrain.sh promote` (v1 is the champion).

    Built once per session (≈ 1.5 min on 2 cores) and shared by tests/ci/ and the
    training-stage checks. A test that changes its workspace restores it before returning
    (:func:`restore_workspace`), so the modules run alone and in any order.
    """
    factory = tmp_path_factory
    base = factory.mktemp("retrain")
    images = make_class_tree(base / "images", {"cats": 16, "dogs": 16})
    proj = make_project(
        base / "proj",
        deep_update(TINY_PARAMS, {"data": {"source": str(images), "sha256": None}}),
    )
    bin_dir = base / "bin"
    bin_dir.mkdir()
    (bin_dir / "gh").write_text(GH)
    (bin_dir / "gh").chmod(0o755)
    env = subprocess_env(DVC_NO_ANALYTICS="1")
    env["PATH"] = f"{env['PATH']}:{bin_dir}"  # venv first; gh is not installed here
    for var in ("GITHUB_ACTIONS", "GITHUB_OUTPUT", "GITHUB_STEP_SUMMARY", "GH_TOKEN"):
        env.pop(var, None)

    remote, origin = base / "dvc-remote", base / "origin.git"
    run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], base, env)
    run(["dvc", "remote", "add", "-d", "storage", str(remote)], proj, env)
    # What `dvc init` writes; make_project copies .dvc/config only.
    (proj / ".dvc" / ".gitignore").write_text("/config.local\n/tmp\n/cache\n")
    run(["git", "add", "-A"], proj, env)
    run(["git", "commit", "-qm", "DVC remote"], proj, env)
    run(["git", "remote", "add", "origin", str(origin)], proj, env)
    run(["git", "push", "-q", "origin", "main"], proj, env)

    summary, outputs = base / "step_summary.md", base / "github_output"
    ci = {
        **env,
        "GITHUB_ACTIONS": "true",
        "GITHUB_STEP_SUMMARY": str(summary),
        "GITHUB_OUTPUT": str(outputs),
        "GITHUB_RUN_ID": "4242",
        "GITHUB_REPOSITORY": "example/reprotrain",
    }
    first = retrain(proj, ci)
    open_pr = retrain(proj, {**ci, "GH_TOKEN": "not-a-real-token"}, "open-pr")
    # The merge: the branch's files are what the default branch holds after it.
    merged = retrain(proj, {**ci, "GITHUB_OUTPUT": str(base / "merge_output")}, "promote")
    return Project(proj, remote, origin, env, first, open_pr, summary, outputs, merged)


def restore_workspace(project: Project) -> None:
    """Put the shared project's workspace back to its committed state (params, dvc.lock and
    the outputs they name), after a test that changed it."""
    proj, env = project.root, project.env
    run(["git", "checkout", "--", "."], proj, env)
    run(["dvc", "checkout", "--force"], proj, env)


# --------------------------------------------------------------------------- tracking helpers
# Shared by tests/tracking/test_runs.py, tests/commands/test_ui.py, test_promote.py and the
# chaos tests: a tiny project (dvc.yaml, params.yaml, a dvc.lock and a manifest in a git repo)
# whose stages are simulated by calling ``tracking.stage_run`` the way stages/*.py do.

PREPARED_MD5 = "0123456789abcdef0123456789abcdef.dir"
HEAD_MD5 = "fedcba9876543210fedcba9876543210"


def write_lock(root: Path) -> None:
    """A dvc.lock as DVC 3 writes it, for the outputs later stages read."""
    lock = {
        "schema": "2.0",
        "stages": {
            "prepare": {
                "cmd": "python stages/prepare.py",
                "outs": [
                    {"path": "data/prepared", "hash": "md5", "md5": PREPARED_MD5, "size": 10},
                    {"path": "data/prepare.run.json", "hash": "md5", "md5": "aa" * 16},
                ],
            },
            "train_head": {
                "cmd": "python stages/train_head.py",
                "outs": [{"path": "models/head.keras", "hash": "md5", "md5": HEAD_MD5}],
            },
        },
    }
    (root / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))


def write_manifest(root: Path) -> None:
    """A data/prepared/manifest.csv with three images per split."""
    rows = ["path,label,label_index,split,sha256,height,width"]
    for i in range(9):
        split = ("train", "val", "test")[i % 3]
        rows.append(f"img{i}.jpg,{'ab'[i % 2]},{i % 2},{split},{i:064x},32,32")
    manifest = root / "data" / "prepared" / "manifest.csv"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text("\n".join(rows) + "\n")


def make_tracking_project(root: Path, empty_db: Path | None = None) -> Path:
    """dvc.yaml + params.yaml + a dep source in a git repo, a dvc.lock and a manifest (and a
    copy of a migrated empty MLflow database: creating one costs seconds, copying does not)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", "params.yaml", ".gitignore"):
        (root / name).write_text((REPO / name).read_text())
    (root / "stages").mkdir(exist_ok=True)
    (root / "stages" / "finetune.py").write_text("# stage\n")
    env = subprocess_env()
    run(["git", "init", "-q", "-b", "main"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "init"], root, env)
    write_lock(root)
    write_manifest(root)
    if empty_db is not None:
        (root / "mlruns").mkdir(exist_ok=True)
        shutil.copy2(empty_db, root / "mlruns" / "mlflow.db")
    return root


def make_empty_db(directory: Path) -> Path:
    """A migrated, empty MLflow SQLite file in ``directory``."""
    import mlflow

    db = directory / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


def simulate(root: Path, stage: str, upstream=(), sidecar=None, metrics=None, env=None):
    """One simulated stage: params of ``seed`` and ``stage``, two steps and a final metric."""
    from reprotrain import dag, tracking
    from reprotrain.config import load_params

    params = load_params(root / "params.yaml")
    spec = dag.Stage(
        stage,
        params=("seed", stage),
        sidecar=str(sidecar) if sidecar else None,
        upstream=tuple(str(u) for u in upstream),
    )
    with tracking.stage_run(
        spec, params, root, environment=env or {"python": "3.11", "cuda": "none"}
    ) as r:
        r.log_metrics({"loss": 1.0}, step=1)
        r.log_metrics({"loss": 0.5}, step=2)
        r.log_metrics(metrics or {"val_accuracy": 0.75})
    return r


def project_client(root: Path, store: str = "mlruns") -> Any:
    """An MlflowClient on the SQLite store of the project at ``root`` (``tracking.store``)."""
    import mlflow

    from reprotrain import tracking

    uri = tracking.default_uri(root, store)
    return mlflow.MlflowClient(uri, registry_uri=uri)


TRACKING_ENV = ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME", "REPROTRAIN_REPRODUCES")
#: What MLflow and DVC export into ``os.environ`` once a test gave them a store or a root.
MLFLOW_EXPORTS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "DVC_ROOT")


@contextlib.contextmanager
def no_mlflow_exports() -> Iterator[None]:
    """None of :data:`MLFLOW_EXPORTS` inherited inside, and the caller's values back after
    (a module fixture cannot use ``monkeypatch``; MLflow exports the URIs it was given)."""
    from reprotrain.tracking.process import scoped_environ  # the tracking package, lazily

    with scoped_environ(**dict.fromkeys(MLFLOW_EXPORTS)):
        yield


def params_project(root: Path) -> Path:
    """``root`` holding the repo's ``dvc.yaml`` and ``params.yaml``: enough for
    ``load_params`` and a project-local tracking store."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy2(REPO / name, root / name)
    return root


def enter_project(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``root`` as the working directory, with no tracking environment inherited."""
    for var in TRACKING_ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(root)
    return root


@pytest.fixture
def store_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A :func:`params_project` as the working directory, no tracking environment inherited."""
    return enter_project(params_project(tmp_path / "proj"), monkeypatch)
