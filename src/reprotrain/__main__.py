"""``python -m reprotrain COMMAND ...``: predict, promote, reproduce, tune, ui.

Each command lives in its own module with a ``main(argv) -> int``; this file only dispatches,
so ``python -m reprotrain predict`` does not pay for importing MLflow's server code, etc.
:func:`main` returns the exit code (a notebook or script may call it); :func:`entry` is the
process (``python -m reprotrain``, the ``reprotrain`` console script): it sets the process
up and exits with that code.
"""

from __future__ import annotations

import importlib
import sys
from typing import NoReturn

from reprotrain import cli

COMMANDS = {
    "predict": "classify images or table rows, or forecast a series, with a .keras or models:/ URI",
    "promote": "move the champion alias to a version (or --rollback), audited",
    "tune": "search train_head hyperparameters on cached features; print the dvc exp command",
    "reproduce": "rebuild an MLflow run's inputs and rerun the pipeline",
    "ui": "start the MLflow UI on 127.0.0.1 against the project store",
}


def _usage() -> str:
    lines = ["usage: python -m reprotrain COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, help_ in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run ``reprotrain.commands.<command>.main(rest)``; returns its exit code (2: usage)."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(_usage() + "\n")
        return 0 if argv else cli.EXIT_USER_ERROR
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        sys.stderr.write(f"error: unknown command {name!r}\n{_usage()}\n")
        return cli.EXIT_USER_ERROR
    module = importlib.import_module(f"reprotrain.commands.{name}")
    return cli.run(lambda: module.main(rest), name=name)


def entry() -> NoReturn:
    """The ``python -m reprotrain`` / ``reprotrain`` process: set up, run, exit."""
    cli.start_process()
    cli.exit_process(main())


if __name__ == "__main__":
    entry()
