"""benchmarks/recipes.py: the docs table comes from the results JSON, and the digits set it
builds is what its docstring says."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks import recipes

GAIN = {
    "n": 30,
    "head_accuracy": 0.5,
    "head_ci": [0.332, 0.668],
    "finetuned_accuracy": 0.6,
    "finetuned_ci": [0.423, 0.754],
    "delta": 0.1,
    "mcnemar": {"challenger_only": 4, "champion_only": 1, "p_value": 0.375},
}
RESULTS = {
    "date": "2026-12-01 22:00 UTC",
    "datasets": {
        "tango_icons": {
            "recipes": {
                "lr1e-4_e10": {
                    "gain": GAIN,
                    "epochs_run": 6,
                    "best_epoch": 3,
                    "kept_start_weights": False,
                    "val_loss": {"start": 1.375, "kept": 1.198},
                    "stage_seconds": 90.0,
                    "train_seconds": 60.0,
                }
            }
        }
    },
}


def test_table_is_written_between_the_markers_from_the_json(tmp_path: Path) -> None:
    doc = tmp_path / "finetuning.md"
    doc.write_text(f"intro\n{recipes.BEGIN}\nstale\n{recipes.END}\noutro\n")
    recipes.write_table(RESULTS, doc)
    text = doc.read_text()
    assert text.startswith("intro\n") and text.endswith(f"{recipes.END}\noutro\n")
    assert "stale" not in text and "2026-12-01 22:00 UTC" in text
    row = (
        "| tango_icons | `lr1e-4_e10` | 30 | 0.500 [0.332, 0.668] | 0.600 [0.423, 0.754] | "
        "+10.0 | 0.375 (4/1) | 1.375 → 1.198 | 6 (3) | 90.0 | 10 |"
    )
    assert row in text
    doc.write_text("no markers\n")
    with pytest.raises(SystemExit, match="markers"):
        recipes.write_table(RESULTS, doc)


def test_committed_docs_table_is_the_json_rendered() -> None:
    results = recipes.load_results()
    text = recipes.DOC.read_text()
    assert recipes.table(results) in text, "docs/finetuning.md is stale: run recipes.py --table"


def test_digits_are_a_stratified_subset_of_sklearn_digits_upscaled(tmp_path: Path) -> None:
    out = recipes.build_digits(tmp_path / "digits", per_class=3)
    files = sorted(out.rglob("*.png"))
    assert sorted(p.name for p in out.iterdir()) == [str(d) for d in range(10)]
    assert len(files) == 30
    img = Image.open(files[0])
    assert img.size == (32, 32) and img.mode == "L"
    pixels = np.asarray(img)
    assert pixels.max() <= 255 and (pixels[::4, ::4].repeat(4, 0).repeat(4, 1) == pixels).all()


def test_the_default_recipe_is_what_params_yaml_runs() -> None:
    import yaml

    finetune = yaml.safe_load((recipes.REPO / "params.yaml").read_text())["finetune"]
    chosen = {**recipes.OLD, **recipes.RECIPES[recipes.DEFAULT_RECIPE]}
    assert {k: finetune[k] for k in chosen} == chosen


def test_quick_start_time_scales_the_stage_ratio_by_its_share_of_the_dag() -> None:
    run = {"stage_seconds": 60.0}
    results = {
        "datasets": {
            "hymenoptera": {
                "recipes": {"old_default": run, recipes.DEFAULT_RECIPE: {"stage_seconds": 90.0}}
            }
        }
    }
    pipeline = {"rounds": [{"pipeline_s": 200.0, "stages": {"finetune": {"total": 50.0}}}]}
    qs = recipes.quick_start_time(results, pipeline)
    assert qs["finetune_ratio"] == 1.5 and qs["finetune_share_of_dag"] == 0.25
    assert qs["dag_ratio"] == 1.125
    assert recipes.quick_start_time({"datasets": {}}, pipeline) is None
