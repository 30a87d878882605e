"""The model card: its numbers are the metrics it was given, its intervals are right, its
figures exist, and Grad-CAM gives a heat map of the feature map's shape."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from reprotrain.reports.card import (
    bootstrap_macro_f1,
    grad_cam,
    overlay,
    reliability_bins,
    wilson_interval,
    write_model_card,
)
from reprotrain.reports.figures import grad_cams

LABELS = ["ants", "bees", "wasps"]


def test_wilson_interval_matches_the_published_values() -> None:
    # Wilson (1927) / Newcombe (1998) example: 81 of 263 → [0.2553, 0.3662].
    lo, hi = wilson_interval(81, 263)
    assert lo == pytest.approx(0.2553, abs=1e-4) and hi == pytest.approx(0.3662, abs=1e-4)
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0) and wilson_interval(10, 10)[0] < 0.9
    assert wilson_interval(0, 10)[0] == 0.0


def test_f1_from_confusion_is_sklearns_macro_f1() -> None:
    from sklearn.metrics import f1_score

    from reprotrain.evaluation.metrics import f1_from_confusion

    rng = np.random.default_rng(0)
    for k, n in ((2, 50), (3, 40), (5, 12)):  # 5 classes in 12 images: some never occur
        y, p = rng.integers(0, k, n), rng.integers(0, k, n)
        counts = np.bincount(y * k + p, minlength=k * k).reshape(k, k)
        expected = f1_score(y, p, labels=np.arange(k), average="macro", zero_division=0)
        assert f1_from_confusion(counts) == pytest.approx(expected, abs=1e-12)


def test_bootstrap_macro_f1_is_seeded_and_matches_resampling_images() -> None:
    from sklearn.metrics import f1_score

    from reprotrain.evaluation.metrics import f1_from_confusion

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    p = np.where(rng.random(200) < 0.8, y, rng.integers(0, 3, 200))
    lo, hi = bootstrap_macro_f1(y, p, 3, seed=3)
    assert (lo, hi) == bootstrap_macro_f1(y, p, 3, seed=3)
    value = f1_score(y, p, average="macro")
    assert lo < value < hi
    # The same interval as the textbook bootstrap over resampled image indices (scored with
    # f1_from_confusion, which the test above ties to scikit-learn: 1000× faster).
    draws = rng.integers(0, 200, (4000, 200))
    cells = (y[draws] * 3 + p[draws]) + 9 * np.arange(4000)[:, None]
    confusions = np.bincount(cells.ravel(), minlength=4000 * 9).reshape(4000, 3, 3)
    textbook = np.percentile(f1_from_confusion(confusions), [2.5, 97.5])
    assert (lo, hi) == pytest.approx(tuple(textbook), abs=0.01)
    assert bootstrap_macro_f1(y, y, 3) == (1.0, 1.0)


def test_reliability_bins_count_every_prediction() -> None:
    probs = np.array([[0.95, 0.05], [0.55, 0.45], [0.5, 0.5], [0.2, 0.8]])
    rows = reliability_bins(np.array([0, 1, 0, 1]), probs, bins=5)
    assert sum(r["count"] for r in rows) == 4
    assert [r["count"] for r in rows] == [0, 0, 2, 1, 1]  # 0.5 and 0.55 share (0.4, 0.6]
    assert rows[2]["accuracy"] == 0.5 and rows[3]["accuracy"] == 1.0


@dataclass
class Worst:
    path: str
    true: int
    pred: int
    confidence: float
    image: np.ndarray


@pytest.fixture
def inputs() -> dict:
    from reprotrain.evaluation import classification_metrics

    rng = np.random.default_rng(1)
    y_true = np.repeat(np.arange(3), [20, 15, 5])
    logits = rng.normal(size=(40, 3)) + 2.5 * np.eye(3)[y_true]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    metrics = classification_metrics(y_true, probs, LABELS)
    stats = {
        "files_seen": 45,
        "images": 43,
        "quarantined": 2,
        "quarantine_reasons": {"empty file": 1, "not an image": 1},
        "duplicates": 0,
        "splits": {
            "train": {"total": 3, "classes": {"ants": 1, "bees": 1, "wasps": 1}},
            "test": {"total": 40, "classes": {"ants": 20, "bees": 15, "wasps": 5}},
        },
    }
    promotion = {
        "promoted": True,
        "alias": "champion",
        "version": 3,
        "accuracy": metrics["accuracy"],
        "champion_version": 2,
        "champion_accuracy": 0.71,
        "reason": "beats champion v2",
    }
    export = {
        "keras": {"accuracy": 0.9, "size_bytes": 9_000_000, "latency_ms": 40.0},
        "formats": {
            "tflite_float16": {
                "accuracy": 0.9,
                "agreement": 1.0,
                "size_bytes": 4_500_000,
                "latency_ms": 41.0,
                "shipped": True,
                "reason": "shipped: ok",
            },
            "tflite_int8": {
                "accuracy": 0.8,
                "agreement": 0.95,
                "size_bytes": 2_700_000,
                "latency_ms": 50.0,
                "shipped": False,
                "reason": "not shipped: agreement 0.95 < 0.98",
            },
        },
    }
    params = {
        "seed": 42,
        "data": {"source": "https://example.org/d.zip", "sha256": "ab" * 32},
        "model": {"alpha": 1.0, "image_size": 224, "weights": "imagenet"},
        "prepare": {"max_side": 320},
        "train_head": {"learning_rate": 0.001, "batch_size": 32, "epochs": 10},
        "finetune": {"unfreeze_top": 30, "learning_rate": 1e-5, "epochs": 5, "augment": True},
    }
    return dict(
        model_name="reprotrain-classifier",
        version=3,
        labels=LABELS,
        y_true=y_true,
        probs=probs,
        metrics=metrics,
        stats=stats,
        params=params,
        run_id="0123abcd",
        environment={"tensorflow": "2.21.0", "devices": "CPU:0"},
        epochs_run={"train_head": 7, "finetune": 5},
        promotion=promotion,
        export=export,
        reproduce="python -m reprotrain reproduce 0123abcd",
    )


@pytest.mark.slow
def test_card_figures_match_the_metrics_it_was_given(inputs: dict, tmp_path: Path) -> None:
    worst = [Worst("test/bees/b1.jpg", 1, 0, 0.93, np.zeros((32, 32, 3), np.uint8))]
    path = write_model_card(tmp_path / "reports" / "model_card.md", worst=worst, **inputs)
    text = path.read_text()
    m, y, probs = inputs["metrics"], inputs["y_true"], inputs["probs"]
    correct = int((probs.argmax(1) == y).sum())
    lo, hi = wilson_interval(correct, len(y))
    assert f"| accuracy | {m['accuracy']:.4f} | [{lo:.4f}, {hi:.4f}] Wilson |" in text
    assert f"| macro F1 | {m['macro_f1']:.4f} |" in text
    assert f"| ECE (calibration error) | {m['ece']:.4f} |" in text
    for name in LABELS:
        pc = m["per_class"][name]
        assert re.search(
            rf"\| {name} \| {pc['precision']:.4f} \| {pc['recall']:.4f} \| \[[0-9.]+, [0-9.]+\] "
            rf"\| {pc['f1']:.4f} \| {pc['support']} \|",
            text,
        ), name
    cm = np.zeros((3, 3), int)
    np.add.at(cm, (y, probs.argmax(1)), 1)
    assert "| ants | " + " | ".join(map(str, cm[0])) + " |" in text
    assert "| test | 20 | 15 | 5 | 40 |" in text
    assert "quarantined: 2 (empty file: 1, not an image: 1)" in text
    assert "| decision | promoted |" in text and "v2 (0.7100)" in text
    assert (
        "| tflite_int8 | 0.8000 | 0.9500 | 2.7 MB | 50.0 ms | no: agreement 0.95 < 0.98 |" in text
    )
    assert "| tflite_float16 | 0.9000 | 1.0000 | 4.5 MB | 41.0 ms | yes |" in text
    assert "| epochs run (train_head) | 7 |" in text
    assert "`0123abcd`" in text and "python -m reprotrain reproduce 0123abcd" in text
    assert "`test/bees/b1.jpg`: true `bees`, predicted `ants` (0.930)" in text
    for fig in ("model_card/reliability.png", "model_card/confusion.png"):
        assert f"]({fig})" in text and (path.parent / fig).stat().st_size > 1000


@pytest.mark.slow
def test_grad_cam_on_the_nested_base_and_on_a_plain_cnn(tmp_path: Path) -> None:
    import keras

    from reprotrain.config import ModelConfig
    from reprotrain.models.transfer import build_model

    keras.utils.set_random_seed(0)
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype(np.uint8)
    transfer = build_model(ModelConfig(alpha=0.35, image_size=64, weights="none"), 3, 0.2)
    heat = grad_cam(transfer, image)
    assert heat.shape == tuple(transfer.get_layer("base").output.shape[1:3]) == (2, 2)
    assert heat.min() >= 0 and heat.max() <= 1
    # A batch in one pass gives each image its own map, for the class asked for.
    other = np.random.default_rng(1).integers(0, 256, (64, 64, 3)).astype(np.uint8)
    batch = grad_cams(transfer, np.stack([image, other]), [0, 2])
    assert batch.shape == (2, 2, 2)
    np.testing.assert_allclose(batch[0], grad_cam(transfer, image, 0), atol=1e-5)
    np.testing.assert_allclose(batch[1], grad_cam(transfer, other, 2), atol=1e-5)

    cnn = keras.Sequential(
        [
            keras.Input((64, 64, 3)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.MaxPooling2D(4),
            keras.layers.Conv2D(4, 3, activation="relu", name="last"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    heat = grad_cam(cnn, image, class_index=1)
    assert heat.shape == (13, 13) and heat.min() >= 0 and heat.max() <= 1
    blended = overlay(image, heat)
    assert blended.shape == image.shape and blended.dtype == np.uint8

    worst = [Worst("x.jpg", 0, 1, 0.8, image)]
    path = write_model_card(
        tmp_path / "card.md",
        model=cnn,
        worst=worst,
        model_name="m",
        labels=["a", "b"],
        y_true=np.array([0, 1]),
        probs=np.array([[0.2, 0.8], [0.3, 0.7]]),
        metrics={},
        stats={},
        params={},
        environment={},
        run_id="r",
    )
    assert "![Grad-CAM](model_card/gradcam_1.png)" in path.read_text()
    assert (tmp_path / "model_card" / "gradcam_1.png").is_file()


def test_card_says_what_fine_tuning_added_over_the_head(inputs: dict) -> None:
    """The fine-tuning paragraph: the gain's one line, both accuracies with their Wilson
    intervals and the paired counts; a run that added nothing says so, and what to try."""
    from reprotrain.evaluation.gain import finetune_gain
    from reprotrain.reports.card import CardData, render_card

    y = inputs["y_true"]
    tuned = inputs["probs"].argmax(1)
    head = tuned.copy()
    wrong = np.flatnonzero(tuned == y)[:6]
    head[wrong] = (y[wrong] + 1) % 3  # the head missed six images fine-tuning gets right
    gain = finetune_gain(y, head, tuned, alpha=0.05)
    text = render_card(CardData(**inputs, finetune_gain=gain))
    lo, hi = gain["head_ci"]
    assert "### What fine-tuning added" in text
    assert "Fine-tuning beat the head: " in text
    assert f"| head only | {gain['head_accuracy']:.4f} | [{lo:.4f}, {hi:.4f}] Wilson |" in text
    assert f"fine-tuning fixed 6 and broke 0, p = {gain['mcnemar']['p_value']:.3g}." in text

    nothing = finetune_gain(y, tuned, tuned, alpha=0.05, kept_head=True)
    text = render_card(CardData(**inputs, finetune_gain=nothing))
    line = next(ln for ln in text.splitlines() if ln.startswith("Fine-tuning added nothing"))
    assert "kept it" in line and "finetune.learning_rate" in line
