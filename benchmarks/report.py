"""Render the benchmark tables of ``docs/benchmarks.md`` from ``benchmarks/results/*.json``.

Why generated: hand-copied numbers drift from the results they came from, and a table that
says which file and which run it shows can be checked. Each table sits between
``<!-- table:NAME -->`` and ``<!-- /table:NAME -->`` markers; everything else in the page is
prose that states no measured number of its own. ``tests/benchmarks/test_report.py`` fails
when the committed page differs from what this script renders.

    python benchmarks/report.py            # rewrite docs/benchmarks.md in place
    python benchmarks/report.py --check    # exit 1 if it is stale
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

try:
    from benchmarks import report_kinds
    from benchmarks.report_format import _get, _num, _source, markdown_table
except ModuleNotFoundError:  # run as a script: python benchmarks/report.py
    import report_kinds  # type: ignore[no-redef]
    from report_format import _get, _num, _source, markdown_table  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PAGE = ROOT / "docs" / "benchmarks.md"

Table = list[list[str]]


def pipeline(data: Mapping[str, Any]) -> str:
    rounds = data.get("rounds", [])
    head = ["round", "script", "script on BFC", "`dvc repro --force`", "× script", "× BFC script"]
    head += ["five core stages × script", "test accuracy (pipeline / script)"]
    rows = []
    for i, r in enumerate(rounds, 1):
        acc = r.get("accuracy", {})
        rows.append(
            [
                i,
                _num(r.get("script_s"), 1, " s"),
                _num(r.get("script_bfc_s"), 1, " s"),
                _num(r.get("pipeline_s"), 1, " s"),
                _num(r.get("ratio"), 3),
                _num(r.get("ratio_vs_script_bfc"), 3),
                _num(r.get("core_ratio"), 3),
                f"{acc.get('pipeline_test', 0):.3f} / {acc.get('script_test', 0):.3f}",
            ]
        )
    out = [markdown_table(head, rows)]
    noop = data.get("noop_repro_s") or []
    if noop:
        out.append(f"\nNo-op `dvc repro`: median {statistics.median(noop):.1f} s of {len(noop)}.")
    if rounds:
        out.append("\n" + _stage_table(rounds[-1].get("stages", {})))
    out.append("\n" + _source("pipeline", data))
    return "\n".join(out)


def _stage_table(stages: Mapping[str, Mapping[str, float]]) -> str:
    parts = ["imports", "mlflow", "data", "model", "train", "score", "export", "logging", "other"]
    rows = [
        [f"{name} (last round)", _num(s.get("total"), 1, " s")] + [_num(s.get(p), 1) for p in parts]
        for name, s in stages.items()
    ]
    return markdown_table(["stage", "total", *parts], rows)


def input_pipeline(data: Mapping[str, Any]) -> str:
    speeds = data.get("images_per_s", {})
    base = speeds.get("directory_loader")
    labels = {
        "directory_loader": "`keras.utils.image_dataset_from_directory` (decodes every epoch)",
        "cached_no_augmentation": "reprotrain, from the cache, no augmentation",
        "cached_per_image_augmentation": "reprotrain, per-image augmentation (the old way)",
        "cached_batch_augmentation": "reprotrain, batch augmentation, CPU (`placement: input`)",
        "cached_batch_geometric_only": "... flip + rotation + zoom only",
        "cached_batch_photometric_only": "... flip + brightness + contrast only",
        "cached_for_augmentation_in_step": "reprotrain, host side of `placement: model`",
    }
    rows = [
        [labels.get(k, k), _num(v, 1), _num(v / base if base else None, 2)]
        for k, v in speeds.items()
    ]
    table = markdown_table(["loader", "images/s", "× directory loader"], rows)
    return table + "\n\n" + _source("input_pipeline", data)


def training(data: Mapping[str, Any]) -> str:
    summary = data.get("summary", {})
    targets = summary.get("targets", {})
    rows = [
        [
            "images/s through TFRecords ÷ the same images as in-memory tensors",
            _num(summary.get("pipeline_vs_in_memory"), 2),
            targets.get("pipeline_vs_in_memory"),
        ],
        [
            "head epoch without ÷ with the feature cache",
            _num(summary.get("feature_cache_speedup"), 1, "×"),
            targets.get("feature_cache_speedup"),
        ],
        [
            "... over 10 epochs, extraction included",
            _num(summary.get("feature_cache_speedup_incl_extraction_10_epochs"), 2, "×"),
            None,
        ],
    ]
    for stage, row in data.get("stages", {}).items():
        rows.append([f"{stage}: wall time / peak RSS", _stage_cost(row), None])
    table = markdown_table(["measure", "result", "target"], rows)
    return table + "\n\n" + _source("training", data)


def _stage_cost(row: Mapping[str, Any]) -> str:
    return f"{row.get('seconds', 0):.1f} s / {row.get('peak_rss_mb', 0):.0f} MB"


def scale(data: Mapping[str, Any]) -> str:
    n = _get(data, "generation.images")
    runs = _get(data, "prepare.runs") or {}
    rows: Table = []
    for key, run in runs.items():
        rows.append(
            [
                f"prepare, {key.replace('_', ' ')}",
                _num(run.get("images_per_s"), 1, " images/s"),
                _num(run.get("tree_peak_rss_mib"), 0, " MiB tree peak RSS"),
            ]
        )
    for key, label, unit in (
        ("fetch.first.seconds", "`fetch` of a folder, first copy", " s"),
        ("fetch.unchanged.seconds", "`fetch`, nothing changed", " s"),
        ("dvc.first_repro_fetch_seconds", "first `dvc repro fetch` (copy + DVC hashing)", " s"),
        (
            "training_input.cached_images_per_s",
            "training input, augmented, after epoch 1",
            " images/s",
        ),
    ):
        if (value := _get(data, key)) is not None:
            rows.append([label, _num(value, 1, unit), None])
    for key, label in (
        ("dvc.noop_repro_prepare_seconds", "no-op `dvc repro prepare`, median"),
        ("dvc.status_seconds", "`dvc status`, median"),
    ):
        if values := _get(data, key):
            rows.append([label, f"{statistics.median(values):.1f} s", None])
    scaling = _get(data, "decode_scaling.runs") or []
    by_workers: dict[int, list[float]] = {}
    for run in scaling:
        by_workers.setdefault(run["workers"], []).append(run["images_per_s"])
    if 1 in by_workers and len(by_workers) > 1:
        most = max(by_workers)
        ratio = statistics.median(by_workers[most]) / statistics.median(by_workers[1])
        rows.append([f"decode speed-up, {most} workers ÷ 1 (median)", f"{ratio:.2f}×", None])
    table = markdown_table(["measure", f"{n} images", ""], rows)
    return table + "\n\n" + _source("scale", data)


def backbones(data: Mapping[str, Any]) -> str:
    rows = [
        [
            f"`{r['backbone']}`",
            r.get("image_size"),
            _num(r.get("images_per_second"), 1),
            f"{r.get('parameters', 0) / 1e6:.1f} M",
            r.get("base_layers"),
        ]
        for r in data.get("results", [])
    ]
    head = ["backbone", "input size", "images/s", "parameters", "base layers"]
    return markdown_table(head, rows) + "\n\n" + _source("backbones", data)


def system_metrics(data: Mapping[str, Any]) -> str:
    rows = [
        ["wall time on ÷ off (median)", _num(data.get("ratio_on_over_off"), 2)],
        ["CPU time on ÷ off (median)", _num(data.get("cpu_ratio_on_over_off"), 2)],
        ["runs each way", data.get("repeats")],
        ["sampling interval", _num(data.get("interval_s"), 0, " s")],
    ]
    return markdown_table(["measure", "result"], rows) + "\n\n" + _source("system_metrics", data)


def recipes(data: Mapping[str, Any]) -> str:
    """Fine-tuning recipes: the same table as docs/finetuning.md (``benchmarks/recipes.py``)."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.recipes import table

    return table(data) + "\n\n" + _source("recipes", data)


#: Result file name (without ``.json``) → its renderer. A new benchmark adds one line here.


RENDERERS: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "pipeline": pipeline,
    "input_pipeline": input_pipeline,
    "training": training,
    "scale": scale,
    "backbones": backbones,
    "system_metrics": system_metrics,
    "recipes": recipes,
    "table_prepare": report_kinds.table_prepare,
    "table_training": report_kinds.table_training,
    "table_pipeline": report_kinds.table_pipeline,
    "series_training": report_kinds.series_training,
    "redesign": report_kinds.redesign,
    "process_exit": report_kinds.process_exit,
    "export_overlap": report_kinds.export_overlap,
}


def render_tables(results: Path = RESULTS) -> dict[str, str]:
    """Every table whose results file exists, by name."""
    tables = {}
    for name, render in RENDERERS.items():
        path = results / f"{name}.json"
        if path.exists():
            tables[name] = render(json.loads(path.read_text()))
    return tables


def fill(page: str, tables: Mapping[str, str]) -> str:
    """``page`` with the text between each table's markers replaced by the rendered table."""
    for name, table in tables.items():
        pattern = re.compile(
            rf"(<!-- table:{re.escape(name)} -->\n).*?(<!-- /table:{re.escape(name)} -->)", re.S
        )
        page = pattern.sub(lambda m, t=table: m.group(1) + t + "\n" + m.group(2), page)
    return page


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is stale")
    args = parser.parse_args(argv)
    current = PAGE.read_text()
    wanted = fill(current, render_tables())
    if args.check:
        if wanted != current:
            print(f"{PAGE.relative_to(ROOT)} is stale: run python benchmarks/report.py")
            return 1
        return 0
    PAGE.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
