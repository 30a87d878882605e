"""Hardware and reproducibility knobs, applied once at the start of a training stage.

Why one module: seeds, op determinism, the mixed-precision policy and the distribution
strategy are process-global in TensorFlow/Keras and must be set *before* the model is
built; doing it in one ``configure`` call makes the order right every time and gives the
stage one object (:class:`RuntimeInfo`) to log. The decisions themselves (``auto`` → what?)
are pure functions of the visible devices so they can be unit-tested on a CPU-only machine.
"""

from __future__ import annotations

import importlib.metadata
import logging
import platform
from dataclasses import dataclass, field
from typing import Any

from reprotrain.config import RuntimeConfig
from reprotrain.errors import ConfigError

logger = logging.getLogger(__name__)

MIXED = "mixed_float16"
FLOAT32 = "float32"


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
    """``'none'`` or ``'mirrored'`` for ``runtime.distribute``.

    ``auto`` mirrors only across more than one GPU (one device gains nothing from a
    strategy). An explicit ``mirrored`` mirrors over the GPUs, or over the logical CPU
    devices when there are no GPUs (how the strategy is tested on a CPU machine).
    """
    if setting == "none":
        return "none"
    if setting == "auto":
        return "mirrored" if gpus > 1 else "none"
    if setting == "mirrored":
        if gpus == 0 and cpus < 2:
            logger.warning(
                "runtime.distribute = mirrored but only one device is visible; "
                "MirroredStrategy will run one replica"
            )
        return "mirrored"
    raise ConfigError(f"runtime.distribute = {setting!r}: must be 'auto', 'none' or 'mirrored'")


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


def configure(cfg: RuntimeConfig, seed: int) -> RuntimeInfo:
    """Seed everything, set determinism and the dtype policy, and pick the strategy.

    Call once per process, before building a model: the policy applies to layers created
    afterwards and the strategy's scope must wrap model creation and ``compile``.
    """
    import keras
    import tensorflow as tf

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
    if distribute == "mirrored":
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
    }
    if info is not None:
        env.update(
            {
                "seed": str(info.seed),
                "deterministic": str(info.deterministic).lower(),
                "jit_compile": str(info.jit_compile).lower(),
                "distribute": info.distribute,
                "replicas": str(info.replicas),
            }
        )
    return env
