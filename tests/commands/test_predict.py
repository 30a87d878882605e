"""`predict` on good and bad inputs with a real saved tiny model: per-file errors, folders,
JSON/CSV output, labels resolution, exit codes (in-process and one real subprocess)."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reprotrain.commands import labels, normalization, predict
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
    stats = {"normalization": {"max_side": 64, "jpeg_quality": 90}}  # as prepare records it
    (path.parent / "stats.json").write_text(json.dumps(stats))
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


@pytest.mark.slow
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
    assert errors["corrupt.jpg"].startswith("corrupt or truncated image")
    assert errors["text.jpg"] == "not an image (unrecognised file content)"
    assert errors["missing.png"] == "no such file or directory"


@pytest.mark.slow
def test_same_probabilities_as_the_model_on_the_shared_normalisation(
    model_path: Path, inputs: Path, capsys
) -> None:
    from reprotrain.data.images import model_pixels
    from reprotrain.models.loading import load_model

    path = inputs / "folder" / "sub dir" / "a.JPG"
    code, out = _main([str(model_path), str(path), "--top-k", "1"], capsys)
    assert code == 0
    (result,) = json.loads(out)
    assert len(result["top_k"]) == 1
    # max_side 64 / quality 90: read from the stats.json next to the model.
    image = model_pixels(path.read_bytes(), 32, 64, 90)[np.newaxis].astype(np.float32)
    expected = load_model(model_path).predict(image, verbose=0)[0]
    assert result["label"] == LABELS[int(expected.argmax())]
    assert result["confidence"] == pytest.approx(float(expected.max()), abs=1e-5)


@pytest.mark.slow
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
    assert labels.class_names(None, model_path, 2) == LABELS  # next to the model
    # Names registered with a models:/ version come first; a wrong-length list is not used.
    assert labels.class_names(None, model_path, 2, ["x", "y"]) == ["x", "y"]
    assert labels.class_names(None, model_path, 2, ["x", "y", "z"]) == LABELS
    with pytest.raises(ModelError, match=r"lists 2 classes but .* predicts 3: pass --labels"):
        labels.class_names(None, model_path, 3)  # beside the model, but not its classes
    other = tmp_path / "m" / "x.keras"
    monkeypatch.chdir(tmp_path)
    assert labels.class_names(None, other, 2) == ["0", "1"]  # indices as a last resort
    prepared = tmp_path / "data" / "prepared"
    prepared.mkdir(parents=True)
    (prepared / "labels.json").write_text('["cat", "dog"]')
    # The current folder's labels were used whenever the class count matched: nothing
    # shows they are the ones this model was trained on, so they are not guessed.
    for classes in (2, 3):
        with pytest.raises(ModelError, match=r"cannot tell whether .* pass --labels"):
            labels.class_names(None, other, classes)
    assert labels.class_names(prepared / "labels.json", other, 2) == ["cat", "dog"]
    with pytest.raises(ModelError, match="lists 2 classes but the model predicts 3"):
        labels.class_names(prepared / "labels.json", other, 3)


@pytest.mark.slow
def test_project_labels_only_when_dvc_lock_shows_the_model_trained_on_them(
    promoted_project, tmp_path: Path, monkeypatch
) -> None:
    """The real pipeline's model: its project's labels.json is used from any folder while it
    is the file dvc.lock trained it on; the same class count in another order (data
    re-prepared, model not retrained) or a copy of the model elsewhere is an error asking
    for --labels, not the wrong names."""
    root = promoted_project.root
    model, labels_file = (
        root / "models" / "finetuned.keras",
        root / "data" / "prepared" / "labels.json",
    )
    original = labels_file.read_text()
    classes = json.loads(original)
    assert len(classes) == 2
    monkeypatch.chdir(tmp_path)
    assert labels.class_names(None, model, 2) == classes
    copy = tmp_path / "copy.keras"
    copy.write_bytes(model.read_bytes())
    monkeypatch.chdir(root)
    with pytest.raises(
        ModelError, match=r"cannot tell whether .*labels\.json belongs to .*copy\.keras"
    ):
        labels.class_names(None, copy, 2)

    def replace(text: str) -> None:  # a new file, never a write into DVC's (linked) cache
        tmp = labels_file.with_name(".labels.json.tmp")
        tmp.write_text(text)
        os.replace(tmp, labels_file)

    replace(json.dumps(classes[::-1]))
    try:
        with pytest.raises(ModelError, match="pass --labels"):
            labels.class_names(None, model, 2)
    finally:
        replace(original)
    assert labels.class_names(None, model, 2) == classes


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


@pytest.mark.slow
def test_empty_folder_is_a_failure(model_path: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    code, out = _main([str(model_path), str(tmp_path / "empty")], capsys)
    assert code == predict.EXIT_FAILED_INPUT and json.loads(out) == []


@pytest.mark.slow
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
    assert "text.jpg" in proc.stderr and "not an image" in proc.stderr
    proc = run([*cmd, str(tmp_path / "nope.keras"), str(inputs)], cwd=REPO, env=env, check=False)
    assert proc.returncode == 2 and "error: model not found" in proc.stderr
    assert proc.stdout == ""


def test_normalisation_settings_resolution(model_path: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    norm = normalization.resolve_normalization("keep", None, model_path)
    assert (norm.max_side, norm.jpeg_quality) == (64, 90) and "stats.json" in norm.source
    keep_full = normalization.resolve_normalization(None, 80, model_path)  # --max-side none
    assert keep_full.max_side is None
    other = tmp_path / "m" / "x.keras"
    default = normalization.resolve_normalization("keep", None, other)  # no stats, no params.yaml
    assert (default.max_side, default.jpeg_quality) == (320, 95)
    prepared = tmp_path / "data" / "prepared"
    prepared.mkdir(parents=True)
    (prepared / "stats.json").write_text(
        json.dumps({"normalization": {"max_side": None, "jpeg_quality": 80}})
    )
    found = normalization.resolve_normalization("keep", None, other)
    assert (found.max_side, found.jpeg_quality) == (None, 80)


# ------------------------------------------------------------ train/serve parity, real photos

PARITY_SIZE = 96


@pytest.fixture(scope="module")
def imagenet_model(keras_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MobileNetV2 0.35 with real ImageNet features and a random 2-class head, at 96 px."""
    import keras

    from reprotrain.config import ModelConfig
    from reprotrain.models import transfer
    from tests.models.tiny import tiny_weights

    keras.utils.set_random_seed(1)
    cfg = ModelConfig(alpha=0.35, image_size=PARITY_SIZE, weights=str(tiny_weights()))
    model = transfer.build_model(cfg, num_classes=2, dropout=0.0)
    path = tmp_path_factory.mktemp("imagenet") / "model.keras"
    model.save(path)
    (path.parent / "labels.json").write_text(json.dumps(LABELS))
    return path


def _encodings(photo: Path, out: Path) -> dict[str, Path]:
    """The same photo as JPEG (as is), lossless PNG, CMYK JPEG, EXIF-rotated JPEG, and (the
    yardstick for the last two) an upright JPEG re-encoded at the same quality."""
    out.mkdir(parents=True, exist_ok=True)
    rgb = Image.open(photo).convert("RGB")
    files = {
        "jpeg": photo,
        "png": out / "same.png",
        "cmyk": out / "cmyk.jpg",
        "exif": out / "rotated.jpg",
        "reencoded": out / "reencoded.jpg",
    }
    rgb.save(files["png"])
    rgb.save(files["reencoded"], quality=95)
    rgb.convert("CMYK").save(files["cmyk"], quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": stored turned the other way
    rgb.transpose(Image.Transpose.ROTATE_90).save(files["exif"], quality=95, exif=exif)
    return files


def _probabilities(model_path: Path, files: list[Path], max_side: int, quality: int) -> np.ndarray:
    from reprotrain.models.loading import load_model

    norm = normalization.Normalization(max_side, quality, "test")
    results = predict.predict_files(
        load_model(model_path),
        [str(f) for f in files],
        LABELS,
        batch_size=8,
        top_k=2,
        normalization=norm,
    )
    assert all(r["error"] is None for r in results), results
    return np.array(
        [[{t["label"]: t["probability"] for t in r["top_k"]}[c] for c in LABELS] for r in results]
    )


@pytest.mark.slow
def test_a_photo_gets_the_same_probabilities_in_every_encoding(
    imagenet_model: Path, hymenoptera: Path, tmp_path: Path
) -> None:
    photos = (
        sorted((hymenoptera / "val" / "ants").glob("*.jpg"))[:4]
        + sorted((hymenoptera / "val" / "bees").glob("*.jpg"))[:4]
    )
    files: dict[str, list[Path]] = {}
    for i, photo in enumerate(photos):
        for kind, f in _encodings(photo, tmp_path / str(i)).items():
            files.setdefault(kind, []).append(f)
    probs = {kind: _probabilities(imagenet_model, fs, 320, 95) for kind, fs in files.items()}
    assert np.ptp(probs["jpeg"][:, 0]) > 0.2  # the head separates photos: the test can see

    def diff(a: str, b: str) -> float:
        return float(np.abs(probs[a] - probs[b]).max())

    assert diff("png", "jpeg") <= 0.002  # the same pixels: the same answer
    budget = diff("reencoded", "jpeg")  # what one more JPEG generation alone changes
    assert budget <= 0.05
    for kind in ("cmyk", "exif"):  # each is one more JPEG generation of the same photo
        assert diff(kind, "jpeg") <= max(0.05, 2 * budget), (kind, diff(kind, "jpeg"), budget)
    # The old serving decode (tf.io.decode_image, no EXIF) sees the rotated photo sideways.
    from reprotrain.data.images import decode_and_resize
    from reprotrain.models.loading import load_model

    model = load_model(imagenet_model)
    sideways = np.stack(
        [decode_and_resize(f.read_bytes(), PARITY_SIZE).numpy() for f in files["exif"]]
    )
    sideways_diff = np.abs(model.predict(sideways, verbose=0) - probs["jpeg"]).max()
    assert sideways_diff > 2 * diff("exif", "jpeg")


@pytest.mark.slow
def test_predict_on_a_raw_test_file_matches_the_evaluation_pipeline(
    imagenet_model: Path, hymenoptera: Path, tmp_path: Path
) -> None:
    """What evaluate writes to plots/predictions.csv (the test shards through the tf.data
    pipeline) and what predict says for the raw files of those rows agree."""
    import shutil

    from reprotrain.config import PipelineConfig, PrepareConfig
    from reprotrain.data import pipeline
    from reprotrain.data.prepare import prepare
    from reprotrain.models.loading import load_model

    raw = tmp_path / "raw"
    for cls in ("ants", "bees"):
        (raw / cls).mkdir(parents=True)
        for photo in sorted((hymenoptera / "val" / cls).glob("*.jpg"))[:12]:
            shutil.copy(photo, raw / cls / photo.name)
    cfg = PrepareConfig(shard_size=8, max_side=160, jpeg_quality=90)
    prepare(raw, tmp_path / "prepared", cfg, seed=0)
    model = load_model(imagenet_model)
    ds = pipeline.make_dataset(
        pipeline_files := sorted((tmp_path / "prepared").glob("test-*.tfrecord")),
        PipelineConfig(cache="none"),
        False,
        image_size=PARITY_SIZE,
        batch_size=8,
        seed=0,
        with_metadata=True,
    )
    assert pipeline_files
    expected, paths_ = [], []
    for images, _labels, meta in ds:
        expected += model.predict(images, verbose=0).tolist()
        paths_ += [p.decode() for p in meta["path"].numpy()]
    # predict finds max_side/jpeg_quality in stats.json next to the model.
    shutil.copy(tmp_path / "prepared" / "stats.json", imagenet_model.parent / "stats.json")
    try:
        norm = normalization.resolve_normalization("keep", None, imagenet_model)
    finally:
        (imagenet_model.parent / "stats.json").unlink()
    assert (norm.max_side, norm.jpeg_quality) == (160, 90)
    got = _probabilities(imagenet_model, [raw / p for p in paths_], 160, 90)
    assert np.abs(got - np.array(expected)).max() <= 0.02


def test_the_model_kind_is_read_from_the_archive_without_tensorflow(tmp_path: Path) -> None:
    """predict hands a table or series model to its kind's command, by the model's name in
    the .keras archive; anything else (or unreadable) stays with the image command."""
    import json
    import zipfile

    from reprotrain.commands.predict import model_kind

    def archive(name: str) -> Path:
        path = tmp_path / f"{name}.keras"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr(
                "config.json", json.dumps({"class_name": "Functional", "config": {"name": name}})
            )
        return path

    assert model_kind(archive("table_functional")) == "table"
    assert model_kind(archive("series_lstm")) == "series"
    assert model_kind(archive("mobilenetv2_transfer")) == "images"
    (tmp_path / "broken.keras").write_bytes(b"not a zip")
    assert model_kind(tmp_path / "broken.keras") == "images"
