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
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PAGE = ROOT / "docs" / "benchmarks.md"

Table = list[list[str]]


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table; ``None`` cells show as an en dash."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join("–" if c is None else str(c) for c in row) + " |")
    return "\n".join(lines)


def _get(data: Mapping[str, Any], dotted: str) -> Any:
    """``data["a"]["b"]`` for ``"a.b"``; None where any key is missing."""
    node: Any = data
    for key in dotted.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def _num(value: Any, digits: int = 2, suffix: str = "") -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:.{digits}f}{suffix}" if isinstance(value, float) else f"{value}{suffix}"


def _source(name: str, data: Mapping[str, Any]) -> str:
    """The line under each table: the file, the machine and the date it records."""
    machine = data.get("machine", {})
    cpus = machine.get("cpus") or machine.get("nproc")
    parts = [f"`benchmarks/results/{name}.json`"]
    if cpus:
        parts.append(f"{cpus} CPU cores")
    if date := data.get("date"):
        parts.append(str(date)[:10])
    return "Source: " + ", ".join(parts) + "."


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


def series_training(data: Mapping[str, Any]) -> str:
    """Series training (``benchmarks/series_training.py``): the pipeline's train stage vs the
    seed's plain Keras script, and the whole co2 ``dvc repro`` by stage."""
    speed = data.get("speed", {})
    plain, pipe = speed.get("plain_keras", {}), speed.get("pipeline", {})
    rows = [
        ["plain Keras (window arrays in memory)", _num(plain.get("windows_per_second"), 1), "1"],
        [
            "pipeline train stage (normalisation inside, backups, callbacks)",
            _num(pipe.get("windows_per_second"), 1),
            _num(speed.get("pipeline_vs_plain"), 3),
        ],
    ]
    whole = data.get("whole_run", {})
    stages = whole.get("stages_s", {})
    stage_rows = [[name, _num(seconds, 1)] for name, seconds in stages.items()]
    stage_rows.append(["**dvc repro, wall**", _num(whole.get("wall_s"), 1)])
    return (
        f"{speed.get('model')}, window {speed.get('window')}, horizon {speed.get('horizon')}, "
        f"{speed.get('train_windows')} train windows, {speed.get('epochs')} epochs, batch "
        f"{speed.get('batch_size')}, {speed.get('dataset')} (target ≥ {speed.get('target')}):"
        "\n\n"
        + markdown_table(["", "windows/s", "ratio"], rows)
        + f"\n\nThe whole pipeline on co2 with the default params and export.formats "
        f"[saved_model, tflite_float32] (target under "
        f"{whole.get('target_s')} s): {whole.get('epochs_run')} epochs run, test MASE "
        f"{_num(whole.get('mase'), 3)} (naive {_num(whole.get('naive_mase'), 3)}), interval "
        f"coverage {_num(whole.get('coverage_80'), 3)} (80%) and "
        f"{_num(whole.get('coverage_95'), 3)} (95%):\n\n"
        + markdown_table(["stage", "seconds"], stage_rows)
        + "\n\n"
        + _source("series_training", data)
    )


def table_prepare(data: Mapping[str, Any]) -> str:
    """Table prepare at two sizes (``benchmarks/table_prepare.py``): peak memory, rows/s."""
    runs = data.get("runs", [])
    rows = [
        [
            f"{r['rows_generated']:,}",
            _num(r.get("csv_mb"), 1, " MB"),
            _num(r.get("seconds"), 1, " s"),
            r.get("rows_per_second"),
            r.get("rows_per_cpu_second"),
            _num(r.get("peak_rss_mb"), 1, " MB"),
            _num(r.get("prepared_mb"), 1, " MB"),
        ]
        for r in runs
    ]
    head = ["rows", "CSV", "prepare", "rows/s", "rows per CPU s", "peak RSS", "TFRecords"]
    ratio = (
        f"Peak RSS {runs[-1]['rows_generated']:,} ÷ {runs[0]['rows_generated']:,} rows: "
        f"{_num(data.get('rss_ratio_large_over_small'), 2)} for "
        f"{_num(data.get('rows_ratio_large_over_small'), 1)}× the rows."
        if len(runs) > 1
        else ""
    )
    return markdown_table(head, rows) + "\n\n" + ratio + "\n\n" + _source("table_prepare", data)


def table_training(data: Mapping[str, Any]) -> str:
    """Table training (``benchmarks/table_training.py``): the pipeline's train stage vs the
    seed's plain Keras script, and the text encoders' test accuracy vs the baseline."""
    speed = data.get("speed", {})
    plain, pipe = speed.get("plain_keras", {}), speed.get("pipeline", {})
    head = ["", "examples/s", "ratio"]
    rows = [
        ["plain Keras (padded arrays in memory)", _num(plain.get("examples_per_second"), 1), "1"],
        [
            "pipeline train stage (raw columns in)",
            _num(pipe.get("examples_per_second"), 1),
            _num(speed.get("pipeline_vs_plain"), 3),
        ],
    ]
    acc = data.get("accuracy", {})
    topics, churn = acc.get("topics8", {}), acc.get("churn", {})
    encoders = ("bilstm", "gru", "average")
    acc_rows = [
        [
            "topics8",
            _num(topics.get("majority"), 3),
            _num(topics.get("baseline"), 3),
            *(_num(topics.get(e), 3) for e in encoders),
            topics.get("n_test"),
        ],
        [
            "churn (no text)",
            _num(churn.get("majority"), 3),
            _num(churn.get("baseline"), 3),
            None,
            None,
            _num(churn.get("network"), 3),
            churn.get("n_test"),
        ],
    ]
    seconds = topics.get("seconds_per_epoch", {})
    acc_head = ["set", "majority", "classical baseline", *encoders, "n test"]
    return (
        f"BiLSTM, {speed.get('epochs')} epochs, batch {speed.get('batch_size')}, "
        f"sequence length {speed.get('sequence_length')}, {speed.get('dataset')} "
        f"(target ≥ {speed.get('target')}):\n\n"
        + markdown_table(head, rows)
        + f"\n\nTest accuracy after {acc.get('epochs')} epochs (early stopping on val_loss); "
        + "seconds per epoch on topics8: "
        + ", ".join(f"{e} {_num(seconds.get(e), 1)}" for e in encoders)
        + f"; best text encoder: `{acc.get('best_text_encoder')}`:\n\n"
        + markdown_table(acc_head, acc_rows)
        + "\n\n"
        + _source("table_training", data)
    )


#: Result file name (without ``.json``) → its renderer. A new benchmark adds one line here.
def table_pipeline(data: Mapping[str, Any]) -> str:
    """The whole table pipeline (``benchmarks/table_pipeline.py``): ``dvc repro`` per
    dataset, by stage, against issue 24's 2-minute target."""
    runs = data.get("runs", {})
    stages = sorted({s for r in runs.values() for s in r.get("stages", {})}, key=_stage_order)
    rows = [
        [
            name,
            *(_num(r.get("stages", {}).get(s), 1) for s in stages),
            _num(r.get("total_s"), 1),
            _num(r.get("accuracy"), 3),
            _num(r.get("baseline_gain"), 3),
        ]
        for name, r in runs.items()
    ]
    header = ["dataset", *stages, "total s (target < 120)", "test accuracy", "gain over baseline"]
    return markdown_table(header, rows) + "\n\n" + _source("table_pipeline", data)


def redesign(data: Mapping[str, Any]) -> str:
    """Issue 22's before/after proof (``benchmarks/redesign.py``): the quick start on fresh
    clones of both commits, alternating, same recipe; timings, then which outputs differ."""
    commits = {side: str(c)[:7] for side, c in data.get("commits", {}).items()}
    runs = data.get("runs", [])
    setup = data.get("setup", {})
    head = ["run", "commit", "`make setup` s", "`make repro` s (set up)", "no-op `dvc repro` s"]
    head += ["load before → after"]
    rows = [
        [
            f"{r['side']} {r['round']}",
            commits.get(r["side"]),
            _num(setup.get(r["side"], {}).get("make_setup_s"), 1) if r["round"] == 1 else None,
            _num(r.get("repro_s"), 1),
            _num(r.get("noop_dvc_repro_s"), 1),
            f"{r['load_average_before'][0]:.1f} → {r['load_average_after'][0]:.1f}",
        ]
        for r in runs
    ]
    summary = data.get("summary", {})
    ratios = ", ".join(f"{x:.3f}" for x in summary.get("repro_ratio_after_vs_before", []))
    metrics = summary.get("metrics", {})
    ledger = summary.get("ledger", {})
    out = [markdown_table(head, rows)]
    out.append(
        f"\nAfter ÷ before, `make repro` by round: {ratios} (median "
        f"{_num(summary.get('repro_ratio_median'), 3)}, target {summary.get('target')}). "
        f"Metrics identical: {len(metrics.get('identical', []))} keys, different: "
        f"{len(metrics.get('different', {}))}; split ledger identical on the shared columns: "
        f"{_num(ledger.get('identical_on_shared_columns'))}. Params aligned to before's: "
        + (", ".join(f"`{k}`" for k in data.get("params_aligned", {})) or "none")
        + "."
    )
    outside = summary.get("outside_stages", {})
    if outside:
        medians = outside.get("median_outside_s", {})
        out.append(
            f"\nOutside the stages' own time (DVC, writing dvc.yaml, each stage process's exit), "
            f"median: before {_num(medians.get('before'), 1, ' s')}, after "
            f"{_num(medians.get('after'), 1, ' s')} (+{_num(outside.get('extra_s_after'), 1)} s, "
            f"{_num(100 * outside.get('extra_share_of_before_repro', 0), 1)}% of before's "
            "`make repro`); the stages' own totals, after ÷ before by round: "
            + ", ".join(f"{x:.3f}" for x in summary.get("stage_sum_ratio_after_vs_before", []))
            + "."
        )
    by_note: dict[str, list[str]] = {}
    for key, d in metrics.get("different", {}).items():
        by_note.setdefault(d.get("explained") or "**unexplained**", []).append(f"`{key}`")
    if by_note:
        diff_rows = [
            [
                len(keys),
                ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else ""),
                note,
            ]
            for note, keys in by_note.items()
        ]
        out.append("\n" + markdown_table(["keys", "metrics that differ", "why"], diff_rows))
    out.append("\n" + _source("redesign", data))
    return "\n".join(out)


def _stage_order(stage: str) -> int:
    order = ("fetch", "prepare", "train", "baseline", "export", "evaluate")
    return order.index(stage) if stage in order else len(order)


RENDERERS: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "pipeline": pipeline,
    "input_pipeline": input_pipeline,
    "training": training,
    "scale": scale,
    "backbones": backbones,
    "system_metrics": system_metrics,
    "recipes": recipes,
    "table_prepare": table_prepare,
    "table_training": table_training,
    "table_pipeline": table_pipeline,
    "series_training": series_training,
    "redesign": redesign,
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
