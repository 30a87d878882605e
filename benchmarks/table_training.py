"""The table kind's training: the pipeline's train stage vs the seed's sentiment model as a
plain Keras script, and the text encoders' test accuracy vs the classical baseline
→ benchmarks/results/table_training.json.

    python benchmarks/table_training.py [--epochs 3] [--accuracy-epochs 6] [--work DIR]

Builds a throw-away table project on the offline assets' ``fortunes/topics8.csv`` (and
``churn/churn.csv``), runs ``dvc repro baseline`` (fetch, prepare, the classical baseline:
its test accuracy is metrics/baseline.json's), then measures in this process:

- ``pipeline_vs_plain``: training examples/s of the pipeline's train stage code (the
  prepared splits read into the raw-column dict, the model with TextVectorization inside,
  ``training.train`` with its backups and callbacks) divided by the seed's script (texts
  vectorised once outside the model, ``fit`` on the padded int arrays in memory), the same
  BiLSTM model, epochs and batch size. Median epoch time after the first (warm-up). Target
  ≥ 0.9.
- test accuracy of ``table.text_encoder`` bilstm / gru / average on topics8, and of the
  model on churn, each next to the classical baseline's on the same test split: what
  ``table.text_encoder``'s default was chosen by.

Timings on a shared machine are noisy: compare the ratio, measured back to back.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # for scripts.project_copy (run as `python benchmarks/...`)

from scripts.project_copy import make_project, subprocess_env  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "table_training.json"
ENCODERS = ("bilstm", "gru", "average")


def assets() -> Path:
    env = os.environ.get("REPROTRAIN_ASSETS")
    root = Path(env) if env else REPO.parent / "shared" / "assets"
    if not (root / "datasets").is_dir():
        sys.exit(f"no datasets under {root}: set REPROTRAIN_ASSETS")
    return root / "datasets"


def prepared_project(work: Path, source: Path, name: str) -> tuple[Path, dict[str, float]]:
    """A table project on ``source`` after ``dvc repro baseline``; the baseline's and the
    majority class's test accuracy."""
    proj = make_project(
        work / name, {"data": {"kind": "table", "source": str(source), "sha256": None}}
    )
    proc = subprocess.run(
        ["dvc", "repro", "baseline"], cwd=proj, env=subprocess_env(), text=True, capture_output=True
    )
    if proc.returncode != 0:
        sys.exit(f"dvc repro baseline failed:\n{proc.stderr[-4000:]}")
    baseline = json.loads((proj / "metrics" / "baseline.json").read_text())
    return proj, {
        "baseline": round(float(baseline["test_accuracy"]), 4),
        "majority": round(float(baseline["test_majority_accuracy"]), 4),
        "baseline_model": baseline.get("model"),
    }


class EpochClock:
    """Wall time of each epoch (fit's callback, or training.train's epoch hook)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._last = time.perf_counter()

    def tick(self, *_: Any) -> None:
        now = time.perf_counter()
        self.times.append(now - self._last)
        self._last = now

    def examples_per_second(self, n: int) -> float:
        steady = self.times[1:] or self.times
        return n / statistics.median(steady)


def plain_script(proj: Path, cfg: Any, epochs: int) -> dict[str, Any]:
    """The seed's sentiment model: texts vectorised once, fit on padded arrays in memory."""
    import keras
    import numpy as np

    from reprotrain.tables import records

    prepared = proj / "data/table/prepared"
    frames = {s: records.read_frame(prepared, s) for s in ("train", "val")}
    ys = {s: records.label_ids(prepared, s) for s in ("train", "val")}
    keras.utils.set_random_seed(42)
    vectorize = keras.layers.TextVectorization(
        max_tokens=cfg.max_tokens, output_sequence_length=cfg.sequence_length
    )
    vectorize.adapt(np.asarray(frames["train"]["text"], dtype=str))
    xs = {s: np.asarray(vectorize(np.asarray(f["text"], dtype=str))) for s, f in frames.items()}
    classes = int(max(ys["train"].max(), ys["val"].max()) + 1)
    model = keras.Sequential(
        [
            keras.Input((cfg.sequence_length,), dtype="int64"),
            keras.layers.Embedding(vectorize.vocabulary_size(), cfg.embedding_dim, mask_zero=True),
            keras.layers.Bidirectional(keras.layers.LSTM(64, return_sequences=True)),
            keras.layers.Bidirectional(keras.layers.LSTM(32)),
            keras.layers.Dense(cfg.hidden[0], activation="relu"),
            keras.layers.Dropout(cfg.dropout),
            keras.layers.Dense(classes, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    clock = EpochClock()
    model.fit(
        xs["train"],
        ys["train"],
        validation_data=(xs["val"], ys["val"]),
        epochs=epochs,
        batch_size=cfg.batch_size,
        verbose=0,
        callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=clock.tick)],
    )
    n = len(ys["train"])
    return {"examples_per_second": round(clock.examples_per_second(n), 1), "epoch_s": clock.times}


def pipeline_stage(proj: Path, cfg: Any, seed: int = 42) -> dict[str, Any]:
    """The train stage's code path (stages/table/train.py), timed per epoch; then the test
    accuracy of the kept weights."""
    import numpy as np

    from reprotrain import runtime, training
    from reprotrain.config import RuntimeConfig
    from reprotrain.tables import inference
    from reprotrain.tables import model as table_model
    from reprotrain.tables.training import load_split, load_train_data, make_dataset

    os.chdir(proj)
    info = runtime.configure(RuntimeConfig(), seed)
    data = load_train_data(Path("data/table/prepared"), cfg.class_weight)
    model = table_model.build(data.spec, len(data.schema.labels), data.train.inputs, cfg)
    train, val = (
        make_dataset(
            inference.feed(model, split.inputs, data.spec),
            split.y,
            batch_size=cfg.batch_size,
            shuffle_buffer=1024 if shuffle else 0,
            seed=seed,
        )
        for split, shuffle in ((data.train, True), (data.val, False))
    )
    clock = EpochClock()
    with tempfile.TemporaryDirectory() as ckpt:
        result = training.train(
            model, train, val, cfg, info, training.RunOptions(Path(ckpt), epoch_hook=clock.tick)
        )
    test = load_split(Path("data/table/prepared"), "test", data.schema)
    probs = inference.predict_probs(model, test.inputs, data.spec)
    return {
        "examples_per_second": round(clock.examples_per_second(len(data.train)), 1),
        "epoch_s": [round(t, 2) for t in clock.times],
        "epochs_run": result.epochs_run,
        "test_accuracy": round(float(np.mean(probs.argmax(axis=1) == test.y)), 4),
        "n_test": len(test),
        "params": model.count_params(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the speed comparison")
    parser.add_argument("--accuracy-epochs", type=int, default=6, help="epochs per encoder")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args(argv)
    data_dir = assets()
    work = args.work or Path(tempfile.mkdtemp(prefix="reprotrain-table-bench-"))
    from reprotrain.config import load_params

    base = load_params(REPO / "params.yaml").table
    topics, topics_baseline = prepared_project(work, data_dir / "fortunes/topics8.csv", "topics8")
    churn, churn_baseline = prepared_project(work, data_dir / "churn/churn.csv", "churn")

    speed_cfg = dataclasses.replace(
        base, text_encoder="bilstm", epochs=args.epochs, early_stopping_patience=args.epochs
    )
    plain = plain_script(topics, speed_cfg, args.epochs)
    pipe = pipeline_stage(topics, speed_cfg)
    accuracy = {}
    for encoder in ENCODERS:
        cfg = dataclasses.replace(base, text_encoder=encoder, epochs=args.accuracy_epochs)
        accuracy[encoder] = pipeline_stage(topics, cfg)
        print(f"topics8 {encoder}: {accuracy[encoder]}", file=sys.stderr)
    churn_run = pipeline_stage(churn, dataclasses.replace(base, epochs=args.accuracy_epochs))
    best = max(ENCODERS, key=lambda e: (accuracy[e]["test_accuracy"], -ENCODERS.index(e)))
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "speed": {
            "dataset": "fortunes/topics8.csv",
            "encoder": "bilstm",
            "epochs": args.epochs,
            "batch_size": speed_cfg.batch_size,
            "sequence_length": speed_cfg.sequence_length,
            "plain_keras": plain,
            "pipeline": {k: pipe[k] for k in ("examples_per_second", "epoch_s")},
            "pipeline_vs_plain": round(
                pipe["examples_per_second"] / plain["examples_per_second"], 3
            ),
            "target": 0.9,
        },
        "accuracy": {
            "epochs": args.accuracy_epochs,
            "topics8": {
                **topics_baseline,
                **{e: accuracy[e]["test_accuracy"] for e in ENCODERS},
                "n_test": accuracy["average"]["n_test"],
                "seconds_per_epoch": {
                    e: round(statistics.median(accuracy[e]["epoch_s"]), 2) for e in ENCODERS
                },
            },
            "churn": {
                **churn_baseline,
                "network": churn_run["test_accuracy"],
                "n_test": churn_run["n_test"],
            },
            "best_text_encoder": best,
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
