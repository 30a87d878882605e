"""The test split's identity and its per-example table: which images it holds (the manifest's
content hashes, and one digest of them the promotion gate compares) and one row per scored
example for ``plots/predictions.csv``.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reprotrain.errors import DataError
from reprotrain.evaluation.predictions import SplitPredictions


def split_sha256(manifest_csv: Path | str, split: str = "test") -> list[str]:
    """The sha256 column of one split's rows in ``manifest.csv``."""
    path = Path(manifest_csv)
    if not path.is_file():
        raise DataError(f"{path} not found: run the prepare stage first (dvc repro prepare)")
    with path.open(newline="", encoding="utf-8") as f:
        return [row["sha256"] for row in csv.DictReader(f) if row.get("split") == split]


def test_digest(manifest_csv: Path | str) -> str:
    """SHA-256 of the test split's sorted image digests: same images ⇔ same digest.

    The promotion gate compares models only on the same test set; this says whether the
    champion's recorded accuracy is still comparable or must be re-scored.
    """
    shas = sorted(split_sha256(manifest_csv, "test"))
    return hashlib.sha256("\n".join(shas).encode("ascii")).hexdigest()


test_digest.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def prediction_rows(preds: SplitPredictions, labels: Sequence[str]) -> list[dict[str, Any]]:
    """One row per example: path, sha256, true/predicted label, confidence, prob_<class>."""
    rows = []
    pred = preds.probs.argmax(axis=1)
    for i in range(len(preds.y_true)):
        row: dict[str, Any] = {
            "path": preds.paths[i] if preds.paths else "",
            "sha256": preds.sha256[i] if preds.sha256 else "",
            "true_label": labels[int(preds.y_true[i])],
            "predicted_label": labels[int(pred[i])],
            "confidence": round(float(preds.probs[i, pred[i]]), 6),
        }
        for c, name in enumerate(labels):
            row[f"prob_{name}"] = round(float(preds.probs[i, c]), 6)
        rows.append(row)
    return rows
