"""Fine-tuning recipes, measured: what each adds over the head, per dataset.

    python benchmarks/recipes.py [--assets ../shared/assets] [--datasets a,b] [--recipes x,y]
                                 [--workdir DIR] [--table]

Per dataset, a throw-away project (``scripts/project_copy.py``) on the real stages:
``dvc repro train_head`` once (fetch → prepare → train_head, the defaults), then per recipe
``dvc repro --single-item finetune`` with the recipe's ``finetune.*`` params, timed. Both
models are scored on the project's test split (``reprotrain.evaluation``), and the gain is
:func:`reprotrain.evaluation.gain.finetune_gain`: accuracies with Wilson intervals, the
delta and the exact McNemar test the promotion gate uses. Results are merged into
``benchmarks/results/recipes.json`` recipe by recipe (a rerun of one recipe replaces it),
so recipes can be measured one after another on a shared machine.

Datasets (all real images, offline):

- ``hymenoptera``: the quick-start ants/bees photos (close to ImageNet);
- ``tango_icons``: 207 Tango desktop icons, 32×32 RGBA, 8 classes (far from ImageNet);
- ``digits``: scikit-learn's bundled handwritten digits (UCI, 8×8 grayscale, 10 classes),
  a stratified subset of ``--digits-per-class`` images per class, upscaled 4× (nearest) to
  32×32 PNGs (far from ImageNet).

``--table`` rewrites the recipes table in ``docs/finetuning.md`` (between its markers) from
the JSON, without training. Expect ≈ 2–4 min per dataset and recipe on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # for scripts.project_copy (run as `python benchmarks/...`)

from scripts.project_copy import (  # noqa: E402
    PROJECT_FILES,
    deep_update,
    linked_keras_home,
    make_project,
    subprocess_env,
)

RESULTS = REPO / "benchmarks" / "results" / "recipes.json"
DOC = REPO / "docs" / "finetuning.md"
BEGIN, END = "<!-- recipes:begin -->", "<!-- recipes:end -->"

#: The finetune.* values before issue 27, stated in full so new defaults do not leak in.
OLD = {
    "learning_rate": 1e-5,
    "epochs": 5,
    "schedule": "constant",
    "warmup_epochs": 0,
    "label_smoothing": 0.0,
    "augment": True,
}
#: Recipe → finetune.* overrides (on top of OLD).
RECIPES: dict[str, dict[str, Any]] = {
    "old_default": {},
    "lr1e-4_e10": {"learning_rate": 1e-4, "epochs": 10},
    "lr1e-4_e15_cosine_w1": {
        "learning_rate": 1e-4,
        "epochs": 15,
        "schedule": "cosine",
        "warmup_epochs": 1,
    },
    "lr1e-4_e10_cosine_w1": {
        "learning_rate": 1e-4,
        "epochs": 10,
        "schedule": "cosine",
        "warmup_epochs": 1,
    },
    # Augmentation off: flips and rotations change what a digit or a glyph means.
    "lr1e-4_e10_noaug": {"learning_rate": 1e-4, "epochs": 10, "augment": False},
    "lr1e-4_e10_smooth0.1": {"learning_rate": 1e-4, "epochs": 10, "label_smoothing": 0.1},
    "lr3e-4_e10_cosine_w1": {
        "learning_rate": 3e-4,
        "epochs": 10,
        "schedule": "cosine",
        "warmup_epochs": 1,
    },
}
DATASETS = ("hymenoptera", "tango_icons", "digits")
#: The recipe params.yaml's finetune section runs (tests/benchmarks/test_recipes.py checks).
DEFAULT_RECIPE = "lr1e-4_e10_noaug"
PIPELINE = REPO / "benchmarks" / "results" / "pipeline.json"


def run(cmd: list[str], cwd: Path, env: Mapping[str, str]) -> float:
    """Run ``cmd`` to completion (stop with its output on failure); its wall seconds."""
    import subprocess

    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=dict(env), text=True, capture_output=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return time.perf_counter() - start


def build_digits(dest: Path, per_class: int, seed: int = 0) -> Path:
    """scikit-learn's digits as class folders of 32×32 PNGs (a seeded, stratified subset)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    for label in range(10):
        idx = np.flatnonzero(digits.target == label)
        chosen = np.sort(rng.choice(idx, size=min(per_class, len(idx)), replace=False))
        folder = dest / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        for i in chosen:
            pixels = (digits.images[i] * (255.0 / 16.0)).round().astype(np.uint8)
            img = Image.fromarray(pixels, mode="L").resize((32, 32), Image.NEAREST)
            img.save(folder / f"digit_{i:04d}.png")
    return dest


def dataset_dir(name: str, assets: Path, work: Path, digits_per_class: int) -> Path:
    if name == "hymenoptera":
        return assets / "datasets" / "hymenoptera_data"
    if name == "tango_icons":
        return assets / "datasets" / "tango_icons"
    if name == "digits":
        dest = work / "digits_data"
        return dest if dest.is_dir() else build_digits(dest, digits_per_class)
    raise SystemExit(f"unknown dataset {name!r}: one of {', '.join(DATASETS)}")


def setup_project(name: str, assets: Path, work: Path, digits_per_class: int) -> tuple[Path, dict]:
    """The dataset's project with the head trained (kept across invocations in ``work``)."""
    proj, home = work / name / "proj", work / name / "keras_home"
    env = subprocess_env(home)
    if not (proj / "models" / "head.keras").is_file():
        if (work / name).exists():
            shutil.rmtree(work / name)
        linked_keras_home(home, assets)
        data = dataset_dir(name, assets, work, digits_per_class)
        make_project(proj, {"data": {"source": str(data), "sha256": None}})
        seconds = run(["dvc", "repro", "train_head"], proj, env)
        (proj / "setup_seconds.txt").write_text(f"{seconds:.1f}\n")
    return proj, env


def set_recipe(proj: Path, overrides: Mapping[str, Any]) -> None:
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["finetune"] = deep_update(params["finetune"], {**OLD, **overrides})
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def score(proj: Path) -> dict[str, Any]:
    """Head vs fine-tuned on the project's test split, with the gate's paired statistics."""
    cwd = Path.cwd()
    os.chdir(proj)
    try:
        from reprotrain import evaluation
        from reprotrain.config import load_params
        from reprotrain.data import pipeline, tfrecords
        from reprotrain.evaluation.gain import finetune_gain
        from reprotrain.evaluation.scoring import ModelScorer

        params = load_params()
        prepared = Path("data/prepared")
        labels = pipeline.read_labels(prepared)
        split = evaluation.EvalSplit(
            tfrecords.verify_shards(prepared, "test"),
            params.pipeline,
            batch_size=64,
            seed=params.seed,
        )
        scorer = ModelScorer(split, labels, top_k=5, calibration_bins=10)
        size = params.model.image_size
        head = scorer.predictions("models/head.keras", image_size=size)
        tuned = scorer.predictions("models/finetuned.keras", image_size=size)
        return finetune_gain(
            head.y_true, head.probs.argmax(axis=1), tuned.probs.argmax(axis=1), alpha=0.05
        )
    finally:
        os.chdir(cwd)


def refresh_code(proj: Path) -> None:
    """The repo's current stages, dvc.yaml and scripts in ``proj`` (params.yaml kept): the
    stages import the live ``reprotrain`` package, so a stage file copied at setup can fall
    out of step with it when the projects are kept across invocations."""
    for name in PROJECT_FILES:
        src, dest = REPO / name, proj / name
        if name == "params.yaml" or not src.exists():
            continue
        if src.is_dir():
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest)


def measure(proj: Path, env: Mapping[str, str], overrides: Mapping[str, Any]) -> dict[str, Any]:
    refresh_code(proj)
    set_recipe(proj, overrides)
    timings = proj.parent / "timings"
    shutil.rmtree(timings, ignore_errors=True)
    seconds = run(
        ["dvc", "repro", "--single-item", "finetune"],
        proj,
        {**env, "REPROTRAIN_TIMINGS": str(timings)},
    )
    return collect(proj, overrides, seconds)


def collect(proj: Path, overrides: Mapping[str, Any], seconds: float | None) -> dict[str, Any]:
    """The finished run's numbers: the stage's own ``vs_head`` (what users see in
    metrics/finetune.json), else both models scored here."""
    ft = json.loads((proj / "metrics" / "finetune.json").read_text())
    timings = proj.parent / "timings"
    stage = json.loads((timings / "finetune.json").read_text()) if timings.is_dir() else {}
    return {
        "params": {**OLD, **overrides},
        "gain": ft.get("vs_head") or score(proj),
        "epochs_run": ft.get("epochs_run"),
        "best_epoch": ft.get("best_epoch"),
        "kept_start_weights": ft.get("kept_start_weights"),
        "stopped_early": ft.get("stopped_early"),
        "val_loss": {"start": ft.get("start_val_loss"), "kept": ft.get("val_loss")},
        "repro_seconds": None if seconds is None else round(seconds, 1),
        "stage_seconds": stage.get("total"),
        "train_seconds": stage.get("train"),
    }


def quick_start_time(results: Mapping[str, Any], pipeline: Mapping[str, Any]) -> dict | None:
    """The quick start's finetune stage, old defaults vs new, measured back to back on one
    project, and what that does to the whole DAG: the stage's share of the DAG is taken from
    the pipeline benchmark (``pipeline.json``, its first round), since this benchmark runs
    only the training stages."""
    runs = results.get("datasets", {}).get("hymenoptera", {}).get("recipes", {})
    old, new = runs.get("old_default"), runs.get(DEFAULT_RECIPE)
    rounds = pipeline.get("rounds") or []
    if not old or not new or not rounds:
        return None
    dag_s = float(rounds[0]["pipeline_s"])
    share = float(rounds[0]["stages"]["finetune"]["total"]) / dag_s
    ratio = float(new["stage_seconds"]) / float(old["stage_seconds"])
    return {
        "finetune_s_old": old["stage_seconds"],
        "finetune_s_new": new["stage_seconds"],
        "finetune_ratio": round(ratio, 3),
        "finetune_share_of_dag": round(share, 3),
        "dag_ratio": round(1 + share * (ratio - 1), 3),
    }


def add_summary(results: dict[str, Any]) -> None:
    if PIPELINE.is_file():
        results["quick_start_time"] = quick_start_time(results, json.loads(PIPELINE.read_text()))


def load_results() -> dict[str, Any]:
    if RESULTS.is_file():
        return json.loads(RESULTS.read_text())
    return {"datasets": {}}


def save_results(results: dict[str, Any]) -> None:
    results["machine"] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    results["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    add_summary(results)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


def _fmt_acc(g: Mapping[str, Any], who: str) -> str:
    lo, hi = g[f"{who}_ci"]
    return f"{g[f'{who}_accuracy']:.3f} [{lo:.3f}, {hi:.3f}]"


def _fmt_loss(v: Mapping[str, Any]) -> str:
    return f"{v['start']:.3f} → {v['kept']:.3f}" if v.get("start") is not None else "–"


def _best(r: Mapping[str, Any]) -> str:
    return "kept head" if r["kept_start_weights"] else str(r["best_epoch"])


def table(results: Mapping[str, Any]) -> str:
    """The Markdown table of every measured dataset × recipe."""
    rows = [
        "| dataset | recipe | n test | head (95% CI) | fine-tuned (95% CI) | Δ points "
        "| McNemar p (b/c) | val loss start → kept | epochs run (best) | finetune stage s "
        "| train s/epoch |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for ds, recipes in results.get("datasets", {}).items():
        for name, r in recipes.get("recipes", {}).items():
            g = r["gain"]
            rows.append(
                f"| {ds} | `{name}` | {g['n']} | {_fmt_acc(g, 'head')} | "
                f"{_fmt_acc(g, 'finetuned')} | {100 * g['delta']:+.1f} | "
                f"{g['mcnemar']['p_value']:.3g} ({g['mcnemar']['challenger_only']}/"
                f"{g['mcnemar']['champion_only']}) | {_fmt_loss(r['val_loss'])} | "
                f"{r['epochs_run']} ({_best(r)}) | {r['stage_seconds']} | "
                f"{r['train_seconds'] / max(1, r['epochs_run']):.0f} |"
            )
    qs = results.get("quick_start_time")
    if qs:
        rows += [
            "",
            f"Quick start, `{DEFAULT_RECIPE}` (the defaults) against `old_default`: finetune "
            f"stage {qs['finetune_s_new']} s / {qs['finetune_s_old']} s = "
            f"{qs['finetune_ratio']}×; at the stage's share of the whole DAG "
            f"({qs['finetune_share_of_dag']}, `pipeline.json`) the DAG takes "
            f"{qs['dag_ratio']}× as long.",
        ]
    return "\n".join(rows)


def write_table(results: Mapping[str, Any], doc: Path = DOC) -> None:
    """Replace the text between the markers of ``doc`` with :func:`table`."""
    text = doc.read_text(encoding="utf-8")
    head, sep, rest = text.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise SystemExit(f"{doc}: missing the {BEGIN} … {END} markers")
    when = results.get("date", "?")
    body = f"\n<!-- generated by benchmarks/recipes.py --table from {RESULTS.name}, {when} -->\n"
    doc.write_text(head + BEGIN + body + table(results) + "\n" + END + tail, encoding="utf-8")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--assets", type=Path, default=REPO.parent / "shared" / "assets")
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--workdir", type=Path, default=None, help="keep projects here (reused)")
    ap.add_argument("--digits-per-class", type=int, default=50)
    ap.add_argument("--table", action="store_true", help="only rewrite the docs table")
    args = ap.parse_args()
    results = load_results()
    if args.table:
        add_summary(results)  # from the runs in the file: the file keeps its date
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        write_table(results)
        return 0
    assets = args.assets.resolve()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="reprotrain-recipes-"))
    work.mkdir(parents=True, exist_ok=True)
    for ds in args.datasets.split(","):
        proj, env = setup_project(ds, assets, work, args.digits_per_class)
        entry = results["datasets"].setdefault(ds, {"recipes": {}})
        entry["setup_seconds"] = float((proj / "setup_seconds.txt").read_text())
        if ds == "digits":
            entry["note"] = (
                f"scikit-learn digits, {args.digits_per_class} per class, 8x8 upscaled to 32x32"
            )
        for name in args.recipes.split(","):
            print(f"{ds} / {name} ...", flush=True)
            entry["recipes"][name] = measure(proj, env, RECIPES[name])
            g = entry["recipes"][name]["gain"]
            print(f"  {g['summary']} ({entry['recipes'][name]['stage_seconds']} s)", flush=True)
            save_results(results)
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
