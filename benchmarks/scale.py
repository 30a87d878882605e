"""20,000 images on one machine: prepare scaling and memory, DVC on a 20k-file data/raw,
fetch re-runs, and training input throughput.

Run by hand: ``python benchmarks/scale.py [--images 20000] [--small 2000]`` (develop with
``--images 2000 --small 500``). No download: it generates ``--images`` JPEGs (mixed sizes
around 500×375, a gradient + shapes + blur + sensor-like noise, 10 classes whose hues
differ, a fixed seed) on all cores, cached under ``--work`` (default
``$TMPDIR/reprotrain-bench``) so reruns skip generation. It measures:

* ``prepare`` (the library function, in a fresh subprocess each time) on ``--small`` and
  on ``--images`` images, with all cores and with 1 worker back to back: images/s and the
  speed-up, and the peak RSS of the parent process (``RUSAGE_SELF``), of the largest pool
  worker (``RUSAGE_CHILDREN``) and of the whole process tree (psutil, sampled);
* ``fetch`` of the generated folder: first copy, then unchanged re-runs of today's fetch
  and of the one before issue 23 (size + whole-second mtime) alternating, one stateless
  re-run, and an in-place edit that keeps size and mtime (``--fetch-only``: just these,
  on placeholder files of the images' sizes when the images were not generated);
* a real DVC project (git + DVC, the repo's ``dvc.yaml``, ``params.yaml`` and stages,
  ``data.source`` = the generated folder): ``dvc repro prepare`` once, then the no-op
  ``dvc repro prepare`` and ``dvc status`` over the ``--images``-file ``data/raw``;
* training input throughput: ``make_dataset`` (augmentation on, default cache) over the
  prepared train shards: the first epoch (decode + fill the cache) and ``--batches``
  cached batches.

The machine (cores, load average before each measurement) is recorded: on a shared machine,
read the ratios, not the absolute numbers. Writes ``benchmarks/results/scale.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import multiprocessing
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))  # for scripts.project_copy (run as `python benchmarks/...`)

from scripts.project_copy import make_project  # noqa: E402

CLASSES = 10

# --------------------------------------------------------------------------- the images

_NOISE: dict[int, Any] = {}
_NOISE_SIDE = 900


def _noise_bank(seed: int):
    """A fixed field of Gaussian noise; each image adds a seeded crop of it (drawing fresh
    noise per image would double the generation time)."""
    import numpy as np

    if seed not in _NOISE:
        rng = np.random.default_rng([seed, 10**9])
        _NOISE[seed] = rng.normal(0, 6, (_NOISE_SIDE, _NOISE_SIDE, 3)).astype(np.int16)
    return _NOISE[seed]


def make_image(index: int, seed: int) -> bytes:
    """JPEG bytes of image ``index``: the same bytes for the same (index, seed)."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng([seed, index])
    label = index % CLASSES
    w = int(rng.integers(400, 640))
    h = int(w * rng.uniform(0.62, 0.9))
    if rng.random() < 0.25:  # some portrait photos
        w, h = h, w
    phase = label * 0.63
    hue = np.array([np.cos(phase), np.cos(phase + 2.1), np.cos(phase + 4.2)]) * 70 + 128
    c0 = np.clip(hue + rng.normal(0, 30, 3), 0, 255).astype(np.float32)
    c1 = np.clip(255 - c0 + rng.normal(0, 30, 3), 0, 255).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    t = (np.arange(h, dtype=np.float32) * np.sin(angle))[:, None] + (
        np.arange(w, dtype=np.float32) * np.cos(angle)
    )[None, :]
    t -= t.min()
    t /= t.max() + 1e-6
    img = Image.fromarray((c0 + (c1 - c0) * t[..., None]).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        s = int(rng.integers(20, max(21, min(w, h) // 2)))
        colour = tuple(int(v) for v in np.clip(hue + rng.normal(0, 60, 3), 0, 255))
        box = [x0, y0, x0 + s, y0 + int(s * rng.uniform(0.5, 1.5))]
        kind = int(rng.integers(3))
        if kind == 0:
            draw.ellipse(box, fill=colour)
        elif kind == 1:
            draw.rectangle(box, fill=colour)
        else:
            points = [
                (x0 + int(rng.integers(-s, s)), y0 + int(rng.integers(-s, s))) for _ in "12345"
            ]
            draw.polygon(points, fill=colour)
    img = img.filter(ImageFilter.BoxBlur(float(rng.uniform(0.5, 2.0))))
    oy, ox = int(rng.integers(0, _NOISE_SIDE - h)), int(rng.integers(0, _NOISE_SIDE - w))
    arr = np.asarray(img).astype(np.int16) + _noise_bank(seed)[oy : oy + h, ox : ox + w]
    out = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


def image_path(root: Path, index: int) -> Path:
    return root / f"class_{index % CLASSES}" / f"img_{index:06d}.jpg"


def _write_one(job: tuple[str, int, int]) -> int:
    root, index, seed = job
    path = image_path(Path(root), index)
    data = make_image(index, seed)
    path.write_bytes(data)
    return len(data)


def generate(root: Path, n: int, seed: int) -> dict[str, Any]:
    """``n`` images under ``root`` (class folders), on all cores; skipped if already there."""
    marker = root.with_name(root.name + ".done")
    if marker.is_file():
        info = json.loads(marker.read_text())
        if info.get("images") == n and info.get("seed") == seed:
            logging.info("using the generated images in %s", root)
            return info | {"cached": True}
    shutil.rmtree(root, ignore_errors=True)
    for c in range(CLASSES):
        (root / f"class_{c}").mkdir(parents=True)
    start = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(os.cpu_count()) as pool:
        sizes = pool.imap_unordered(_write_one, ((str(root), i, seed) for i in range(n)), 64)
        total = sum(sizes)
    seconds = time.perf_counter() - start
    info = {
        "images": n,
        "seed": seed,
        "bytes": total,
        "mean_kib": round(total / n / 1024, 1),
        "seconds": round(seconds, 1),
    }
    marker.write_text(json.dumps(info) + "\n")
    logging.info("generated %d images (%.0f MiB) in %.0f s", n, total / 2**20, seconds)
    return info | {"cached": False}


def subset(full: Path, n: int) -> Path:
    """The first ``n`` images of ``full`` as a hard-linked tree (no copy, same bytes)."""
    root = full.with_name(f"{full.name}-first{n}")
    if root.is_dir() and sum(1 for _ in root.rglob("*.jpg")) == n:
        return root
    shutil.rmtree(root, ignore_errors=True)
    for i in range(n):
        target = image_path(root, i)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(image_path(full, i), target)
    return root


# --------------------------------------------------------------------------- measuring


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_measured(cmd: list[str], cwd: Path | None = None, env=None) -> dict[str, Any]:
    """Run ``cmd``; wall time, the last stdout line as JSON (if any), and the process tree's
    peak RSS (sum over the process and its descendants, sampled every 0.1 s)."""
    import psutil

    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    peak, done = [0], threading.Event()

    def sample() -> None:
        try:
            parent = psutil.Process(proc.pid)
        except psutil.NoSuchProcess:
            return
        while not done.is_set():
            try:
                tree = [parent, *parent.children(recursive=True)]
                rss = 0
                for p in tree:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        rss += p.memory_info().rss
                peak[0] = max(peak[0], rss)
            except psutil.NoSuchProcess:
                return
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    done.set()
    sampler.join()
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{err[-4000:]}")
    lines = [line for line in out.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines else {}
    return result | {"wall_seconds": round(seconds, 2), "tree_peak_rss_mib": peak[0] >> 20}


def child_prepare(raw: str, out: str, workers: int) -> None:
    """(In a fresh process.) ``prepare`` once; its timings and peak RSS as a JSON line."""
    from reprotrain.config import PrepareConfig
    from reprotrain.data import prepare as prep

    timings: dict[str, float] = {}
    decode_all = prep.decode_all

    def timed_decode_all(*args, **kwargs):
        t = time.perf_counter()
        result = decode_all(*args, **kwargs)
        timings["decode_seconds"] = time.perf_counter() - t
        # Before TensorFlow's import, which itself starts a ~440 MiB child process.
        timings["decode_parent_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        timings["pool_worker_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        return result

    prep.decode_all = timed_decode_all
    start = time.perf_counter()
    # The split ledger beside the output, as the stage writes data/splits.csv.
    ledger = Path(out).with_name(Path(out).name + ".splits.csv")
    ledger.unlink(missing_ok=True)
    summary = prep.prepare(
        Path(raw), Path(out), PrepareConfig(), seed=42, ledger=ledger, workers=workers
    )
    seconds = time.perf_counter() - start
    n = summary.files_seen
    report = {
        "images": n,
        "workers": workers,
        "seconds": round(seconds, 2),
        "images_per_s": round(n / seconds, 1),
        "decode_seconds": round(timings["decode_seconds"], 2),
        "decode_images_per_s": round(n / timings["decode_seconds"], 1),
        "write_seconds": round(seconds - timings["decode_seconds"], 2),
        # TensorFlow is not imported (the shards are written without it).
        "imports_tensorflow": "tensorflow" in sys.modules,
        # ru_maxrss is in KiB on Linux. While decoding: the parent (spool offsets, metadata)
        # and the largest pool worker; over the whole run: the parent.
        "decode_parent_peak_rss_mib": int(timings["decode_parent_peak_rss_mib"]) >> 10,
        "pool_worker_peak_rss_mib": int(timings["pool_worker_peak_rss_mib"]) >> 10,
        "parent_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10,
    }
    sys.stdout.write(json.dumps(report) + "\n")


def child_train(prepared: str, batches: int) -> None:
    """(In a fresh process.) Training input throughput over the prepared train shards."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from reprotrain.config import PipelineConfig
    from reprotrain.data.pipeline import make_dataset
    from reprotrain.paths import split_files

    files = split_files(Path(prepared), "train")
    cfg = PipelineConfig()
    ds = make_dataset(files, cfg, True, image_size=224, batch_size=32, seed=42, augment=True)
    start, n = time.perf_counter(), 0
    for images, _ in ds:  # epoch 1: read, decode, resize, fill the cache
        n += int(images.shape[0])
    epoch1 = time.perf_counter() - start
    start, m = time.perf_counter(), 0
    for images, _ in ds.take(batches):  # epoch 2: from the cache
        m += int(images.shape[0])
    cached = time.perf_counter() - start
    report = {
        "cache": cfg.cache,
        "augment": True,
        "image_size": 224,
        "batch_size": 32,
        "train_images": n,
        "epoch1_images_per_s": round(n / epoch1, 1),
        "cached_batches": m // 32,
        "cached_images_per_s": round(m / cached, 1),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10,
    }
    sys.stdout.write(json.dumps(report) + "\n")


def measure_prepare(raw: Path, work: Path, workers: int) -> dict[str, Any]:
    out = work / f"prepared-{raw.name}-w{workers}"
    before = load()
    cmd = [sys.executable, __file__, "_prepare", str(raw), str(out), str(workers)]
    result = run_measured(cmd, env=_env())
    logging.info("prepare %s with %d worker(s): %s", raw.name, workers, result)
    return result | {"load_before": before, "out": str(out)}


def measure_scaling(raw: Path, cores: int, images: int, rounds: int) -> dict[str, Any]:
    """Decode throughput with 1 worker and with all cores, alternated ``rounds`` times.

    On a machine shared with other jobs one long run per setting measures the neighbours as
    much as prepare; alternating short runs and taking the median ratio is fairer, and the
    CPU seconds per image (parent + pool workers) show whether parallelism adds work.
    """
    import statistics

    from reprotrain.config import PrepareConfig
    from reprotrain.data import sources
    from reprotrain.data.prepare import decode_all

    _, candidates, _ = sources.scan(raw)
    candidates = candidates[:images]

    def cpu() -> float:
        return sum(
            r.ru_utime + r.ru_stime
            for r in (
                resource.getrusage(resource.RUSAGE_SELF),
                resource.getrusage(resource.RUSAGE_CHILDREN),
            )
        )

    runs: list[dict[str, Any]] = []
    for _ in range(rounds):
        for workers in (1, cores):
            before, c0, t0 = load(), cpu(), time.perf_counter()
            with tempfile.TemporaryFile() as spool:
                decode_all(raw, candidates, PrepareConfig(), spool, workers=workers)
            seconds, cpu_s = time.perf_counter() - t0, cpu() - c0
            runs.append(
                {
                    "workers": workers,
                    "images_per_s": round(len(candidates) / seconds, 1),
                    "cpu_ms_per_image": round(1000 * cpu_s / len(candidates), 1),
                    "load_before": before,
                }
            )
            logging.info("decode scaling: %s", runs[-1])
    ratios = [
        b["images_per_s"] / a["images_per_s"] for a, b in zip(runs[::2], runs[1::2], strict=True)
    ]
    return {
        "images": len(candidates),
        "runs": runs,
        "speedup_per_round": [round(r, 2) for r in ratios],
        "median_speedup_all_cores_vs_1": round(statistics.median(ratios), 2),
    }


#: fetch before issue 23 (a file unchanged when its size and whole-second mtime match),
#: loaded from git to measure the cost of the stricter check in the same run.
LEGACY_FETCH_COMMIT = "468c3bc"


def legacy_fetch():
    """``reprotrain.data.fetch.fetch`` as of :data:`LEGACY_FETCH_COMMIT` (read by git, run
    against today's ``origin``, whose functions it calls keep their old signatures)."""
    import importlib.util

    code = subprocess.run(
        ["git", "show", f"{LEGACY_FETCH_COMMIT}:src/reprotrain/data/fetch.py"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    spec = importlib.util.spec_from_loader("legacy_fetch", loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules["legacy_fetch"] = module  # dataclasses look their module up
    exec(compile(code, "legacy_fetch.py", "exec"), module.__dict__)
    return module.fetch


def placeholder_files(root: Path, n: int, seed: int) -> dict[str, Any]:
    """``n`` files of seeded random bytes (25-62 KiB, the generated JPEGs' mean 43.5 KiB) in
    the images' layout: fetch never decodes, so its cost is the file count and bytes.
    For ``--fetch-only`` without the generated images (generating them takes ~13 min of
    both cores)."""
    import random

    marker = root.with_name(root.name + ".done")
    if marker.is_file() and json.loads(marker.read_text()).get("files") == n:
        return json.loads(marker.read_text()) | {"cached": True}
    shutil.rmtree(root, ignore_errors=True)
    rng, total = random.Random(seed), 0
    for i in range(n):
        path = image_path(root, i)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = rng.randbytes(rng.randint(25 * 1024, 62 * 1024))
        path.write_bytes(data)
        total += len(data)
    info = {"files": n, "bytes": total, "kind": "placeholder (random bytes, not images)"}
    marker.write_text(json.dumps(info) + "\n")
    return info | {"cached": False}


def _fetch_run(fetch_fn, src: Path, dst: Path, **kwargs: Any) -> dict[str, Any]:
    before = load()
    t = time.perf_counter()
    r = fetch_fn(str(src), dst, **kwargs)
    return {
        "seconds": round(time.perf_counter() - t, 2),
        "files": r.files,
        "copied": r.copied,
        "unchanged": getattr(r, "unchanged", None),
        "removed": r.removed,
        "load_before": before,
    }


def measure_fetch(src: Path, work: Path, rounds: int = 3) -> dict[str, Any]:
    """First copy, then unchanged re-runs of today's fetch (with the stage's state file)
    and of the legacy one alternating on the same snapshot, one stateless re-run (every
    file compared by hash), and the stale-edit check: one file edited in place keeping
    its size and mtime, which the legacy check misses."""
    import statistics

    from reprotrain.data.fetch import fetch

    legacy = legacy_fetch()
    dst, digests, state = work / "fetch-raw", work / "fetch-digests.json", work / "fetch-state.json"
    shutil.rmtree(dst, ignore_errors=True)
    digests.unlink(missing_ok=True)
    state.unlink(missing_ok=True)
    new = {"digest_cache": digests, "sync_state": state}
    out: dict[str, Any] = {"first": _fetch_run(fetch, src, dst, **new)}
    logging.info("fetch (first): %s", out["first"])
    runs: dict[str, list[dict[str, Any]]] = {"unchanged_legacy": [], "unchanged": []}
    for _ in range(rounds):
        runs["unchanged_legacy"].append(_fetch_run(legacy, src, dst, digest_cache=digests))
        runs["unchanged"].append(_fetch_run(fetch, src, dst, **new))
        logging.info("fetch unchanged, legacy then today: %s", [r[-1] for r in runs.values()])
    ratios = [
        b["seconds"] / a["seconds"]
        for a, b in zip(runs["unchanged_legacy"], runs["unchanged"], strict=True)
    ]
    out |= runs
    out["unchanged_ratio_today_vs_legacy_per_round"] = [round(r, 2) for r in ratios]
    out["unchanged_ratio_today_vs_legacy_median"] = round(statistics.median(ratios), 2)
    out["unchanged_without_state"] = _fetch_run(fetch, src, dst, digest_cache=digests)
    logging.info("fetch unchanged without state: %s", out["unchanged_without_state"])
    victim = image_path(src, 0)
    st, original = victim.stat(), victim.read_bytes()
    try:
        victim.write_bytes(bytes(b ^ 0xFF for b in original[:64]) + original[64:])
        os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
        missed = _fetch_run(legacy, src, dst, digest_cache=digests)["copied"]
        caught = _fetch_run(fetch, src, dst, **new)["copied"]
    finally:
        victim.write_bytes(original)
        os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    out["edit_keeping_size_and_mtime_copied"] = {"legacy": missed, "today": caught}
    logging.info(
        "edit keeping size and mtime, files copied: %s", out["edit_keeping_size_and_mtime_copied"]
    )
    shutil.rmtree(dst)
    return out


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["REPROTRAIN_PROGRESS"] = "0"
    env.pop("MLFLOW_TRACKING_URI", None)
    for k, v in {"NAME": "reprotrain-bench", "EMAIL": "bench@reprotrain.invalid"}.items():
        env.setdefault(f"GIT_AUTHOR_{k}", v)
        env.setdefault(f"GIT_COMMITTER_{k}", v)
    return env


def _timed(cmd: list[str], cwd: Path) -> float:
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), text=True, capture_output=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return round(time.perf_counter() - t, 2)


def measure_dvc(src: Path, prepared: Path, work: Path, repeats: int = 3) -> dict[str, Any]:
    """A real project whose data/raw holds the generated files: first run, then no-ops."""
    proj = work / "dvc-project"
    shutil.rmtree(proj, ignore_errors=True)
    make_project(proj, {"data": {"source": str(src), "sha256": None}})
    dvc = [sys.executable, "-m", "dvc"]
    out: dict[str, Any] = {"load_before": load()}
    out["first_repro_fetch_seconds"] = _timed([*dvc, "repro", "fetch"], proj)
    logging.info("dvc repro fetch (first): %s s", out["first_repro_fetch_seconds"])
    # prepare's outputs: the ones this benchmark's own prepare run wrote from the same images,
    # params and seed (byte-identical to what the stage would write), committed to the lock
    # with `dvc commit` instead of paying a second 20k-image prepare.
    shutil.copytree(prepared, proj / "data" / "prepared")
    shutil.copy2(prepared.with_name(prepared.name + ".splits.csv"), proj / "data" / "splits.csv")
    (proj / "data" / "prepare.run.json").write_text("{}\n")
    t = time.perf_counter()
    _timed([*dvc, "commit", "--force", "prepare"], proj)
    out["commit_prepare_seconds"] = round(time.perf_counter() - t, 2)
    noop, status, fetch_only = [], [], []
    for _ in range(repeats):
        noop.append(_timed([*dvc, "repro", "prepare"], proj))
        status.append(_timed([*dvc, "status"], proj))
        fetch_only.append(_timed([sys.executable, "stages/fetch.py"], proj))
    out |= {
        "noop_repro_prepare_seconds": noop,
        "status_seconds": status,
        "fetch_stage_unchanged_seconds": fetch_only,
        "load_after": load(),
        "raw_files": sum(1 for _ in (proj / "data" / "raw").rglob("*.jpg")),
    }
    logging.info("dvc: %s", out)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--small", type=int, default=2_000, help="the small run (RSS baseline)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batches", type=int, default=300, help="cached training batches")
    parser.add_argument(
        "--work", default=str(Path(tempfile.gettempdir()) / "reprotrain-bench"), type=Path
    )
    parser.add_argument("--out", default=str(HERE / "results" / "scale.json"), type=Path)
    parser.add_argument("--serial-full", action="store_true", help="also 1 worker on --images")
    parser.add_argument("--generate-only", action="store_true")
    parser.add_argument(
        "--scaling-only",
        action="store_true",
        help="only the alternating 1-vs-all-cores decode runs, merged into --out",
    )
    parser.add_argument(
        "--prepare-only",
        action="store_true",
        help="only the prepare runs (small 1 / all cores, full all cores), merged into --out",
    )
    parser.add_argument(
        "--fetch-only",
        action="store_true",
        help="only the fetch runs (on the generated images if there, else placeholder "
        "files of their sizes), merged into --out",
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating scaling rounds")
    parser.add_argument("--skip", nargs="*", default=[], choices=["fetch", "dvc", "train"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.work.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1

    report: dict[str, Any] = {
        "what": f"{args.images} generated JPEGs (~500x375, {CLASSES} classes), one machine",
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "nproc": cores,
            "load_average_at_start": load(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
        },
    }
    full = args.work / f"images-{args.images}-seed{args.seed}"
    if args.fetch_only:
        return fetch_only(args, full, report["machine"])
    report["generation"] = generate(full, args.images, args.seed)
    if args.generate_only:
        return 0
    small = subset(full, args.small)

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")

    if args.scaling_only or args.prepare_only:
        machine, report = report["machine"], json.loads(args.out.read_text())
        report["machine"] = machine
    if not args.prepare_only:
        report["decode_scaling"] = measure_scaling(small, cores, min(args.small, 1000), args.rounds)
        save()
    if args.scaling_only:
        return 0

    # 1 vs all cores back to back on the small set, then the full set with all cores.
    runs = {
        f"{args.small}_all_cores": measure_prepare(small, args.work, cores),
        f"{args.small}_1_worker": measure_prepare(small, args.work, 1),
        f"{args.images}_all_cores": measure_prepare(full, args.work, cores),
    }
    if args.serial_full:
        runs[f"{args.images}_1_worker"] = measure_prepare(full, args.work, 1)
    s_all, s_one = runs[f"{args.small}_all_cores"], runs[f"{args.small}_1_worker"]
    f_all = runs[f"{args.images}_all_cores"]
    prepared = Path(f_all["out"])
    report["prepare"] = {
        "identical_output_1_vs_all_cores": _same_files(Path(s_one["out"]), Path(s_all["out"])),
        "speedup_all_cores_vs_1": round(s_all["images_per_s"] / s_one["images_per_s"], 2),
        "decode_speedup_all_cores_vs_1": round(
            s_all["decode_images_per_s"] / s_one["decode_images_per_s"], 2
        ),
        "peak_rss_ratio_full_vs_small": {
            k: round(f_all[k] / s_all[k], 2)
            for k in (
                "decode_parent_peak_rss_mib",
                "pool_worker_peak_rss_mib",
                "parent_peak_rss_mib",
                "tree_peak_rss_mib",
            )
        },
        "runs": runs,
    }
    for r in runs.values():
        r.pop("out")
    save()
    if args.prepare_only:
        report["machine"]["load_average_at_end"] = load()
        save()
        return 0
    if "fetch" not in args.skip:
        report["fetch"] = measure_fetch(full, args.work)
        save()
    if "dvc" not in args.skip:
        report["dvc"] = measure_dvc(full, prepared, args.work)
        save()
    if "train" not in args.skip:
        before = load()
        cmd = [sys.executable, __file__, "_train", str(prepared), str(args.batches)]
        report["training_input"] = run_measured(cmd, env=_env()) | {"load_before": before}
    report["machine"]["load_average_at_end"] = load()
    save()
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0


def fetch_only(args: argparse.Namespace, full: Path, machine: dict[str, Any]) -> int:
    """``--fetch-only``: the fetch measurements alone, merged into ``--out``."""
    if full.with_name(full.name + ".done").is_file():
        src, data = full, {"kind": "generated images", "files": args.images}
    else:
        src = args.work / f"placeholders-{args.images}-seed{args.seed}"
        data = placeholder_files(src, args.images, args.seed)
    report = json.loads(args.out.read_text()) if args.out.is_file() else {}
    result = measure_fetch(src, args.work, args.rounds)
    report["fetch"] = {"data": data, "machine": machine | {"load_average_at_end": load()}}
    report["fetch"] |= result
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    sys.stdout.write(json.dumps(report["fetch"], indent=2) + "\n")
    return 0


def _same_files(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    if names != sorted(p.name for p in b.iterdir()):
        return False
    return all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_prepare":
        logging.basicConfig(level=logging.WARNING)
        child_prepare(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif len(sys.argv) > 1 and sys.argv[1] == "_train":
        logging.basicConfig(level=logging.WARNING)
        child_train(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(main())
