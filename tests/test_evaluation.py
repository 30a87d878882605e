"""Metrics against hand-computed cases (binary and 3-class), curves, digests, and the
evaluate stage's library path on a tiny prepared dataset with a real saved model."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reprotrain import evaluation
from reprotrain.config import PipelineConfig
from reprotrain.errors import DataError, ModelError

# Binary: the classic scikit-learn docs example, scores of class 1 = [0.1, 0.4, 0.35, 0.8].
Y2 = np.array([0, 0, 1, 1])
P2 = np.array([[0.9, 0.1], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]])

# Three classes; predictions 0,1,1,1,2,0 → two mistakes (rows 1 and 5).
Y3 = np.array([0, 0, 1, 1, 2, 2])
P3 = np.array(
    [
        [0.7, 0.2, 0.1],
        [0.3, 0.4, 0.3],
        [0.1, 0.8, 0.1],
        [0.2, 0.5, 0.3],
        [0.1, 0.3, 0.6],
        [0.5, 0.2, 0.3],
    ]
)


def test_binary_metrics_by_hand() -> None:
    m = evaluation.classification_metrics(Y2, P2, ["neg", "pos"], calibration_bins=10)
    assert m["accuracy"] == pytest.approx(0.75)
    # -mean(log .9, log .6, log .35, log .8)
    assert m["loss"] == pytest.approx(-np.mean(np.log([0.9, 0.6, 0.35, 0.8])))
    # cm = [[2, 0], [1, 1]]: neg P=2/3 R=1 F1=.8; pos P=1 R=.5 F1=2/3
    assert m["per_class"]["neg"] == pytest.approx(
        {"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2}
    )
    assert m["per_class"]["pos"] == pytest.approx(
        {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2}
    )
    assert m["macro_precision"] == pytest.approx(5 / 6)
    assert m["macro_recall"] == pytest.approx(0.75)
    assert m["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert m["weighted_f1"] == pytest.approx((0.8 + 2 / 3) / 2)  # equal supports
    # 3 of the 4 (pos, neg) pairs are ordered correctly.
    assert m["roc_auc"] == pytest.approx(0.75)
    # Steps: recall .5 at precision 1, recall 1 at precision 2/3.
    assert m["average_precision"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # Every example in its own bin: mean |correct - confidence|.
    assert m["ece"] == pytest.approx((0.1 + 0.4 + 0.65 + 0.2) / 4)
    assert not any(k.startswith("top_") for k in m)
    json.dumps(m, allow_nan=False)  # valid JSON for DVC


def test_three_class_metrics_by_hand() -> None:
    m = evaluation.classification_metrics(Y3, P3, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    cm = evaluation.confusion_matrix(Y3, P3.argmax(1), 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    pc = m["per_class"]
    assert [pc[c]["precision"] for c in "abc"] == pytest.approx([0.5, 2 / 3, 1.0])
    assert [pc[c]["recall"] for c in "abc"] == pytest.approx([0.5, 1.0, 0.5])
    assert [pc[c]["f1"] for c in "abc"] == pytest.approx([0.5, 0.8, 2 / 3])
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    # One-vs-rest AUCs: a 7/8, b 8/8, c 7/8 (a tie between a positive and a negative
    # 0.3 counts one half).
    assert m["roc_auc"] == pytest.approx((7 / 8 + 1 + 7 / 8) / 3)
    # Two bins: (0, .5] holds confidences .4 (wrong), .5 (correct), .5 (wrong); (.5, 1]
    # holds .7, .8, .6 (all correct).
    ece = evaluation.expected_calibration_error(Y3, P3, bins=2)
    assert ece == pytest.approx(3 / 6 * abs(1 / 3 - 1.4 / 3) + 3 / 6 * abs(1 - 2.1 / 3))


def test_weighted_averages_use_support() -> None:
    y = np.array([0, 0, 0, 1])
    p = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7]])
    m = evaluation.classification_metrics(y, p, ["x", "y"])
    # x: P=1 R=2/3 ; y: P=1/2 R=1
    assert m["weighted_recall"] == pytest.approx(0.75 * 2 / 3 + 0.25 * 1)
    assert m["weighted_precision"] == pytest.approx(0.75 * 1 + 0.25 * 0.5)
    assert m["macro_precision"] == pytest.approx(0.75)


def test_top_k_only_above_five_classes_and_ties() -> None:
    assert evaluation.top_k_accuracy(Y3, P3, 1) == pytest.approx(4 / 6)
    assert evaluation.top_k_accuracy(Y3, P3, 2) == pytest.approx(1.0)
    # A tie for first place counts in the model's favour.
    assert evaluation.top_k_accuracy(np.array([1]), np.array([[0.4, 0.4, 0.2]]), 1) == 1.0
    rng = np.random.default_rng(0)
    y = np.arange(12) % 6
    p = rng.dirichlet(np.ones(6), size=12)
    m = evaluation.classification_metrics(y, p, list("abcdef"), top_k=3)
    expected = np.mean([(p[i] > p[i, y[i]]).sum() < 3 for i in range(12)])
    assert m["top_3_accuracy"] == pytest.approx(expected)


def test_roc_and_pr_curves_by_hand() -> None:
    fpr, tpr, thr = evaluation.roc_curve(Y2, P2[:, 1])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
    np.testing.assert_allclose(thr, [np.inf, 0.8, 0.4, 0.35, 0.1])
    precision, recall, _ = evaluation.precision_recall_curve(Y2, P2[:, 1])
    np.testing.assert_allclose(precision, [1, 1, 0.5, 2 / 3, 0.5])
    np.testing.assert_allclose(recall, [0, 0.5, 0.5, 1, 1])
    # Perfect and inverted rankings.
    assert evaluation.roc_auc(Y2, np.array([[1, 0], [1, 0], [0, 1], [0, 1]])) == 1.0
    assert evaluation.roc_auc(Y2, np.array([[0, 1], [0, 1], [1, 0], [1, 0]])) == 0.0


def test_undefined_auc_is_none_not_nan() -> None:
    y = np.array([0, 0])
    p = np.array([[0.8, 0.2], [0.6, 0.4]])
    m = evaluation.classification_metrics(y, p, ["a", "b"])
    assert m["roc_auc"] is None and m["average_precision"] is None
    assert m["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    # Three classes with one absent: macro over the defined ones only.
    y3 = np.array([0, 0, 1, 1])
    p3 = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.3, 0.6, 0.1]])
    assert evaluation.roc_auc(y3, p3) == pytest.approx(1.0)


def test_curve_points_binary_and_micro_average() -> None:
    curves = evaluation.curve_points(Y2, P2, ["neg", "pos"], "roc")
    assert list(curves) == ["pos"]
    name, _ = evaluation.summary_curve(curves, ["neg", "pos"])
    assert name == "pos"
    curves3 = evaluation.curve_points(Y3, P3, ["a", "b", "c"], "pr")
    assert list(curves3) == ["a", "b", "c", evaluation.MICRO]
    recall, precision, _ = curves3[evaluation.MICRO]
    assert recall[0] == 0 and recall[-1] == 1 and precision[0] == 1
    assert evaluation.summary_curve(curves3, ["a", "b", "c"])[0] == evaluation.MICRO


def test_loss_clips_and_logits_become_probabilities() -> None:
    assert evaluation.log_loss(np.array([0]), np.array([[0.0, 1.0]])) == pytest.approx(
        -math.log(1e-7)
    )
    logits = np.array([[2.0, -1.0], [0.0, 3.0]])
    probs = evaluation.to_probabilities(logits)
    np.testing.assert_allclose(probs.sum(1), 1.0)
    np.testing.assert_allclose(probs[0, 0], 1 / (1 + math.exp(-3)))
    np.testing.assert_array_equal(evaluation.to_probabilities(P2), P2)


def test_errors_are_actionable() -> None:
    with pytest.raises(ModelError, match=r"predicts 2 classes but labels\.json lists 3"):
        evaluation.classification_metrics(Y2, P2, ["a", "b", "c"])
    with pytest.raises(DataError, match="empty"):
        evaluation.classification_metrics(np.zeros(0, int), np.zeros((0, 2)), ["a", "b"])
    with pytest.raises(ModelError, match="not found"):
        evaluation.load_model("nope.keras")


def test_flatten_metrics_for_mlflow() -> None:
    flat = evaluation.flatten_metrics(
        {
            "accuracy": 0.5,
            "roc_auc": None,
            "ok": True,
            "head": {"accuracy": 0.4},
            "per_class": {"big cat/ü": {"f1": 0.3}},
            "n_test": 4,
        }
    )
    assert flat == {
        "accuracy": 0.5,
        "head_accuracy": 0.4,
        "per_class_big cat/__f1": 0.3,
        "n_test": 4.0,
    }


def _manifest(path: Path, rows: list[tuple[str, str]]) -> Path:
    cols = ["path", "label", "label_index", "split", "sha256", "height", "width"]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for split, sha in rows:
            w.writerow([f"{sha}.jpg", "a", 0, split, sha, 32, 32])
    return path


def test_test_digest_depends_on_the_test_set_only(tmp_path: Path) -> None:
    a = _manifest(tmp_path / "a.csv", [("test", "s1"), ("train", "t1"), ("test", "s2")])
    b = _manifest(tmp_path / "b.csv", [("test", "s2"), ("test", "s1"), ("train", "t9")])
    c = _manifest(tmp_path / "c.csv", [("test", "s1"), ("test", "s3")])
    assert evaluation.test_digest(a) == evaluation.test_digest(b)
    assert evaluation.test_digest(a) != evaluation.test_digest(c)
    assert len(evaluation.test_digest(a)) == 64
    with pytest.raises(DataError, match="run the prepare stage"):
        evaluation.test_digest(tmp_path / "missing.csv")


# --------------------------------------------------------------------------- real model


def write_prepared(root: Path, x: np.ndarray, y: np.ndarray, labels: list[str]) -> Path:
    """A minimal data/prepared: test shards, labels.json and manifest.csv."""
    from reprotrain.data.tfrecords import Record, write_split

    records = []
    for i, (img, label) in enumerate(zip(x, y, strict=True)):
        buf = io.BytesIO()
        Image.fromarray(img.astype(np.uint8)).save(buf, format="JPEG", quality=95)
        records.append(
            Record(
                buf.getvalue(),
                int(label),
                labels[label],
                f"{labels[label]}/{i}.jpg",
                f"{i:064x}",
                32,
                32,
            )
        )
    write_split(records, root, "test", shard_size=5)
    (root / "labels.json").write_text(json.dumps(labels))
    with (root / "manifest.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "label_index", "split", "sha256", "height", "width"])
        for r in records:
            w.writerow([r.source_path, r.label_name, r.label, "test", r.sha256, 32, 32])
    return root


def test_evaluate_library_path_on_a_saved_model(tmp_path: Path) -> None:
    """What stages/evaluate.py does, minus MLflow: load, predict, metrics, plots, rows."""
    import keras

    from reprotrain.evaluation import plots
    from reprotrain.models import transfer
    from reprotrain.paths import split_files
    from tests.models.tiny import tiny_arrays, tiny_model_cfg

    labels = ["ants", "bees", "wasps"]
    x, y = tiny_arrays(12, num_classes=3)
    prepared = write_prepared(tmp_path / "prepared", x, y, labels)
    files = split_files(prepared, "test")
    assert len(files) == 3
    keras.utils.set_random_seed(0)
    model = transfer.build_model(tiny_model_cfg(), num_classes=3, dropout=0.0)
    model_path = tmp_path / "m.keras"
    model.save(model_path)

    common = dict(pipeline_cfg=PipelineConfig(), image_size=32, batch_size=5, seed=0)
    metrics, preds = evaluation.evaluate_model_file(
        model_path, files, labels, top_k=5, calibration_bins=10, worst_k=4, **common
    )
    assert len(preds.y_true) == 12 and preds.probs.shape == (12, 3)
    np.testing.assert_array_equal(preds.y_true, y)  # file order is kept
    assert preds.paths[0] == "ants/0.jpg" and preds.sha256[1] == f"{1:064x}"
    # Same numbers as Keras computes on the same (decoded) images.
    expected = model.predict(np.stack([img for img, *_ in _decoded(files)]), verbose=0)
    np.testing.assert_allclose(preds.probs, expected, atol=1e-5)
    assert metrics["accuracy"] == pytest.approx(np.mean(expected.argmax(1) == y))
    wrong = int((expected.argmax(1) != y).sum())
    assert len(preds.worst) == min(4, wrong)
    confs = [w.confidence for w in preds.worst]
    assert confs == sorted(confs, reverse=True)

    acc = evaluation.accuracy_of(
        model_path, files, pipeline_cfg=PipelineConfig(), batch_size=7, seed=0, num_classes=3
    )
    assert acc == pytest.approx(metrics["accuracy"])
    with pytest.raises(ModelError, match="cannot be scored"):
        evaluation.accuracy_of(
            model_path, files, pipeline_cfg=PipelineConfig(), batch_size=7, seed=0, num_classes=2
        )
    with pytest.raises(ModelError, match="rerun training"):
        evaluation.evaluate_model_file(
            model_path, files, labels[:2], top_k=5, calibration_bins=10, **common
        )

    timeline = plots.training_timeline(
        [
            ("train_head", {"epoch": [1, 2], "accuracy": [0.5, 0.6], "val_accuracy": [0.4, 0.5]}),
            ("finetune", {"epoch": [1], "accuracy": [0.7], "val_accuracy": [0.6]}),
        ]
    )
    written = plots.write_evaluation_plots(
        preds.y_true,
        preds.probs,
        labels,
        timeline,
        preds.worst,
        plots_dir=tmp_path / "plots",
        images_dir=tmp_path / "plots" / "images",
    )
    assert all(p.stat().st_size > 0 for p in written.values())
    rows = evaluation.prediction_rows(preds, labels)
    assert list(rows[0]) == [
        "path",
        "sha256",
        "true_label",
        "predicted_label",
        "confidence",
        "prob_ants",
        "prob_bees",
        "prob_wasps",
    ]
    assert rows[0]["true_label"] == "ants"
    assert sum(rows[0][f"prob_{c}"] for c in labels) == pytest.approx(1.0, abs=1e-5)


def _decoded(files: list[Path]):
    from reprotrain.data import pipeline

    ds = pipeline.make_dataset(
        files, PipelineConfig(), training=False, image_size=32, batch_size=1, seed=0
    ).unbatch()
    return [(img.numpy(), int(label)) for img, label in ds]
