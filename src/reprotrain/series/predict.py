"""``python -m reprotrain predict MODEL history.csv``: forecast from a history table.

``reprotrain.commands.predict`` hands a model whose Keras name starts with ``series`` here
(``argv`` as given, the model first). MODEL is a ``.keras`` file (its forecast config is the
``model.forecast.json`` train wrote beside it) or a registry URI (``models:/NAME@champion``;
the config is the ``forecast.json`` logged with it). The history is a table file read as prepare
reads its source (CSV, TSV, a ``;``/tab/pipe file with decimal commas, Parquet) with the time
column, the target and the covariates, as in the training source; its last ``window`` rows
are used. The forecast (step, time, forecast, ``lower_<L>``/``upper_<L>`` per interval
level) goes to stdout or ``--output``, as CSV or JSON (``--format``).

Exit codes, as the image command's: 0 forecast written, 1 the history cannot be used (the
reason on stderr, one line), 2 usage or model error.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reprotrain.errors import DataError, ModelError, ReprotrainError

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED_INPUT, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m reprotrain predict",
        description="Forecast the next horizon steps from a history CSV (a series model).",
    )
    p.add_argument("model", help="a series .keras file or models:/NAME@alias | models:/NAME/V")
    p.add_argument("history", help="CSV: the time column, the target, the covariates")
    p.add_argument("--format", choices=("csv", "json"), default="csv", help="output format")
    p.add_argument("--output", "-o", help="write here instead of stdout")
    return p


def find_config(model_path: Path) -> Path:
    """The forecast config of a local model file (beside it) or of a downloaded registry
    model (``forecast.json`` among its artifacts)."""
    from reprotrain.series.serving import CONFIG_ARTIFACT, config_path

    for candidate in (config_path(model_path), model_path.parent / CONFIG_ARTIFACT):
        if candidate.is_file():
            return candidate
    raise ModelError(
        f"no forecast config beside {model_path} ({config_path(model_path).name} or "
        f"{CONFIG_ARTIFACT}): the train stage writes it; rerun it (dvc repro) or pass the "
        "registered model (models:/NAME@champion)"
    )


def read_history(path: str | Path) -> Any:
    """The history file as a table, read as prepare reads its source
    (:func:`reprotrain.series.frame.read_source`): CSV, TSV, a ``;``/tab/pipe file with
    decimal commas, or Parquet. A row that cannot be split is a DataError naming its line:
    one history is one forecast, so no row of it is dropped."""
    from reprotrain.series.frame import read_source

    file = Path(path)
    if not file.is_file():
        raise DataError(f"history file not found: {path}")
    try:
        source = read_source(file)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable table ({exc})") from None
    if source.rejected:
        bad = source.rejected[0]
        raise DataError(f"{path}:{bad.line}: {bad.reason}; fix the row and run again")
    return source.frame.reset_index(drop=True)


def render(rows: list[dict[str, Any]], fmt: str, model: str) -> str:
    """The forecast rows as CSV or JSON text."""
    if fmt == "json":
        return json.dumps({"model": model, "forecast": rows}, indent=2) + "\n"
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def forecast(model_path: Path, history: str | Any) -> tuple[list[dict[str, Any]], str]:
    """The forecast rows for a history (a file's path, or a DataFrame of its rows), and the
    model's name."""
    import numpy as np

    from reprotrain.series import model as series_model
    from reprotrain.series.serving import ForecastConfig, forecast_rows, history_window

    try:
        cfg = ForecastConfig.read(find_config(model_path))
    except DataError as exc:  # the model's own file: a model error, not bad input
        raise ModelError(str(exc)) from None
    frame = read_history(history) if isinstance(history, str | Path) else history
    x, last = history_window(frame, cfg)  # before loading TensorFlow: bad input fails fast
    model = series_model.load(model_path, hint="pass a series model saved by reprotrain")
    series_model.check_shape(model, cfg.window, len(cfg.channels), cfg.horizon)
    f = np.asarray(model(x, training=False), np.float64)[0]
    return forecast_rows(f, last, cfg), model.name


def main(argv: Sequence[str] | None = None) -> int:
    """Forecast and write it; the exit code (module docstring)."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        from reprotrain.commands.predict import model_file

        rows, name = forecast(model_file(args.model), args.history)
    except DataError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_FAILED_INPUT
    except ReprotrainError as exc:  # the model (or the registry holding it)
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_USAGE
    text = render(rows, args.format, name)
    if args.output:
        from reprotrain.fsio import atomic_write_text

        atomic_write_text(args.output, text)
    else:
        sys.stdout.write(text)
    return EXIT_OK
