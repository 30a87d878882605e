"""Hardware and reproducibility knobs, applied once at the start of a training stage.

Why one module: seeds, op determinism, the mixed-precision policy and the distribution
strategy are process-global in TensorFlow/Keras and must be set *before* the model is
built; doing it in one ``configure`` call makes the order right every time and gives the
stage one object (:class:`RuntimeInfo`) to log. The decisions themselves (``auto`` → what?)
are pure functions of the visible devices so they can be unit-tested on a CPU-only machine.

``multi_worker`` trains one model over several processes (usually one per machine) with
``tf.distribute.MultiWorkerMirroredStrategy``: the cluster comes from the standard
``TF_CONFIG`` environment variable, which any scheduler can set per process (see
docs/scale-out.md). Worker 0 (or the ``chief`` task, when the cluster names one) is the
chief: it alone writes the model, metrics, training backup and MLflow run.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import logging
import os
import platform
from dataclasses import dataclass, field
from typing import Any

from reprotrain.config import RuntimeConfig
from reprotrain.errors import ConfigError

logger = logging.getLogger(__name__)

MIXED = "mixed_float16"
FLOAT32 = "float32"


def resolve_augment_placement(setting: str, gpus: int) -> str:
    """``input`` or ``model`` for ``pipeline.augment.placement``.

    On a GPU the host's cores cannot keep up with the per-pixel resampling of rotation and
    zoom (on 2 CPU cores it costs about as much as decoding the JPEG): there ``auto`` runs it
    in the train step, on the GPU. On a CPU-only machine both places share the same cores,
    and tf.data overlaps it with the step, so ``auto`` keeps it in the input pipeline.
    """
    if setting in ("input", "model"):
        return setting
    if setting == "auto":
        return "model" if gpus > 0 else "input"
    raise ConfigError(
        f"pipeline.augment.placement = {setting!r}: must be 'auto', 'input' or 'model'"
    )


def gpu_count() -> int:
    """Logical GPUs TensorFlow sees (initialises TensorFlow's devices)."""
    import tensorflow as tf

    return len(tf.config.list_logical_devices("GPU"))


def resolve_mixed_precision(setting: str, gpus: int) -> str:
    """The Keras dtype policy for ``runtime.mixed_precision``.

    float16 math only pays off on GPUs with tensor cores; on a CPU it is slower and less
    accurate, so ``auto`` means mixed precision exactly when a GPU is visible.
    """
    if setting == "on":
        return MIXED
    if setting == "off":
        return FLOAT32
    if setting == "auto":
        return MIXED if gpus > 0 else FLOAT32
    raise ConfigError(f"runtime.mixed_precision = {setting!r}: must be 'auto', 'on' or 'off'")


def resolve_distribute(setting: str, gpus: int, cpus: int = 1) -> str:
    """``'none'``, ``'mirrored'`` or ``'multi_worker'`` for ``runtime.distribute``.

    ``auto`` mirrors only across more than one GPU (one device gains nothing from a
    strategy). An explicit ``mirrored`` mirrors over the GPUs, or over the logical CPU
    devices when there are no GPUs (how the strategy is tested on a CPU machine).
    ``multi_worker`` is never chosen automatically: it needs a cluster (``TF_CONFIG``).
    """
    if setting in ("none", "multi_worker"):
        return setting
    if setting == "auto":
        return "mirrored" if gpus > 1 else "none"
    if setting == "mirrored":
        if gpus == 0 and cpus < 2:
            logger.warning(
                "runtime.distribute = mirrored but only one device is visible; "
                "MirroredStrategy will run one replica"
            )
        return "mirrored"
    raise ConfigError(
        f"runtime.distribute = {setting!r}: must be 'auto', 'none', 'mirrored' or 'multi_worker'"
    )


@dataclass(frozen=True)
class WorkerRole:
    """This process's place in a multi-worker cluster."""

    index: int  # 0..count-1: the chief task first (when there is one), then the workers
    count: int  # number of training tasks (chief + workers)
    is_chief: bool


def worker_role(tf_config: str | None) -> WorkerRole:
    """Parse ``TF_CONFIG`` (TensorFlow's cluster spec) into this process's role.

    The chief follows TensorFlow's rule: the ``chief`` task when the cluster has one,
    else worker 0. A missing or malformed value is a one-line ConfigError, not a hang:
    MultiWorkerMirroredStrategy without a cluster silently trains alone.
    """
    example = (
        '\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
        '"task": {"type": "worker", "index": 0}}\''
    )
    if not tf_config or not tf_config.strip():
        raise ConfigError(
            "runtime.distribute = multi_worker needs the TF_CONFIG environment variable, "
            f"e.g. TF_CONFIG={example} (see docs/scale-out.md)"
        )
    try:
        spec = json.loads(tf_config)
        cluster, task = spec["cluster"], spec["task"]
        kind, index = str(task["type"]), int(task["index"])
        jobs = {name: list(cluster[name]) for name in ("chief", "worker") if name in cluster}
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"TF_CONFIG is malformed ({type(exc).__name__}: {exc}); expected {example}"
        ) from None
    if kind not in jobs or not 0 <= index < len(jobs[kind]):
        raise ConfigError(
            f"TF_CONFIG: task {kind}:{index} is not in its cluster "
            f"({', '.join(f'{k}: {len(v)}' for k, v in jobs.items()) or 'no chief/worker job'})"
        )
    count = sum(len(v) for v in jobs.values())
    is_chief = kind == "chief" or ("chief" not in jobs and index == 0)
    rank = index + (1 if kind == "worker" and "chief" in jobs else 0)
    return WorkerRole(index=rank, count=count, is_chief=is_chief)


@dataclass
class RuntimeInfo:
    """What ``configure`` applied; the stage logs it and training uses ``strategy``."""

    seed: int
    deterministic: bool
    mixed_precision: str
    jit_compile: bool
    distribute: str
    replicas: int
    devices: list[str] = field(default_factory=list)
    strategy: Any = None  # tf.distribute.Strategy
    worker_index: int = 0
    num_workers: int = 1
    is_chief: bool = True  # False: train in step with the others, write nothing shared


def configure(cfg: RuntimeConfig, seed: int, *, multi_worker: bool = False) -> RuntimeInfo:
    """Seed everything, set determinism and the dtype policy, and pick the strategy.

    Call once per process, before building a model: the policy applies to layers created
    afterwards and the strategy's scope must wrap model creation and ``compile``.
    ``multi_worker`` creates its strategy first of all: TensorFlow configures the
    collective ops when the strategy is created, which must happen before any other op.
    Only callers that pass ``multi_worker=True`` (the training stages) join a cluster;
    for the others (evaluate, export, tune) ``runtime.distribute: multi_worker`` means one
    process on one machine (``none``).
    """
    import keras
    import tensorflow as tf

    role = WorkerRole(index=0, count=1, is_chief=True)
    multi = None
    if cfg.distribute == "multi_worker" and not multi_worker:
        logger.info("runtime.distribute = multi_worker applies to training; one process here")
        cfg = dataclasses.replace(cfg, distribute="none")
    if cfg.distribute == "multi_worker":
        role = worker_role(os.environ.get("TF_CONFIG"))
        multi = tf.distribute.MultiWorkerMirroredStrategy()
        _patch_keras_for_multi_worker()
    keras.utils.set_random_seed(seed)
    if cfg.deterministic:
        # Same inputs → bit-identical weights on CPU; costs a little speed on GPU.
        tf.config.experimental.enable_op_determinism()

    gpus = tf.config.list_logical_devices("GPU")
    cpus = tf.config.list_logical_devices("CPU")
    policy = resolve_mixed_precision(cfg.mixed_precision, len(gpus))
    keras.mixed_precision.set_global_policy(policy)

    distribute = resolve_distribute(cfg.distribute, len(gpus), len(cpus))
    devices = [d.name for d in (gpus or cpus)]
    if multi is not None:
        strategy = multi
    elif distribute == "mirrored":
        strategy = tf.distribute.MirroredStrategy(devices=devices)
    else:
        strategy = tf.distribute.get_strategy()  # the default, single-device strategy
    info = RuntimeInfo(
        seed=seed,
        deterministic=cfg.deterministic,
        mixed_precision=policy,
        jit_compile=cfg.jit_compile,
        distribute=distribute,
        replicas=int(strategy.num_replicas_in_sync),
        devices=devices,
        strategy=strategy,
        worker_index=role.index,
        num_workers=role.count,
        is_chief=role.is_chief,
    )
    if multi is not None:
        logger.info(
            "multi-worker: this is worker %d of %d (%s)",
            role.index,
            role.count,
            "chief: writes the outputs" if role.is_chief else "not chief: writes nothing shared",
        )
    logger.info(
        "runtime: seed=%d deterministic=%s precision=%s jit=%s distribute=%s replicas=%d "
        "devices=%s",
        seed,
        cfg.deterministic,
        policy,
        cfg.jit_compile,
        distribute,
        info.replicas,
        ",".join(devices),
    )
    return info


def gather_from_workers(info: RuntimeInfo, value: int) -> list[int]:
    """``value`` from every worker, in worker order: a collective op, so every worker of a
    multi-worker run must call it at the same point (``[value]`` on one process)."""
    if info.num_workers < 2:
        return [value]
    import tensorflow as tf

    strategy = info.strategy

    @tf.function
    def gather() -> Any:
        local = strategy.run(lambda: tf.constant([value], tf.int64))
        return strategy.gather(local, axis=0)

    return [int(v) for v in gather().numpy()]


def wait_for_workers(info: RuntimeInfo) -> None:
    """The end of a multi-worker stage: every worker waits here until all have arrived.

    The chief has more to do after training (saving, MLflow); a worker that exits before
    it stops sending heartbeats, and TensorFlow then aborts the chief's collectives and
    leaves it hanging at exit (tensorflow/tensorflow#58434). Leaving together avoids it.
    """
    gather_from_workers(info, info.worker_index)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment_info(info: RuntimeInfo | None = None) -> dict[str, str]:
    """Versions, devices and runtime settings as strings (MLflow tags, ``*.json`` headers).

    Versions of mlflow/dvc come from package metadata so that this does not import them.
    """
    import keras
    import tensorflow as tf

    build = tf.sysconfig.get_build_info()
    physical = tf.config.list_physical_devices()
    env = {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "mlflow": _version("mlflow"),
        "dvc": _version("dvc"),
        "platform": platform.platform(),
        "devices": ",".join(f"{d.device_type}:{d.name.rsplit(':', 1)[-1]}" for d in physical),
        "cuda": str(build.get("cuda_version", "none")),
        "cudnn": str(build.get("cudnn_version", "none")),
        "mixed_precision": keras.mixed_precision.global_policy().name,
        "cpu_allocator": cpu_allocator(),
    }
    if info is not None:
        env.update(
            {
                "seed": str(info.seed),
                "deterministic": str(info.deterministic).lower(),
                "jit_compile": str(info.jit_compile).lower(),
                "distribute": info.distribute,
                "replicas": str(info.replicas),
                "workers": str(info.num_workers),
            }
        )
    return env


def cpu_allocator() -> str:
    """The allocator TensorFlow's CPU tensors come from in this process: ``bfc`` (the
    default a stage process gets from ``cli.run_main``, for speed; results are the same) or
    ``malloc``.

    Asked of TensorFlow rather than read from ``TF_CPU_ALLOCATOR_USE_BFC``: the variable only
    counts if it was set before the process's first op, and only the BFC allocator keeps the
    statistics ``get_memory_info`` reports. With oneDNN on (TensorFlow's default on CPUs
    with AVX-512), the CPU allocator is oneDNN's, a BFC allocator, whatever the variable says.
    """
    import tensorflow as tf

    try:
        tf.config.experimental.get_memory_info("CPU:0")
    except ValueError:
        return "malloc"
    return "bfc"


def _patch_keras_for_multi_worker() -> None:
    """Work around Keras 3's two MultiWorkerMirroredStrategy bugs (keras-team/keras#20585,
    open at Keras 3.15), so ``fit``/``evaluate`` run across workers.

    1. ``_maybe_symbolic_build`` all-reduces the whole first batch (a tuple) with
       ``strategy.reduce``, which MWMS rejects ("Attempt to convert a value (PerReplica...)").
       It only needs the batch's shapes and dtypes, so we build from this worker's part.
    2. ``reduce_per_replica`` averages per-replica metric values with ``axis=0``, which fails
       on scalars; ``axis=None`` is the cross-worker mean Keras means.

    Patched on the classes (process-wide) only in a multi-worker process; the multi-worker
    test (tests/training/test_multiworker.py) fails loudly if a Keras upgrade changes these
    internals.
    """
    import tensorflow as tf
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer

    if getattr(trainer, "_reprotrain_patched", False):
        return
    original_reduce = trainer.reduce_per_replica

    def local_part(strategy: Any, value: Any) -> Any:
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def maybe_symbolic_build(self: Any, iterator: Any = None, data_batch: Any = None) -> None:
        if self._distribute_strategy is None:
            return
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = tree.map_structure(
                    lambda v: local_part(self.distribute_strategy, v), next(it)
                )
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    def reduce_per_replica(values: Any, strategy: Any, reduction: str = "auto") -> Any:
        if reduction in ("auto", "mean") and not isinstance(strategy, tf.distribute.TPUStrategy):
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original_reduce(values, strategy, reduction)

    trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    trainer.reduce_per_replica = reduce_per_replica
    trainer._reprotrain_patched = True
