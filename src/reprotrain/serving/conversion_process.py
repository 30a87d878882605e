"""Where an export's conversions run: this process and a second, spawned one.

Why: conversion is slow single-threaded work (overlapped with scoring on a second core), and
tf2onnx and OpenVINO are native code this project does not control (a crash there must end
a process of its own, not the stage). :class:`Conversions` decides which format converts
where and hands back each result; the converters themselves are
:mod:`reprotrain.serving.converters`.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np

from reprotrain.errors import ModelError
from reprotrain.serving.converters import convert_tflite, export_keras_format_from_file
from reprotrain.serving.formats import FILENAMES, KERAS_FORMATS

logger = logging.getLogger(__name__)


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
