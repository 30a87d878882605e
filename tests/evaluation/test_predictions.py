"""Metrics against hand-computed cases (binary and 3-class) and cross-checked against
scikit-learn, curves, digests, and the evaluate stage's library path on a tiny prepared
dataset with a real saved model."""

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
from reprotrain.evaluation import plots

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
    # Row 1 ([.3, .4, .3], true class 0) ties with class 2 for second place: class 2 wins.
    assert evaluation.top_k_accuracy(Y3, P3, 2) == pytest.approx(5 / 6)
    # An exact tie at the k-th place goes to the higher class index (scikit-learn's rule).
    tie = np.array([[0.4, 0.4, 0.2]])
    assert evaluation.top_k_accuracy(np.array([1]), tie, 1) == 1.0
    assert evaluation.top_k_accuracy(np.array([0]), tie, 1) == 0.0
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
    name, _ = plots.summary_curve(curves, ["neg", "pos"])
    assert name == "pos"
    curves3 = evaluation.curve_points(Y3, P3, ["a", "b", "c"], "pr")
    assert list(curves3) == ["a", "b", "c", evaluation.MICRO]
    recall, precision, _ = curves3[evaluation.MICRO]
    assert recall[0] == 0 and recall[-1] == 1 and precision[0] == 1
    assert plots.summary_curve(curves3, ["a", "b", "c"])[0] == evaluation.MICRO


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


@pytest.mark.slow  # imports TensorFlow (the loader is shared with predict and finetune)
def test_missing_model_file_is_a_model_error(tmp_path: Path) -> None:
    split = evaluation.EvalSplit([], PipelineConfig(), batch_size=4, seed=0)
    with pytest.raises(ModelError, match="not found"):
        _scorer(split, ["a", "b"]).evaluate(tmp_path / "nope.keras", image_size=32)


def test_numbers_match_sklearn_on_a_fixed_example() -> None:
    """Every reported number equals scikit-learn's own function on the same example."""
    from sklearn import metrics as skm
    from sklearn.preprocessing import label_binarize

    rng = np.random.default_rng(7)
    y = np.arange(30) % 6
    logits = rng.normal(size=(30, 6))
    logits[np.arange(30), y] += 1.0
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = list("abcdef")
    m = evaluation.classification_metrics(y, p, labels, top_k=3, calibration_bins=10)
    pred = p.argmax(1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    assert m["loss"] == pytest.approx(skm.log_loss(y, y_proba=p), abs=1e-12)
    for avg in ("macro", "weighted"):
        prf = skm.precision_recall_fscore_support(y, pred, average=avg, zero_division=0)
        for i, name in enumerate(("precision", "recall", "f1")):
            assert m[f"{avg}_{name}"] == pytest.approx(prf[i], abs=1e-12), (avg, name)
    # Every class present: our one-vs-rest macro is sklearn's multi_class="ovr" macro.
    assert m["roc_auc"] == pytest.approx(
        skm.roc_auc_score(y, p, multi_class="ovr", average="macro"), abs=1e-12
    )
    assert m["average_precision"] == pytest.approx(
        skm.average_precision_score(label_binarize(y, classes=range(6)), p, average="macro"),
        abs=1e-12,
    )
    assert m["top_3_accuracy"] == pytest.approx(skm.top_k_accuracy_score(y, p, k=3), abs=1e-12)
    report = skm.classification_report(y, pred, output_dict=True, zero_division=0)
    for i, name in enumerate(labels):
        for key in ("precision", "recall", "f1"):
            want = report[str(i)]["f1-score" if key == "f1" else key]
            assert m["per_class"][name][key] == pytest.approx(want, abs=1e-12)
        assert m["per_class"][name]["support"] == report[str(i)]["support"]
    np.testing.assert_array_equal(
        evaluation.confusion_matrix(y, pred, 6), skm.confusion_matrix(y, pred)
    )
    # Binary: class 1's scores.
    b = evaluation.classification_metrics(Y2, P2, ["neg", "pos"])
    assert b["roc_auc"] == pytest.approx(skm.roc_auc_score(Y2, P2[:, 1]), abs=1e-12)
    assert b["average_precision"] == pytest.approx(
        skm.average_precision_score(Y2, P2[:, 1]), abs=1e-12
    )
    # The one deliberate difference: the log loss floor is Keras' 1e-7, not float64's eps.
    sure_and_wrong = np.array([[0.0, 1.0], [0.5, 0.5]])
    assert evaluation.log_loss(np.array([0, 0]), sure_and_wrong) == pytest.approx(
        (-math.log(1e-7) - math.log(0.5)) / 2
    )
    assert skm.log_loss([0, 0], y_proba=sure_and_wrong, labels=[0, 1]) > 18


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
        "per_class_big cat/ü_f1": 0.3,  # keys are made valid by the tracking layer
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


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory):
    """A seeded untrained 3-class model saved to m.keras, its 12-image test split written as
    shards, and the split decoded once."""
    import keras

    from reprotrain.models import transfer
    from reprotrain.paths import split_files
    from tests.models.tiny import tiny_arrays, tiny_model_cfg

    tmp = tmp_path_factory.mktemp("scored")
    labels = ["ants", "bees", "wasps"]
    x, y = tiny_arrays(12, num_classes=3)
    files = split_files(write_prepared(tmp / "prepared", x, y, labels), "test")
    assert len(files) == 3
    keras.utils.set_random_seed(0)
    model = transfer.build_model(tiny_model_cfg(), num_classes=3, dropout=0.0)
    model.save(tmp / "m.keras")
    split = evaluation.EvalSplit(files, PipelineConfig(), batch_size=5, seed=0, expected=12)
    expected = model.predict(np.stack([img for img, *_ in _decoded(files)]), verbose=0)
    return tmp, labels, y, files, model, split, expected


def _scorer(split, labels):
    from reprotrain.evaluation.scoring import ModelScorer

    return ModelScorer(split, labels, top_k=5, calibration_bins=10)


@pytest.mark.slow
def test_a_saved_model_is_scored_in_file_order_like_keras(scored) -> None:
    tmp, labels, y, _, _, split, expected = scored
    metrics, preds = _scorer(split, labels).evaluate(tmp / "m.keras", worst_k=4, image_size=32)
    assert len(preds.y_true) == 12 and preds.probs.shape == (12, 3)
    np.testing.assert_array_equal(preds.y_true, y)  # file order is kept
    assert preds.paths[0] == "ants/0.jpg" and preds.sha256[1] == f"{1:064x}"
    np.testing.assert_allclose(preds.probs, expected, atol=1e-5)  # what Keras computes
    assert metrics["accuracy"] == pytest.approx(np.mean(expected.argmax(1) == y))
    wrong = np.flatnonzero(expected.argmax(1) != y)
    # The untrained model (seeded) gets some images wrong: the checks below always run.
    assert wrong.size >= 1, "the fixture must have wrong predictions to rank"
    assert len(preds.worst) == min(4, wrong.size)
    confs = [w.confidence for w in preds.worst]
    assert confs == sorted(confs, reverse=True)
    top = wrong[np.argmax(expected[wrong].max(1))]  # the most confidently wrong image
    assert preds.worst[0].index == top and preds.worst[0].image.dtype == np.uint8
    assert preds.worst[0].true == y[top] and preds.worst[0].pred == expected[top].argmax()
    # The split was decoded once; scoring again reads it from memory.
    assert split.passes == {32: 1} and split.in_memory(32)
    again = _scorer(split, labels).predictions(tmp / "m.keras")  # a new scorer: scored again
    np.testing.assert_array_equal(again.probs, preds.probs)
    assert split.passes == {32: 1}


@pytest.mark.slow
def test_an_identical_model_reuses_predictions_and_another_is_scored(scored) -> None:
    """A file with the same architecture and weights gets the predictions already computed,
    even with other bytes (m.keras was saved without normalising), its worst examples cut to
    what was asked; other weights are loaded and scored."""
    from reprotrain.models.loading import save_model

    tmp, labels, _, files, model, split, _ = scored
    scorer = _scorer(split, labels)
    first = scorer.predictions(tmp / "m.keras", worst_k=4)
    save_model(model, tmp / "a.keras")
    again = scorer.predictions(tmp / "a.keras")
    assert again.probs is first.probs and again.worst == [] and len(first.worst) >= 1
    assert scorer.evaluate(tmp / "a.keras")[0] == scorer.evaluate(tmp / "m.keras")[0]
    weights = model.get_weights()
    model.set_weights([w * 0.5 for w in weights])
    save_model(model, tmp / "halved.keras")
    halved = model.predict(np.stack([img for img, *_ in _decoded(files)]), verbose=0)
    model.set_weights(weights)
    other = scorer.predictions(tmp / "halved.keras")
    assert other.probs is not first.probs
    np.testing.assert_allclose(other.probs, halved, atol=1e-5)
    with pytest.raises(ModelError, match="rerun training"):
        _scorer(split, labels[:2]).predictions(tmp / "m.keras", image_size=32)
    with pytest.raises(ModelError, match="cannot be scored"):
        _scorer(split, labels[:2]).predictions(
            tmp / "m.keras", hint="it cannot be scored on this test set"
        )


@pytest.mark.slow
def test_plots_and_prediction_rows_of_a_scored_split(scored, tmp_path: Path) -> None:
    tmp, labels, _, _, _, split, _ = scored
    preds = _scorer(split, labels).predictions(tmp / "m.keras", worst_k=4)
    timeline = plots.training_timeline(
        [
            ("train_head", {"epoch": [1, 2], "accuracy": [0.5, 0.6], "val_accuracy": [0.4, 0.5]}),
            ("finetune", {"epoch": [1], "accuracy": [0.7], "val_accuracy": [0.6]}),
        ]
    )
    written = plots.write_evaluation_plots(
        evaluation.plot_inputs(preds.y_true, preds.probs, labels),
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


@pytest.mark.slow
def test_one_trace_per_model_and_a_streamed_split_gives_the_same_numbers(tmp_path: Path) -> None:
    """Batches of any size reuse one graph; a split over the memory limit is re-read from
    the shards for each model and scores exactly the same."""
    import keras

    from reprotrain.models import transfer
    from reprotrain.models.loading import inference_function
    from reprotrain.paths import split_files
    from tests.models.tiny import tiny_arrays, tiny_model_cfg

    labels = ["ants", "bees"]
    x, y = tiny_arrays(11, num_classes=2)
    files = split_files(write_prepared(tmp_path / "prepared", x, y, labels), "test")
    keras.utils.set_random_seed(0)
    model = transfer.build_model(tiny_model_cfg(), num_classes=2, dropout=0.0)

    kept = evaluation.EvalSplit(files, PipelineConfig(), batch_size=4, seed=0)
    predict = inference_function(model, "uint8")
    for batch in kept.batches(32):  # batch sizes 4, 4, 3
        predict(batch.images)
    assert predict.experimental_get_tracing_count() == 1
    assert kept.num_batches(32) == 3

    streamed = evaluation.EvalSplit(files, PipelineConfig(), batch_size=4, seed=0, max_bytes=1)
    first = evaluation.score(model, streamed)
    second = evaluation.score(model, streamed)
    assert streamed.passes == {32: 2} and not streamed.in_memory(32)
    from_memory = evaluation.score(model, kept)
    np.testing.assert_array_equal(first.probs, second.probs)
    np.testing.assert_array_equal(first.probs, from_memory.probs)
    assert first.paths == from_memory.paths
