"""``python -m reprotrain predict MODEL rows.csv``: classify table rows (CSV or Parquet with
the training data's columns; a label column and any other extra column are ignored), or one
text with ``--text "..."``.

``commands/predict.py`` hands a model whose Keras name starts with ``table`` to
:func:`main`, with its argv (MODEL first). Every row is answered as the served model answers
it (:func:`reprotrain.tables.serving.predict_rows`: the same cell conversion and model
call), so the numbers equal the server's and ``plots/predictions.csv``'s. A row that cannot
be used gets its ``error``; the others are predicted. Exit codes as the image predict:
0 all predicted, 1 some input failed (or there was none), 2 usage or model error.

Where the input columns and class names come from: ``--labels`` when given; for a registry
URI, the registered model's own ``labels.json`` and ``MLmodel`` (``model_config.inputs``);
for a local ``.keras``, the project's ``data/table/prepared/schema.json``.
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

from reprotrain.data import decimal_comma, row_reader
from reprotrain.errors import DataError, ModelError, ReprotrainError
from reprotrain.tables import reading
from reprotrain.tables.features import InputSpec

logger = logging.getLogger(__name__)

PREPARED = Path("data/table/prepared")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reprotrain predict",
        description="Classify table rows with a trained reprotrain table model.",
        epilog="exit codes: 0 all predicted, 1 some input failed, 2 usage or model error",
    )
    parser.add_argument("model", help=".keras file, or models:/NAME@alias, models:/NAME/VERSION")
    parser.add_argument("paths", nargs="*", metavar="PATH", help="CSV or Parquet files of rows")
    parser.add_argument("--text", action="append", default=[], help="one text (a text model)")
    parser.add_argument("--format", choices=("json", "csv"), default="json", help="output")
    parser.add_argument("--batch-size", type=_positive, default=1024, help="rows per model call")
    parser.add_argument(
        "--labels",
        type=Path,
        default=None,
        help="labels.json or schema.json of the training data (default: the registered "
        "model's, else data/table/prepared/schema.json)",
    )
    return parser


def _registered(keras_path: Path) -> tuple[list[str] | None, InputSpec | None]:
    """Labels and inputs logged with a registered table model (next to its ``.keras``)."""
    import yaml

    labels = spec = None
    for folder in (keras_path.parent, *keras_path.parents[:3]):
        if labels is None and (folder / "labels.json").is_file():
            labels = [str(x) for x in json.loads((folder / "labels.json").read_text())]
        mlmodel = folder / "MLmodel"
        if spec is None and mlmodel.is_file():
            config = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors", {})
            inputs = (config.get("python_function") or {}).get("config", {}).get("inputs")
            if inputs:
                spec = InputSpec.from_dict(inputs)
    return labels, spec


def _from_schema(path: Path) -> tuple[list[str] | None, InputSpec | None]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, list):  # labels.json
        return [str(x) for x in data], None
    return [str(x) for x in data.get("labels", [])], InputSpec.from_dict(data)


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value} must be ≥ 1")
    return n


def labels_and_inputs(model_arg: str, keras_path: Path, labels_file: Path | None) -> tuple:
    """Class names and input columns for the model (see the module docstring)."""
    labels, spec = _registered(keras_path) if model_arg.startswith("models:/") else (None, None)
    for candidate in (labels_file, PREPARED / "schema.json"):
        if candidate is not None and (labels is None or spec is None) and candidate.is_file():
            more_labels, more_spec = _from_schema(candidate)
            labels, spec = labels or more_labels, spec or more_spec
    if not labels or spec is None:
        raise ModelError(
            f"cannot tell the input columns and classes of {model_arg}: pass --labels "
            "path/to/schema.json (data/table/prepared/schema.json of its training data)"
        )
    return labels, spec


def _read_text_table(path: Path, spec: InputSpec) -> Any:
    """A CSV/TSV file of rows, split as prepare splits it (``row_reader.delimiter``: a
    ``;``, tab or pipe file too). In a file not separated by commas, a numeric column that
    prepare's rule says is written with decimal commas (``decimal_comma.CommaTally``) is read as
    numbers, so ``1,5`` is predicted as 1.5 as it was trained on."""
    import pandas as pd

    sep = row_reader.delimiter(path)
    if sep == ",":
        return pd.read_csv(path, sep=sep, keep_default_na=True)
    frame = pd.read_csv(path, sep=sep, keep_default_na=True, dtype=str)
    for column in spec.numeric:
        if column in frame:
            frame[column] = _decimal_commas(frame[column])
    return frame


def _decimal_commas(cells: Any) -> Any:
    """``cells`` with ``1,5`` read as 1.5 when the column is a decimal-comma one; a value
    that is not a number stays as written (its row gets its error)."""
    tally = decimal_comma.CommaTally()
    tally.add([t for t in map(reading.text_value, cells) if t is not None])
    if not tally.decimal_comma:
        return cells

    def value(cell: Any) -> Any:
        try:
            return reading.comma_number_value(cell)
        except reading.NotANumber:
            return cell

    return cells.map(value)


def read_rows(paths: Sequence[str], texts: Sequence[str], spec: InputSpec) -> Any:
    """The rows to predict: every file's rows in order (with ``source`` and ``row``), then
    each ``--text``."""
    import pandas as pd

    frames = []
    for name in paths:
        path = Path(name)
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        try:
            if path.suffix.lower() in (".parquet", ".pq"):
                frame = pd.read_parquet(path)
            else:
                frame = _read_text_table(path, spec)
        except Exception as exc:
            raise DataError(
                f"{path}: cannot read it as a table ({type(exc).__name__}: {exc})"
            ) from exc
        frame = frame.reset_index(drop=True)
        frame.insert(0, "__row__", range(2, len(frame) + 2))
        frame.insert(0, "__source__", str(path))
        frames.append(frame)
    if texts:
        if len(spec.columns) != 1 or not spec.text:
            raise DataError(
                "--text is for a model of one text column; this one takes "
                + ", ".join(spec.columns)
            )
        frames.append(
            pd.DataFrame(
                {
                    "__source__": "--text",
                    "__row__": range(1, len(texts) + 1),
                    spec.text[0]: list(texts),
                }
            )
        )
    if not frames:
        raise DataError("nothing to predict: give CSV/Parquet files or --text")
    return pd.concat(frames, ignore_index=True)


def dataframe_rows(frame: Any) -> Any:
    """A caller's DataFrame as :func:`read_rows` frames its files' rows (source
    ``dataframe``, ``row`` the frame's index)."""
    rows = frame.reset_index(drop=True)
    rows.insert(0, "__row__", list(frame.index))
    rows.insert(0, "__source__", "dataframe")
    return rows


def predict_frame(
    keras_path: Path, labels: Sequence[str], spec: InputSpec, frame: Any, batch_size: int
) -> list[dict[str, Any]]:
    """Each row's answer (``source``, ``row``, then the served model's label, confidence,
    probabilities and error) for the rows :func:`read_rows` or :func:`dataframe_rows` made;
    a ModelError if ``keras_path`` is no table model."""
    from reprotrain.tables import inference
    from reprotrain.tables.serving import predict_rows

    model = inference.load(keras_path, num_classes=len(labels), hint="pass a table model")
    answers = predict_rows(model, list(labels), spec, frame, batch_size)
    return [
        {"source": src, "row": row.item() if hasattr(row, "item") else row, **answer}
        for src, row, answer in zip(frame["__source__"], frame["__row__"], answers, strict=True)
    ]


def _csv(results: Sequence[dict[str, Any]], labels: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(
        ["source", "row", "label", "confidence", *(f"prob_{c}" for c in labels), "error"]
    )
    for r in results:
        probs = r.get("probabilities") or {}
        writer.writerow(
            [
                r["source"],
                r["row"],
                r.get("label") or "",
                "" if r.get("confidence") is None else r["confidence"],
                *(probs.get(c, "") for c in labels),
                r.get("error") or "",
            ]
        )
    return buf.getvalue()


def main(argv: Sequence[str] | None = None) -> int:
    """Predict the rows and write the answers to stdout (see the module docstring)."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    from reprotrain.commands.predict import model_file

    try:
        keras_path = model_file(args.model)
        labels, spec = labels_and_inputs(args.model, keras_path, args.labels)
        frame = read_rows(args.paths, args.text, spec)
    except ReprotrainError as exc:
        logger.error("%s", exc)
        return 2
    try:
        results = predict_frame(keras_path, labels, spec, frame, args.batch_size)
    except ReprotrainError as exc:
        logger.error("%s", exc)
        return 2
    failed = [r for r in results if r["error"]]
    for r in failed:
        logger.error("%s:%s: %s", r["source"], r["row"], r["error"])
    out = json.dumps(results, indent=2) + "\n" if args.format == "json" else _csv(results, labels)
    sys.stdout.write(out)
    return 1 if failed or not results else 0
