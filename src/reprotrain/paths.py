"""The project's fixed file layout, relative to the project root (where ``dvc.yaml`` is).

One module so that ``dvc.yaml``, the stages and the tests agree on every path; ``dvc.yaml``
repeats these strings because DVC cannot import Python.
"""

from __future__ import annotations

from pathlib import Path

RAW_DIR = Path("data/raw")  # fetch: snapshot of data.source (DVC-tracked)
PREPARED_DIR = Path("data/prepared")  # prepare: TFRecord shards + metadata (DVC-tracked)
PREPARE_RUN = Path("data/prepare.run.json")  # MLflow run sidecar of prepare (git-tracked)
#: The split ledger (sha256,label,split): prepare reads and extends it; git-tracked, never
#: deleted by DVC (``cache: false, persist: true``), so splits never move between runs.
SPLITS_LEDGER = Path("data/splits.csv")

MODELS_DIR = Path("models")
HEAD_MODEL = MODELS_DIR / "head.keras"
HEAD_HISTORY = MODELS_DIR / "head.history.json"
HEAD_RUN = MODELS_DIR / "head.run.json"
FINETUNED_MODEL = MODELS_DIR / "finetuned.keras"
FINETUNED_HISTORY = MODELS_DIR / "finetuned.history.json"
FINETUNED_RUN = MODELS_DIR / "finetuned.run.json"
EXPORT_DIR = MODELS_DIR / "export"  # export: SavedModel + TFLite files
EXPORT_RUN = MODELS_DIR / "export.run.json"
BASELINE_MODEL = MODELS_DIR / "baseline.keras"  # baseline: from-scratch comparison model
BASELINE_HISTORY = MODELS_DIR / "baseline.history.json"
BASELINE_RUN = MODELS_DIR / "baseline.run.json"
TENSORBOARD_DIR = MODELS_DIR / "tensorboard"  # one sub-folder per stage

METRICS_DIR = Path("metrics")  # small JSON read by `dvc metrics` (git-tracked)
PLOTS_DIR = Path("plots")  # CSV/JSON for `dvc plots` + PNG images for people
EVALUATE_RUN = METRICS_DIR / "evaluate.run.json"
EXPORT_METRICS = METRICS_DIR / "export.json"  # export: per-format accuracy/agreement/size/latency
REPORTS_DIR = Path("reports")
MODEL_CARD = REPORTS_DIR / "model_card.md"

#: BackupAndRestore state: outside every DVC output, because DVC deletes a stage's outputs
#: before running it and a killed run must find its backup on the next `dvc repro`.
CHECKPOINTS_DIR = Path(".reprotrain/checkpoints")
#: fetch's per-file digest cache for data/raw (size, mtime, inode → sha256): not data, so
#: outside DVC and git, like DVC's own state database.
RAW_DIGEST_CACHE = Path(".reprotrain/raw-digests.json")


def split_files(prepared_dir: Path, split: str) -> list[Path]:
    """The TFRecord shards of one split, in shard order."""
    return sorted(Path(prepared_dir).glob(f"{split}-*-of-*.tfrecord"))


def project_root(start: Path | None = None) -> Path:
    """The directory holding ``dvc.yaml``, searching upwards from ``start`` (default: cwd)."""
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "dvc.yaml").is_file():
            return candidate
    return here


# ---------------------------------------------------------------- the other kinds' folders
# Each kind (data.kind) writes under its own folders: switching kinds and back never mixes
# one kind's prepared data, ledger or models into another's. Metrics, plots and the model
# card are the current kind's (evaluate rewrites them).

TABLE_DIR = Path("data/table")
TABLE_PREPARED = TABLE_DIR / "prepared"  # TFRecords (one feature per column), schema.json
TABLE_PREPARE_RUN = TABLE_DIR / "prepare.run.json"
#: The row ledger (row hash, label, split): git-tracked, persist, like SPLITS_LEDGER.
TABLE_LEDGER = TABLE_DIR / "splits.csv"
TABLE_MODELS = MODELS_DIR / "table"
TABLE_MODEL = TABLE_MODELS / "model.keras"
TABLE_HISTORY = TABLE_MODELS / "model.history.json"
TABLE_RUN = TABLE_MODELS / "model.run.json"
TABLE_BASELINE = TABLE_MODELS / "baseline.joblib"  # the scikit-learn baseline
TABLE_BASELINE_RUN = TABLE_MODELS / "baseline.run.json"
TABLE_EXPORT_DIR = TABLE_MODELS / "export"
TABLE_EXPORT_RUN = TABLE_MODELS / "export.run.json"

SERIES_DIR = Path("data/series")
SERIES_PREPARED = SERIES_DIR / "prepared"  # the windows as TFRecords, stats.json
SERIES_PREPARE_RUN = SERIES_DIR / "prepare.run.json"
#: The time cuts (train | val | test periods): git-tracked, persist, the series' ledger.
SERIES_CUTS = SERIES_DIR / "cuts.json"
SERIES_MODELS = MODELS_DIR / "series"
SERIES_MODEL = SERIES_MODELS / "model.keras"
SERIES_HISTORY = SERIES_MODELS / "model.history.json"
SERIES_RUN = SERIES_MODELS / "model.run.json"
SERIES_EXPORT_DIR = SERIES_MODELS / "export"
SERIES_EXPORT_RUN = SERIES_MODELS / "export.run.json"
