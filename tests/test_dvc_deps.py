"""Each stage's ``dvc.yaml`` deps list exactly the code it runs.

Why: a module a stage imports but does not list (say the promotion gate under ``evaluate``)
changes without rerunning the stage, so its outputs go stale silently; a listed module it
does not import reruns it for nothing. The imports are derived from the source (stage script
→ ``reprotrain.*`` imports, transitively, including imports inside functions), so the deps
cannot drift again.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"


def module_file(name: str) -> Path | None:
    """``reprotrain.data.fetch`` → its file (module or package ``__init__``), or None."""
    base = SRC / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """``reprotrain.*`` modules a file imports (``from reprotrain import x`` counts as
    ``reprotrain.x`` when ``x`` is a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = ".".join(path.relative_to(SRC).with_suffix("").parts) if SRC in path.parents else ""
    if path.name == "__init__.py":
        package = package.removesuffix(".__init__")
    else:
        package = package.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("reprotrain")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            if not mod.startswith("reprotrain"):
                continue
            for alias in node.names:
                sub = f"{mod}.{alias.name}"
                found.add(sub if module_file(sub) else mod)
    return {m for m in found if module_file(m) is not None}


def stage_code(script: Path) -> set[str]:
    """Repo-relative files a stage script runs: itself and its transitive reprotrain imports."""
    seen: set[Path] = {script}
    todo = [script]
    while todo:
        for mod in imported_modules(todo.pop()):
            f = module_file(mod)
            if f is not None and f not in seen:
                seen.add(f)
                todo.append(f)
    return {p.relative_to(REPO).as_posix() if REPO in p.parents else str(p) for p in seen}


def _covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


def _stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(_stages()))
def test_stage_deps_match_its_imports(stage: str) -> None:
    spec = _stages()[stage]
    script = REPO / spec["cmd"].split()[-1]
    deps = [next(iter(d)) if isinstance(d, dict) else str(d) for d in spec.get("deps", [])]
    code = stage_code(script)
    missing = sorted(p for p in code if not _covered(p, deps))
    code_deps = [d for d in deps if d.startswith(("src/", "stages/"))]
    unused = sorted(d for d in code_deps if not any(_covered(p, [d]) for p in code))
    assert not missing and not unused, (
        f"dvc.yaml stage {stage!r}: missing deps {missing}, unused deps {unused}; "
        "run `python scripts/sync_dvc_deps.py` to rewrite them"
    )


def test_import_walk_finds_function_level_imports(tmp_path: Path) -> None:
    """Stages import TensorFlow-heavy modules inside main(): the walk must see those."""
    script = tmp_path / "stage.py"
    script.write_text(
        "from reprotrain import paths\n"
        "def main():\n"
        "    from reprotrain.data import pipeline\n"
        "    import reprotrain.errors\n"
    )
    code = {p for p in stage_code(script) if p.startswith("src/")}
    assert {
        "src/reprotrain/paths.py",
        "src/reprotrain/data/pipeline.py",
        "src/reprotrain/errors.py",
    } <= code
