"""A throw-away copy of this project's pipeline, for the tests and the benchmarks.

    from scripts.project_copy import make_project, subprocess_env

One place for what a copy needs (``PROJECT_FILES``) and how its `dvc`/`python`/`git`
children run (``subprocess_env``), so tests (via ``tests/conftest.py``) and benchmarks build
the same project. Not a test module: benchmarks import it without pytest.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]

#: What a project needs to run `dvc repro`. Stages import ``reprotrain`` from the installed
#: (editable) package; the copied ``src/`` is there because ``dvc.yaml`` lists its files.
PROJECT_FILES = (
    "dvc.yaml",
    "params.yaml",
    "stages",
    "src",
    ".dvc/config",
    ".dvc/.gitignore",
    ".gitignore",
    "scripts",
)


def deep_update(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in, nested mappings key by key."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = (
            deep_update(out.get(k, {}), v)
            if isinstance(v, Mapping) and isinstance(out.get(k), dict)
            else v
        )
    return out


def subprocess_env(keras_home: Path | None = None, **extra: str) -> dict[str, str]:
    """Environment for real `dvc`/`python`/`git` children: this venv first on PATH, the
    project's own MLflow store, a git identity."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("MLFLOW_TRACKING_URI", None)
    for key in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"):
        env.setdefault(key, "reprotrain-tests")
    for key in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
        env.setdefault(key, "tests@reprotrain.invalid")
    if keras_home is not None:
        env["KERAS_HOME"] = str(keras_home)
    env.update(extra)
    return env


def make_project(dest: Path, params: Mapping[str, Any] | None = None, git: bool = True) -> Path:
    """Copy the project's pipeline files into ``dest`` (a git + DVC repo), with ``params``
    merged into the repo's ``params.yaml``."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    merged = deep_update(base, params or {})
    (dest / "params.yaml").write_text(yaml.safe_dump(merged, sort_keys=False))
    if merged.get("data", {}).get("kind", "images") != "images":
        from scripts.write_dvc_yaml import write  # the kind's pipeline, as `make repro` does

        write(dest)
    if git:
        env = subprocess_env()
        for cmd in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "project"]):
            proc = subprocess.run(["git", *cmd], cwd=dest, env=env, text=True, capture_output=True)
            if proc.returncode != 0:
                raise RuntimeError(f"git {' '.join(cmd)} in {dest} failed: {proc.stderr.strip()}")
    return dest


def hymenoptera_project(tmp: Path, assets: Path) -> tuple[Path, Path, dict[str, str]]:
    """A default-params project on a copy of the hymenoptera photos, with a KERAS_HOME whose
    models/ links the cached ImageNet weights (both from ``assets``, the offline cache):
    the project, the photos and the environment for its `dvc`/`python` children."""
    data = tmp / "hymenoptera_data"
    shutil.copytree(assets / "datasets" / "hymenoptera_data", data)
    keras_home = linked_keras_home(tmp / "keras_home", assets)
    proj = make_project(tmp / "proj", {"data": {"source": str(data), "sha256": None}})
    return proj, data, subprocess_env(keras_home)


def linked_keras_home(home: Path, assets: Path | None) -> Path:
    """A writable KERAS_HOME at ``home`` whose models/ links the cached ImageNet weights of
    ``assets`` (none without assets: Keras then downloads them)."""
    (home / "models").mkdir(parents=True, exist_ok=True)
    if assets is not None:
        for f in (assets / "keras" / "models").glob("*.h5"):
            (home / "models" / f.name).symlink_to(f.resolve())
    return home
