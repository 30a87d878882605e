"""Each kind of data.source (folder, split folders, archive, URL + mirror, CSV) → data/raw."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from reprotrain.config import HYMENOPTERA_DIGEST
from reprotrain.data.fetch import SnapshotState, fetch, tree_digest
from reprotrain.data.listing import list_files
from reprotrain.data.origin import MIRROR_ENV, source_kind
from reprotrain.data.sources import scan
from reprotrain.errors import DataError
from tests.conftest import make_class_tree, make_project, run, subprocess_env

OFFLINE_URL = "http://127.0.0.1:9/dataset.zip"  # nothing listens on the discard port


def test_source_kinds() -> None:
    assert source_kind("https://x.org/a.zip") == "url"
    assert source_kind("/data/labels.CSV") == "csv"
    assert source_kind("images.tar.gz") == "archive"
    assert source_kind("images/") == "directory"


def test_class_folders_snapshot_is_exact_incremental_and_read_only(tmp_path: Path) -> None:
    src = make_class_tree(tmp_path / "src", {"cats": 3, "dogs": 2})
    before = tree_digest(src)
    raw = tmp_path / "raw"
    first = fetch(str(src), raw)
    assert (first.kind, first.files, first.copied, first.removed) == ("directory", 5, 5, 0)
    assert first.digest == before == tree_digest(src)  # same bytes, source untouched
    again = fetch(str(src), raw)
    assert (again.copied, again.removed) == (0, 0)  # unchanged files are not copied again
    victim = sorted((src / "dogs").iterdir())[0]
    victim.unlink()
    shrunk = fetch(str(src), raw)
    assert (shrunk.files, shrunk.removed) == (4, 1)
    assert not (raw / "dogs" / victim.name).exists()
    layout, candidates, problems = scan(raw)
    assert layout == "classes" and len(candidates) == 4 and not problems
    assert {c.label for c in candidates} == {"cats", "dogs"}


def test_split_folders_are_detected(hymenoptera: Path, tmp_path: Path) -> None:
    result = fetch(str(hymenoptera), tmp_path / "raw")
    assert result.files == 398 and result.digest == HYMENOPTERA_DIGEST
    layout, candidates, _ = scan(tmp_path / "raw")
    assert layout == "splits"
    assert {c.split for c in candidates} == {"train", "val"}
    assert any(c.path == "train/ants/ant photos.jpg" for c in candidates)  # space in name


@pytest.mark.parametrize("fmt", ["zip", "tar.gz"])
def test_archive_with_a_single_top_folder(tmp_path: Path, fmt: str) -> None:
    tree = make_class_tree(tmp_path / "pets" / "dataset", {"cats": 2, "dogs": 2})
    archive = shutil.make_archive(
        str(tmp_path / "pets"),
        "zip" if fmt == "zip" else "gztar",
        root_dir=tree.parent,
        base_dir="dataset",
    )
    result = fetch(archive, tmp_path / "raw")
    assert result.kind == "archive" and result.files == 4
    assert result.digest == tree_digest(tree)
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["cats", "dogs"]


def test_unsafe_archive_member_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("../escape.jpg", b"x")
    with pytest.raises(DataError, match="unsafe member path"):
        fetch(str(bad), tmp_path / "raw")
    assert not (tmp_path / "escape.jpg").exists()


def test_corrupt_archive_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "data.tar"
    bad.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(DataError, match="not a zip or tar archive"):
        fetch(str(bad), tmp_path / "raw")


def test_url_source_uses_the_mirror_and_checks_the_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = make_class_tree(tmp_path / "mirror", {"a": 2, "b": 2})
    with tarfile.open(tmp_path / "mirror.tar", "w") as tf:
        tf.add(tree, arcname="data")
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "mirror.tar"))
    good = fetch(OFFLINE_URL, tmp_path / "raw", sha256=tree_digest(tree))
    assert good.kind == "url" and good.files == 4
    with pytest.raises(DataError, match=r"does not match data\.sha256"):
        fetch(OFFLINE_URL, tmp_path / "raw2", sha256="0" * 64)
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=f"\\${MIRROR_ENV} = .*no such file"):
        fetch(OFFLINE_URL, tmp_path / "raw3")


def test_offline_url_without_mirror_says_what_to_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    with pytest.raises(DataError) as err:
        fetch(OFFLINE_URL, tmp_path / "raw", cache_dir=tmp_path / "cache")
    assert f"cannot download {OFFLINE_URL}" in str(err.value)
    assert MIRROR_ENV in str(err.value) and "data.mirror" in str(err.value)
    assert not list((tmp_path / "cache").rglob("*.part"))  # no half-written download left


def test_csv_manifest_whose_files_are_all_missing_says_where_it_looked(tmp_path: Path) -> None:
    tree = make_class_tree(tmp_path / "photos", {"cats": 2, "dogs": 2})
    manifest = tmp_path / "lists" / "labels.csv"  # paths written relative to photos/, not here
    manifest.parent.mkdir()
    rows = [f"{f.relative_to(tree).as_posix()},{f.parent.name}" for f in tree.rglob("*.jpg")]
    manifest.write_text("path,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"none of the 4 files it lists exists .*own folder"):
        fetch(str(manifest), tmp_path / "raw")


def test_csv_manifest_relative_paths_missing_files_and_splits(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tree = make_class_tree(tmp_path / "photos", {"cats": 2, "dogs": 2})
    files = sorted(tree.rglob("*.jpg"))
    outside = make_class_tree(tmp_path / "elsewhere", {"x": 1})
    lines = ["path,label,split"]
    lines += [f"photos/{f.relative_to(tree).as_posix()},{f.parent.name},train" for f in files]
    lines += [f"{next(outside.rglob('*.jpg'))},cats,", "photos/cats/gone.jpg,cats,test"]
    (tmp_path / "meta").mkdir()
    manifest = tmp_path / "labels.csv"
    manifest.write_text("\n".join(lines) + "\n")
    result = fetch(str(manifest), tmp_path / "raw")
    assert result.kind == "csv" and result.files == 6  # 5 images + snapshot.csv
    assert "1 of 6 listed files do not exist" in caplog.text
    assert (tmp_path / "raw" / "snapshot.csv").is_file()
    assert not (tmp_path / "raw" / "manifest.csv").exists()  # that name is prepare's
    layout, candidates, problems = scan(tmp_path / "raw")
    assert layout == "manifest" and len(candidates) == 5
    assert [p.path for p in problems] == ["photos/cats/gone.jpg"]
    assert "does not exist" in problems[0].reason
    assert sum(c.split == "train" for c in candidates) == 4
    assert all((tmp_path / "raw" / c.path).is_file() for c in candidates)


def test_csv_manifest_with_unknown_or_missing_columns(tmp_path: Path) -> None:
    bad = tmp_path / "m.csv"
    bad.write_text("file,label,weight\na.jpg,cats,1\n")
    with pytest.raises(DataError) as err:
        fetch(str(bad), tmp_path / "raw")
    assert "missing column(s) path" in str(err.value)
    assert "unknown column(s) file, weight" in str(err.value)


def test_missing_directory_source(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file or directory"):
        fetch(str(tmp_path / "nope"), tmp_path / "raw")


@pytest.mark.slow
def test_fetch_stage_prints_one_line_error_offline(tmp_path: Path) -> None:
    proj = make_project(tmp_path / "proj", {"data": {"source": OFFLINE_URL}}, git=False)
    env = subprocess_env(XDG_CACHE_HOME=str(tmp_path / "cache"))
    env.pop(MIRROR_ENV, None)
    proc = run([sys.executable, "stages/fetch.py"], proj, env, check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"error: cannot download {OFFLINE_URL}" in proc.stderr
    assert MIRROR_ENV in proc.stderr


def test_refetch_copies_only_changed_files_and_removes_deleted_ones(tmp_path: Path) -> None:
    src = make_class_tree(tmp_path / "src", {"cats": 4, "dogs": 4})
    raw = tmp_path / "raw"
    first = fetch(str(src), raw)
    assert (first.copied, first.unchanged, first.removed) == (8, 0, 0)
    again = fetch(str(src), raw)
    assert (again.copied, again.unchanged, again.removed) == (0, 8, 0)
    edited, gone = sorted((src / "cats").iterdir())[:2]
    edited.write_bytes(edited.read_bytes() + b"\0")  # same name, new content and size
    gone.unlink()
    changed = fetch(str(src), raw)
    assert (changed.files, changed.copied, changed.unchanged, changed.removed) == (7, 1, 6, 1)
    assert (raw / "cats" / edited.name).read_bytes() == edited.read_bytes()
    assert not (raw / "cats" / gone.name).exists()
    assert changed.digest == tree_digest(src)


@pytest.mark.parametrize("fmt", ["zip", "gztar"])
def test_refetching_an_unchanged_archive_copies_nothing(tmp_path: Path, fmt: str) -> None:
    """Extracted members keep their archive mtimes, so the snapshot sees them unchanged."""
    tree = make_class_tree(tmp_path / "pets" / "dataset", {"cats": 3, "dogs": 3})
    stamp = 1_600_000_000  # even: zip keeps 2-second times
    for f in tree.rglob("*.jpg"):
        os.utime(f, (stamp, stamp))
    archive = shutil.make_archive(
        str(tmp_path / "pets"), fmt, root_dir=tree.parent, base_dir="dataset"
    )
    raw = tmp_path / "raw"
    first = fetch(archive, raw)
    assert {int(f.stat().st_mtime) for f in raw.rglob("*.jpg")} == {stamp}
    again = fetch(archive, raw)
    assert (first.copied, again.copied, again.unchanged, again.removed) == (6, 0, 6, 0)
    assert again.digest == first.digest == tree_digest(tree)


def test_digest_cache_skips_unchanged_files_and_rehashes_changed_ones(tmp_path: Path) -> None:
    import json

    src = make_class_tree(tmp_path / "src", {"cats": 3, "dogs": 3})
    cache = tmp_path / "state" / "digests.json"
    raw = tmp_path / "raw"
    first = fetch(str(src), raw, state=SnapshotState(digest_cache=cache))
    assert first.digest == tree_digest(raw, cache) == tree_digest(raw)
    # The cache is used: a planted wrong digest for an unchanged file shows through...
    state = json.loads(cache.read_text())
    victim = sorted(state["files"])[0]
    state["files"][victim][3] = "0" * 64
    cache.write_text(json.dumps(state))
    assert tree_digest(raw, cache) != first.digest
    # ...but a changed file is hashed again, whatever the cache says.
    (raw / victim).write_bytes((raw / victim).read_bytes() + b"\0")
    assert tree_digest(raw, cache) == tree_digest(raw) != first.digest
    # A cache written for another folder is ignored.
    other = fetch(str(src), tmp_path / "raw2", state=SnapshotState(digest_cache=cache))
    assert other.digest == first.digest


# ------------------------- nothing usable, edits in place (link and name rules: test_listing)


def _report(raw: Path) -> list[tuple[str, str]]:
    """fetch's quarantine report (``.fetch-quarantine.csv``, see docs/reliability.md)."""
    import csv

    with (raw / ".fetch-quarantine.csv").open(newline="", encoding="utf-8") as f:
        return [(r["path"], r["reason"]) for r in csv.DictReader(f)]


def test_a_source_with_nothing_usable_leaves_the_snapshot_untouched(tmp_path: Path) -> None:
    src = make_class_tree(tmp_path / "src", {"cats": 2, "dogs": 2})
    raw = tmp_path / "raw"
    good = fetch(str(src), raw)
    for f in sorted(src.rglob("*.jpg")):
        f.unlink()
        f.symlink_to(f"missing-{f.name}")  # every file now a dangling link
    with pytest.raises(DataError, match=r"no usable file .* all 4 entries are left out") as err:
        fetch(str(src), raw)
    assert "dangling symbolic link" in str(err.value) and "\n" not in str(err.value)
    assert tree_digest(raw) == good.digest and len(list(raw.rglob("*.jpg"))) == 4


def _edit_in_place_keeping_size_and_mtime(victim: Path) -> bytes:
    st = victim.stat()
    data = bytearray(victim.read_bytes())
    data[-3] ^= 0xFF  # same size
    with victim.open("r+b") as f:  # in place: same inode
        f.write(data)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (victim.stat().st_size, victim.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    return bytes(data)


def test_an_edit_that_keeps_size_and_mtime_still_reaches_the_snapshot(tmp_path: Path) -> None:
    """Same size, mtime restored to the nanosecond (``touch -r``, ``rsync -t``, a coarse
    clock): a library call without state compares such files by hash; the stage's state
    file (inode and ctime of both sides) tells without reading them."""
    src = make_class_tree(tmp_path / "src", {"cats": 3, "dogs": 3})
    victim = sorted((src / "cats").iterdir())[0]
    raw = tmp_path / "raw"
    first = fetch(str(src), raw)
    data = _edit_in_place_keeping_size_and_mtime(victim)
    stateless = fetch(str(src), raw)
    assert (stateless.copied, stateless.unchanged) == (1, 5)
    assert (raw / "cats" / victim.name).read_bytes() == data
    assert stateless.digest == tree_digest(src) != first.digest

    state = SnapshotState(sync_state=tmp_path / "state" / "raw-sources.json")
    assert fetch(str(src), raw, state=state).copied == 0  # in doubt, hashed: same
    again = fetch(str(src), raw, state=state)
    assert (again.copied, again.unchanged) == (0, 6)
    data = _edit_in_place_keeping_size_and_mtime(victim)
    edited = fetch(str(src), raw, state=state)
    assert (edited.copied, edited.unchanged) == (1, 5)
    assert (raw / "cats" / victim.name).read_bytes() == data
    assert edited.digest == tree_digest(src) == first.digest


@pytest.mark.slow
def test_fetch_stage_applies_the_archive_limits_and_reports_what_it_left_out(
    tmp_path: Path,
) -> None:
    tree = make_class_tree(tmp_path / "pets" / "dataset", {"cats": 3, "dogs": 3})
    os.mkfifo(tree / "cats" / "pipe.jpg")
    with tarfile.open(tmp_path / "pets.tar", "w") as tf:
        tf.add(tree, arcname="dataset")
    source = {"source": str(tmp_path / "pets.tar"), "sha256": None}
    limited = {"data": {**source, "archive_max_members": 5}}
    proj = make_project(tmp_path / "proj", limited, git=False)
    proc = run([sys.executable, "stages/fetch.py"], proj, subprocess_env(), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (
        "error: " in proc.stderr and "more than 5 members (data.archive_max_members)" in proc.stderr
    )
    assert not (proj / "data" / "raw").exists()
    params = (
        (proj / "params.yaml")
        .read_text()
        .replace("archive_max_members: 5", "archive_max_members: 10")
    )
    (proj / "params.yaml").write_text(params)
    done = run([sys.executable, "stages/fetch.py"], proj, subprocess_env())
    assert "6 files (6 copied" in done.stderr
    assert (
        "fetch left out 1 entry of the source, listed in data/raw/.fetch-quarantine.csv"
        in done.stderr
    )
    assert "cats/pipe.jpg: not a regular file: a special file (FIFO or device)" in done.stderr
    assert _report(proj / "data" / "raw")[0][0] == "cats/pipe.jpg"


def _flat_tree(root: Path, n: int, version: bytes) -> Path:
    for i in range(n):
        path = root / "cats" / f"f{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(version * 2048)  # 8 KB
    return root


@pytest.mark.slow
def test_a_fetch_killed_mid_sync_leaves_the_old_snapshot_whole(tmp_path: Path) -> None:
    """SIGKILL while the snapshot is being written: ``data/raw`` is the old snapshot, every
    file of it (not the first files new, the rest old); the next fetch completes."""
    n, src, raw = 1000, tmp_path / "src", tmp_path / "data" / "raw"
    old = fetch(str(_flat_tree(src, n, b"AAAA")), raw)
    _flat_tree(src, n, b"BBBB")  # every file changed, same names
    first = raw / "cats" / "f00000.jpg"
    code = (
        "from pathlib import Path; from reprotrain.data.fetch import fetch; "
        f"fetch({str(src)!r}, Path({str(raw)!r}))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=subprocess_env())
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            staged = list((raw.parent).glob(".raw.tmp-*/raw/cats"))
            if (staged and len(os.listdir(staged[0])) > 200) or first.read_bytes()[:4] != b"AAAA":
                break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "fetch ended before it could be killed"
    assert tree_digest(raw) == old.digest and len(list_files(raw)) == n
    new = fetch(str(src), raw)
    assert new.copied == n and new.digest == tree_digest(src)
    assert not list(raw.parent.glob(".raw.tmp-*"))  # the killed run's staging is gone


def test_summary_and_quarantine_note_say_what_was_snapshotted() -> None:
    """The stage's log lines: a file kind's one file, an image tree's counts, and the
    left-out entries (the first SHOWN, then how many more)."""
    from reprotrain.data.fetch import SHOWN, FetchResult, quarantine_note, summary
    from reprotrain.data.quarantine import Quarantined

    raw = Path("data/raw")
    one = FetchResult("url", "/m/t.csv", 1, 0, 0, "d1", unchanged=1)
    assert (
        summary(one, "table", raw)
        == "fetch: table source /m/t.csv → data/raw (unchanged), digest d1"
    )
    assert quarantine_note(one, raw) is None
    left = tuple(Quarantined(f"cats/{i}.jpg", "a link") for i in range(SHOWN + 2))
    tree = FetchResult("directory", "/src", 9, 4, 1, "d2", unchanged=5, quarantined=left)
    assert summary(tree, "images", raw) == (
        "fetch: directory source /src → data/raw: 9 files (4 copied, 5 unchanged, 1 removed), "
        "digest d2"
    )
    note = quarantine_note(tree, raw)
    assert note.startswith(
        f"fetch left out {SHOWN + 2} entries of the source, listed in "
        "data/raw/.fetch-quarantine.csv (prepare quarantines them):\n  cats/0.jpg: a link\n"
    )
    assert note.count("a link") == SHOWN and note.endswith("\n  ... and 2 more")
