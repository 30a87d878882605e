"""Where a run's inputs came from: git, ``dvc.yaml``/``dvc.lock``, content hashes, and the
``*.run.json`` sidecars that link a stage's output to the MLflow run that produced it.

Why read ``dvc.yaml``/``dvc.lock`` as YAML here instead of through ``dvc.repo.Repo``: every
stage run needs them, and opening a DVC repo costs ~2 s of imports per stage process; the
two files are a documented, stable format (schema 2.0). The DAG *walk*, which has rules of its
own (outputs inside directories, ``foreach`` stages), is left to DVC: :func:`upstream_stages`.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from reprotrain.config import flatten, parse_yaml
from reprotrain.fsio import atomic_write_json

#: Set by ``reprotrain reproduce`` for the pipeline it reruns.
ENV_REPRODUCES = "REPROTRAIN_REPRODUCES"


# --------------------------------------------------------------------------- dvc.yaml / dvc.lock


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping, or ``{}`` when the file does not exist."""
    if not path.is_file():
        return {}
    return parse_yaml(path.read_text(encoding="utf-8")) or {}


def _entry_paths(entries: Sequence[Any] | None) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else str(e) for e in entries or ()]


def stage_outputs(dvc_yaml: Mapping[str, Any]) -> dict[str, str]:
    """``{output path: producing stage}`` over outs, metrics and plots of every stage."""
    produced: dict[str, str] = {}
    for name, stage in (dvc_yaml.get("stages") or {}).items():
        for kind in ("outs", "metrics", "plots"):
            for p in _entry_paths(stage.get(kind)):
                produced[p.rstrip("/")] = name
    return produced


def stage_deps(dvc_yaml: Mapping[str, Any], stage: str) -> list[str]:
    st = (dvc_yaml.get("stages") or {}).get(stage) or {}
    return [p.rstrip("/") for p in _entry_paths(st.get("deps"))]


def data_hashes(root: Path, stage: str) -> dict[str, str]:
    """md5 that dvc.lock records for each input of ``stage`` that another stage produced.

    The producer's ``outs`` entry is read (it is written when the producer finishes), so the
    hash is that of the data this run reads, the same string ``dvc.lock`` shows.
    """
    dvc_yaml = read_yaml(root / "dvc.yaml")
    lock = read_yaml(root / "dvc.lock").get("stages") or {}
    produced = stage_outputs(dvc_yaml)
    out: dict[str, str] = {}
    for dep in stage_deps(dvc_yaml, stage):
        producer = produced.get(dep)
        if producer is None or producer == stage:
            continue
        md5 = "missing"
        for entry in (lock.get(producer) or {}).get("outs") or ():
            if str(entry.get("path", "")).rstrip("/") == dep:
                md5 = str(
                    entry.get("md5") or entry.get("etag") or entry.get("checksum") or "missing"
                )
        out[dep] = md5
    return out


def source_paths(root: Path) -> list[str]:
    """dvc.yaml, params.yaml and every dependency no stage produces (code and config)."""
    dvc_yaml = read_yaml(root / "dvc.yaml")
    produced = stage_outputs(dvc_yaml)
    deps = {dep for name in (dvc_yaml.get("stages") or {}) for dep in stage_deps(dvc_yaml, name)}
    return sorted({"dvc.yaml", "params.yaml"} | {d for d in deps if d not in produced})


def upstream_stages(root: Path, stage: str) -> list[str]:
    """``stage`` and every stage it depends on, dependencies first, from DVC's own stage graph
    (``Repo.index.graph``: an edge runs from a stage to each stage whose output it reads)."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        graph = repo.index.graph
        # ``name``, not ``addressing``: the latter is relative to the current directory.
        nodes = {s.name: s for s in graph.nodes if getattr(s, "name", None)}
        if stage not in nodes:
            raise KeyError(f"stage {stage!r} is not in dvc.yaml (stages: {', '.join(nodes)})")
        return [s.name for s in nx.dfs_postorder_nodes(graph, nodes[stage])]


# --------------------------------------------------------------------------- git and hashes


def git(root: Path, *args: str) -> str | None:
    """``git ARGS`` in ``root``: its stdout, or None when git fails or is missing."""
    try:
        proc = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    # Only the trailing newline goes: `status --porcelain` lines start with a space (" M x").
    return proc.stdout.rstrip("\n") if proc.returncode == 0 else None


def changed_paths(root: Path, paths: Sequence[str]) -> list[str] | None:
    """Those of ``paths`` that differ from HEAD or are untracked (None: not a git repo)."""
    out = git(root, "status", "--porcelain", "--untracked-files=all", "--", *paths)
    if out is None:
        return None
    return sorted({line[3:].strip().strip('"') for line in out.splitlines() if line})


def changed_params(root: Path) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (HEAD's value, current value)}`` for params.yaml keys that differ from
    the committed file (every key when HEAD has none, nothing outside git)."""
    committed = git(root, "show", "HEAD:params.yaml")
    if committed is None:
        return {}
    old = flatten(parse_yaml(committed) or {})
    new = flatten(read_yaml(root / "params.yaml"))
    return {
        k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)
    }


def _digest_paths(root: Path, rels: Sequence[str]) -> str:
    """sha256 over the names and bytes of files (directories walked, caches skipped)."""
    h = hashlib.sha256()
    for rel in rels:
        path = root / rel
        files = (
            sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
            if path.is_dir()
            else [path]
        )
        for f in files:
            h.update(f.relative_to(root).as_posix().encode() + b"\0")
            h.update(f.read_bytes() if f.is_file() else b"<missing>")
            h.update(b"\0")
    return h.hexdigest()


def pipeline_key(root: Path, commit: str, env: Mapping[str, str] | None = None) -> str:
    """Identity of one pipeline configuration: hash of (git HEAD, the content of params.yaml,
    dvc.yaml and every dependency no stage produces, ``$DVC_EXP_NAME``,
    ``$REPROTRAIN_REPRODUCES``)."""
    env = os.environ if env is None else env
    h = hashlib.sha256()
    for part in (
        commit,
        _digest_paths(root, source_paths(root)),
        env.get("DVC_EXP_NAME", ""),
        env.get(ENV_REPRODUCES, ""),
    ):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- sidecars


def read_sidecar(path: Path) -> dict[str, Any] | None:
    """A ``*.run.json`` sidecar, or None when it is missing or unreadable."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("run_id") else None


def write_sidecar(path: Path, body: Mapping[str, Any]) -> None:
    """Write a sidecar atomically (a killed stage never leaves half a JSON file)."""
    atomic_write_json(path, dict(body))


def upstream_tags(
    root: Path, upstream: Sequence[Path], producers: Mapping[str, str] | None = None
) -> dict[str, str]:
    """``reprotrain.upstream.<stage>`` = run id, or ``missing`` when the sidecar is absent
    (the stage is named by dvc.yaml's ``producers`` of the sidecar path, else by its file)."""
    producers = producers or {}
    tags: dict[str, str] = {}
    for rel in upstream:
        data = read_sidecar(root / rel)
        fallback = producers.get(Path(rel).as_posix(), Path(rel).name.removesuffix(".run.json"))
        if data is None:
            tags[f"reprotrain.upstream.{fallback}"] = "missing"
        else:
            tags[f"reprotrain.upstream.{data.get('stage') or fallback}"] = str(data["run_id"])
    return tags
