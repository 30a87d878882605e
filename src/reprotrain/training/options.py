"""Where a training run keeps its state and whom it tells: :class:`RunOptions`.

One typed value instead of a dict of keywords: a stage gets it from
``stage_io.TrainingStage.fit_options()`` and hands it to ``training.train`` (or the feature
cache's ``train_head_cached``/``fit_head``) as it is, so a misspelt or missing option is a
type error at the call, not a keyword silently dropped on the way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from reprotrain.training.callbacks import EpochHook


@dataclass(frozen=True)
class RunOptions:
    """The run's plumbing, the same for every kind of model.

    ``checkpoint_dir``: the resumable backup (outside DVC's outputs, which DVC deletes
    before a rerun). ``tensorboard_dir``: where the finished TensorBoard logs are published
    (None: none written). ``resume_key``: a digest of the inputs; a backup made with another
    key is discarded rather than resumed (None: any backup in the folder is resumed).
    ``epoch_hook``: called after each committed epoch with its index and metrics (MLflow).
    """

    checkpoint_dir: Path
    tensorboard_dir: Path | None = None
    resume_key: str | None = None
    epoch_hook: EpochHook | None = None
