"""Every backbone: build, unfreeze, train a step, save/load with safe_mode; weights lookup;
user backbones (``package.module:function``) and their contract errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from reprotrain.config import BUILTIN_BACKBONES, ModelConfig, params_from_dict
from reprotrain.errors import ConfigError, ModelError
from reprotrain.models import backbones, transfer

KERAS_APPS = Path(keras.__file__).parent / "src" / "applications"
REPO = Path(__file__).resolve().parents[2]
#: The smallest input each architecture takes (all Keras applications accept 32 px).
SIZE = 32


def arrays(n: int = 8, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = (np.arange(n) % 2).astype(np.int32)
    x = rng.integers(0, 60, size=(n, size, size, 3)).astype(np.float32)
    x[y == 1, :, :, 0] += 180
    return x, y


def base_weights(model) -> dict[str, list[np.ndarray]]:
    return {lyr.name: [np.array(w) for w in lyr.weights] for lyr in transfer.get_base(model).layers}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BUILTIN_BACKBONES))
def test_backbone_builds_unfreezes_trains_and_round_trips(name: str, tmp_path: Path) -> None:
    keras.utils.set_random_seed(0)
    cfg = ModelConfig(backbone=name, image_size=SIZE, weights="none")
    model = transfer.build_model(cfg, num_classes=2, dropout=0.1)
    assert [lyr.name for lyr in model.layers] == [
        "image",
        "preprocess",
        "base",
        "pool",
        "dropout",
        "predictions",
    ]
    assert model.input_shape == (None, SIZE, SIZE, 3) and model.output_shape == (None, 2)
    base = transfer.get_base(model)
    assert not any(lyr.trainable for lyr in base.layers)

    names = transfer.unfreeze_top(model, 20)
    assert names, "the top 20 layers of every backbone hold some weights"
    frozen = backbones.frozen_kinds()
    top = base.layers[-20:]
    assert all(not lyr.trainable for lyr in base.layers[:-20])
    assert all(not n.trainable for n in base._flatten_layers() if isinstance(n, frozen))
    assert {n.split("/")[0] for n in names} <= {lyr.name for lyr in top}

    # Exactly the unfrozen layers and the head train; normalisation layers never do.
    unfrozen = {n.rsplit("/", 1)[-1] for n in names}
    expected = {
        id(w)
        for lyr in base._flatten_layers()
        if lyr.name in unfrozen
        for w in lyr.trainable_weights
    } | {id(w) for w in model.get_layer("predictions").trainable_weights}
    assert {id(w) for w in model.trainable_weights} == expected

    # One real training step (random weights: the updates may be tiny, but frozen layers,
    # BatchNorm statistics included, must not move at all).
    before = base_weights(model)
    # Eager: tracing a 100-300 layer graph for one step costs far more than the step.
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", run_eagerly=True)
    x, y = arrays()
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss)
    after = base_weights(model)
    changed = {
        k for k in before if any((a != b).any() for a, b in zip(before[k], after[k], strict=True))
    }
    assert changed <= {n.split("/")[0] for n in names}, changed

    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True, compile=False)
    np.testing.assert_allclose(model(x), loaded(x), rtol=1e-5, atol=1e-6)


def test_default_image_size_per_backbone() -> None:
    for name, size in BUILTIN_BACKBONES.items():
        got = params_from_dict({"model": {"backbone": name, "image_size": None}}).model
        assert got.image_size == size
    assert set(backbones.SPECS) == set(BUILTIN_BACKBONES)


@pytest.mark.slow
def test_preprocessing_matches_keras_preprocess_input() -> None:
    """Rescaling backbones equal Keras' own preprocess_input; the others preprocess inside."""
    x, _ = arrays(2)
    for name, fn in (
        ("mobilenet_v2", keras.applications.mobilenet_v2.preprocess_input),
        ("resnet50_v2", keras.applications.resnet_v2.preprocess_input),
    ):
        _, pre = backbones.build(ModelConfig(backbone=name, image_size=SIZE, weights="none"))
        np.testing.assert_allclose(np.asarray(pre(x)), fn(x.copy()), atol=1e-5)
    base, pre = backbones.build(
        ModelConfig(backbone="mobilenet_v3_small", image_size=SIZE, weights="none")
    )
    assert isinstance(pre, keras.layers.Identity)
    assert isinstance(base.layers[1], keras.layers.Rescaling)  # include_preprocessing=True


@pytest.mark.parametrize("name", list(BUILTIN_BACKBONES))
def test_weights_file_names_are_the_ones_keras_builds(name: str) -> None:
    """The file name we print is assembled from the same template the Keras source uses."""
    filename = backbones.imagenet_weights_filename(name, 1.0, 224)
    texts = " ".join(p.read_text() for p in KERAS_APPS.glob("*.py"))
    stem_patterns = {
        "mobilenet_v2": r"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_",
        "mobilenet_v3_small": r'f"weights_mobilenet_v3_\{model_name\}_no_top_v2.h5"',
        "mobilenet_v3_large": r'f"weights_mobilenet_v3_\{model_name\}_no_top_v2.h5"',
        "efficientnet_v2_b0": r'name="efficientnetv2-b0"',
        "resnet50_v2": r'f"\{weights_name\}_weights_tf_dim_ordering_tf_kernels_notop.h5"',
        "convnext_tiny": r'name="convnext_tiny"',
    }
    assert re.search(stem_patterns[name], texts), name
    assert filename.endswith(".h5")


#: Run in a fresh interpreter: Keras reads ``KERAS_HOME`` once, at import, so setting it
#: in this process would not stop Keras from finding a user's cached file (an exported
#: ``KERAS_HOME``, as ``.ci/run`` does, or a populated ``~/.keras/models``).
OFFLINE_SCRIPT = """
import json, sys
from pathlib import Path
from reprotrain.config import BUILTIN_BACKBONES, ModelConfig
from reprotrain.errors import ModelError
from reprotrain.models import backbones, transfer
home = Path(sys.argv[1])
# Only the empty home, not also Keras' /tmp/.keras fallback (used when home is read-only).
backbones.keras_cache_dirs = lambda: [home / "models"]
out = {}
for name in BUILTIN_BACKBONES:
    cfg = ModelConfig(backbone=name, image_size=224 if name == "mobilenet_v2" else 32)
    try:
        transfer.build_base(cfg)
        out[name] = None
    except ModelError as exc:
        out[name] = str(exc)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def offline_errors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str | None]:
    """Per backbone, the ModelError of ``weights: imagenet`` in a fresh process whose
    ``KERAS_HOME`` is empty and whose downloads cannot reach anything (None: no error)."""
    home = tmp_path_factory.mktemp("empty_keras_home")
    # An unreachable proxy makes the download fail the same way with or without internet.
    proxies = dict.fromkeys(
        ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"), "http://127.0.0.1:9"
    )
    env = {**os.environ, **proxies, "KERAS_HOME": str(home)}
    env.pop("NO_PROXY", None)
    env.pop("no_proxy", None)
    proc = subprocess.run(
        [sys.executable, "-c", OFFLINE_SCRIPT, str(home)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not list((home / "models").glob("*.h5")), "nothing was downloaded"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BUILTIN_BACKBONES))
def test_offline_without_weights_names_the_exact_file(
    name: str, offline_errors: dict[str, str | None]
) -> None:
    """Whatever the user's Keras cache holds (empty, ``~/.keras/models`` or an exported
    ``KERAS_HOME`` with the weights), an empty ``KERAS_HOME`` offline is a clear error."""
    expected = {
        "mobilenet_v2": "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
        "mobilenet_v3_small": "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
        "mobilenet_v3_large": "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",
        "efficientnet_v2_b0": "efficientnetv2-b0_notop.h5",
        "resnet50_v2": "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "convnext_tiny": "convnext_tiny_notop.h5",
    }[name]
    msg = offline_errors[name]
    assert msg is not None, f"{name}: weights=imagenet loaded without any cached file"
    assert expected in msg and "KERAS_HOME" in msg and "'none'" in msg
    # The name is the one Keras itself asked for: its URL ends with it.
    assert f"/{expected}" in msg


@pytest.mark.slow
def test_imagenet_mobilenet_v2_from_keras_home(keras_home: Path, monkeypatch) -> None:
    """The real ImageNet file, found offline under $KERAS_HOME/models, is what gets loaded."""
    monkeypatch.setenv("KERAS_HOME", str(keras_home))
    cfg = ModelConfig(backbone="mobilenet_v2", alpha=1.0, image_size=224, weights="imagenet")
    path = backbones.find_cached_weights(backbones.imagenet_weights_filename("mobilenet_v2"))
    if path is None:
        pytest.skip("no offline ImageNet MobileNetV2 1.0 weights in the assets")
    model = transfer.build_model(cfg, num_classes=2, dropout=0.2)
    kernel = transfer.get_base(model).get_layer("Conv_1").kernel.numpy()
    with h5py.File(path, "r") as f:
        found: list[str] = []
        f.visititems(lambda n, obj: found.append(n) if n.startswith("Conv_1/") else None)
        stored = np.asarray(f[next(n for n in found if "kernel" in n)])
    np.testing.assert_array_equal(kernel, stored)
    assert model.name == "mobilenetv2_1_224_transfer"


def test_mobilenet_v3_imagenet_alpha_is_checked() -> None:
    with pytest.raises(ModelError, match=r"alpha 0\.75 and 1\.0"):
        backbones.resolve_weights(
            ModelConfig(backbone="mobilenet_v3_small", alpha=0.35, image_size=SIZE)
        )


# ----------------------------------------------------------------------- user backbones
CUSTOM = "tests.models.custom_backbone"


@pytest.mark.slow
def test_custom_backbone_builds_trains_and_round_trips(tmp_path: Path) -> None:
    cfg = ModelConfig(backbone=f"{CUSTOM}:tiny", image_size=SIZE, weights="none")
    model = transfer.build_model(cfg, num_classes=2, dropout=0.0)
    assert model.name == "tiny_32_transfer"
    assert isinstance(model.get_layer("preprocess"), keras.layers.Rescaling)
    assert transfer.unfreeze_top(model, 10) == ["c1", "c2"]  # bn1 stays frozen
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x, y = arrays()
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_allclose(model.predict(x, verbose=0), loaded.predict(x, verbose=0))

    pooled = transfer.build_model(
        ModelConfig(backbone=f"{CUSTOM}:pooled", image_size=SIZE, weights="none"), 3, 0.0
    )
    assert isinstance(pooled.get_layer("pool"), keras.layers.Identity)
    assert pooled.output_shape == (None, 3)


@pytest.mark.parametrize(
    ("ref", "error", "match"),
    [
        ("no_such_pkg.mod:fn", ConfigError, "cannot import no_such_pkg.mod"),
        (f"{CUSTOM}:missing", ConfigError, "has no function 'missing'"),
        (f"{CUSTOM}:not_a_tuple", ModelError, r"returned Sequential; expected a function"),
        (f"{CUSTOM}:lambda_preprocess", ModelError, "not a Lambda"),
        (f"{CUSTOM}:flat_output", ModelError, "expected a 4-D feature map"),
        (f"{CUSTOM}:fails", ModelError, "the function failed: RuntimeError: no GPU found"),
    ],
)
def test_custom_backbone_contract_errors(ref: str, error: type, match: str) -> None:
    cfg = ModelConfig(backbone=ref, image_size=SIZE, weights="none")
    with pytest.raises(error, match=match) as err:
        transfer.build_model(cfg, num_classes=2, dropout=0.0)
    assert ref in str(err.value)


def test_backbone_param_validation() -> None:
    with pytest.raises(ConfigError, match=r"model\.backbone = 'vgg16': must be one of"):
        params_from_dict({"model": {"backbone": "vgg16"}})
    with pytest.raises(ConfigError, match=r"model\.image_size = None: must be set for a custom"):
        params_from_dict({"model": {"backbone": f"{CUSTOM}:tiny", "image_size": None}})
