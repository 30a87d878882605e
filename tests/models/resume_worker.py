"""A training process for the kill-and-resume test (run as ``python -m``).

argv: CHECKPOINT_DIR OUT_JSON [pause]. Each finished epoch is appended to OUT_JSON.epochs;
with ``pause`` the hook of the second epoch (its backup already committed) prints
``paused`` on stdout and blocks reading stdin, which the test never writes: the test reads
the line and kills the process there. An event, not a time window.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from reprotrain import runtime, training
from reprotrain.config import RuntimeConfig, TrainHeadConfig
from tests.models.tiny import tiny_arrays, tiny_cnn, tiny_dataset


def main() -> None:
    ckpt, out = Path(sys.argv[1]), Path(sys.argv[2])
    pause = sys.argv[3:] == ["pause"]
    info = runtime.configure(RuntimeConfig(), seed=5)
    model = tiny_cnn()
    x, y = tiny_arrays(16)
    cfg = TrainHeadConfig(epochs=4, batch_size=8, feature_cache="off", early_stopping_patience=9)
    seen: list[int] = []

    def hook(epoch: int, metrics: dict[str, float]) -> None:
        seen.append(epoch)
        out.with_suffix(".epochs").write_text(json.dumps(seen))
        if pause and epoch == 1:
            print("paused", flush=True)
            sys.stdin.read(1)

    result = training.train(
        model,
        tiny_dataset(x, y),
        tiny_dataset(x, y),
        cfg,
        info,
        checkpoint_dir=ckpt,
        epoch_hook=hook,
        resume_key="same-inputs",
    )
    out.write_text(
        json.dumps({"seen": seen, "summary": result.summary(), "history": result.history})
    )


if __name__ == "__main__":
    main()
