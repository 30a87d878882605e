"""The held-out test split as evaluate uses it: its classes, its shards verified against the
manifest, its digest, and its images decoded once for every model scored on it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reprotrain.errors import DataError
from reprotrain.evaluation.predictions import EvalSplit
from reprotrain.evaluation.rows import split_sha256, test_digest


@dataclass(frozen=True)
class TestSet:
    """The test split of ``data/prepared`` (``stats`` is prepare's ``stats.json``)."""

    __test__ = False  # not a pytest test class

    labels: list[str]
    stats: dict[str, Any]
    split: EvalSplit
    digest: str
    size: int

    def check_scored(self, scored: int) -> None:
        """The shards must hold exactly the images the manifest lists."""
        if scored != self.size:
            raise DataError(
                f"the test shards hold {scored} images but manifest.csv lists {self.size}: "
                "data/prepared is incomplete; rerun prepare (dvc repro -f prepare)"
            )


def load_test_set(prepared_dir: Path, pipeline_cfg: Any, *, batch_size: int, seed: int) -> TestSet:
    """The test split, checked before anything is scored: an empty split, or shards that do
    not match the manifest, is a one-line DataError that says how to fix it."""
    from reprotrain.data import pipeline, tfrecords

    prepared_dir = Path(prepared_dir)
    manifest = prepared_dir / "manifest.csv"
    files = tfrecords.verify_shards(prepared_dir, "test")
    expected = len(split_sha256(manifest, "test"))
    if not files or expected == 0:
        raise DataError(
            f"no test images in {prepared_dir}: the test split is empty "
            "(add images or raise prepare.test_fraction), then rerun prepare"
        )
    stats_file = prepared_dir / "stats.json"
    stats = json.loads(stats_file.read_text(encoding="utf-8")) if stats_file.is_file() else {}
    return TestSet(
        labels=pipeline.read_labels(prepared_dir),
        stats=stats,
        split=EvalSplit(files, pipeline_cfg, batch_size=batch_size, seed=seed, expected=expected),
        digest=test_digest(manifest),
        size=expected,
    )
