"""The on-disk backup of one training run: what a resumed run needs, written so that a kill
at any moment leaves the previous commit intact.

Why our own backup instead of ``keras.callbacks.BackupAndRestore``: Keras writes its backup
in place (``latest.weights.h5`` + ``training_metadata.json``), so a SIGKILL during the write
leaves a half-written HDF5 file that every later run fails to open (h5py's "bad object
header version number"), and the two files can disagree. Here each finished epoch writes
one ``epoch-NNNN.weights.h5`` (weights + optimizer state, via ``reprotrain.fsio``: temporary
file, then rename) and then commits ``state.json`` atomically (a :class:`BackupRecord`),
which names the epoch files to resume from and the best epoch's file. A backup proven
unreadable (its bytes read, but they are not the weights: truncated, garbage, another model)
is discarded with a warning and training restarts from epoch 1; a failure that may pass (an
I/O error, permissions, too many open files, memory) stops the stage with one line and keeps
every backup (:func:`unreadable_backup`).

``state.json`` also carries the per-epoch history, the early-stopping and learning-rate
schedule state and the layers' random-seed state (dropout), so a resumed run takes its
decisions from the whole history and draws the dropout masks an uninterrupted one would (the
input pipeline's per-epoch randomness: ``iterators.skip_iterators``): it ends bit-identical to one
that never stopped (tested with both loops). The callback that fills and commits the record
each epoch is :class:`reprotrain.training.callbacks.EpochCommitter`.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import tensorflow as tf

from reprotrain import fsio
from reprotrain.errors import ModelError

logger = logging.getLogger(__name__)

STATE_FILE = "state.json"
FINGERPRINT_FILE = "fingerprint.txt"
TENSORBOARD = "tensorboard"  # the run's TensorBoard logs, inside the backup
FORMAT = 1


def rng_variables(model: Any) -> list[Any]:
    """The model's random-seed state (``keras.random.SeedGenerator``s: dropout and other
    random layers), which ``save_weights`` leaves out: its variables that are not weights."""
    weights = {id(w) for w in model.weights}
    return [v for v in model.variables if id(v) not in weights]


def restore_rng(model: Any, saved: list[list[int]]) -> None:
    """Set the seed state saved by the ``EpochCommitter`` callback (ignored if the layers
    differ)."""
    variables = rng_variables(model)
    if len(variables) != len(saved):
        logger.warning("the backup's random-seed state does not fit this model: not restored")
        return
    for v, value in zip(variables, saved, strict=True):
        v.assign(tf.constant(value, dtype=v.dtype))


def unreadable_backup(path: Path, exc: BaseException) -> str | None:
    """Why the backup ``path``, which failed to load with ``exc``, is proven unreadable; or
    None when the failure may be transient and the backup must be kept.

    Transient: ``MemoryError``; an ``OSError`` with an errno (EIO, EACCES, EMFILE, ENOSPC...:
    h5py passes the system's errno on); and any failure while its bytes are read here. Only
    a file whose bytes all read, yet do not load (a truncated or garbage HDF5 file, weights
    of another shape: h5py and Keras raise without an errno), is proven unreadable: deleting
    backups on a passing disk or memory hiccup would throw away every finished epoch.
    """
    if isinstance(exc, MemoryError) or (isinstance(exc, OSError) and exc.errno is not None):
        return None
    try:
        with Path(path).open("rb") as f:
            while f.read(1 << 20):
                pass
    except (OSError, MemoryError):
        return None
    return f"{type(exc).__name__}: {exc}"


def epoch_file(epoch: int) -> str:
    """Name of the weights + optimizer file written after epoch index ``epoch`` (0-based)."""
    return f"epoch-{epoch + 1:04d}.weights.h5"


@dataclass
class BackupRecord:
    """What ``state.json`` holds: everything a resumed run needs besides the weights.

    Epochs are 0-based indices as Keras passes them; ``done`` is the number of finished
    epochs (the next epoch index). ``records`` maps an epoch index to its logs.
    """

    done: int = 0
    records: dict[int, dict[str, float]] = field(default_factory=dict)
    best_epoch: int = -1  # 0-based; -1 before the first epoch
    best_value: float = math.inf
    stopped: bool = False
    start: dict[str, float] | None = None  # val metrics of the starting weights
    reduce_lr: dict[str, float] = field(default_factory=dict)
    rng: list[list[int]] = field(default_factory=list)  # seed states after epoch done - 1

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["records"] = {str(k): v for k, v in self.records.items()}
        data["format"] = FORMAT
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BackupRecord:
        if data.get("format") != FORMAT:
            raise ValueError(f"unknown state format {data.get('format')!r}")
        data = {k: v for k, v in data.items() if k != "format"}
        data["records"] = {int(k): v for k, v in data["records"].items()}
        return cls(**data)

    def history(self) -> dict[str, list[float]]:
        """Keras-style history (metric → list per epoch) plus ``epoch`` (1-based)."""
        epochs = sorted(self.records)
        keys: list[str] = []
        for e in epochs:
            keys += [k for k in self.records[e] if k not in keys]
        out: dict[str, list[float]] = {"epoch": [e + 1 for e in epochs]}
        for k in keys:
            out[k] = [self.records[e].get(k, math.nan) for e in epochs]
        return out


class CheckpointStore:
    """The resumable state of one training run in ``directory`` (outside DVC's outputs).

    A fingerprint of the inputs guards it: a run with other params or data never resumes
    from a stale backup.
    """

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)

    def prepare(self, key: str | None) -> None:
        """Keep only a valid backup of a run with the same inputs ``key``."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fsio.remove_stale_temporaries(self.dir)
        fp = self.dir / FINGERPRINT_FILE
        if key is not None and fp.is_file() and fp.read_text().strip() != key:
            logger.warning("discarding a backup from a run with different inputs: %s", self.dir)
            self.clear()
        known = {FINGERPRINT_FILE, STATE_FILE, TENSORBOARD}
        for p in self.dir.iterdir():  # e.g. Keras BackupAndRestore's backup/ of older versions
            if p.name not in known and not p.name.startswith("epoch-"):
                logger.warning("removing %s: not part of a reprotrain training backup", p)
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        if key is not None:
            fsio.atomic_write_text(fp, key + "\n")

    def clear(self) -> None:
        """Forget every saved epoch (the fingerprint stays)."""
        for p in self.dir.iterdir():
            if p.name != FINGERPRINT_FILE:
                shutil.rmtree(p) if p.is_dir() else p.unlink()

    def load(self) -> BackupRecord | None:
        """The committed state, or None when there is none or it cannot be read."""
        path = self.dir / STATE_FILE
        if not path.is_file():
            return None
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:  # the disk, not the file: keep the backup
            raise ModelError(
                f"cannot read the training backup {path} ({exc.strerror or exc}); it is kept: "
                f"fix the cause and rerun the stage, or delete {self.dir} to start over"
            ) from exc
        try:
            state = BackupRecord.from_json(json.loads(text))
        except (ValueError, KeyError, TypeError) as exc:
            self.discard(f"{path} is unreadable ({type(exc).__name__}: {exc})")
            return None
        missing = [
            name
            for name in {epoch_file(state.done - 1), epoch_file(state.best_epoch)}
            if state.done and not (self.dir / name).is_file()
        ]
        if missing:
            self.discard(f"{self.dir / missing[0]} is missing")
            return None
        return state

    def discard(self, why: str) -> None:
        msg = "discarding the training backup in %s: %s; training restarts from epoch 1"
        logger.warning(msg, self.dir, why)
        self.clear()

    def restore(self, model: Any, epoch: int) -> None:
        """Load the weights and optimizer state saved after ``epoch`` into ``model``."""
        model.optimizer.build(model.trainable_variables)  # else Keras skips its variables
        model.load_weights(self.dir / epoch_file(epoch))

    def save_epoch(self, model: Any, epoch: int) -> None:
        with fsio.atomic_path(self.dir / epoch_file(epoch)) as tmp:
            model.save_weights(tmp)

    def close(self) -> None:
        """Nothing to release (the backup stays until :func:`discard_checkpoint`)."""

    def commit(self, state: BackupRecord) -> None:
        """Make ``state`` the one to resume from, then drop epoch files it no longer names."""
        fsio.atomic_write_json(self.dir / STATE_FILE, state.to_json(), indent=None)
        keep = {epoch_file(state.done - 1), epoch_file(state.best_epoch)}
        for p in self.dir.glob("epoch-*.weights.h5"):
            if p.name not in keep:
                p.unlink()


class WorkerCheckpointStore(CheckpointStore):
    """The backup as a non-chief worker of a multi-worker run uses it: read, never written.

    Only the chief writes the backup (a second writer would race it on a shared project
    directory). A non-chief worker must still resume at the chief's epoch and end on the
    same best weights, running the same TensorFlow ops as the chief on the way (the
    workers' collective ops must match one for one, or they abort). So it reads the chief's
    committed backup (the project directory is shared) and writes its own epoch files to a
    private temporary directory, deleted by :meth:`close` (Keras' own multi-worker pattern).
    """

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self._key: str | None = None
        self.scratch = Path(tempfile.mkdtemp(prefix="reprotrain-worker-"))

    def prepare(self, key: str | None) -> None:
        self._key = key

    def load(self) -> BackupRecord | None:
        fp = self.dir / FINGERPRINT_FILE
        if self._key is not None and not (fp.is_file() and fp.read_text().strip() == self._key):
            return None  # no backup, or one of other inputs (the chief discards it)
        return super().load()

    def discard(self, why: str) -> None:
        logger.warning("not resuming from the chief's backup in %s: %s", self.dir, why)

    def clear(self) -> None:
        for p in self.scratch.glob("epoch-*"):
            p.unlink()

    def restore(self, model: Any, epoch: int) -> None:
        own = self.scratch / epoch_file(epoch)
        model.optimizer.build(model.trainable_variables)
        # An epoch of this run from the own file; one from before a resume from the chief's.
        model.load_weights(own if own.is_file() else self.dir / epoch_file(epoch))

    def save_epoch(self, model: Any, epoch: int) -> None:
        model.save_weights(self.scratch / epoch_file(epoch))

    def commit(self, state: BackupRecord) -> None:
        keep = {epoch_file(state.done - 1), epoch_file(state.best_epoch)}
        for p in self.scratch.glob("epoch-*.weights.h5"):
            if p.name not in keep:
                p.unlink()

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)
