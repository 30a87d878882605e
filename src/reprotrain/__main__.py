"""``python -m reprotrain COMMAND ...``: predict, promote, reproduce, ui.

Each command lives in its own module with a ``main(argv) -> int``; this file only dispatches,
so ``python -m reprotrain predict`` does not pay for importing MLflow's server code, etc.
"""

from __future__ import annotations

import importlib
import sys

from reprotrain.cli import run_main

COMMANDS = {
    "predict": "classify image files/folders with a .keras or models:/ URI",
    "promote": "move the champion alias to a version (or --rollback), audited",
    "tune": "search train_head hyperparameters on cached features; print the dvc exp command",
    "reproduce": "rebuild an MLflow run's inputs and rerun the pipeline",
    "ui": "start the MLflow UI on 127.0.0.1 against the project store",
}


def _usage() -> str:
    lines = ["usage: python -m reprotrain COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, help_ in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Dispatch to ``reprotrain.commands.<command>.main(rest)``."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(_usage() + "\n")
        sys.exit(0 if argv else 2)
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        sys.stderr.write(f"error: unknown command {name!r}\n{_usage()}\n")
        sys.exit(2)
    module = importlib.import_module(f"reprotrain.commands.{name}")
    run_main(lambda: module.main(rest), name=name)


if __name__ == "__main__":
    main()
