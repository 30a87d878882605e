"""Training: compile, fit (or a GradientTape loop), resumable state, the feature cache.

``loop`` trains, ``augment`` wraps a model to augment inside the train step, ``checkpoints``
keeps the resumable state (atomic backups, best weights, merged history), ``callbacks``
commits it each epoch, ``tensorboard_logs`` writes the TensorBoard scalars, ``feature_cache``
trains a head on features computed once;
``options`` holds a run's :class:`RunOptions` (backup, TensorBoard logs, resume key,
per-epoch hook). Stage plumbing (reading prepared data, writing outputs) is in
:mod:`reprotrain.stage_io`.
"""

from reprotrain.training.augment import AugmentingModel
from reprotrain.training.callbacks import MONITOR, EpochCommitter, EpochHook
from reprotrain.training.checkpoints import (
    FINGERPRINT_FILE,
    STATE_FILE,
    BackupRecord,
    CheckpointStore,
    WorkerCheckpointStore,
    epoch_file,
)
from reprotrain.training.feature_cache import (
    extract_features,
    fit_head,
    train_head_cached,
    use_feature_cache,
)
from reprotrain.training.loop import (
    TrainResult,
    compile_model,
    discard_checkpoint,
    make_optimizer,
    shard_across_workers,
    train,
)
from reprotrain.training.options import RunOptions
from reprotrain.training.tensorboard_logs import ScalarTensorBoard

__all__ = [
    "FINGERPRINT_FILE",
    "MONITOR",
    "STATE_FILE",
    "AugmentingModel",
    "BackupRecord",
    "CheckpointStore",
    "EpochCommitter",
    "EpochHook",
    "RunOptions",
    "ScalarTensorBoard",
    "TrainResult",
    "WorkerCheckpointStore",
    "compile_model",
    "discard_checkpoint",
    "epoch_file",
    "extract_features",
    "fit_head",
    "make_optimizer",
    "shard_across_workers",
    "train",
    "train_head_cached",
    "use_feature_cache",
]
