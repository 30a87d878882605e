"""What a folder source may bring into ``data/raw`` (:mod:`reprotrain.data.listing`): links
inside it followed, links leaving it, dangling links, loops and names that are not UTF-8
quarantined with their reason, through a real fetch and prepare's scan of the snapshot."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

from reprotrain.data.fetch import fetch, tree_digest
from reprotrain.data.sources import scan
from tests.conftest import make_class_tree


def _report(raw: Path) -> list[tuple[str, str]]:
    """fetch's quarantine report (``.fetch-quarantine.csv``, see docs/reliability.md)."""
    with (raw / ".fetch-quarantine.csv").open(newline="", encoding="utf-8") as f:
        return [(r["path"], r["reason"]) for r in csv.DictReader(f)]


def test_symlinks_inside_the_source_are_followed_the_others_reported(tmp_path: Path) -> None:
    src = make_class_tree(tmp_path / "src", {"cats": 3, "dogs": 3})
    elsewhere = make_class_tree(tmp_path / "elsewhere", {"hamsters": 2})
    dog = sorted((src / "dogs").iterdir())[0]
    (src / "cats" / "inside.jpg").symlink_to(Path("..") / "dogs" / dog.name)
    (src / "dogs" / "outside.jpg").symlink_to(next((elsewhere / "hamsters").iterdir()))
    (src / "dogs" / "dangling.jpg").symlink_to("gone.jpg")
    (src / "dogs" / "loop").symlink_to("..")
    (src / "kittens").symlink_to("cats")  # a class folder linked inside: followed
    (src / "hamsters").symlink_to(elsewhere / "hamsters")  # one outside: reported
    raw = tmp_path / "raw"
    result = fetch(str(src), raw)
    reasons = dict(_report(raw))
    assert sorted(reasons) == ["dogs/dangling.jpg", "dogs/loop", "dogs/outside.jpg", "hamsters"]
    assert "outside the source" in reasons["dogs/outside.jpg"]
    assert "outside the source" in reasons["hamsters"]
    assert reasons["dogs/dangling.jpg"] == "dangling symbolic link, nothing to read (to gone.jpg)"
    assert "symbolic link loop, not followed" in reasons["dogs/loop"]
    assert [(q.path, q.reason) for q in result.quarantined] == sorted(reasons.items())
    # 3 cats + inside.jpg, 3 dogs, and kittens/ = cats/ again (duplicates: prepare's job).
    assert result.files == 4 + 3 + 4
    copy = raw / "cats" / "inside.jpg"
    assert not copy.is_symlink() and copy.read_bytes() == dog.read_bytes()
    assert sorted(p.name for p in (raw / "kittens").iterdir()) == sorted(
        p.name for p in (raw / "cats").iterdir()
    )
    assert not (raw / "hamsters").exists() and not any(p.is_symlink() for p in raw.rglob("*"))
    _, candidates, problems = scan(raw)
    assert len(candidates) == 11 and sorted(p.path for p in problems) == sorted(reasons)


def test_file_names_that_are_not_utf8_are_quarantined_and_the_rest_fetched(
    tmp_path: Path,
) -> None:
    src = make_class_tree(tmp_path / "src", {"cats": 2, "dogs": 2})
    cat = next((src / "cats").iterdir())
    os.link(cat, os.path.join(os.fsencode(src / "cats"), b"caf\xe9.jpg"))
    bad_dir = os.path.join(os.fsencode(src), b"chiens\xff")
    os.mkdir(bad_dir)
    shutil.copy(cat, os.path.join(bad_dir, b"a.jpg"))
    raw = tmp_path / "raw"
    result = fetch(str(src), raw)
    assert result.files == 4 and result.digest == tree_digest(src)
    assert _report(raw) == [
        ("cats/caf\\xe9.jpg", "file name is not valid UTF-8: rename it"),
        ("chiens\\xff", "folder name is not valid UTF-8: rename it"),
    ]
    _, candidates, problems = scan(raw)
    assert len(candidates) == 4 and [p.path for p in problems] == [
        "cats/caf\\xe9.jpg",
        "chiens\\xff",
    ]
