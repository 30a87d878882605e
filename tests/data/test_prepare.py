"""prepare: quarantine, duplicates, deterministic and growth-stable stratified splits,
TFRecord round trip, metadata files, and the errors for unusable datasets."""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reprotrain.config import PrepareConfig
from reprotrain.data import schema
from reprotrain.data.fetch import fetch, tree_digest
from reprotrain.data.prepare import prepare
from reprotrain.errors import DataError
from reprotrain.paths import split_files
from tests.conftest import make_class_tree, write_image

CFG = PrepareConfig(shard_size=16, max_side=64)


def _manifest(prepared: Path) -> dict[str, dict[str, str]]:
    with (prepared / "manifest.csv").open() as f:
        return {row["path"]: row for row in csv.DictReader(f)}


def _quarantine(prepared: Path) -> dict[str, str]:
    with (prepared / "quarantine.csv").open() as f:
        return {row["path"]: row["reason"] for row in csv.DictReader(f)}


def _prepare(
    src: Path,
    tmp: Path,
    name: str = "out",
    seed: int = 42,
    cfg: PrepareConfig = CFG,
    ledger: Path | None = None,
):
    raw = tmp / f"{name}-raw"
    fetch(str(src), raw)
    return prepare(raw, tmp / name, cfg, seed, ledger), tmp / name


def test_mess_is_quarantined_or_normalised_and_everything_is_counted(tmp_path: Path) -> None:
    src = make_class_tree(tmp_path / "src", {"cats": 30, "dogs": 30})
    good = (src / "cats" / sorted(p.name for p in (src / "cats").iterdir())[0]).read_bytes()
    (src / "cats" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (src / "cats" / "empty.jpg").write_bytes(b"")
    (src / "dogs" / "error-page.jpg").write_text("<html>Access denied</html>")
    (src / "stray.jpg").write_bytes(good)  # at the root: no class folder
    write_image(src / "dogs" / "cmyk.jpg", 1, mode="CMYK", fmt="JPEG")
    write_image(src / "dogs" / "rgba.png", 2, mode="RGBA")
    wide = np.tile(np.linspace(0, 65535, 32).astype(np.uint16), (32, 1))
    Image.fromarray(wide).save(src / "cats" / "deep.png")
    write_image(src / "cats" / "anim.gif", 3, mode="P", fmt="GIF")
    before = tree_digest(src)

    _summary, out = _prepare(src, tmp_path)
    stats = json.loads((out / "stats.json").read_text())
    quarantine = _quarantine(out)
    assert quarantine["cats/truncated.jpg"].startswith("corrupt or truncated image")
    assert quarantine["cats/empty.jpg"] == "empty file (0 bytes)"
    assert quarantine["dogs/error-page.jpg"].startswith("not an image")
    assert quarantine["stray.jpg"].startswith("file outside a class folder")
    manifest = _manifest(out)
    for normalised in ("dogs/cmyk.jpg", "dogs/rgba.png", "cats/deep.png", "cats/anim.gif"):
        assert normalised in manifest
    assert stats["files_seen"] == 60 + 8
    assert stats["images"] + stats["quarantined"] == stats["files_seen"]
    assert stats["quarantined"] == 4 and stats["quarantine_reasons"]["empty file"] == 1
    assert sum(v["total"] for v in stats["splits"].values()) == stats["images"] == 64
    assert json.loads((out / "labels.json").read_text()) == ["cats", "dogs"]
    assert tree_digest(src) == before  # the source is never modified


def test_duplicates_never_cross_splits_and_conflicting_labels_are_quarantined(
    tmp_path: Path,
) -> None:
    src = make_class_tree(
        tmp_path / "src",
        splits={
            "train": {"ants": 12, "bees": 12},
            "val": {"ants": 8, "bees": 8},
            "test": {"ants": 4, "bees": 4},
        },
    )
    train_ant = sorted((src / "train" / "ants").iterdir())[0]
    shutil.copy(train_ant, src / "test" / "ants" / "leaked.jpg")  # same content in test
    shutil.copy(train_ant, src / "train" / "ants" / "copy.jpg")  # and twice in train
    bee = sorted((src / "train" / "bees").iterdir())[0]
    shutil.copy(bee, src / "val" / "ants" / "mislabelled.jpg")  # same bytes, other class

    summary, out = _prepare(src, tmp_path)
    quarantine, manifest = _quarantine(out), _manifest(out)
    kept = "train/ants/copy.jpg"  # first copy in (train, val, test, path) order
    assert manifest[kept]["split"] == "train"
    assert quarantine["test/ants/leaked.jpg"] == f"duplicate of {kept}"
    assert quarantine[f"train/ants/{train_ant.name}"] == f"duplicate of {kept}"
    assert "labelled ants and bees" in quarantine["val/ants/mislabelled.jpg"]
    assert f"train/bees/{bee.name}" not in manifest  # ambiguous: both copies quarantined
    assert summary.duplicates == 4
    hashes = [row["sha256"] for row in manifest.values()]
    assert len(hashes) == len(set(hashes))


@pytest.mark.slow
def test_splits_are_stratified_deterministic_and_byte_identical(tmp_path: Path) -> None:
    src = make_class_tree(tmp_path / "src", {"a": 40, "b": 40, "c": 40})
    s1, out1 = _prepare(src, tmp_path, "one")
    _s2, out2 = _prepare(src, tmp_path, "two")
    for name in ["manifest.csv", "stats.json", *(p.name for p in out1.glob("*.tfrecord"))]:
        assert (out1 / name).read_bytes() == (out2 / name).read_bytes(), name
    for split in ("train", "val", "test"):
        assert all(n > 0 for n in s1.counts[split].values())  # every class in every split
    for c in "abc":  # exact: round(40 × 0.15) each
        assert (s1.counts["val"][c], s1.counts["test"][c], s1.counts["train"][c]) == (6, 6, 28)
    s3, _ = _prepare(src, tmp_path, "three", seed=7)
    assert s3.counts != s1.counts or _manifest(tmp_path / "three") != _manifest(out1)


def test_adding_images_never_moves_an_existing_one(tmp_path: Path) -> None:
    src = make_class_tree(tmp_path / "src", {"a": 30, "b": 30})
    ledger = tmp_path / "splits.csv"
    _, out1 = _prepare(src, tmp_path, "before", ledger=ledger)
    make_class_tree(src, {"a": 25, "b": 25}, seed=9)  # new files, new content
    _, out2 = _prepare(src, tmp_path, "after", ledger=ledger)
    before, after = _manifest(out1), _manifest(out2)
    assert len(after) == len(before) + 50
    moved = [p for p, row in before.items() if after[p]["split"] != row["split"]]
    assert moved == []
    counts = Counter((r["label"], r["split"]) for r in after.values())
    assert counts[("a", "val")] == counts[("a", "test")] == 8  # round(55 × 0.15): refilled


def test_a_class_the_ledger_keeps_out_of_train_names_the_ledger(tmp_path: Path) -> None:
    """A second dataset in the same project: its new class is made of images the ledger
    already put in val/test. The error names the ledger and the way out, not the
    fractions (which only place new images)."""
    src = make_class_tree(tmp_path / "src", {"a": 20, "b": 20})
    ledger = tmp_path / "splits.csv"
    _, out = _prepare(src, tmp_path, "first", ledger=ledger)
    held_out = [p for p, row in _manifest(out).items() if row["split"] != "train"]
    (src / "c").mkdir()
    for i, rel in enumerate(p for p in held_out if p.startswith("a/")):
        shutil.move(src / rel, src / "c" / f"{i}.jpg")
    with pytest.raises(DataError, match=r"keep the split .*splits\.csv gave them.*delete"):
        _prepare(src, tmp_path, "second", ledger=ledger)
    ledger.unlink()
    summary, _ = _prepare(src, tmp_path, "third", ledger=ledger)
    assert summary.counts["train"]["c"] > 0


@pytest.mark.slow
def test_given_val_without_test_is_carved_stratified(hymenoptera: Path, tmp_path: Path) -> None:
    _summary, out = _prepare(hymenoptera, tmp_path, cfg=PrepareConfig(shard_size=128, max_side=96))
    stats = json.loads((out / "stats.json").read_text())
    assert stats["images"] == 398 and stats["quarantined"] == 0
    manifest = _manifest(out)
    assert all(r["split"] == "train" for p, r in manifest.items() if p.startswith("train/"))
    ants = Counter(r["split"] for p, r in manifest.items() if p.startswith("val/ants/"))
    assert ants == {"val": 35, "test": 35}  # exactly half of the given val/ (test_from_val)
    assert manifest["train/ants/imageNotFound.gif"]["split"] == "train"  # GIF normalised
    assert stats["shards"] == {"train": 2, "val": 1, "test": 1}


def test_tfrecord_round_trip(tmp_path: Path) -> None:
    import tensorflow as tf

    src = make_class_tree(tmp_path / "src", {"cats": 20, "dogs": 20}, size=48)
    _, out = _prepare(src, tmp_path)
    manifest = _manifest(out)
    seen = {}
    for split in ("train", "val", "test"):
        for shard in split_files(out, split):
            for raw in tf.data.TFRecordDataset(str(shard)):
                ex = tf.io.parse_single_example(raw, schema.feature_spec())
                path = ex[schema.SOURCE_PATH].numpy().decode()
                seen[path] = split
                row = manifest[path]
                assert ex[schema.LABEL_NAME].numpy().decode() == row["label"]
                assert int(ex[schema.LABEL]) == int(row["label_index"])
                assert ex[schema.SHA256].numpy().decode() == row["sha256"]
                img = Image.open(io.BytesIO(ex[schema.IMAGE].numpy()))
                assert (img.height, img.width) == (int(ex[schema.HEIGHT]), int(ex[schema.WIDTH]))
                assert img.size == (48, 48) and img.mode == "RGB"
                original = np.asarray(Image.open(src / path), dtype=int)
                assert np.abs(np.asarray(img, dtype=int) - original).mean() < 4  # q95 JPEG
    assert seen == {p: r["split"] for p, r in manifest.items()}


def test_max_side_downscales_stored_images(tmp_path: Path) -> None:
    src = make_class_tree(tmp_path / "src", {"cats": 20, "dogs": 20}, size=100)
    _, out = _prepare(src, tmp_path)
    assert {(r["height"], r["width"]) for r in _manifest(out).values()} == {("64", "64")}


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda src: (src / "birds").mkdir(), "folder birds/ in the data source is empty"),
        (
            lambda src: [p.write_bytes(b"") for p in (src / "dogs").iterdir()],
            "class dogs has no usable images",
        ),
        (lambda src: shutil.rmtree(src / "dogs"), "only one class (cats)"),
    ],
    ids=["empty-folder", "all-quarantined", "one-class"],
)
def test_unusable_datasets_are_clear_errors(tmp_path: Path, setup, message: str) -> None:
    src = make_class_tree(tmp_path / "src", {"cats": 20, "dogs": 20})
    setup(src)
    with pytest.raises(DataError) as err:
        _prepare(src, tmp_path)
    assert message in str(err.value)


def test_a_class_under_three_images_is_a_clear_error(tmp_path: Path) -> None:
    src = make_class_tree(tmp_path / "src", {"cats": 20, "dogs": 2})
    with pytest.raises(DataError, match=r"class dogs \(2\) has fewer than 3 usable images"):
        _prepare(src, tmp_path)


def test_a_given_split_without_a_class_is_a_clear_error(tmp_path: Path) -> None:
    layout = {"train": {"cats": 5, "dogs": 5}, "val": {"cats": 2, "dogs": 2}, "test": {"cats": 2}}
    src = make_class_tree(tmp_path / "src", splits=layout)
    with pytest.raises(DataError, match=r"test split has no images of class dogs \(7 usable"):
        _prepare(src, tmp_path)


def test_decoding_on_a_process_pool_is_ordered_and_the_same_for_any_worker_count(
    tmp_path: Path,
) -> None:
    import tempfile

    from reprotrain.data import sources
    from reprotrain.data.decoding import decode_all
    from reprotrain.data.images import Rejected

    src = make_class_tree(tmp_path / "src", {"cats": 15, "dogs": 15}, size=80)
    (src / "cats" / "bad.jpg").write_text("not an image")
    fetch(str(src), tmp_path / "raw")
    _, candidates, _ = sources.scan(tmp_path / "raw")
    runs = []
    for workers in (1, 2, 3):
        with tempfile.TemporaryFile() as spool:
            decoded = decode_all(tmp_path / "raw", candidates, CFG, spool, workers=workers)
            spool.seek(0)
            runs.append((decoded, spool.read()))
    assert [d.candidate for d in runs[0][0]] == candidates  # input order
    assert runs[0] == runs[1] == runs[2]
    assert sum(isinstance(d.result, Rejected) for d in runs[0][0]) == 1


def test_prepare_output_is_byte_identical_with_1_and_2_workers(tmp_path: Path) -> None:
    src = make_class_tree(tmp_path / "src", {"a": 14, "b": 14}, size=40)
    fetch(str(src), tmp_path / "raw")
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"out-{workers}"
        prepare(tmp_path / "raw", out, CFG, 42, workers=workers)
        outs.append({p.name: p.read_bytes() for p in sorted(out.iterdir())})
    assert any(name.endswith(".tfrecord") for name in outs[0])
    assert outs[0] == outs[1]


def test_ordered_map_pulls_lazily_keeps_a_bounded_window_and_the_input_order() -> None:
    """The streaming guarantee of prepare's decode pool, on a real thread pool: results come
    back in input order although later items finish first, and at no point are more than
    ``window`` items submitted but not yet handed out (the input generator is never drained
    ahead)."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from reprotrain.data.decoding import ordered_map

    n, window = 40, 3
    pulled = []

    def items():
        for i in range(n):
            pulled.append(i)
            yield i

    def slow_first(i: int) -> int:
        time.sleep(0.02 if i % window == 0 else 0.0)  # the oldest of each window is slowest
        return i * i

    got = []
    with ThreadPoolExecutor(max_workers=window) as pool:
        for k, (item, result) in enumerate(
            ordered_map(lambda i: pool.submit(slow_first, i), items(), window), 1
        ):
            assert len(pulled) - k <= window  # submitted, not yet handed out
            assert len(pulled) <= min(n, window + k)
            got.append((item, result))
    assert got == [(i, i * i) for i in range(n)]
    with pytest.raises(ValueError, match="window"):
        next(ordered_map(lambda i: None, [1], 0))


def test_test_images_taken_out_and_put_back_keep_their_split(tmp_path: Path) -> None:
    """Through prepare and data/splits.csv: 8 test images out, 20 new in, the 8 back. The
    ledger keeps their rows marked absent, so they come back as test images (before, most
    came back as train or val)."""
    src = make_class_tree(tmp_path / "src", {"a": 30, "b": 30})
    ledger = tmp_path / "splits.csv"
    _, out1 = _prepare(src, tmp_path, "first", ledger=ledger)
    tests = sorted(p for p, row in _manifest(out1).items() if row["split"] == "test")[:8]
    aside = tmp_path / "aside"
    for rel in tests:
        (aside / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(src / rel, aside / rel)
    make_class_tree(src, {"a": 10, "b": 10}, seed=5)
    _, out2 = _prepare(src, tmp_path, "second", ledger=ledger)
    assert not set(tests) & set(_manifest(out2))
    with ledger.open() as f:
        rows = {r["sha256"]: r for r in csv.DictReader(f)}
    shas = {_manifest(out1)[p]["sha256"] for p in tests}
    assert {(rows[s]["split"], rows[s]["present"]) for s in shas} == {("test", "no")}
    assert len(rows) == 60 + 20
    for rel in tests:
        shutil.move(aside / rel, src / rel)
    _, out3 = _prepare(src, tmp_path, "third", ledger=ledger)
    assert {_manifest(out3)[p]["split"] for p in tests} == {"test"}
    with ledger.open() as f:
        assert {r["present"] for r in csv.DictReader(f)} == {"yes"}
