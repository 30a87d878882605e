"""Each stage is declared once (``reprotrain.dag``): the committed ``dvc.yaml`` is what the
specs render, each stage's code deps are exactly what its script imports, and every param a
spec names exists.

Why the deps matter: a module a stage imports but does not list (say the promotion gate
under ``evaluate``) changes without rerunning the stage, so its outputs go stale silently; a
listed module it does not import reruns it for nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from reprotrain import dag
from reprotrain.config import load_params
from scripts.write_dvc_yaml import REPO, render, render_stage, stage_code


def _committed() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))


def test_committed_dvc_yaml_is_generated_from_the_specs() -> None:
    kind = load_params(REPO / "params.yaml").data.kind
    assert (REPO / "dvc.yaml").read_text(encoding="utf-8") == render(kind=kind), (
        "dvc.yaml is stale: run `python scripts/write_dvc_yaml.py`"
    )


#: Every kind's stages whose script exists (a kind under construction has none yet).
ALL_STAGES = [
    (k, name)
    for k in dag.KINDS
    for name, spec in dag.kind(k).stages.items()
    if (REPO / spec.script).is_file()
]


def _covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize(("kind", "stage"), ALL_STAGES)
def test_stage_deps_match_its_imports(kind: str, stage: str) -> None:
    spec = yaml.safe_load("\n".join(render_stage(dag.stage(stage, kind))))[stage]
    deps = [next(iter(d)) if isinstance(d, dict) else str(d) for d in spec.get("deps", [])]
    code = stage_code(REPO / dag.stage(stage, kind).script)
    missing = sorted(p for p in code if not _covered(p, deps))
    code_deps = [d for d in deps if d.startswith(("src/", "stages/"))]
    unused = sorted(d for d in code_deps if not any(_covered(p, [d]) for p in code))
    assert not missing and not unused, (
        f"dvc.yaml stage {stage!r}: missing deps {missing}, unused deps {unused}; "
        "run `python scripts/write_dvc_yaml.py`"
    )


def test_every_param_a_stage_reads_exists_and_a_typo_is_named() -> None:
    params = load_params(REPO / "params.yaml")
    for kind, name in ALL_STAGES:
        assert dag.param_values(params, dag.stage(name, kind).params), (kind, name)
    with pytest.raises(AttributeError, match="lerning_rate"):
        dag.param_values(params, ("finetune.lerning_rate",))
    with pytest.raises(KeyError, match="unknown stage 'deploy'"):
        dag.stage("deploy")
    with pytest.raises(KeyError, match="unknown data kind 'audio'"):
        dag.kind("audio")


def test_a_stage_of_another_kind_stops_with_one_line() -> None:
    """dvc.yaml of the image pipeline, params.yaml switched to a table: the stage says to
    regenerate dvc.yaml (what `make repro` does) instead of reading the wrong data."""
    from reprotrain.errors import ConfigError

    dag.check_kind(dag.stage("prepare"), "images")
    with pytest.raises(ConfigError, match=r"data.kind: table.*images pipeline.*make repro"):
        dag.check_kind(dag.stage("prepare"), "table")


def test_each_kind_writes_under_its_own_folders() -> None:
    """Switching data.kind and back never mixes outputs: apart from fetch's snapshot and the
    current kind's metrics, plots and card, no two kinds share an output path."""
    shared = ("data/raw", "metrics/", "plots/", "reports/", "models/tensorboard/")
    outs = {
        k: {o.path for s in dag.kind(k).stages.values() for o in (*s.outs, *s.metrics)}
        for k in dag.KINDS
    }
    for a in dag.KINDS:
        for b in dag.KINDS:
            if a < b:
                both = {p for p in outs[a] & outs[b] if not p.startswith(shared)}
                assert not both, (a, b, both)


def test_a_spec_change_is_a_dvc_yaml_change() -> None:
    """What a stage declares is what DVC sees: a param or an output added to the spec
    appears in the rendered stage, with its comment."""
    import dataclasses

    spec = dag.stage("prepare")
    extra = dataclasses.replace(
        spec,
        params=(*spec.params, "data.source"),
        outs=(*spec.outs, dag.Output("reports/extra.md", cache=False, note="An extra file.")),
    )
    text = render({**dag.STAGES, "prepare": extra}, kind="images")
    rendered = yaml.safe_load(text)["stages"]["prepare"]
    assert rendered["params"] == ["seed", "prepare", "data.source"]
    assert rendered["outs"][-1] == {"reports/extra.md": {"cache": False}}
    assert "      # An extra file.\n      - reports/extra.md:" in text


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
