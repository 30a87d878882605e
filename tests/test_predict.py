"""`predict` on good and bad inputs with a real saved tiny model: per-file errors, folders,
JSON/CSV output, labels resolution, exit codes (in-process and one real subprocess)."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reprotrain.commands import predict
from reprotrain.errors import ModelError
from tests.conftest import REPO, run, subprocess_env

LABELS = ["ants", "bees"]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import keras

    from reprotrain.models import transfer
    from tests.models.tiny import tiny_model_cfg

    keras.utils.set_random_seed(0)
    model = transfer.build_model(tiny_model_cfg(), num_classes=2, dropout=0.0)
    path = tmp_path_factory.mktemp("model") / "model.keras"
    model.save(path)
    (path.parent / "labels.json").write_text(json.dumps(LABELS))
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """good.jpg, a folder (nested images + a README), a truncated JPEG, text named .jpg."""
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)

    def img(path: Path, size: int = 48, mode: str = "RGB") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        arr = rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)
        Image.fromarray(arr).convert(mode).save(path)

    img(root / "good.jpg")
    img(root / "folder" / "b.png", mode="RGBA")
    img(root / "folder" / "sub dir" / "a.JPG", size=300)
    img(root / "folder" / "c.webp", mode="L")
    (root / "folder" / "README.txt").write_text("not an image")
    data = (root / "good.jpg").read_bytes()
    (root / "corrupt.jpg").write_bytes(data[: len(data) // 2])
    (root / "text.jpg").write_text("hello, I am not a JPEG")
    return root


def _main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = predict.main(args)
    return code, capsys.readouterr().out


def test_good_and_bad_files_json(model_path: Path, inputs: Path, capsys) -> None:
    args = [
        str(model_path),
        str(inputs / "good.jpg"),
        str(inputs / "folder"),
        str(inputs / "corrupt.jpg"),
        str(inputs / "text.jpg"),
        str(inputs / "missing.png"),
        "--batch-size",
        "2",
    ]
    code, out = _main(args, capsys)
    assert code == predict.EXIT_FAILED_INPUT
    results = json.loads(out)
    names = [Path(r["path"]).name for r in results]
    # Order: arguments in order, folders sorted; the README is skipped, not an error.
    assert names == [
        "good.jpg",
        "b.png",
        "c.webp",
        "a.JPG",
        "corrupt.jpg",
        "text.jpg",
        "missing.png",
    ]
    good = [r for r in results if not r["error"]]
    assert len(good) == 4
    for r in good:
        assert r["label"] in LABELS and r["label"] == r["top_k"][0]["label"]
        assert sum(t["probability"] for t in r["top_k"]) == pytest.approx(1.0, abs=1e-5)
        assert r["confidence"] == r["top_k"][0]["probability"] >= 0.5
    errors = {Path(r["path"]).name: r["error"] for r in results if r["error"]}
    assert "JPEG" in errors["corrupt.jpg"]
    assert "Unknown image file format" in errors["text.jpg"]
    assert errors["missing.png"] == "no such file or directory"


def test_same_probabilities_as_the_model_on_the_pipeline_decode(
    model_path: Path, inputs: Path, capsys
) -> None:
    import tensorflow as tf

    from reprotrain.data.pipeline import decode_and_resize
    from reprotrain.evaluation import load_model

    path = inputs / "folder" / "sub dir" / "a.JPG"
    code, out = _main([str(model_path), str(path), "--top-k", "1"], capsys)
    assert code == 0
    (result,) = json.loads(out)
    assert len(result["top_k"]) == 1
    image = decode_and_resize(tf.io.read_file(str(path)), 32)[tf.newaxis]
    expected = load_model(model_path).predict(image, verbose=0)[0]
    assert result["label"] == LABELS[int(expected.argmax())]
    assert result["confidence"] == pytest.approx(float(expected.max()), abs=1e-5)


def test_csv_format_top_k_clipped_and_exit_zero(model_path: Path, inputs: Path, capsys) -> None:
    code, out = _main(
        [str(model_path), str(inputs / "folder"), "--format", "csv", "--top-k", "5"], capsys
    )
    assert code == predict.EXIT_OK
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 3
    assert list(rows[0]) == [
        "path",
        "label",
        "confidence",
        "label_1",
        "prob_1",
        "label_2",
        "prob_2",
        "error",
    ]
    assert all(r["error"] == "" and r["label"] == r["label_1"] for r in rows)
    assert float(rows[0]["prob_1"]) + float(rows[0]["prob_2"]) == pytest.approx(1.0, abs=1e-5)


def test_labels_resolution(model_path: Path, tmp_path: Path, monkeypatch) -> None:
    assert predict.resolve_labels(None, model_path, 2) == LABELS  # next to the model
    # Names registered with a models:/ version come first; a wrong-length list is not used.
    assert predict.resolve_labels(None, model_path, 2, ["x", "y"]) == ["x", "y"]
    assert predict.resolve_labels(None, model_path, 2, ["x", "y", "z"]) == LABELS
    other = tmp_path / "m" / "x.keras"
    monkeypatch.chdir(tmp_path)
    assert predict.resolve_labels(None, other, 2) == ["0", "1"]  # indices as a last resort
    prepared = tmp_path / "data" / "prepared"
    prepared.mkdir(parents=True)
    (prepared / "labels.json").write_text('["cat", "dog"]')
    assert predict.resolve_labels(None, other, 2) == ["cat", "dog"]  # the project's labels
    assert predict.resolve_labels(None, other, 3) == ["0", "1", "2"]  # wrong length: unused
    with pytest.raises(ModelError, match="lists 2 classes but the model predicts 3"):
        predict.resolve_labels(prepared / "labels.json", other, 3)


def test_usage_and_model_errors(inputs: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(ModelError, match="model not found"):
        predict.main([str(tmp_path / "nope.keras"), str(inputs)])
    bad = tmp_path / "bad.keras"
    bad.write_text("not a zip")
    with pytest.raises(ModelError, match="cannot load the model"):
        predict.main([str(bad), str(inputs)])
    with pytest.raises(SystemExit) as exc:
        predict.main(["model.keras", str(inputs), "--top-k", "0"])
    assert exc.value.code == predict.EXIT_USAGE
    capsys.readouterr()


def test_empty_folder_is_a_failure(model_path: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    code, out = _main([str(model_path), str(tmp_path / "empty")], capsys)
    assert code == predict.EXIT_FAILED_INPUT and json.loads(out) == []


def test_cli_subprocess_exit_codes(model_path: Path, inputs: Path, tmp_path: Path) -> None:
    env = subprocess_env()
    cmd = [sys.executable, "-m", "reprotrain", "predict"]
    proc = run(
        [*cmd, str(model_path), str(inputs / "good.jpg"), str(inputs / "text.jpg")],
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    results = json.loads(proc.stdout)  # stdout is pure JSON; logs go to stderr
    assert [bool(r["error"]) for r in results] == [False, True]
    assert "text.jpg" in proc.stderr and "Unknown image file format" in proc.stderr
    proc = run([*cmd, str(tmp_path / "nope.keras"), str(inputs)], cwd=REPO, env=env, check=False)
    assert proc.returncode == 2 and "error: model not found" in proc.stderr
    assert proc.stdout == ""
