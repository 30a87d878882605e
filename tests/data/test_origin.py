"""Archives and downloads: size, ratio and member limits refused in one line before the
bulk is written; a tar's special files and escaping links quarantined; a download that is
cut short never cached; two fetches downloading at once do not share a temporary file."""

from __future__ import annotations

import http.server
import io
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from reprotrain.data.fetch import fetch
from reprotrain.data.origin import ArchiveLimits, download
from reprotrain.errors import DataError
from tests.conftest import make_class_tree

BOMB_BYTES = 32 * 2**20  # 32 MiB of zeros: about 32 KB deflated (a 1000-fold ratio)


def _disk_bytes(root: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in root.rglob("*") if p.is_file())


def _bomb_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("data/cats/a.jpg", b"x")
        with zf.open("data/cats/zeros.jpg", "w") as f:
            chunk = bytes(2**20)
            for _ in range(BOMB_BYTES // len(chunk)):
                f.write(chunk)
    return path


def test_a_zip_bomb_is_refused_fast_without_writing_it(tmp_path: Path) -> None:
    bomb = _bomb_zip(tmp_path / "bomb.zip")
    assert bomb.stat().st_size < BOMB_BYTES / 500  # 32 MiB would be written
    start = time.perf_counter()
    with pytest.raises(
        DataError, match=r"\(1\d{3}-fold, more than data\.archive_max_ratio = 100\)"
    ):
        fetch(str(bomb), tmp_path / "proj" / "raw")  # the default limits
    assert time.perf_counter() - start < 2
    assert _disk_bytes(tmp_path / "proj") < 2**20  # nothing of the bulk reached the disk


def test_a_tar_gz_bomb_is_refused_before_its_member_is_written(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.tar.gz"
    with tarfile.open(bomb, "w:gz") as tf:
        info = tarfile.TarInfo("data/cats/zeros.jpg")
        info.size = BOMB_BYTES
        tf.addfile(info, io.BytesIO(bytes(BOMB_BYTES)))
    with pytest.raises(DataError, match=r"-fold, more than data\.archive_max_ratio = 100\)"):
        fetch(str(bomb), tmp_path / "proj" / "raw")
    assert _disk_bytes(tmp_path / "proj") < 2**20


@pytest.mark.parametrize("fmt", ["zip", "gztar"])
def test_archive_size_and_member_limits_are_configurable(tmp_path: Path, fmt: str) -> None:
    import shutil

    tree = make_class_tree(tmp_path / "pets" / "dataset", {"cats": 3, "dogs": 3}, size=64)
    archive = shutil.make_archive(
        str(tmp_path / "pets"), fmt, root_dir=tree.parent, base_dir="dataset"
    )
    with pytest.raises(DataError, match=r"more than 5 members \(data\.archive_max_members\)"):
        fetch(archive, tmp_path / "raw", limits=ArchiveLimits(max_members=5))
    with pytest.raises(DataError, match=r"expands to more than 1e-05 GB \(data\.archive_max_gb\)"):
        fetch(archive, tmp_path / "raw", limits=ArchiveLimits(max_gb=1e-5))  # ~10 KB
    assert not (tmp_path / "raw").exists()
    ok = fetch(archive, tmp_path / "raw", limits=ArchiveLimits(max_members=9, max_gb=0.01))
    assert ok.files == 6


def test_a_tars_fifo_and_escaping_link_are_quarantined_the_rest_extracted(
    tmp_path: Path,
) -> None:
    tree = make_class_tree(tmp_path / "pets" / "dataset", {"cats": 3, "dogs": 3})
    archive = tmp_path / "pets.tar"
    with tarfile.open(archive, "w") as tf:
        tf.add(tree, arcname="dataset")
        fifo = tarfile.TarInfo("dataset/cats/pipe.jpg")
        fifo.type = tarfile.FIFOTYPE
        tf.addfile(fifo)
        link = tarfile.TarInfo("dataset/dogs/passwd.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    result = fetch(str(archive), tmp_path / "raw")
    assert result.files == 6
    assert [q.path for q in result.quarantined] == ["cats/pipe.jpg", "dogs/passwd.jpg"]
    assert "special file (FIFO or device) in the archive" in result.quarantined[0].reason
    assert (
        result.quarantined[1].reason == "link outside the archive, not extracted (to '/etc/passwd')"
    )
    assert (tmp_path / "raw" / ".fetch-quarantine.csv").is_file()


# --------------------------------------------------------------------------- downloads

BODY = bytes(range(256)) * 4096  # 1 MiB


@contextmanager
def serve(handle: Callable[[http.server.BaseHTTPRequestHandler], None]) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 (a thread per request) answering GET with ``handle``."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            handle(self)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/data.zip"
    finally:
        server.shutdown()
        server.server_close()


def _send(req: http.server.BaseHTTPRequestHandler, length: int, *parts: bytes) -> None:
    req.send_response(200)
    req.send_header("Content-Length", str(length))
    req.end_headers()
    for part in parts:
        if callable(part):
            part()
        else:
            req.wfile.write(part)
            req.wfile.flush()


def test_a_body_shorter_than_its_content_length_is_never_cached(tmp_path: Path) -> None:
    honest = threading.Event()

    def handle(req: http.server.BaseHTTPRequestHandler) -> None:
        if honest.is_set():
            _send(req, len(BODY), BODY)
        else:  # promises the whole body, sends half, closes the connection
            _send(req, len(BODY), BODY[: len(BODY) // 2])

    cache = tmp_path / "cache"
    with serve(handle) as url:
        with pytest.raises(DataError, match=r"ended after 524288 of 1048576 bytes") as err:
            download(url, cache)
        assert "\n" not in str(err.value)
        assert [p for p in cache.rglob("*") if p.is_file()] == []  # no file, no .part
        honest.set()
        path = download(url, cache)
    assert path.read_bytes() == BODY


def test_two_downloads_at_once_do_not_share_a_temporary_file(tmp_path: Path) -> None:
    both = threading.Barrier(2, timeout=10)

    def handle(req: http.server.BaseHTTPRequestHandler) -> None:
        # Each client has its temporary file open and half the body written before either
        # gets the rest: with one shared ".part" name, the second rename finds no file.
        half = len(BODY) // 2
        _send(req, len(BODY), BODY[:half], both.wait, lambda: time.sleep(0.5), BODY[half:])

    results: list[Path | BaseException] = []

    def client(url: str) -> None:
        try:
            results.append(download(url, tmp_path / "cache"))
        except BaseException as exc:  # reported by the assertion below
            results.append(exc)

    with serve(handle) as url:
        threads = [threading.Thread(target=client, args=(url,)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert len(results) == 2 and all(isinstance(r, Path) for r in results), results
    assert results[0] == results[1] and results[0].read_bytes() == BODY
    assert not list((tmp_path / "cache").rglob("*.part"))
