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

from reprotrain.config import TrainHeadConfig
from tests.models.tiny import train_tiny


def main() -> None:
    ckpt, out = Path(sys.argv[1]), Path(sys.argv[2])
    pause = sys.argv[3:] == ["pause"]
    cfg = TrainHeadConfig(epochs=4, batch_size=8, feature_cache="off", early_stopping_patience=9)
    seen: list[int] = []

    def hook(epoch: int, metrics: dict[str, float]) -> None:
        seen.append(epoch)
        out.with_suffix(".epochs").write_text(json.dumps(seen))
        if pause and epoch == 1:
            print("paused", flush=True)
            sys.stdin.read(1)

    _, result = train_tiny(ckpt, cfg, hook=hook, validate_on_train=True)
    out.write_text(
        json.dumps({"seen": seen, "summary": result.summary(), "history": result.history})
    )


if __name__ == "__main__":
    main()
