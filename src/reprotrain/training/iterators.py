"""Where a resumed or multi-worker run's data starts.

Why apart from the loop: a resumed run must see the shuffles and augmentation seeds the
killed run's remaining epochs would have seen, and every worker of a cluster must start at
the same epoch on its own share of the batches. These are facts about tf.data iterators
and the cluster, not about how an epoch is trained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tensorflow as tf

from reprotrain.errors import ConfigError
from reprotrain.runtime import RuntimeInfo, gather_from_workers


def shard_across_workers(ds: Any) -> Any:
    """``ds`` with its multi-worker auto-shard policy set explicitly to ``DATA``.

    Each worker then reads every TFRecord shard and keeps every N-th batch. ``FILE`` (each
    worker reads its own shard files) saves reading, but needs at least one file per
    worker and gives workers different numbers of batches when the files differ in size;
    a worker that runs out first leaves the others waiting in a collective op. Prepared
    splits have few shards (``prepare.shard_size`` images each), so ``DATA`` is the safe
    choice; TensorFlow's default (``AUTO``) would pick ``FILE`` for TFRecords.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def check_workers_agree(info: RuntimeInfo, value: int, what: str, backup: Path) -> None:
    """Every worker must start from the same point, or their collectives mismatch (a hang
    or garbage): compare ``value`` across workers and stop all of them if it differs."""
    seen = sorted(set(gather_from_workers(info, value)))
    if len(seen) > 1:
        raise ConfigError(
            f"multi-worker: the workers see different training backups in {backup} "
            f"({what}: {seen}); put the project directory on a file system all workers "
            f"share (docs/scale-out.md), or delete {backup} and rerun"
        )


def iterators_created(loop: str, epochs: int, *, known_length: bool) -> int:
    """Iterators a training loop creates over the train dataset in its first ``epochs``.

    The custom loop: one per epoch. Keras 3's ``fit`` (its ``EpochIterator``): for a dataset
    of known length, two per epoch (one at the end of each epoch, which the next epoch
    replaces with its own); for an unknown length, one per epoch (counted on Keras 3.15).
    ``test_a_resumed_run_trains_what_an_uninterrupted_one_trains`` fails if Keras changes
    this.
    """
    return 2 * epochs if loop == "fit" and known_length else epochs


def skip_iterators(ds: Any, iterators: int) -> None:
    """Advance ``ds``'s per-iteration randomness past ``iterators`` iterators, reading nothing.

    Why: the pipeline reshuffles and draws fresh augmentation seeds each time an iterator is
    created (``reshuffle_each_iteration``, ``Dataset.random(rerandomize_each_iteration)``),
    and a new process starts that sequence over. A run resumed after epoch 3 would train
    epoch 4 on epoch 1's order and augmentation, and end with other weights than the run
    that was never stopped. Creating (and dropping) the iterators the finished epochs
    created (:func:`iterators_created`) draws their seeds, so the resumed epochs see what
    they would have seen. Not on multi-worker clusters, where the strategy rebuilds each
    worker's dataset.
    """
    for _ in range(iterators):
        iter(ds)
