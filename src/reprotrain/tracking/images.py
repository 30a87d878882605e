"""Figures as MLflow images: the run page's image view, comparable across runs.

Why not only ``log_artifact``: MLflow shows artifact PNGs one file at a time in the
artifact browser, while an image logged with a ``key`` (``mlflow.log_image(key=..., step=...)``)
appears in the run's image charts and side by side in the Compare view (mlflow/mlflow#2696,
#21795). evaluate logs its figures both ways: the files under ``plots/`` and ``reports/``
as before, and each PNG as a keyed image.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from reprotrain.tracking.handle import StageRun, store_errors

logger = logging.getLogger(__name__)

#: What MLflow allows in an image key (``MlflowClient.log_image``).
_KEY_CHARS = re.compile(r"[^a-zA-Z0-9_\-./ ]")


def image_key(prefix: str, path: Path | str) -> str:
    """``prefix/<file stem>``, with characters MLflow rejects in a key replaced by ``_``."""
    return _KEY_CHARS.sub("_", f"{prefix}/{Path(path).stem}" if prefix else Path(path).stem)


def figure_keys(groups: Mapping[str, Iterable[Path]]) -> dict[str, Path]:
    """Every PNG of each ``{prefix: files or folders}`` group by its image key, sorted.

    A folder stands for the PNG files directly inside it; a missing path is skipped.
    """
    out: dict[str, Path] = {}
    for prefix, entries in groups.items():
        for entry in entries:
            entry = Path(entry)
            files = sorted(entry.glob("*.png")) if entry.is_dir() else [entry]
            for f in files:
                if f.is_file() and f.suffix.lower() == ".png":
                    out[image_key(prefix, f)] = f
    return dict(sorted(out.items()))


def log_images(run: StageRun, images: Mapping[str, Path], step: int = 0) -> list[str]:
    """Log each PNG of ``images`` (key → file) on ``run`` as an MLflow image at ``step``;
    returns the keys logged. Synchronous, so the images are in the store when it returns."""
    if not run.run_id:  # a non-chief worker's NoRun: the chief's run holds the figures
        return []
    import mlflow
    from PIL import Image

    client = mlflow.MlflowClient(run.uri) if run.uri else mlflow.MlflowClient()
    logged: list[str] = []
    for key, path in images.items():
        with store_errors(run.uri, f"logging the image {path}"), Image.open(path) as img:
            client.log_image(run.run_id, img.convert("RGB"), key=key, step=step, synchronous=True)
        logged.append(key)
    logger.info("MLflow: %d figures logged as images (%s)", len(logged), ", ".join(logged))
    return logged
