"""The names of the tags reprotrain writes on MLflow runs, model versions and models (one
place, so the writers, ``reproduce`` and the tests agree)."""

from __future__ import annotations

TAG_STAGE = "reprotrain.stage"
TAG_PIPELINE = "reprotrain.pipeline_id"
TAG_ROLE = "reprotrain.role"  # "pipeline" (parent) or "stage"
TAG_ROOT = "reprotrain.project_root"
TAG_COMMIT = "reprotrain.git.commit"
TAG_DIRTY = "reprotrain.git.dirty"
TAG_DIRTY_PATHS = "reprotrain.git.dirty_paths"
TAG_EXP = "reprotrain.dvc.exp_name"
TAG_REPRODUCES = "reprotrain.reproduces"
TAG_ERROR = "reprotrain.error"
TAG_HOST = "reprotrain.host"
TAG_PID = "reprotrain.pid"
TAG_PID_START = "reprotrain.pid_start"
TAG_NOTE = "mlflow.note.content"

# model versions and registered models
VTAG_ACCURACY = "reprotrain.test_accuracy"
VTAG_DIGEST = "reprotrain.test_digest"
VTAG_LABELS = "reprotrain.labels"
VTAG_IMAGE_SIZE = "reprotrain.image_size"
#: The data kind a version was trained on (absent on versions from before kinds: images).
VTAG_KIND = "reprotrain.kind"
#: What a non-image version takes (its input columns, window and horizon), as JSON.
VTAG_INPUTS = "reprotrain.inputs"
VTAG_RUN = "reprotrain.run_id"
VTAG_REASON = "reprotrain.promotion_reason"
VTAG_PROMOTED_BY = "reprotrain.promoted_by"
VTAG_PROMOTED_AT = "reprotrain.promoted_at"
VTAG_PREVIOUS = "reprotrain.previous_champion"
MTAG_HISTORY = "reprotrain.promotions"
