"""Training: compile, fit (or a GradientTape loop), resumable state, the feature cache.

``loop`` trains, ``augment`` wraps a model to augment inside the train step, ``callbacks``
keeps the resumable state (atomic backups, best weights, merged history) and TensorBoard
scalars, ``feature_cache`` trains a head on features computed once. Stage plumbing (reading
prepared data, writing outputs) is in :mod:`reprotrain.stage_io`.
"""

from reprotrain.training.augment import AugmentingModel
from reprotrain.training.callbacks import (
    FINGERPRINT_FILE,
    MONITOR,
    STATE_FILE,
    CheckpointStore,
    EpochHook,
    ScalarTensorBoard,
    TrainingState,
    TrainState,
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

__all__ = [
    "FINGERPRINT_FILE",
    "MONITOR",
    "STATE_FILE",
    "AugmentingModel",
    "CheckpointStore",
    "EpochHook",
    "ScalarTensorBoard",
    "TrainResult",
    "TrainState",
    "TrainingState",
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
