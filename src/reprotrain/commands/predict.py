"""``python -m reprotrain predict MODEL PATH...``: classify image files and folders.

MODEL is a ``.keras`` file or a registry URI (``models:/NAME@champion``,
``models:/NAME/3``), resolved to a local file by :func:`model_file` (through
``reprotrain.tracking.registry`` for a URI). Its class names come from
:func:`reprotrain.commands.labels.class_names`, its normalisation settings from
:func:`reprotrain.commands.normalization.resolve_normalization`.
Folders are walked recursively in sorted order; files without an image extension inside
folders are skipped (and said so), while a file named explicitly is always tried.

Why errors are per file: one corrupt upload must not hide the predictions for the other
999 images. Every file that cannot be read or decoded appears in the output with an
``error`` and on stderr, and the exit code says whether anything failed:
0 all predicted, 1 some input failed (or there was none), 2 usage or model error.

Why ``reprotrain.data.images.model_pixels``: training images went through prepare (PIL
decode, EXIF orientation, CMYK/16-bit/palette/alpha → 8-bit RGB, downscale to
``prepare.max_side``, JPEG re-encode) before the pipeline's decode and resize. Serving must
apply the same steps, with the training data's ``max_side`` and ``jpeg_quality`` (read from
``stats.json``, see ``commands.normalization``), or the same photo gets other pixels
(and a rotated phone photo is seen sideways). A file that cannot be used is reported with
the reason prepare would have quarantined it for.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import io
import json
import logging
import os
import sys
import zipfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reprotrain.commands import labels as class_labels
from reprotrain.commands.normalization import Normalization, resolve_normalization
from reprotrain.data import images
from reprotrain.errors import ModelError

logger = logging.getLogger(__name__)

#: Extensions picked up when walking a folder (formats prepare accepts).
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".mpo"}
)
#: Exit codes.
EXIT_OK, EXIT_FAILED_INPUT, EXIT_USAGE = 0, 1, 2
REGISTRY_PREFIXES = ("models:/", "runs:/")


@dataclass
class Inputs:
    """What the PATH arguments expand to: files to try (in order), and the rest."""

    files: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def collect_inputs(args: Sequence[str | Path]) -> Inputs:
    """Expand files and folders (recursively, sorted); duplicates are kept once."""
    out = Inputs()
    seen: set[str] = set()

    def add(path: Path) -> None:
        key = str(path)
        if key not in seen:
            seen.add(key)
            out.files.append(key)

    for arg in args:
        p = Path(arg)
        if p.is_dir():
            for f in sorted(x for x in p.rglob("*") if x.is_file()):
                if f.suffix.lower() in IMAGE_EXTENSIONS:
                    add(f)
                else:
                    out.skipped.append(str(f))
        elif p.is_file():
            add(p)
        else:
            out.missing.append(str(p))
    return out


def model_file(spec: str, root: Path | None = None) -> Path:
    """A local ``.keras`` path for a file path or a registry URI."""
    if spec.startswith(REGISTRY_PREFIXES):
        from reprotrain.tracking import registry  # MLflow only for a registry URI

        return Path(registry.resolve_model(spec, root=root or Path.cwd()))
    path = Path(spec)
    if not path.is_file():
        raise ModelError(
            f"model not found: {spec} (give a .keras file, or models:/NAME@alias or "
            "models:/NAME/VERSION from the MLflow registry)"
        )
    return path


#: Which module predicts for a model of each non-image kind (``main(argv)``).
KIND_COMMANDS = {"table": "reprotrain.tables.predict", "series": "reprotrain.series.predict"}


def model_kind(path: Path) -> str:
    """``images``, ``table`` or ``series``: the kind a ``.keras`` model was trained for, read
    from the model's name in the archive's ``config.json`` (the table and series stages name
    their models ``table_*`` and ``series_*``). Read without TensorFlow, because the kind
    decides which command parses the arguments; anything unreadable is left to the image
    command, whose model loading says what is wrong."""
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return "images"
    name = str((config.get("config") or {}).get("name", "")) if isinstance(config, dict) else ""
    return next((kind for kind in KIND_COMMANDS if name.startswith(kind)), "images")


def _kind_command(argv: Sequence[str]) -> str | None:
    """The module that predicts for MODEL (``argv[0]``) when it is not an image model."""
    if not argv or argv[0].startswith("-"):
        return None
    try:
        kind = model_kind(model_file(argv[0]))
    except ModelError:
        return None  # the image command reports the missing model with its usage
    return KIND_COMMANDS.get(kind)


def _pixels(path: str, size: int, norm: Normalization) -> Any:
    """The model's input for one file, or the reason it cannot be used (a str)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return f"cannot read the file ({exc.strerror})"
    result = images.model_pixels(data, size, norm.max_side, norm.jpeg_quality)
    return result.reason if isinstance(result, images.Rejected) else result


def predict_files(
    model: Any,
    files: Sequence[str],
    labels: Sequence[str],
    *,
    batch_size: int,
    top_k: int,
    normalization: Normalization,
) -> list[dict[str, Any]]:
    """One result per file, in order: ``{path, label, confidence, top_k, error}``."""
    import numpy as np

    from reprotrain.evaluation import to_probabilities
    from reprotrain.models.loading import model_image_size
    from reprotrain.progress import progress

    size = model_image_size(model)
    k = max(1, min(top_k, len(labels)))
    out: list[dict[str, Any]] = []
    bar = progress(len(files), "predict")
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            decoded = list(pool.map(lambda f: _pixels(f, size, normalization), chunk))
            good = [i for i, px in enumerate(decoded) if not isinstance(px, str)]
            probs: dict[int, Any] = {}
            if good:
                batch = np.stack([decoded[i] for i in good]).astype(np.float32)
                probs = dict(zip(good, to_probabilities(model(batch, training=False)), strict=True))
            for i, (f, px) in enumerate(zip(chunk, decoded, strict=True)):
                if isinstance(px, str):
                    out.append({"path": f, "error": px})
                    continue
                p = probs[i]
                order = np.argsort(-p, kind="stable")[:k]
                out.append(
                    {
                        "path": f,
                        "label": labels[int(order[0])],
                        "confidence": round(float(p[order[0]]), 6),
                        "top_k": [
                            {"label": labels[int(c)], "probability": round(float(p[c]), 6)}
                            for c in order
                        ],
                        "error": None,
                    }
                )
            bar.update(len(chunk))
    bar.close()
    return out


def format_json(results: Sequence[dict[str, Any]]) -> str:
    return json.dumps(list(results), indent=2) + "\n"


def format_csv(results: Sequence[dict[str, Any]], top_k: int) -> str:
    """``path,label,confidence,label_1,prob_1,...,label_K,prob_K,error``."""
    buf = io.StringIO()
    header = ["path", "label", "confidence"]
    for r in range(1, top_k + 1):
        header += [f"label_{r}", f"prob_{r}"]
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*header, "error"])
    for res in results:
        row = [res["path"], res.get("label", ""), res.get("confidence", "")]
        ranked = res.get("top_k") or []
        for r in range(top_k):
            row += [ranked[r]["label"], ranked[r]["probability"]] if r < len(ranked) else ["", ""]
        writer.writerow([*row, res.get("error") or ""])
    return buf.getvalue()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reprotrain predict",
        description="Classify image files and folders with a trained reprotrain model.",
        epilog="exit codes: 0 all predicted, 1 some input failed, 2 usage or model error",
    )
    parser.add_argument("model", help=".keras file, or models:/NAME@alias, models:/NAME/VERSION")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    parser.add_argument("--top-k", type=_positive, default=3, help="classes per image (3)")
    parser.add_argument("--format", choices=("json", "csv"), default="json", help="output")
    parser.add_argument("--batch-size", type=_positive, default=32, help="images per batch")
    parser.add_argument(
        "--labels",
        type=Path,
        default=None,
        help="labels.json of the training data (default: the registry's, next to the model, "
        "else data/prepared/labels.json if dvc.lock shows the model was trained on it)",
    )
    parser.add_argument(
        "--max-side",
        type=_max_side,
        default="keep",
        help="prepare.max_side of the training data, or 'none' (default: from stats.json "
        "next to the model, else data/prepared/stats.json, else params.yaml)",
    )
    parser.add_argument(
        "--jpeg-quality",
        type=_positive,
        default=None,
        help="prepare.jpeg_quality of the training data (default: as --max-side)",
    )
    return parser


def _max_side(value: str) -> int | str | None:
    """An int, ``none`` (keep the full size) or ``keep`` (the default: as recorded)."""
    if value.lower() in ("keep", "none", "null"):
        return "keep" if value.lower() == "keep" else None
    return _positive(value)


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value} must be ≥ 1")
    return n


def main(argv: Sequence[str] | None = None) -> int:
    """Predict and write results to stdout; returns the exit code (see module doc). A table
    or series model is handed to its kind's command (rows or a history CSV in)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if (module := _kind_command(argv)) is not None:
        return int(importlib.import_module(module).main(argv))
    args = build_parser().parse_args(argv)
    from reprotrain.models.loading import load_model  # TensorFlow: only once args are valid

    model_path = model_file(args.model)
    model = load_model(model_path, hint="pass a .keras model saved by reprotrain")
    registered = None
    if args.model.startswith(REGISTRY_PREFIXES) and args.labels is None:
        from reprotrain.tracking import registry

        registered = registry.resolve_labels(args.model, root=Path.cwd())
    n_classes = int(model.output_shape[-1])
    labels = class_labels.class_names(args.labels, model_path, n_classes, registered)
    inputs = collect_inputs(args.paths)
    for path in inputs.skipped:
        logger.warning(
            "skipped %s: not an image file extension (%s)",
            path,
            ", ".join(sorted(IMAGE_EXTENSIONS)),
        )
    norm = resolve_normalization(args.max_side, args.jpeg_quality, model_path)
    logger.info(
        "normalising like the training data: max_side=%s, jpeg_quality=%d (from %s)",
        norm.max_side,
        norm.jpeg_quality,
        norm.source,
    )
    results = predict_files(
        model,
        inputs.files,
        labels,
        batch_size=args.batch_size,
        top_k=args.top_k,
        normalization=norm,
    )
    results += [{"path": p, "error": "no such file or directory"} for p in inputs.missing]
    failed = [r for r in results if r.get("error")]
    for r in failed:
        logger.error("%s: %s", r["path"], r["error"])
    k = max(1, min(args.top_k, len(labels)))
    sys.stdout.write(format_json(results) if args.format == "json" else format_csv(results, k))
    sys.stdout.flush()
    if not results:
        logger.error("no image files found in %s", ", ".join(map(str, args.paths)))
        return EXIT_FAILED_INPUT
    logger.info("predicted %d file(s), %d failed", len(results) - len(failed), len(failed))
    return EXIT_FAILED_INPUT if failed else EXIT_OK
