"""params.yaml → typed config: defaults, each kind of error, and the CLI's one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from reprotrain.config import (
    FinetuneConfig,
    Params,
    flatten,
    load_params,
    params_from_dict,
)
from reprotrain.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_repo_params_yaml_is_valid_and_complete() -> None:
    """Every key in params.yaml is known, and every config field appears in params.yaml.

    Why: dvc.yaml lists dotted keys; a field that only exists as a Python default would be
    invisible to DVC (changing it would not rerun anything).
    """
    params = load_params(REPO / "params.yaml")
    assert isinstance(params, Params)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    in_file = set(flatten(raw))
    in_code = set(flatten(params))
    assert in_code == in_file


def test_defaults_and_types() -> None:
    params = params_from_dict({"finetune": {"learning_rate": "1e-5"}})
    assert params.finetune.learning_rate == pytest.approx(1e-5)
    assert params.finetune.unfreeze_top == 30
    assert params.model.image_size == 224
    with pytest.raises(AttributeError):
        params.finetune.epochs = 3  # type: ignore[misc]  # frozen


def test_flatten_uses_dotted_keys() -> None:
    flat = flatten(FinetuneConfig(), "finetune")
    assert flat["finetune.learning_rate"] == pytest.approx(1e-4)
    assert flatten(params_from_dict({}))["pipeline.augment.flip"] is True


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"bogus": 1}, "unknown key 'bogus'"),
        ({"finetune": {"lr": 1e-5}}, "unknown key 'finetune.lr'; allowed in finetune:"),
        ({"finetune": {"learning_rate": -1}}, "finetune.learning_rate = -1.0: must be > 0.0"),
        (
            {"finetune": {"learning_rate": "fast"}},
            "finetune.learning_rate = 'fast': must be a number",
        ),
        ({"train_head": {"epochs": 2.5}}, "train_head.epochs = 2.5: must be an integer"),
        ({"train_head": {"epochs": 0}}, "train_head.epochs = 0: must be >= 1"),
        ({"seed": True}, "seed = True: must be an integer"),
        ({"model": {"alpha": 0.3}}, "model.alpha = 0.3: must be one of 0.35, 0.5"),
        ({"runtime": {"distribute": "tpu"}}, "runtime.distribute = 'tpu': must be one of 'auto'"),
        ({"pipeline": {"augment": {"flip": "yes"}}}, "pipeline.augment.flip = 'yes': must be true"),
        ({"train_head": {"class_weight": "foo"}}, "must be 'none', 'balanced' or a map"),
        (
            {"train_head": {"class_weight": {"ants": 0}}},
            "train_head.class_weight.ants = 0.0: must be > 0",
        ),
        ({"model": "big"}, "model = 'big': must be a mapping"),
        ({"prepare": {"val_fraction": 1.0}}, "prepare.val_fraction = 1.0: must be < 1.0"),
    ],
)
def test_each_kind_of_error_names_key_value_and_rule(raw: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        params_from_dict(raw)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("seed: 1\nmodel: [unclosed\n")
    with pytest.raises(ConfigError, match=r"invalid YAML at line \d+"):
        load_params(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_params(bad)


@pytest.mark.slow
def test_stage_prints_one_line_and_exits_2_without_traceback(tmp_path: Path) -> None:
    """A real stage process on a broken params.yaml: one error line, exit 2, no traceback."""
    (tmp_path / "params.yaml").write_text("finetune:\n  learning_rate: -3\n")
    code = (
        "from reprotrain.cli import run_main\n"
        "from reprotrain.config import load_params\n"
        "run_main(lambda: load_params())\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "error: params.yaml: finetune.learning_rate = -3.0: must be > 0.0" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_json_schema_is_current_and_accepts_params_yaml() -> None:
    """docs/params.schema.json (what editors complete from) matches the code, and the repo's
    params.yaml validates against it. Regenerate with `make schema`."""
    import json

    import jsonschema

    from reprotrain.config import json_schema

    committed = json.loads((REPO / "docs" / "params.schema.json").read_text())
    assert committed == json_schema(), "docs/params.schema.json is stale: run `make schema`"
    assert (
        (REPO / "params.yaml")
        .read_text()
        .startswith("# yaml-language-server: $schema=docs/params.schema.json")
    )
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    jsonschema.validate(raw, committed)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"finetune": {"lr": 1}}, committed)


def test_sections_stay_dataclasses() -> None:
    """Stages use dataclasses.replace/asdict on config sections."""
    import dataclasses

    params = params_from_dict({})
    assert dataclasses.replace(params.pipeline, cache="none").cache == "none"
    assert dataclasses.asdict(params)["model"]["image_size"] == 224
