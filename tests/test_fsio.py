"""fsio: atomic state files, for real: a writer SIGKILLed in the middle of a write leaves the
old file or the new one, never half of one, for every kind of state file the docs name.

The kill is synchronised by an event, not a sleep: the writer process (``WRITER``) stops at
a chosen instant of the write, says ``paused`` on its stdout and blocks reading its stdin,
which the test never writes; the test reads the line and sends SIGKILL. The instants:

- ``half``: half of the new bytes (or half of a new tree) written to fsio's temporary;
- ``before``: the temporary complete, at the rename (``os.rename`` audit event) or the tree
  exchange (``ctypes.dlsym`` of ``renameat2``) that publishes it;
- ``after``: right after it (the directory fsync that follows, an ``open`` audit event).

Each kind of state file is written by the function the stages use (Python audit hooks stop
it there; nothing is replaced or mocked): ``before`` must leave the previous version intact
and readable, ``after`` the new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import selectors
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from reprotrain import fsio
from tests.conftest import REPO, subprocess_env

WRITER = r'''
import json, os, sys
from pathlib import Path

from tests.test_fsio import tree_digest as digest  # the test's own formula

kinds, point, root = sys.argv[1].split(","), sys.argv[2], Path(sys.argv[3])
current = {}


def pause():
    """Say so, then block reading stdin: the test checks the files, then SIGKILLs this
    process or (to go on to the next kind in the same process) writes one byte."""
    current.clear()  # disarmed: the rest of this write runs normally if the test continues
    sys.stdout.write("paused\n")
    sys.stdout.flush()
    if not sys.stdin.buffer.read(1):
        os._exit(3)


def hook(event, args):
    """Pause at ``point`` of fsio's atomic write of ``current["target"]`` (audit events)."""
    target = current.get("target")
    if target is None:
        return
    if event == "os.rename" and ".tmp-" in str(args[0]) and str(args[1]) == str(target):
        if point == "before":
            pause()
        current["published"] = True
    elif event == "ctypes.dlsym" and args[1] == "renameat2":  # fsio.exchange of a tree
        if point == "before":
            pause()
        current["published"] = True
    elif event == "open" and current.get("published") and str(args[0]) == str(target.parent):
        pause()  # point == "after": the directory fsync right after the rename


sys.addaudithook(hook)


def tiny_model():
    from tests.models.tiny import tiny_cnn

    model = tiny_cnn()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.optimizer.build(model.trainable_variables)
    return model


def writer(kind):
    """``(target, write(version))``: the real writer of one kind of state file."""
    work = root / kind
    if kind in ("file", "tree"):  # fsio itself
        from reprotrain import fsio

        target = work / ("state.bin" if kind == "file" else "tree")

        def write(v):
            if kind == "file":
                data = bytes([v]) * 200_000
                with fsio.atomic_path(target) as tmp:
                    with tmp.open("wb") as f:
                        f.write(data[:100_000])
                        if v == 2 and point == "half":
                            f.flush()
                            pause()
                        f.write(data[100_000:])
                return
            with fsio.atomic_path(target) as tmp:
                tmp.mkdir()
                for i in range(4):
                    (tmp / f"part{i}").write_text(f"version {v}\n")
                    if v == 2 and i == 1 and point == "half":
                        pause()

        return target, write
    if kind in ("backup", "train_state"):
        from reprotrain.training.checkpoints import BackupRecord, CheckpointStore, epoch_file

        store = CheckpointStore(work / "ckpt")
        store.prepare("key")
        if kind == "train_state":
            state = lambda v: BackupRecord(done=v, records={e: {"loss": 1.0 / v} for e in range(v)})
            return store.dir / "state.json", lambda v: store.commit(state(v))
        model = tiny_model()

        def save(v):
            model.set_weights([w * 0 + v for w in model.get_weights()])
            store.save_epoch(model, 0)

        return store.dir / epoch_file(0), save
    if kind in ("keras", "history", "metrics"):
        from reprotrain import stage_io
        from reprotrain.training import TrainResult

        model = tiny_model()
        paths = {k: work / f"out.{k}" for k in ("history", "metrics")}
        paths["keras"] = work / "model.keras"

        def save(v):
            model.set_weights([w * 0 + v for w in model.get_weights()])
            history = {"epoch": [1], "loss": [1.0 / v], "accuracy": [0.5], "val_loss": [1.0 / v],
                       "val_accuracy": [0.5]}
            result = TrainResult(history, best_epoch=1, initial_epoch=0, epochs_run=v,
                                 stopped_early=False)
            stage_io.save_outputs(model, result, model_path=paths["keras"],
                                  history_path=paths["history"], metrics_path=paths["metrics"])

        return paths[kind], save
    if kind == "sidecar":
        from reprotrain.tracking import lineage

        target = work / "head.run.json"
        return target, lambda v: lineage.write_sidecar(target, {"run_id": f"run{v}" * 50})
    if kind == "ledger":
        from reprotrain.data import split

        target = work / "splits.csv"

        def ledger(v):
            rows = {f"{i:064x}": split.Entry("ab"[i % 2], "train") for i in range(100 * v)}
            split.write_ledger(target, rows)

        return target, ledger
    if kind == "promotion":
        from reprotrain import fsio

        target = work / "promotion.json"  # written as stages/evaluate.py writes it
        return target, lambda v: fsio.atomic_write_json(target, {"promoted": v == 2, "v": v})
    if kind == "prepared":
        from reprotrain.config import PrepareConfig
        from reprotrain.data.fetch import fetch
        from reprotrain.data.prepare import prepare
        from tests.conftest import make_class_tree

        target = work / "prepared"

        def run_prepare(v):
            src = make_class_tree(work / f"src{v}", {"cats": 6 * v, "dogs": 6 * v}, size=24)
            fetch(str(src), work / f"raw{v}")
            prepare(work / f"raw{v}", target, PrepareConfig(shard_size=4, max_side=None), 1)

        return target, run_prepare
    raise SystemExit(f"unknown kind {kind}")


for kind in kinds:
    work = root / kind
    work.mkdir(parents=True)
    target, write = writer(kind)
    write(1)
    (work / "v1.digest").write_text(digest(target))
    if point != "half":
        current["target"] = target
    write(2)
    if current:
        print(f"{kind}: finished without pausing", flush=True)
        current.clear()
'''


def tree_digest(path: Path | str) -> str:
    """The digest of a file or tree: names and contents (``WRITER`` imports it, so the writer
    and the test compare with one formula)."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(path) if path.is_dir() else p.name).encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def _kill_when_paused(kinds: list[str], point: str, root: Path, timeout: float = 300) -> None:
    """Run ``WRITER`` over ``kinds``; at each pause check what a kill leaves (the writer
    runs no more code until told to go on: its files are what a SIGKILL would leave), then
    go on, and really SIGKILL it at the last one. Fails if the writer never pauses."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, ",".join(kinds), point, str(root)],
        cwd=REPO,
        env=subprocess_env(TF_CPP_MIN_LOG_LEVEL="3"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    err: list[bytes] = []
    drain = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)
    drain.start()  # a chatty stderr must not fill its pipe and stall the writer
    lines: list[bytes] = []
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            for i, kind in enumerate(kinds):
                while sel.select(timeout) and (line := proc.stdout.readline()):
                    lines.append(line)
                    if line == b"paused\n":
                        break
                if not lines or lines[-1] != b"paused\n":
                    break
                if i == len(kinds) - 1:
                    proc.kill()
                    proc.wait()
                _check_killed(kind, point, root / kind, live=proc.returncode is None)
                lines.append(b"checked " + kind.encode() + b"\n")
                if proc.returncode is None:
                    proc.stdin.write(b"c")
                    proc.stdin.flush()
    finally:
        proc.kill()
        proc.wait()
        drain.join(10)
    assert lines and lines[-1] == f"checked {kinds[-1]}\n".encode(), (
        f"the writer never paused (exit {proc.returncode}): {b''.join(lines).decode()}"
        f"\n{b''.join(err).decode()[-3000:]}"
    )
    assert proc.returncode == -9


def _check_readable(kind: str, target: Path) -> None:
    """The file (or tree) parses as its kind: a half-written one would not."""
    if kind in ("backup",):
        import h5py

        with h5py.File(target, "r") as f:
            assert len(f.keys())
    elif kind == "keras":
        with zipfile.ZipFile(target) as z:
            assert z.testzip() is None
    elif kind == "ledger":
        from reprotrain.data import split

        assert split.read_ledger(target)
    elif kind == "prepared":
        from reprotrain.data import tfrecords
        from reprotrain.data.schema import SPLITS

        for s in SPLITS:
            tfrecords.verify_shards(target, s)
        for name in ("labels.json", "manifest.csv", "stats.json", "quarantine.csv"):
            assert (target / name).is_file(), name
    elif kind == "file":
        assert len(set(target.read_bytes())) == 1 and target.stat().st_size == 200_000
    elif kind == "tree":
        assert len({p.read_text() for p in target.iterdir()}) == 1
        assert len(list(target.iterdir())) == 4
    else:
        json.loads(target.read_text())


TARGETS = {
    "file": "state.bin",
    "tree": "tree",
    "backup": "ckpt/epoch-0001.weights.h5",
    "train_state": "ckpt/state.json",
    "keras": "model.keras",
    "history": "out.history",
    "metrics": "out.metrics",
    "sidecar": "head.run.json",
    "ledger": "splits.csv",
    "promotion": "promotion.json",
    "prepared": "prepared",
}


def _check_killed(kind: str, point: str, work: Path, *, live: bool) -> None:
    """The target is whole, and the old version before the rename, the new one after.
    ``live``: the writer is paused, not dead (its temporary must not be removed yet)."""
    target = work / TARGETS[kind]
    _check_readable(kind, target)
    old = (work / "v1.digest").read_text()
    mine = f".{target.name}{fsio.TMP_MARK}"
    temporaries = [p for p in target.parent.iterdir() if p.name.startswith(mine)]
    if point == "after":
        assert tree_digest(target) != old, f"{kind}: killed after the rename: the new version"
    else:
        assert tree_digest(target) == old, f"{kind}: killed before the rename: the old version"
        # The kill really was inside an atomic write: its temporary is there.
        assert temporaries, f"{kind}: no temporary: the writer was not inside fsio"
    if not live:
        fsio.remove_stale_temporaries(target.parent, target.name)
        assert not [p for p in target.parent.iterdir() if fsio.TMP_MARK in p.name]


@pytest.mark.parametrize("point", ["half", "before", "after"])
def test_a_writer_killed_mid_write_leaves_the_old_or_the_new_file(
    tmp_path: Path, point: str
) -> None:
    """fsio itself: a file and a tree, killed with half written, at the rename, after it."""
    _kill_when_paused(["file", "tree"], point, tmp_path)


#: Every kind of state file the docs call atomic, by the function that writes it.
KINDS = ["sidecar", "ledger", "promotion", "prepared"]
TF_KINDS = ["backup", "train_state", "history", "metrics", "keras"]  # one TF import for all


@pytest.mark.slow
@pytest.mark.parametrize("kinds", [KINDS, TF_KINDS], ids=["plain", "tensorflow"])
def test_every_state_file_survives_a_kill_at_its_rename(tmp_path: Path, kinds: list) -> None:
    """Per kind, stopped with the new version complete but not yet published: the old one
    is intact and readable, and the writer went through fsio (its temporary is there)."""
    _kill_when_paused(kinds, "before", tmp_path)


@pytest.mark.slow
def test_prepared_folder_killed_after_the_swap_is_the_new_one(tmp_path: Path) -> None:
    _kill_when_paused(["prepared"], "after", tmp_path)
    stats = json.loads((tmp_path / "prepared" / "prepared" / "stats.json").read_text())
    assert stats["images"] == 24  # the second prepare's 12 + 12 images


# ----------------------------------------------------------------------- in-process behaviour


def test_atomic_writes_round_trip_and_a_failed_write_changes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "m.json"
    fsio.atomic_write_json(target, {"a": 1})
    assert target.read_text() == '{\n  "a": 1\n}\n'
    fsio.atomic_write_text(target, "héllo")
    assert target.read_bytes() == "héllo".encode()
    with pytest.raises(RuntimeError), fsio.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    assert target.read_text() == "héllo"
    assert sorted(p.name for p in target.parent.iterdir()) == ["m.json"]


def test_a_tree_replaces_a_tree_in_one_exchange(tmp_path: Path) -> None:
    target = tmp_path / "prepared"
    target.mkdir()
    (target / "old.txt").write_text("old")
    inode = target.stat().st_ino
    with fsio.atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "new.txt").write_text("new")
        new_inode = tmp.stat().st_ino
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert target.stat().st_ino == new_inode != inode  # the new tree itself, not a copy
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]  # old tree deleted


def test_exchange_swaps_two_paths(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "x").write_text("x")
    b.write_text("file")
    assert fsio.exchange(a, b)
    assert b.is_dir() and (b / "x").read_text() == "x" and a.read_text() == "file"
    with pytest.raises(FileNotFoundError):
        fsio.exchange(a, tmp_path / "missing")


def test_stale_temporaries_of_one_target_only(tmp_path: Path) -> None:
    for name in (".prepared.tmp-abc", ".raw.tmp-def", ".prepared.tmp-old", "prepared"):
        (tmp_path / name).mkdir()
    removed = fsio.remove_stale_temporaries(tmp_path, "prepared")
    assert sorted(p.name for p in removed) == [".prepared.tmp-abc", ".prepared.tmp-old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".raw.tmp-def", "prepared"]
    assert [p.name for p in fsio.remove_stale_temporaries(tmp_path)] == [".raw.tmp-def"]


def test_file_sha256_streams_the_bytes(tmp_path: Path) -> None:
    data = os.urandom(3 * 2**20 + 7)
    (tmp_path / "f").write_bytes(data)
    assert fsio.file_sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()
