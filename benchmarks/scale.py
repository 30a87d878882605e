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
The synthetic data, the measuring helpers, the fetch and the DVC measurements live in the
sibling ``scale_images``, ``scale_measure``, ``scale_fetch`` and ``scale_dvc`` modules.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the sibling scale_* modules
sys.path.insert(0, str(HERE.parent))  # for scripts.project_copy (via scale_dvc)
from scale_dvc import measure_dvc  # noqa: E402
from scale_fetch import fetch_only, measure_fetch  # noqa: E402
from scale_images import CLASSES, generate, subset  # noqa: E402
from scale_measure import bench_env, load, run_measured  # noqa: E402

# --------------------------------------------------------------------------- measuring


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
    result = run_measured(cmd, env=bench_env())
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
    from reprotrain.data.decoding import decode_all

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


# --------------------------------------------------------------------------- the report


def parser() -> argparse.ArgumentParser:
    """The command line (see the module docstring)."""
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
    return parser


def machine_info(cores: int) -> dict[str, Any]:
    """The machine every number was measured on (read the ratios on a shared one)."""
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "nproc": cores,
        "load_average_at_start": load(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
    }


def save(out: Path, report: dict[str, Any]) -> None:
    """Write the report as it stands (after each measurement: a long run keeps its part)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


def prepare_report(args: argparse.Namespace, small: Path, full: Path, cores: int):
    """1 vs all cores back to back on the small set, then the full set with all cores: the
    ``prepare`` section of the report, and the full set's prepared folder."""
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
    section = {
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
    return section, prepared


def measure_the_rest(args: argparse.Namespace, report: dict[str, Any], full: Path, prepared: Path):
    """fetch, DVC and training input (each unless ``--skip``), saved after each."""
    if "fetch" not in args.skip:
        report["fetch"] = measure_fetch(full, args.work)
        save(args.out, report)
    if "dvc" not in args.skip:
        report["dvc"] = measure_dvc(full, prepared, args.work)
        save(args.out, report)
    if "train" not in args.skip:
        before = load()
        cmd = [sys.executable, __file__, "_train", str(prepared), str(args.batches)]
        report["training_input"] = run_measured(cmd, env=bench_env()) | {"load_before": before}


def main() -> int:
    args = parser().parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.work.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    report: dict[str, Any] = {
        "what": f"{args.images} generated JPEGs (~500x375, {CLASSES} classes), one machine",
        "machine": machine_info(cores),
    }
    full = args.work / f"images-{args.images}-seed{args.seed}"
    if args.fetch_only:
        return fetch_only(args, full, report["machine"])
    report["generation"] = generate(full, args.images, args.seed)
    if args.generate_only:
        return 0
    small = subset(full, args.small)
    if args.scaling_only or args.prepare_only:
        machine, report = report["machine"], json.loads(args.out.read_text())
        report["machine"] = machine
    if not args.prepare_only:
        report["decode_scaling"] = measure_scaling(small, cores, min(args.small, 1000), args.rounds)
        save(args.out, report)
    if args.scaling_only:
        return 0
    report["prepare"], prepared = prepare_report(args, small, full, cores)
    save(args.out, report)
    if not args.prepare_only:
        measure_the_rest(args, report, full, prepared)
    report["machine"]["load_average_at_end"] = load()
    save(args.out, report)
    if not args.prepare_only:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
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
