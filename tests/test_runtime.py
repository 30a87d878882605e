"""Runtime knobs: the pure decisions, configure() on this CPU, and MirroredStrategy over two
logical CPU devices in a real subprocess (device layout must be set before TF starts)."""

from __future__ import annotations

import json
import sys
import textwrap

import keras
import pytest

from reprotrain import runtime
from reprotrain.config import RuntimeConfig
from reprotrain.errors import ConfigError
from tests.conftest import REPO, run, subprocess_env


def test_resolve_mixed_precision() -> None:
    assert runtime.resolve_mixed_precision("auto", gpus=0) == "float32"
    assert runtime.resolve_mixed_precision("auto", gpus=1) == "mixed_float16"
    assert runtime.resolve_mixed_precision("on", gpus=0) == "mixed_float16"
    assert runtime.resolve_mixed_precision("off", gpus=4) == "float32"
    with pytest.raises(ConfigError):
        runtime.resolve_mixed_precision("fp8", gpus=1)


def test_resolve_distribute() -> None:
    assert runtime.resolve_distribute("auto", gpus=0) == "none"
    assert runtime.resolve_distribute("auto", gpus=1) == "none"
    assert runtime.resolve_distribute("auto", gpus=2) == "mirrored"
    assert runtime.resolve_distribute("none", gpus=8) == "none"
    assert runtime.resolve_distribute("mirrored", gpus=0, cpus=2) == "mirrored"
    assert runtime.resolve_distribute("multi_worker", gpus=0) == "multi_worker"
    with pytest.raises(ConfigError):
        runtime.resolve_distribute("tpu", gpus=0)


def test_worker_role_from_tf_config() -> None:
    two = {"worker": ["a:1", "b:1"]}
    role = runtime.worker_role(json.dumps({"cluster": two, "task": {"type": "worker", "index": 1}}))
    assert role == runtime.WorkerRole(index=1, count=2, is_chief=False)
    role = runtime.worker_role(json.dumps({"cluster": two, "task": {"type": "worker", "index": 0}}))
    assert role.is_chief and role.index == 0
    # With a chief task, it is the chief and the workers come after it.
    cluster = {"chief": ["c:1"], "worker": ["a:1", "b:1"]}
    chief = runtime.worker_role(
        json.dumps({"cluster": cluster, "task": {"type": "chief", "index": 0}})
    )
    assert chief == runtime.WorkerRole(index=0, count=3, is_chief=True)
    w0 = runtime.worker_role(
        json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}})
    )
    assert w0 == runtime.WorkerRole(index=1, count=3, is_chief=False)
    for bad, message in (
        (None, "needs the TF_CONFIG environment variable"),
        ("", "needs the TF_CONFIG environment variable"),
        ("{not json", "TF_CONFIG is malformed"),
        (json.dumps({"cluster": two}), "TF_CONFIG is malformed"),
        (json.dumps({"cluster": two, "task": {"type": "worker", "index": 2}}), "not in its"),
        (json.dumps({"cluster": two, "task": {"type": "ps", "index": 0}}), "not in its"),
    ):
        with pytest.raises(ConfigError, match=message):
            runtime.worker_role(bad)


def test_multi_worker_without_tf_config_is_one_line_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="TF_CONFIG"):
        runtime.configure(RuntimeConfig(distribute="multi_worker"), seed=1, multi_worker=True)
    # Stages that do not train (evaluate, export) run as one process.
    info = runtime.configure(RuntimeConfig(distribute="multi_worker"), seed=1)
    assert info.distribute == "none" and info.num_workers == 1 and info.is_chief


def test_configure_on_cpu_and_environment_info() -> None:
    info = runtime.configure(RuntimeConfig(), seed=3)
    assert info.mixed_precision == "float32" == keras.mixed_precision.global_policy().name
    assert info.distribute == "none" and info.replicas == 1
    env = runtime.environment_info(info)
    for key in (
        "python",
        "tensorflow",
        "keras",
        "mlflow",
        "dvc",
        "devices",
        "cuda",
        "cudnn",
        "mixed_precision",
        "seed",
        "deterministic",
    ):
        assert isinstance(env[key], str) and env[key], key
    assert env["seed"] == "3" and env["deterministic"] == "true"
    assert env["mlflow"][0].isdigit() and env["dvc"][0].isdigit()
    assert "CPU" in env["devices"]
    # The test process runs like a stage process (tests/conftest.py): the caching BFC allocator.
    assert env["cpu_allocator"] == "bfc"


MIRRORED = textwrap.dedent(
    """
    import json, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import dataclasses, tempfile
    from pathlib import Path
    from reprotrain import runtime, training
    from reprotrain.config import RuntimeConfig, TrainHeadConfig
    from reprotrain.errors import ConfigError
    from reprotrain.models import transfer
    from tests.models.tiny import tiny_arrays, tiny_dataset, tiny_model_cfg
    info = runtime.configure(RuntimeConfig(distribute="mirrored"), seed=1)
    with info.strategy.scope():
        model = transfer.build_model(tiny_model_cfg(), 2, 0.2)
    x, y = tiny_arrays(16)
    cfg = TrainHeadConfig(epochs=1, batch_size=8, feature_cache="off")
    tmp = Path(tempfile.mkdtemp())
    r = training.train(model, tiny_dataset(x, y), tiny_dataset(x, y), cfg, info,
                       training.RunOptions(tmp / "c"))
    try:
        training.train(model, tiny_dataset(x, y), tiny_dataset(x, y),
                       dataclasses.replace(cfg, loop="custom"), info,
                       training.RunOptions(tmp / "d"))
        custom = "ran"
    except ConfigError as exc:
        custom = str(exc)
    cpus = len(tf.config.list_logical_devices("CPU"))
    auto = runtime.resolve_distribute("auto", gpus=0, cpus=cpus)
    print(json.dumps({"replicas": info.replicas, "distribute": info.distribute,
                      "strategy": type(info.strategy).__name__, "devices": info.devices,
                      "epochs": r.history["epoch"], "custom": custom, "auto": auto}))
    """
)


@pytest.mark.slow
def test_mirrored_strategy_over_two_logical_cpus() -> None:
    proc = run([sys.executable, "-c", MIRRORED], REPO, subprocess_env(), timeout=300)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["strategy"] == "MirroredStrategy"
    assert out["replicas"] == 2 and len(out["devices"]) == 2
    assert out["epochs"] == [1]
    assert "loop = custom runs on one device" in out["custom"]
    assert out["auto"] == "none"  # auto mirrors only across GPUs
