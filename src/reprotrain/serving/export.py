"""Export a trained ``.keras`` model to serving formats and check each one against it.

Formats: a TensorFlow SavedModel (TF Serving), TFLite float32, TFLite float16 (weights),
TFLite full-integer int8 with uint8 input (calibrated on a seeded sample of train images),
ONNX (``model.onnx``, run by ONNX Runtime) and an OpenVINO IR (``openvino/model.xml`` +
``model.bin``, run by OpenVINO Runtime). ONNX and OpenVINO are written by Keras' own
``model.export`` (which hands its traced endpoint to tf2onnx and to ``openvino.convert_model``):
the converters Keras maintains and tests, not a copy of them. Every model takes raw 0–255 RGB
pixels (preprocessing is inside the model), so all formats are fed the same pixels.

Why re-score every format: conversion is where silent damage happens (a quantised layer
whose activations saturate, an op lowered differently). Each format is run on the whole
test split and compared with the Keras model it came from: accuracy, *agreement* (share of
images with the same top-1 label), file size and batch-1 latency on this CPU. A format that
agrees too little, or loses too much accuracy, is kept on disk but marked ``shipped: false``
with the reason: a bad int8 conversion is a finding, not a pipeline failure. So is a
converter that raises, crashes its process or is not installed: the format's row says
"not shipped: " and the first line of the error, and the other formats go on.

TFLite models run in LiteRT (``ai_edge_litert``): ``tf.lite.Interpreter`` is deprecated in
TF 2.21 and warns so. The converter is still ``tf.lite.TFLiteConverter`` (TF ships no other).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reprotrain import fsio
from reprotrain.config import ExportConfig, PipelineConfig
from reprotrain.errors import ModelError
from reprotrain.fsio import TMP_MARK, atomic_path, atomic_write_bytes
from reprotrain.serving.runners import (
    OnnxClassifier,
    OpenVINOClassifier,
    Predictor,
    TFLiteClassifier,
    keras_predictor,
    median_latency_ms,
    predict_batched,
    saved_model_predictor,
)
from reprotrain.timing import timed

logger = logging.getLogger(__name__)

SAVED_MODEL = "saved_model"
TFLITE_KINDS = ("float32", "float16", "int8")
#: Formats Keras' ``model.export`` writes from the Keras model: format name → its ``format=``.
KERAS_FORMATS = {"onnx": "onnx", "openvino": "openvino"}
#: Format name → path under the export directory.
FILENAMES = {
    SAVED_MODEL: "saved_model",
    "tflite_float32": "model_float32.tflite",
    "tflite_float16": "model_float16.tflite",
    "tflite_int8": "model_int8.tflite",
    "onnx": "model.onnx",
    "openvino": "openvino",
}
#: Formats that are a directory (logged as their contents under ``export/<format>/``).
DIRECTORY_FORMATS = frozenset({SAVED_MODEL, "openvino"})
#: The OpenVINO IR's graph, in its directory beside the weights (``model.bin``).
OPENVINO_XML = "model.xml"
#: What to install when a format's converter or runtime is missing (docs/exports.md).
INSTALL_HINTS = {
    "onnx": "tf2onnx and onnxruntime are in the default install: rerun `make setup`",
    "openvino": "install the extra: `make setup EXTRAS=openvino`",
}

# --------------------------------------------------------------------------- data


def load_split(
    files: Sequence[Path | str],
    pipeline_cfg: PipelineConfig,
    *,
    image_size: int,
    batch_size: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """All images (float32 0..255) and labels of a split, in file order (the test set)."""
    from reprotrain.data.pipeline import make_dataset

    cfg = dataclasses.replace(pipeline_cfg, cache="none")  # read once: nothing to cache
    ds = make_dataset(
        files, cfg, training=False, image_size=image_size, batch_size=batch_size, seed=seed
    )
    images, labels = [], []
    for x, y in ds:
        images.append(x.numpy())
        labels.append(y.numpy())
    if not images:
        raise ModelError(f"no images in {len(files)} TFRecord shard(s): rerun prepare")
    return np.concatenate(images), np.concatenate(labels)


def calibration_images(
    files: Sequence[Path | str],
    pipeline_cfg: PipelineConfig,
    *,
    image_size: int,
    count: int,
    seed: int,
) -> np.ndarray:
    """A seeded sample of ``count`` train images (float32 0..255, not augmented).

    The training pipeline's seeded shuffle picks them, so the sample is the same on every
    run with the same seed and data, and only ``count`` images are decoded.
    """
    from reprotrain.data.pipeline import make_dataset

    cfg = dataclasses.replace(pipeline_cfg, cache="none")
    ds = make_dataset(
        files, cfg, training=True, augment=False, image_size=image_size, batch_size=1, seed=seed
    )
    sample = [x.numpy()[0] for x, _ in ds.take(count)]
    if not sample:
        raise ModelError("no train images for int8 calibration: rerun prepare")
    return np.stack(sample)


# --------------------------------------------------------------------------- atomic folders


def _old_path(target: Path) -> Path:
    """Where the two-rename swap parks the old tree (a fixed name, so the next writer finds
    it: not a ``.tmp-`` temporary that a clean-up may delete)."""
    return target.with_name(f".{target.name}.old")


def _fsync_tree(directory: Path) -> None:
    """Flush every file of a tree and the tree's folders: on disk before it is swapped in."""
    for path in [*sorted(directory.rglob("*"), reverse=True), directory]:
        if path.is_symlink():
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def replace_directory(new: Path, target: Path) -> None:
    """Put the complete tree ``new`` at ``target``, so a kill at any instant leaves ``target``
    holding the old tree or the new one.

    Why not two renames (old aside, new in): between them ``target`` does not exist, and a
    kill there left no SavedModel at all. Where the system can (:func:`reprotrain.fsio.exchange`,
    ``renameat2(RENAME_EXCHANGE)``) one step swaps the two trees and the old one, now at
    ``new``, is deleted after. Elsewhere the old tree goes to a fixed name beside ``target``
    before the new one moves in, and :func:`recover_directory` (run by the next writer, as
    Orbax cleans up at start-up) puts it back if the kill came between the renames. (Why not
    ``fsio.atomic_path``'s fallback: it parks the old tree inside the temporary, which the
    next clean-up deletes, so a kill between its renames loses both.)
    """
    new, target = Path(new), Path(target)
    _fsync_tree(new)
    if not target.exists():
        os.rename(new, target)
    elif fsio.exchange(new, target):
        shutil.rmtree(new)  # the old tree
    else:
        old = _old_path(target)
        shutil.rmtree(old, ignore_errors=True)
        os.rename(target, old)
        os.rename(new, target)
        shutil.rmtree(old)
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def recover_directory(target: Path) -> None:
    """Clean up after a writer of ``target`` that was killed: the old tree put back if the
    kill came between the two renames of :func:`replace_directory`'s fallback, deleted if
    the new one made it in, and half-written temporaries removed."""
    target = Path(target)
    old = _old_path(target)
    if old.is_dir():
        if target.exists():
            shutil.rmtree(old)
        else:
            logger.warning("%s: its writer was killed mid-swap; the previous one is back", target)
            os.rename(old, target)
    for leftover in target.parent.glob(f".{target.name}{TMP_MARK}*"):
        shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(target: Path | str) -> Iterator[Path]:
    """Yield a path to write a directory tree at; on success the tree replaces ``target``
    (:func:`replace_directory`), on an exception it is deleted and ``target`` untouched."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(target)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{target.name}{TMP_MARK}", dir=target.parent))
    try:
        yield tmp_dir / target.name
        replace_directory(tmp_dir / target.name, target)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


# --------------------------------------------------------------------------- converters


#: Leading lines of converter errors that say nothing about the model (OpenVINO's frontend
#: opens with where in its C++ the check failed).
_BOILERPLATE = ("Check '", "FrontEnd API failed", "Model wasn't fully converted", "Summary:")


def _first_line(exc: BaseException) -> str:
    """The first informative line of an error (TensorFlow's and the converters' run to pages
    of graph and C++ detail): OpenVINO's "-- No conversion rule found for operations: …",
    not the source line of its failed check."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(_BOILERPLATE)]
    return (useful or lines or [type(exc).__name__])[0].removeprefix("-- ")


def export_saved_model(model: Any, directory: Path) -> Path:
    """A TF Serving SavedModel: endpoints ``serve`` and ``serving_default``, raw pixels in
    (``[None, S, S, 3]`` float32, named after the model's input), probabilities out
    (``output_0``), the same signature ``model.export`` writes.

    Why not ``model.export`` first: Keras' export archive traces the model four times and
    walks every layer's trackable children looking for lookup tables, 10–13 s for
    MobileNetV2 on 2 cores; the models built here hold nothing but variables, and one trace
    plus ``tf.saved_model.save`` of those variables takes 4–5 s. A model that captures any
    other TensorFlow resource (a user's backbone with a lookup table) makes the save fail
    loudly, and then Keras' export, which tracks such resources, writes it instead. Either
    way export_and_verify re-scores the result against the Keras model.

    The folder is swapped in atomically (:func:`atomic_directory`): a kill at any instant
    leaves the previous SavedModel or the new one, never neither, never half of one.
    """
    with atomic_directory(directory) as tmp:
        try:
            _save_serving_function(model, tmp)
        except (AssertionError, ValueError, TypeError) as exc:
            logger.info("direct SavedModel save failed (%s): using Keras' export", _first_line(exc))
            shutil.rmtree(tmp, ignore_errors=True)
            model.export(str(tmp), format="tf_saved_model", verbose=False)
    return directory


def _save_serving_function(model: Any, directory: Path) -> None:
    """One traced inference function and the variables it reads, saved as a SavedModel."""
    import tensorflow as tf

    from reprotrain.models.loading import inference_function

    serve = inference_function(model, name=model.inputs[0].name)
    concrete = serve.get_concrete_function()
    module = tf.Module()
    module.serve = serve
    module.captured_variables = list(concrete.variables)  # tracked: saved with the graph
    tf.saved_model.save(
        module, str(directory), signatures={"serve": concrete, "serving_default": concrete}
    )


def _representative(images: np.ndarray) -> Callable[[], Iterator[list[np.ndarray]]]:
    def gen() -> Iterator[list[np.ndarray]]:
        for image in images:
            yield [image[np.newaxis].astype(np.float32)]

    return gen


def convert_tflite(
    saved_model_dir: Path, kind: str, calibration: np.ndarray | None = None
) -> bytes:
    """A TFLite flatbuffer from the SavedModel: ``float32``, ``float16`` (weights stored as
    float16, computed in float32 on CPU) or ``int8`` (weights and activations int8, uint8
    input and output; ``calibration`` images set the activation ranges)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    if kind == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif kind == "int8":
        if calibration is None or len(calibration) == 0:
            raise ModelError("int8 conversion needs calibration images")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = _representative(calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    elif kind != "float32":
        raise ModelError(f"unknown TFLite kind {kind!r}: expected one of {TFLITE_KINDS}")
    try:
        return bytes(converter.convert())
    except Exception as exc:  # converter errors are long C++ dumps: keep the first line
        raise ModelError(f"TFLite {kind} conversion failed: {_first_line(exc)}") from exc


def export_keras_format(model: Any, name: str, target: Path) -> Path:
    """``name`` (``onnx``, ``openvino``) written at ``target`` by Keras' own ``model.export``.

    Keras traces the same serving endpoint its SavedModel export has and hands it to tf2onnx
    (ONNX) or to ``openvino.convert_model`` (an IR directory: ``model.xml`` + ``model.bin``).
    The file or folder appears atomically once complete. Any failure, a missing package
    included, is one :class:`ModelError` line: the caller reports the format as not shipped.

    The ONNX file is checked (``onnx.checker``) before it is kept: tf2onnx only logs the ops it
    cannot convert (a string op, say) and writes a model no runtime can load.
    """
    fmt = KERAS_FORMATS[name]
    if not getattr(model, "_called", True):  # a loaded model: Keras' ONNX export wants a call
        model(np.zeros((1, *model.inputs[0].shape[1:]), np.float32), training=False)
    try:
        if name in DIRECTORY_FORMATS:
            with atomic_directory(target) as tmp:
                tmp.mkdir()
                model.export(str(tmp / OPENVINO_XML), format=fmt, verbose=False)
        else:
            with atomic_path(target) as tmp:
                model.export(str(tmp), format=fmt, verbose=False)
                import onnx

                onnx.checker.check_model(str(tmp))
    except ImportError as exc:
        raise ModelError(
            f"{name} export needs the {exc.name or 'missing'} package: {INSTALL_HINTS[name]}"
        ) from exc
    except Exception as exc:  # tf2onnx / OpenVINO errors run to pages: keep the first line
        raise ModelError(f"{name} conversion failed: {_first_line(exc)}") from exc
    return target


#: The conversion process's copy of the Keras model, loaded once for all its Keras exports.
_worker_models: dict[Path, Any] = {}


def export_keras_format_from_file(model_path: Path, name: str, target: Path) -> Path:
    """:func:`export_keras_format` in the conversion process, from the ``.keras`` file."""
    from reprotrain.models.loading import load_model

    model = _worker_models.get(model_path)
    if model is None:
        model = _worker_models[model_path] = load_model(model_path)
    return export_keras_format(model, name, target)


def _spawn_pool() -> ProcessPoolExecutor:
    # spawn, not fork: TensorFlow's threads do not survive a fork.
    return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))


def run_isolated(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a fresh process, so a converter that crashes the interpreter (a
    segfault or an abort in native code) ends that process, not the stage."""
    with _spawn_pool() as pool:
        try:
            return pool.submit(fn, *args).result()
        except BrokenProcessPool as exc:
            raise ModelError(f"the converter crashed its process ({exc})") from exc


def _import_tensorflow() -> None:
    import tensorflow  # noqa: F401


class Conversions:
    """The conversions of one export, spread over this process and a second one.

    Why: a TFLite conversion is single-threaded MLIR work that holds the GIL (two threads took
    as long as one after the other, measured), and int8 alone, with its calibration, takes
    about as long as float32 and float16 together. On a machine with more than one core this
    process converts one TFLite kind (and loads, scores and times every format) while a
    second process converts the others, one after the other in ``formats``' order, so each
    is ready about when this process comes to score it. The process is started
    (:meth:`start`) first thing in the stage, so its TensorFlow import overlaps this
    process's. If the process dies, its TFLite conversions run here instead, with a warning.

    ONNX and OpenVINO always convert in the second process, even on one core: tf2onnx and
    OpenVINO are native code this project does not control, and a crash there must cost one
    not-shipped row, not the stage. A Keras-format conversion whose process died is retried
    alone in a fresh one (:func:`run_isolated`) and reported if that crashes too.
    """

    def __init__(self, formats: Sequence[str], model_path: Path) -> None:
        self.model_path = Path(model_path)
        self.calibration: np.ndarray | None = None
        kinds = [name.removeprefix("tflite_") for name in formats if name.startswith("tflite_")]
        tflite = {f"tflite_{kind}" for kind in self.pick_background(kinds, os.cpu_count() or 1)}
        self.background = tuple(
            dict.fromkeys(name for name in formats if name in tflite or name in KERAS_FORMATS)
        )
        self._pool: ProcessPoolExecutor | None = None
        self._futures: dict[str, Future[Any]] = {}

    @staticmethod
    def pick_background(kinds: Sequence[str], cpus: int) -> tuple[str, ...]:
        """The TFLite kinds the second process converts, in order: all but the first that is
        not int8 (this process converts that one between scoring the others); none on one
        core or for a single conversion."""
        kinds = list(dict.fromkeys(kinds))
        if cpus < 2 or len(kinds) < 2:
            return ()
        here = next((kind for kind in kinds if kind != "int8"), None)
        return tuple(kind for kind in kinds if kind != here)

    def start(self) -> None:
        """Start the second process (if any) and its TensorFlow import."""
        if self.background and self._pool is None:
            self._pool = _spawn_pool()
            self._pool.submit(_import_tensorflow)

    def close(self) -> None:
        """Release the second process without waiting for it.

        Its TensorFlow teardown (≈ 2 s) then overlaps this process's remaining work; the
        process is still joined before this one exits.
        """
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def submit(self, saved_model_dir: Path, calibration: np.ndarray | None, out_dir: Path) -> None:
        """Begin the background conversions, once the SavedModel is written."""
        self.calibration = calibration
        if self._pool is None:
            return
        for name in self.background:
            if name in KERAS_FORMATS:
                job = (
                    export_keras_format_from_file,
                    self.model_path,
                    name,
                    out_dir / FILENAMES[name],
                )
            else:
                job = (convert_tflite, saved_model_dir, name.removeprefix("tflite_"), calibration)
            self._futures[name] = self._pool.submit(*job)

    def tflite(self, saved_model_dir: Path, kind: str) -> bytes:
        """The flatbuffer of ``kind``: from the second process if it converts it."""
        future = self._futures.get(f"tflite_{kind}")
        if future is not None:
            try:
                return future.result()
            except BrokenProcessPool as exc:
                logger.warning("the conversion process died (%s): converting %s here", exc, kind)
        return convert_tflite(saved_model_dir, kind, self.calibration)

    def keras_format(self, name: str, target: Path) -> Path:
        """``name`` (``onnx``, ``openvino``) written at ``target``, never in this process."""
        future = self._futures.get(name)
        if future is not None:
            try:
                return future.result()
            except BrokenProcessPool:
                logger.warning("the conversion process died converting %s: retrying it alone", name)
        return run_isolated(export_keras_format_from_file, self.model_path, name, target)


def path_size(path: Path) -> int:
    """Bytes of a file, or of all files under a directory."""
    path = Path(path)
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


# --------------------------------------------------------------------------- the verdict


@dataclass(frozen=True)
class FormatResult:
    """One format's scores against the Keras model, and whether it ships (the scores are
    ``None`` for a format that could not be written or run)."""

    format: str
    path: str
    accuracy: float | None
    agreement: float | None
    size_bytes: int | None
    latency_ms: float | None
    shipped: bool
    reason: str


def failed_format(name: str, path: Path, exc: Exception) -> FormatResult:
    """The row of a format whose converter or runtime failed: not shipped, with the first
    line of the error (a :class:`ModelError` already names the format and the fix)."""
    what = "" if isinstance(exc, ModelError) else f"{name} could not be loaded or run: "
    reason = f"not shipped: {what}{_first_line(exc)}"
    logger.warning("%s: %s", name, reason)
    return FormatResult(
        format=name,
        path=str(path),
        accuracy=None,
        agreement=None,
        size_bytes=None,
        latency_ms=None,
        shipped=False,
        reason=reason,
    )


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of rows whose top-1 class is the same in two probability matrices."""
    if len(a) == 0:
        return float("nan")
    return float(np.mean(np.argmax(a, axis=1) == np.argmax(b, axis=1)))


def accuracy(y_true: np.ndarray, probs: np.ndarray) -> float:
    return float(np.mean(np.argmax(probs, axis=1) == y_true)) if len(y_true) else float("nan")


def ship_decision(
    accuracy: float,
    agreement: float,
    reference_accuracy: float,
    min_agreement: float,
    max_accuracy_drop: float,
) -> tuple[bool, str]:
    """Whether a format ships, with the reason in words (pure: unit-tested on numbers)."""
    drop = reference_accuracy - accuracy
    problems = []
    if agreement < min_agreement:
        problems.append(
            f"agreement with the Keras model {agreement:.4f} < export.min_agreement "
            f"{min_agreement:g}"
        )
    if drop > max_accuracy_drop + 1e-12:
        problems.append(
            f"accuracy drop {drop:.4f} ({reference_accuracy:.4f} → {accuracy:.4f}) > "
            f"export.max_accuracy_drop {max_accuracy_drop:g}"
        )
    if problems:
        return False, "not shipped: " + "; ".join(problems)
    return True, f"shipped: agreement {agreement:.4f}, accuracy drop {max(drop, 0.0):.4f}"


def score_format(
    name: str,
    path: Path,
    predict: Predictor,
    images: np.ndarray,
    labels: np.ndarray,
    reference: np.ndarray,
    reference_accuracy: float,
    cfg: ExportConfig,
    batch_size: int,
) -> FormatResult:
    """Re-score one format on the test images and decide whether it ships (latency: NaN
    until :func:`time_formats` measures it)."""
    probs = predict_batched(predict, images, batch_size)
    acc, agree = accuracy(labels, probs), agreement(probs, reference)
    shipped, reason = ship_decision(
        acc, agree, reference_accuracy, cfg.min_agreement, cfg.max_accuracy_drop
    )
    result = FormatResult(
        format=name,
        path=str(path),
        accuracy=round(acc, 6),
        agreement=round(agree, 6),
        size_bytes=path_size(path),
        latency_ms=float("nan"),
        shipped=shipped,
        reason=reason,
    )
    logger.info(
        "%s: accuracy %.4f, agreement %.4f, %.1f MB → %s",
        name,
        acc,
        agree,
        result.size_bytes / 1e6,
        reason,
    )
    return result


def runtime_predictor(name: str, path: Path) -> Predictor:
    """The ONNX or OpenVINO file in its own runtime (never TensorFlow: what users run)."""
    try:
        if name == "onnx":
            return OnnxClassifier(path)
        return OpenVINOClassifier(path / OPENVINO_XML)
    except ImportError as exc:
        raise ModelError(
            f"{name} needs the {exc.name or 'missing'} runtime: {INSTALL_HINTS[name]}"
        ) from exc


def time_formats(
    predictors: dict[str, Predictor], images: np.ndarray, samples: int
) -> dict[str, float]:
    """Median batch-1 latency (ms) of each format, one format after the other.

    Timed only once every conversion is done: a conversion running in parallel would slow
    the calls being timed (measured: 2.5× on 2 cores).
    """
    latencies = {
        name: round(median_latency_ms(predict, images, samples), 3)
        for name, predict in predictors.items()
    }
    logger.info(
        "latency per image on this CPU: %s",
        ", ".join(f"{name} {ms:.2f} ms" for name, ms in latencies.items()),
    )
    return latencies


class ModelExport:
    """Export one ``.keras`` model to every format in ``cfg.formats`` and verify each.

    Three steps, so a stage can put its other work in the gaps:

    - entering starts the conversion process (:class:`Conversions`), whose
      TensorFlow import then overlaps the stage's own;
    - :meth:`write_saved_model` loads the model and writes the SavedModel every TFLite
      model is converted from, and hands the conversions (TFLite, ONNX, OpenVINO) to the
      second process: from here the stage's MLflow set-up and test-data loading run while it
      converts;
    - :meth:`verify` re-scores every format on the test images and returns the report
      written to ``metrics/export.json``. A format whose converter or runtime fails is a
      not-shipped row; only the SavedModel, which the TFLite models come from, is required.
    """

    def __init__(
        self,
        model_path: Path | str,
        out_dir: Path | str,
        cfg: ExportConfig,
        *,
        hint: str = "rerun finetune (dvc repro finetune)",
    ) -> None:
        self.model_path = Path(model_path)
        self.out_dir = Path(out_dir)
        self.cfg = cfg
        self.hint = hint
        self.saved_dir = self.out_dir / FILENAMES[SAVED_MODEL]
        self.conversions = Conversions(cfg.formats, self.model_path)
        self.model: Any = None

    def __enter__(self) -> ModelExport:
        if self.model_path.is_file():  # else write_saved_model's load names the problem
            self.conversions.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.conversions.close()

    @timed("export")
    def write_saved_model(self, calibration: np.ndarray) -> None:
        """Load the model, write the SavedModel and start the TFLite conversions from it."""
        from reprotrain.models.loading import load_model

        self.model = load_model(self.model_path, hint=self.hint)
        export_saved_model(self.model, self.saved_dir)
        self.conversions.submit(self.saved_dir, calibration, self.out_dir)

    def _write(self, name: str, path: Path) -> Predictor:
        """Format ``name`` on disk at ``path`` (converted if not yet), as a predictor."""
        if name == SAVED_MODEL:
            return saved_model_predictor(self.saved_dir)
        if name in KERAS_FORMATS:
            self.conversions.keras_format(name, path)
            return runtime_predictor(name, path)
        kind = name.removeprefix("tflite_")
        atomic_write_bytes(path, self.conversions.tflite(self.saved_dir, kind))
        return TFLiteClassifier(path)

    @timed("export")
    def verify(self, test_images: np.ndarray, test_labels: np.ndarray) -> dict[str, Any]:
        """Every format written and re-scored against the Keras model: the report."""
        from reprotrain.progress import progress

        calibration = self.conversions.calibration
        if self.model is None or calibration is None:
            raise RuntimeError("ModelExport.verify before write_saved_model")
        cfg = self.cfg
        keras_predict = keras_predictor(self.model)
        predictors: dict[str, Predictor] = {"keras": keras_predict}
        formats: dict[str, dict[str, Any]] = {}
        # The reference predictions, while the second process converts.
        reference = predict_batched(keras_predict, test_images, cfg.batch_size)
        reference_accuracy = accuracy(test_labels, reference)
        # Every format is scored in cfg.formats' order, whichever process converted it.
        with progress(len(cfg.formats), desc="export", unit="format") as bar:
            for name in cfg.formats:
                path = self.out_dir / FILENAMES[name]
                try:
                    predict = self._write(name, path)
                    result = score_format(
                        name,
                        path,
                        predict,
                        test_images,
                        test_labels,
                        reference,
                        reference_accuracy,
                        cfg,
                        batch_size=cfg.batch_size,
                    )
                except Exception as exc:  # a failed converter or runtime is a finding
                    if name == SAVED_MODEL:
                        raise
                    result = failed_format(name, path, exc)
                else:
                    predictors[name] = predict
                formats[name] = dataclasses.asdict(result)
                bar.update(1)
        self.conversions.close()  # all converted: its teardown overlaps the timing below
        latencies = time_formats(predictors, test_images, cfg.latency_samples)
        for name, row in formats.items():
            row["latency_ms"] = latencies.get(name)
        return {
            "n_test": len(test_labels),
            "n_calibration": len(calibration),
            "min_agreement": cfg.min_agreement,
            "max_accuracy_drop": cfg.max_accuracy_drop,
            "keras": {
                "path": str(self.model_path),
                "accuracy": round(reference_accuracy, 6),
                "size_bytes": path_size(self.model_path),
                "latency_ms": latencies["keras"],
            },
            "formats": formats,
        }


def export_and_verify(
    model_path: Path,
    out_dir: Path,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    calibration: np.ndarray,
    cfg: ExportConfig,
    *,
    hint: str = "rerun finetune (dvc repro finetune)",
) -> dict[str, Any]:
    """:class:`ModelExport`'s three steps in a row, for callers with everything at hand."""
    with ModelExport(model_path, out_dir, cfg, hint=hint) as job:
        job.write_saved_model(calibration)
        return job.verify(test_images, test_labels)


def shipped_formats(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The formats of an export report that passed their checks."""
    return {k: v for k, v in report.get("formats", {}).items() if v.get("shipped")}


def flat_metrics(report: dict[str, Any]) -> dict[str, float]:
    """``export.<format>.<metric>`` numbers (MLflow metrics, registry version tags)."""
    out: dict[str, float] = {}
    for name, row in report.get("formats", {}).items():
        for key in ("accuracy", "agreement", "size_bytes", "latency_ms"):
            if row.get(key) is not None:  # None: the format could not be written or run
                out[f"export.{name}.{key}"] = float(row[key])
        out[f"export.{name}.shipped"] = 1.0 if row["shipped"] else 0.0
    keras_row = report.get("keras") or {}
    for key in ("accuracy", "size_bytes", "latency_ms"):
        if key in keras_row:
            out[f"export.keras.{key}"] = float(keras_row[key])
    return out
