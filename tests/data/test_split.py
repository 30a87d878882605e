"""The split rules (a pure function) on many random cases, the ledger file, and the real
``dvc repro prepare`` growing a dataset without moving any assigned image."""

from __future__ import annotations

import csv
import hashlib
import random
from collections import Counter
from pathlib import Path

import pytest

from reprotrain.data import split
from reprotrain.data.split import Entry, Fractions, Item
from reprotrain.errors import DataError
from tests.conftest import TINY_PARAMS, deep_update, make_class_tree, make_project, run

F = Fractions(val=0.15, test=0.15, test_from_val=0.5)


def _items(sizes: dict[str, int], given: str | None = None, start: int = 0) -> list[Item]:
    out = []
    for label, n in sizes.items():
        for i in range(n):
            sha = hashlib.sha256(f"{label}-{start + i}".encode()).hexdigest()
            out.append(Item(sha, label, given))
    return out


def _counts(ledger: dict[str, Entry]) -> Counter[tuple[str, str]]:
    return Counter((e.label, e.split) for e in ledger.values())


def _check_targets(items: list[Item], ledger: dict[str, Entry], fr: Fractions = F) -> None:
    counts = _counts(ledger)
    for label, n in Counter(i.label for i in items).items():
        for s, frac in (("val", fr.val), ("test", fr.test)):
            got = counts[(label, s)]
            assert abs(got - round(n * frac)) <= 1, (label, n, s, got)
            assert got >= 1, (label, n, s)
        assert counts[(label, "train")] >= 1


def test_small_uneven_classes_are_exact_and_covered() -> None:
    items = _items({"a": 3, "b": 5, "c": 9, "d": 10, "e": 40})
    result = split.assign_splits(items, {}, seed=42, fractions=F)
    _check_targets(items, result.ledger)
    counts = _counts(result.ledger)
    assert counts[("e", "val")] == 6 and counts[("e", "test")] == 6  # round(40 × 0.15)
    assert counts[("a", "train")] == counts[("a", "val")] == counts[("a", "test")] == 1


@pytest.mark.slow
def test_many_random_datasets_and_growth_never_move_an_image() -> None:
    rng = random.Random(0)
    for case in range(300):
        fr = Fractions(rng.uniform(0.05, 0.35), rng.uniform(0.05, 0.35), 0.5)
        sizes = {f"c{k}": rng.randint(3, 60) for k in range(rng.randint(2, 5))}
        items = _items(sizes)
        seed = rng.randint(0, 99)
        first = split.assign_splits(items, {}, seed=seed, fractions=fr)
        _check_targets(items, first.ledger, fr)
        assert split.assign_splits(items, {}, seed=seed, fractions=fr) == first  # deterministic
        grown = items + _items({c: rng.randint(0, 30) for c in sizes}, start=1000)
        second = split.assign_splits(grown, first.ledger, seed=seed, fractions=fr)
        for sha, entry in first.ledger.items():
            assert second.ledger[sha] == entry, case
        _check_targets(grown, second.ledger, fr)  # growth only: still exact


def test_default_data_shape_given_val_is_halved_exactly() -> None:
    """hymenoptera: train/ and val/ given, no test/: 70 val ants → 35 val + 35 test."""
    items = _items({"ants": 124, "bees": 121}, "train") + _items(
        {"ants": 70, "bees": 83}, "val", start=500
    )
    ledger = split.assign_splits(items, {}, seed=42, fractions=F).ledger
    c = _counts(ledger)
    assert (c[("ants", "val")], c[("ants", "test")]) == (35, 35)
    assert abs(c[("bees", "val")] - c[("bees", "test")]) == 1
    assert c[("ants", "train")] == 124  # given train stays train


def _present(ledger: dict[str, Entry]) -> dict[str, Entry]:
    return {sha: e for sha, e in ledger.items() if e.present}


def test_removed_images_stay_absent_and_new_ones_refill_the_split() -> None:
    items = _items({"a": 20, "b": 20})
    first = split.assign_splits(items, {}, seed=1, fractions=F).ledger
    gone = next(sha for sha, e in first.items() if e.split == "test" and e.label == "a")
    kept = [i for i in items if i.sha256 != gone] + _items({"a": 1}, start=99)
    result = split.assign_splits(kept, first, seed=1, fractions=F)
    assert result.ledger[gone] == Entry("a", "test", present=False) and result.removed == 1
    assert _counts(_present(result.ledger))[("a", "test")] == 3  # the new image took the slot
    # Absent a second time: still one row, not counted as removed again.
    again = split.assign_splits(kept, result.ledger, seed=1, fractions=F)
    assert again.ledger == result.ledger and again.removed == 0


def test_test_images_taken_out_and_put_back_keep_their_split() -> None:
    """The issue's reproduction: 8 test images out, 20 new in, the 8 back. Before the
    ledger kept absent rows, 6 of the 8 came back as train or val."""
    items = _items({"a": 30, "b": 30})
    first = split.assign_splits(items, {}, seed=42, fractions=F).ledger
    out = sorted(sha for sha, e in first.items() if e.split == "test")[:8]
    assert len(out) == 8
    remaining = [i for i in items if i.sha256 not in out]
    grown = remaining + _items({"a": 10, "b": 10}, start=1000)
    second = split.assign_splits(grown, first, seed=42, fractions=F)
    assert second.removed == 8
    assert {sha: second.ledger[sha] for sha in out} == {
        sha: Entry(first[sha].label, "test", present=False) for sha in out
    }
    # The present images are exactly stratified: absent rows count toward nothing.
    _check_targets(grown, _present(second.ledger))
    for label, n in Counter(i.label for i in grown).items():
        want = split.pool_targets("all", n, F)
        assert {s: _counts(_present(second.ledger))[(label, s)] for s in want} == want
    back = grown + [i for i in items if i.sha256 in out]
    third = split.assign_splits(back, second.ledger, seed=42, fractions=F)
    assert {third.ledger[sha].split for sha in out} == {"test"}
    assert third.returned == 8 and third.removed == 0
    assert all(e.present for e in third.ledger.values())
    assert all(third.ledger[sha].split == e.split for sha, e in second.ledger.items())
    # Deleting the ledger still re-splits from scratch (exact again).
    fresh = split.assign_splits(back, {}, seed=42, fractions=F)
    _check_targets(back, fresh.ledger)


def test_new_images_fill_around_returning_ones() -> None:
    """Images that return together with new ones: the returning ones keep their split
    first, the new ones go where the present data is furthest below its targets."""
    items = _items({"a": 40})
    items += _items({"b": 40}, start=500)
    first = split.assign_splits(items, {}, seed=5, fractions=F).ledger
    out = {sha for sha, e in first.items() if e.split == "test" and e.label == "a"}
    without = split.assign_splits(
        [i for i in items if i.sha256 not in out], first, seed=5, fractions=F
    )
    back = items + _items({"a": 20}, start=2000)
    result = split.assign_splits(back, without.ledger, seed=5, fractions=F)
    assert all(result.ledger[sha].split == "test" for sha in out)
    counts = _counts(result.ledger)
    # 60 a images: test 6 returned (target 9) → 3 of the 20 new go to test, val to 9.
    assert (counts[("a", "test")], counts[("a", "val")], counts[("a", "train")]) == (9, 9, 42)


def test_ledger_wins_over_a_contradicting_folder_and_survives_a_relabel() -> None:
    items = _items({"a": 10, "b": 10}, "train") + _items({"a": 4, "b": 4}, "val", start=50)
    first = split.assign_splits(items, {}, seed=3, fractions=F).ledger
    test_sha = next(sha for sha, e in first.items() if e.split == "test")
    moved = [
        Item(i.sha256, "b" if i.label == "a" else "a", "train" if i.sha256 == test_sha else i.given)
        for i in items
    ]
    result = split.assign_splits(moved, first, seed=3, fractions=F)
    assert result.ledger[test_sha].split == "test"  # never becomes a training image
    assert [c[0] for c in result.conflicts] == [test_sha]
    assert len(result.relabelled) == len(items)
    assert all(result.ledger[sha].split == e.split for sha, e in first.items())


def test_class_with_fewer_than_three_images_is_a_clear_error() -> None:
    with pytest.raises(DataError, match=r"class tiny \(2\) has fewer than 3 usable images"):
        split.assign_splits(_items({"tiny": 2, "big": 30}), {}, seed=0, fractions=F)


def test_ledger_round_trip_is_sorted_and_atomic(tmp_path: Path) -> None:
    ledger = split.assign_splits(_items({"b": 5, "a": 5}), {}, seed=0, fractions=F).ledger
    path = tmp_path / "splits.csv"
    split.write_ledger(path, ledger)
    assert split.read_ledger(path) == ledger
    rows = list(csv.reader(path.open()))
    assert rows[0] == ["sha256", "label", "split", "present"]
    assert rows[1:] == sorted(rows[1:], key=lambda r: (r[1], r[0]))
    assert split.read_ledger(tmp_path / "absent.csv") == {}
    path.write_text("path,label\nx,a\n")
    with pytest.raises(DataError, match=r"git checkout -- .*or delete it"):
        split.read_ledger(path)
    path.write_text("sha256,label,split,present\nab,a,test,maybe\n")
    with pytest.raises(DataError, match=r"line 2: bad row .*or delete it"):
        split.read_ledger(path)


def test_absent_rows_round_trip_and_old_ledgers_read_as_present(tmp_path: Path) -> None:
    ledger = {"aa": Entry("a", "test", present=False), "bb": Entry("a", "train")}
    path = tmp_path / "splits.csv"
    split.write_ledger(path, ledger)
    assert path.read_text() == "sha256,label,split,present\naa,a,test,no\nbb,a,train,yes\n"
    assert split.read_ledger(path) == ledger
    # A ledger written before the present column: every row present, every split kept.
    path.write_text("sha256,label,split\naa,a,test\nbb,b,val\n")
    assert split.read_ledger(path) == {"aa": Entry("a", "test"), "bb": Entry("b", "val")}


def _ledger_rows(proj: Path) -> dict[str, tuple[str, str]]:
    with (proj / "data" / "splits.csv").open() as f:
        return {r["sha256"]: (r["label"], r["split"]) for r in csv.DictReader(f)}


@pytest.mark.slow
def test_dvc_repro_prepare_is_stratified_and_growth_stable(tmp_path: Path) -> None:
    data = make_class_tree(tmp_path / "images", {"few": 5, "some": 9, "many": 40})
    proj = make_project(
        tmp_path / "proj",
        deep_update(TINY_PARAMS, {"data": {"source": str(data), "sha256": None}}),
    )
    run(["dvc", "repro", "prepare"], proj)
    first = _ledger_rows(proj)
    counts = Counter(first.values())
    for label, n in (("few", 5), ("some", 9), ("many", 40)):
        for s in ("val", "test"):
            assert abs(counts[(label, s)] - round(n * 0.15)) <= 1 and counts[(label, s)] >= 1
    assert len(first) == 54
    # git tracks the ledger (not ignored by DVC), so a clone and `dvc exp run --temp` see it.
    assert run(["git", "check-ignore", "-q", "data/splits.csv"], proj, check=False).returncode
    run(["git", "add", "-A"], proj)
    run(["git", "commit", "-q", "-m", "first split"], proj)

    make_class_tree(data, {"few": 4, "some": 6, "many": 20}, seed=7)  # the data grows
    run(["dvc", "repro", "prepare"], proj)
    second = _ledger_rows(proj)
    assert len(second) == 84
    assert all(second[sha] == v for sha, v in first.items())  # nothing assigned moved
    counts = Counter(second.values())
    for label, n in (("few", 9), ("some", 15), ("many", 60)):
        for s in ("val", "test"):
            assert abs(counts[(label, s)] - round(n * 0.15)) <= 1 and counts[(label, s)] >= 1
    with (proj / "data" / "prepared" / "manifest.csv").open() as f:
        manifest = {r["sha256"]: r["split"] for r in csv.DictReader(f)}
    assert manifest == {sha: s for sha, (_, s) in second.items()}

    # A fresh clone and a `dvc exp run --temp` (a copy made from git) see the same ledger.
    run(["git", "add", "-A"], proj)
    run(["git", "commit", "-q", "-m", "grown"], proj)
    run(["git", "clone", "-q", str(proj), str(tmp_path / "clone")], tmp_path)
    ledger_text = (proj / "data" / "splits.csv").read_text()
    assert (tmp_path / "clone" / "data" / "splits.csv").read_text() == ledger_text
    make_class_tree(data, {"few": 1, "some": 1, "many": 1}, seed=9)
    run(["dvc", "exp", "run", "--temp", "prepare"], proj)
    ref = run(["git", "for-each-ref", "--format=%(objectname)", "refs/exps"], proj).stdout
    shown = run(["git", "show", f"{ref.split()[0]}:data/splits.csv"], proj).stdout
    third = {r["sha256"]: (r["label"], r["split"]) for r in csv.DictReader(shown.splitlines())}
    assert len(third) == 87 and all(third[sha] == v for sha, v in second.items())
