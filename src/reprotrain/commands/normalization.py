"""How the training data was normalised, recovered for a model that is to predict.

Why a module of its own: training images went through prepare (PIL decode, EXIF
orientation, 8-bit RGB, downscale to ``prepare.max_side``, JPEG re-encode at
``prepare.jpeg_quality``) before the pipeline saw them. A model predicts correctly only on
files normalised the same way, so the settings are read from prepare's own record
(``stats.json``) before anything else; ``predict`` (the command) and ``reprotrain.api``
both call :func:`resolve_normalization`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reprotrain import paths

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Normalization:
    """How the training data was normalised (``prepare.max_side``, ``prepare.jpeg_quality``)."""

    max_side: int | None
    jpeg_quality: int
    source: str  # where the values came from, for the log


def recorded_normalization(path: Path) -> dict[str, Any] | None:
    """The ``normalization`` prepare recorded in a ``stats.json``, or None when ``path``
    has none (missing, unreadable, or written before prepare recorded it)."""
    try:
        norm = json.loads(path.read_text(encoding="utf-8")).get("normalization")
    except (OSError, ValueError, AttributeError):
        return None
    return norm if isinstance(norm, dict) and "jpeg_quality" in norm else None


def resolve_normalization(
    max_side: int | str | None, jpeg_quality: int | None, model_path: Path
) -> Normalization:
    """The training data's normalisation settings.

    Explicit ``--max-side`` / ``--jpeg-quality`` win; then ``stats.json`` next to the model
    (registry downloads ship it), then the project's ``data/prepared/stats.json`` (both
    written by prepare), then ``params.yaml``'s ``prepare`` section, then the defaults.
    """
    found: dict[str, Any] | None = None
    source = "defaults"
    for candidate in (model_path.parent / "stats.json", paths.PREPARED_DIR / "stats.json"):
        found = recorded_normalization(candidate)
        if found is not None:
            source = str(candidate)
            break
    if found is None:
        from reprotrain.config import PrepareConfig, load_params

        try:
            prep = load_params().prepare
            source = "params.yaml"
        except Exception as exc:  # no project here, or invalid params: defaults, said so
            logger.debug("params.yaml not usable (%s): default normalisation", exc)
            prep = PrepareConfig()
        found = {"max_side": prep.max_side, "jpeg_quality": prep.jpeg_quality}
    side = found.get("max_side") if max_side == "keep" else max_side
    quality = found["jpeg_quality"] if jpeg_quality is None else jpeg_quality
    if max_side != "keep" or jpeg_quality is not None:
        source = f"{source} and the command line"
    return Normalization(side, int(quality), source)
