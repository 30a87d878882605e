"""The benchmark tables of the table and series kinds, the redesign's before/after and
the stage process's exit (``docs/benchmarks.md``; the page's other tables are in
``benchmarks/report.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

try:
    from benchmarks.report_format import _num, _source, markdown_table
except ModuleNotFoundError:  # run as a script: python benchmarks/report.py
    from report_format import _num, _source, markdown_table  # type: ignore[no-redef]


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
        + _rounds_line(speed)
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


def _rounds_line(speed: Mapping[str, Any]) -> str:
    """The spread behind the series ratio: each round's ratio and the CPU-time ratio."""
    rounds = speed.get("ratios_by_round")
    if not rounds:
        return ""
    return (
        f"\n\nThe ratio is the median of {len(rounds)} interleaved rounds' ratios "
        f"({', '.join(f'{r:.2f}' for r in rounds)}); by CPU time of the process it is "
        f"{_num(speed.get('pipeline_vs_plain_cpu'), 3)}. Writing one epoch's backup "
        f"(weights and optimizer state) takes "
        f"{_num((speed.get('backup_write_ms') or {}).get('keras_save_weights'), 1)} ms."
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


def process_exit(data: Mapping[str, Any]) -> str:
    """A stage process's end (``benchmarks/process_exit.py``): ``cli.exit_process`` (the
    ``gc.freeze()`` seam) against a plain ``sys.exit``."""
    medians = data.get("median_s", {})
    rows = [
        ["plain `sys.exit`", _num(medians.get("sys_exit"), 2), "1"],
        [
            "`cli.exit_process` (`gc.freeze()`, then `sys.exit`)",
            _num(medians.get("exit_process"), 2),
            _num(data.get("exit_process_vs_sys_exit"), 3),
        ],
    ]
    return (
        f"Seconds from the end of a stage-like process's work to its end, median of "
        f"{data.get('rounds')} alternating rounds each:\n\n"
        + markdown_table(["how the process ends", "seconds", "ratio"], rows)
        + "\n\n"
        + _source("process_exit", data)
    )


def export_overlap(data: Mapping[str, Any]) -> str:
    """The image export stage overlapped (``ModelExport``) and in a row
    (``benchmarks/export_overlap.py``)."""
    medians, rounds = data.get("median_s", {}), data.get("seconds", {})
    rows = [
        [
            "in a row (data loaded, then `export_and_verify`)",
            _num(medians.get("sequential"), 1),
            ", ".join(f"{t:.1f}" for t in rounds.get("sequential", [])),
            "1",
        ],
        [
            "overlapped (`ModelExport` entered first, as the stage runs)",
            _num(medians.get("overlapped"), 1),
            ", ".join(f"{t:.1f}" for t in rounds.get("overlapped", [])),
            _num(data.get("overlapped_vs_sequential"), 3),
        ],
    ]
    return (
        f"The export stage's wall seconds, median of {data.get('rounds')} alternating rounds:"
        "\n\n"
        + markdown_table(["export stage", "median s", "rounds s", "ratio"], rows)
        + "\n\n"
        + _source("export_overlap", data)
    )
