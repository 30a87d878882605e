"""A dataset brings only its own files: a ``snapshot.csv`` found inside an archive or folder
source lists paths inside the snapshot only, and nothing but regular files is ever opened."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import socket
import zipfile
from pathlib import Path

import pytest

from reprotrain.config import PrepareConfig
from reprotrain.data.fetch import fetch
from reprotrain.data.prepare import prepare
from reprotrain.data.sources import scan
from reprotrain.errors import DataError
from tests.conftest import make_class_tree, write_image

#: fetch's report of what it left out (documented in docs/reliability.md).
FETCH_REPORT = ".fetch-quarantine.csv"


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _hostile_zip(tmp_path: Path, raw: Path) -> tuple[Path, Path]:
    """A zip whose root ``snapshot.csv`` lists its 6 images and three images that exist
    outside it: an absolute path and two ``../`` escapes from ``raw`` (as reproduced)."""
    tree = make_class_tree(tmp_path / "zipped" / "dataset", {"cats": 3, "dogs": 3})
    secret = write_image(tmp_path / "host" / "file.jpg", seed=7)
    write_image(raw / ".." / ".." / "outside" / "x.jpg", seed=8)
    write_image(raw / ".." / "y.jpg", seed=9)
    lines = ["path,label"]
    lines += [
        f"{f.relative_to(tree).as_posix()},{f.parent.name}" for f in sorted(tree.rglob("*.jpg"))
    ]
    lines += [f"{secret},cats", "../../outside/x.jpg,dogs", "../y.jpg,cats"]
    (tree / "snapshot.csv").write_text("\n".join(lines) + "\n")
    archive = tmp_path / "hostile.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(tree.rglob("*")):
            zf.write(f, f.relative_to(tree.parent).as_posix())
    return archive, secret


def test_snapshot_csv_inside_an_archive_cannot_bring_outside_files(tmp_path: Path) -> None:
    raw = tmp_path / "proj" / "data" / "raw"
    archive, secret = _hostile_zip(tmp_path, raw)
    fetch(str(archive), raw)
    layout, candidates, problems = scan(raw)
    assert layout == "manifest"
    assert sorted(c.path for c in candidates) == sorted(
        f"{c}/{f.name}" for c in ("cats", "dogs") for f in (raw / c).iterdir()
    )
    reasons = {p.path: p.reason for p in problems}
    assert "absolute path, outside the dataset" in reasons[str(secret)]
    assert "leads outside the dataset (..)" in reasons["../../outside/x.jpg"]
    assert "leads outside the dataset (..)" in reasons["../y.jpg"]
    # Through prepare: not in manifest.csv (hence not in the TFRecords or the ledger), but
    # in quarantine.csv with the reason.
    out = tmp_path / "prepared"
    prepare(raw, out, PrepareConfig(shard_size=16, max_side=None), 42, ledger=tmp_path / "s.csv")
    manifest = _rows(out / "manifest.csv")
    assert len(manifest) == 6 and all(not r["path"].startswith(("/", "..")) for r in manifest)
    outside = {secret, raw / ".." / ".." / "outside" / "x.jpg", raw / ".." / "y.jpg"}
    outside_sha = {hashlib.sha256(p.read_bytes()).hexdigest() for p in outside}
    ledger = {r["sha256"] for r in _rows(tmp_path / "s.csv")}
    assert ledger == {r["sha256"] for r in manifest} and not ledger & outside_sha
    quarantined = {r["path"]: r["reason"] for r in _rows(out / "quarantine.csv")}
    assert set(quarantined) == {str(secret), "../../outside/x.jpg", "../y.jpg"}
    assert all("outside the dataset" in r for r in quarantined.values())


def test_a_manifest_listing_only_outside_files_is_refused_in_one_line(tmp_path: Path) -> None:
    raw = make_class_tree(tmp_path / "raw", {"cats": 1})
    secret = make_class_tree(tmp_path / "host", {"s": 1})
    (raw / "snapshot.csv").write_text(f"path,label\n{next(secret.rglob('*.jpg'))},cats\n")
    with pytest.raises(DataError, match=r"none of its rows names a file inside the dataset") as e:
        scan(raw)
    assert "\n" not in str(e.value)


def test_a_link_in_the_snapshot_that_leads_out_is_quarantined(tmp_path: Path) -> None:
    raw = make_class_tree(tmp_path / "raw", {"cats": 2})
    secret = next(make_class_tree(tmp_path / "host", {"s": 1}).rglob("*.jpg"))
    (raw / "cats" / "link.jpg").symlink_to(secret)
    inside = sorted((raw / "cats").glob("img_*.jpg"))
    (raw / "cats" / "alias.jpg").symlink_to(inside[0].name)  # stays inside: fine
    rows = [f"cats/{f.name},cats" for f in inside] + ["cats/link.jpg,cats", "cats/alias.jpg,cats"]
    (raw / "snapshot.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    _, candidates, problems = scan(raw)
    assert sorted(c.path for c in candidates) == sorted(
        ["cats/alias.jpg", *(f"cats/{f.name}" for f in inside)]
    )
    assert [(p.path, "link to a path outside the dataset" in p.reason) for p in problems] == [
        ("cats/link.jpg", True)
    ]


@pytest.mark.timeout(60)
def test_a_manifest_row_naming_a_fifo_is_quarantined_and_prepare_does_not_block(
    tmp_path: Path,
) -> None:
    raw = make_class_tree(tmp_path / "raw", {"cats": 3, "dogs": 3})
    os.mkfifo(raw / "cats" / "pipe.jpg")
    rows = [f"{f.parent.name}/{f.name},{f.parent.name}" for f in sorted(raw.rglob("img_*.jpg"))]
    rows.append("cats/pipe.jpg,cats")
    (raw / "snapshot.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    _, candidates, problems = scan(raw)
    assert "cats/pipe.jpg" not in {c.path for c in candidates}
    assert [(p.path, p.reason) for p in problems] == [
        ("cats/pipe.jpg", "not a regular file: a named pipe (FIFO), not read (manifest line 8)")
    ]
    # Only reached when the FIFO is not a candidate: reading it would block forever.
    summary = prepare(raw, tmp_path / "prepared", PrepareConfig(shard_size=16, max_side=None), 1)
    assert [p.path for p in summary.quarantine] == ["cats/pipe.jpg"]


@pytest.mark.timeout(60)
def test_a_folder_source_with_a_fifo_and_a_socket_fetches_the_rest(tmp_path: Path) -> None:
    src = make_class_tree(tmp_path / "src", {"cats": 3, "dogs": 3})
    os.mkfifo(src / "cats" / "pipe.jpg")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(src / "dogs" / "sock.jpg"))
    try:
        result = fetch(str(src), tmp_path / "raw")
    finally:
        sock.close()
    assert result.files == 6 and result.copied == 6
    assert [(q.path, q.reason) for q in result.quarantined] == [
        ("cats/pipe.jpg", "not a regular file: a named pipe (FIFO), not read"),
        ("dogs/sock.jpg", "not a regular file: a socket, not read"),
    ]
    assert not (tmp_path / "raw" / "cats" / "pipe.jpg").exists()
    assert _rows(tmp_path / "raw" / FETCH_REPORT) == [
        {"path": q.path, "reason": q.reason} for q in result.quarantined
    ]
    _, candidates, problems = scan(tmp_path / "raw")
    assert len(candidates) == 6
    assert [p.path for p in problems] == ["cats/pipe.jpg", "dogs/sock.jpg"]
    # prepare's quarantine.csv and stats.json account for them like any other bad file.
    out = tmp_path / "prepared"
    prepare(tmp_path / "raw", out, PrepareConfig(shard_size=16, max_side=None), 1)
    assert _rows(out / "quarantine.csv") == _rows(tmp_path / "raw" / FETCH_REPORT)
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["files_seen"], stats["images"], stats["quarantined"]) == (8, 6, 2)
    assert stats["quarantine_reasons"] == {"not a regular file": 2}
    # Fixed at the source: the next fetch drops the report (data/raw as if never there).
    (src / "cats" / "pipe.jpg").unlink()
    (src / "dogs" / "sock.jpg").unlink()
    again = fetch(str(src), tmp_path / "raw")
    assert again.quarantined == () and not (tmp_path / "raw" / FETCH_REPORT).exists()
