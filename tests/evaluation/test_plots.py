"""Plot files from synthetic predictions: written, non-empty, with the columns dvc.yaml
names; the training timeline; and `dvc plots show` reading them for real."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from reprotrain import evaluation
from reprotrain.errors import DataError
from reprotrain.evaluation import plots
from tests.conftest import REPO, run, subprocess_env

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HEAD = {
    "epoch": [1, 2, 3],
    "loss": [0.9, 0.6, 0.5],
    "accuracy": [0.5, 0.7, 0.8],
    "val_loss": [0.8, 0.7, 0.6],
    "val_accuracy": [0.6, 0.7, 0.75],
}
FINETUNE = {
    "epoch": [1, 2],
    "loss": [0.4, 0.3],
    "accuracy": [0.85, 0.9],
    "val_loss": [0.5, 0.45],
    "val_accuracy": [0.8, 0.85],
    "learning_rate": [1e-5, 1e-5],
}


def _synthetic(num_classes: int, n: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % num_classes
    logits = rng.normal(size=(n, num_classes))
    logits[np.arange(n), y] += 1.5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, probs


def _worst(y, probs, k=3):
    pred = probs.argmax(1)
    wrong = np.flatnonzero(pred != y)[:k]
    img = np.zeros((32, 32, 3), np.uint8)
    return [
        evaluation.WorstExample(
            int(i), f"x/{i}.jpg", int(y[i]), int(pred[i]), float(probs[i].max()), img
        )
        for i in wrong
    ]


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _write_all(out: Path, labels: list[str], seed: int = 0) -> dict[str, Path]:
    y, probs = _synthetic(len(labels), seed=seed)
    timeline = plots.training_timeline([("train_head", HEAD), ("finetune", FINETUNE)])
    return plots.write_evaluation_plots(
        evaluation.plot_inputs(y, probs, labels),
        labels,
        timeline,
        _worst(y, probs),
        plots_dir=out,
        images_dir=out / "images",
    )


def test_training_timeline_joins_stages() -> None:
    rows = plots.training_timeline([("train_head", HEAD), ("finetune", FINETUNE)])
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["stage"] for r in rows] == ["train_head"] * 3 + ["finetune"] * 2
    assert [r["epoch"] for r in rows] == [1, 2, 3, 1, 2]
    assert rows[3]["val_accuracy"] == 0.8 and "learning_rate" not in rows[0]
    assert plots.timeline_columns(rows) == [
        "step",
        "stage",
        "epoch",
        "accuracy",
        "learning_rate",
        "loss",
        "val_accuracy",
        "val_loss",
    ]


def test_read_history_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        plots.read_history(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(DataError, match="'epoch'"):
        plots.read_history(bad)


@pytest.mark.slow
def test_binary_plots_written_with_contract_columns(tmp_path: Path) -> None:
    written = _write_all(tmp_path, ["ants", "bees"])
    for name in (
        "confusion_matrix.png",
        "roc.png",
        "pr.png",
        "training_curves.png",
        "worst_examples.png",
    ):
        png = tmp_path / "images" / name
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 2000, name
    assert set(written) >= {"confusion.csv", "roc.csv", "pr.csv", "training_curves.csv"}
    confusion = _read(tmp_path / "confusion.csv")
    assert len(confusion) == 40 and set(confusion[0]) == {"actual", "predicted"}
    roc = _read(tmp_path / "roc.csv")
    assert list(roc[0]) == ["fpr", "tpr", "threshold", "class"]
    assert {r["class"] for r in roc} == {"bees"}  # positive class = labels[1]
    assert roc[0]["threshold"] == "" and (roc[0]["fpr"], roc[-1]["tpr"]) == ("0.0", "1.0")
    pr = _read(tmp_path / "pr.csv")
    assert list(pr[0]) == ["recall", "precision", "threshold", "class"]
    curves = _read(tmp_path / "training_curves.csv")
    assert [r["step"] for r in curves] == ["1", "2", "3", "4", "5"]
    assert curves[0]["learning_rate"] == "" and curves[4]["val_accuracy"] == "0.85"


@pytest.mark.slow
def test_multiclass_curves_and_no_mistakes(tmp_path: Path) -> None:
    _write_all(tmp_path, ["a", "b", "c", "d"])
    assert {r["class"] for r in _read(tmp_path / "roc.csv")} == {evaluation.MICRO}
    assert (tmp_path / "images" / "roc.png").stat().st_size > 2000
    empty = plots.plot_worst_examples([], ["a", "b"], tmp_path / "none.png")
    assert empty.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.slow
def test_a_class_missing_from_the_split_has_no_curve(tmp_path: Path) -> None:
    """Class "c" never occurs: it gets no ROC or PR curve (undefined), the others and the
    micro-average are drawn, and every file is still written."""
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.2, 0.7, 0.1], [0.3, 0.6, 0.1]])
    inputs = evaluation.plot_inputs(y, probs, ["a", "b", "c"])
    for curve_set in (inputs.roc, inputs.pr):
        assert list(curve_set.curves) == ["a", "b", evaluation.MICRO], curve_set.kind
        assert set(curve_set.scores) == set(curve_set.curves)
    assert inputs.roc.scores["a"] == pytest.approx(1.0)  # a is ranked perfectly
    np.testing.assert_array_equal(inputs.confusion, [[2, 0, 0], [0, 2, 0], [0, 0, 0]])
    out = tmp_path / "m"
    written = plots.write_evaluation_plots(
        inputs, ["a", "b", "c"], [], [], plots_dir=out, images_dir=out
    )
    assert {r["class"] for r in _read(out / "roc.csv")} == {evaluation.MICRO}
    assert {r["class"] for r in _read(out / "pr.csv")} == {evaluation.MICRO}
    assert all(path.stat().st_size > 0 for path in written.values())
    # The PNG draws exactly the curves it was given, each with its score, and the diagonal.
    fig = plots.curves_figure(inputs.roc.curves, kind="roc", scores=inputs.roc.scores)
    assert [line.get_label() for line in fig.axes[0].get_lines()] == [
        "a (1.000)",
        "b (1.000)",
        f"{evaluation.MICRO} (1.000)",
        "chance",
    ]


@pytest.mark.slow
def test_dvc_plots_show_renders_the_files(tmp_path: Path) -> None:
    """The real `dvc plots show --json` on the project's dvc.yaml plot definitions."""
    proj = tmp_path / "proj"
    proj.mkdir()
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    (proj / "dvc.yaml").write_text(yaml.safe_dump({"plots": spec["plots"]}))
    _write_all(proj / "plots", ["a", "b", "c"])
    shutil.rmtree(proj / "plots" / "images")
    from reprotrain.evaluation import compare

    recalls = {m: [0.9, 0.8, 0.7] for m in ("finetuned", "head", "baseline")}
    compare.write_recall_csv(proj / "plots" / compare.RECALL_CSV, ["a", "b", "c"], recalls)
    env = subprocess_env()
    run(["git", "init", "-q"], proj, env)
    run(["dvc", "init", "-q"], proj, env)
    out = json.loads(run(["dvc", "plots", "show", "--json"], proj, env).stdout)
    data = out.get("data", out)
    assert data, out
    assert not out.get("errors"), out["errors"]
    rendered = json.dumps(data)
    for column in ("predicted", "fpr", "recall", "val_accuracy", "baseline"):
        assert column in rendered, column


@pytest.mark.slow
def test_figures_are_logged_as_mlflow_images(tmp_path: Path) -> None:
    """evaluate's PNGs and the model card's as keyed MLflow images (the run page's image
    view): each key has its full-size PNG and MLflow's compressed preview, in a real
    SQLite store."""
    import mlflow

    from reprotrain.tracking import StageRun, images

    _write_all(tmp_path / "plots", ["ants", "bees"])
    card_dir = tmp_path / "reports" / "model_card"
    plots.save_png(plots.new_figure(2, 2), card_dir / "gradcam_1.png")
    (card_dir / "notes.txt").write_text("not a figure")
    keys = images.figure_keys(
        {"evaluate": [tmp_path / "plots" / "images"], "model_card": [card_dir, tmp_path / "gone"]}
    )
    assert list(keys) == [
        "evaluate/confusion_matrix",
        "evaluate/pr",
        "evaluate/roc",
        "evaluate/training_curves",
        "evaluate/worst_examples",
        "model_card/gradcam_1",
    ]
    assert images.image_key("card", "a#b (1).png") == "card/a_b _1_"

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("figures", artifact_location=(tmp_path / "art").as_uri())
    run_id = client.create_run(exp).info.run_id
    logged = images.log_images(StageRun(run_id, stage="evaluate", uri=uri), keys)
    assert logged == list(keys)
    names = [Path(f.path).name for f in client.list_artifacts(run_id, "images")]
    for key in keys:
        stored = key.replace("/", "~") + "+step+0+"
        full = [n for n in names if n.startswith(stored) and n.endswith(".png")]
        preview = [n for n in names if n.startswith(stored) and n.endswith("+compressed.webp")]
        assert len(full) == 1 and len(preview) == 1, (key, names)
    assert images.log_images(StageRun("", uri=uri), keys) == []  # a non-chief worker: nothing
