"""Running ``dvc repro`` / ``dvc exp run`` as a child process of a notebook or script.

Why a module of its own: :class:`reprotrain.api.Project` is a facade over functions the
commands share; what is its own is how it starts ``dvc`` (its own process group, its output
read line by line into a stage progress bar and a tail for the error message), how it stops
it the way Ctrl-C in a terminal would (the stage's run ends KILLED, the kernel lives on), and
how keyword overrides become ``-S key=value`` arguments. Nothing here changes the caller's
process: the environment is passed to the child.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from reprotrain.errors import ConfigError, ReprotrainError

#: The API's logger: what it logs about the ``dvc`` it starts is the API's own output.
logger = logging.getLogger("reprotrain.api")

#: Lines of a failed run's output kept for its error message.
TAIL_LINES = 40
#: What DVC prints when a stage starts or is skipped: the stage progress bar counts them.
STAGE_LINE = re.compile(
    r"^(?:Running stage '(?P<run>[\w@-]+)'|Stage '(?P<skip>[\w@-]+)' (?:didn't change|is cached))"
)
#: Seconds a stopped ``dvc`` gets to end its stage (the run ends KILLED) before SIGKILL.
STOP_TIMEOUT = 60.0


class PipelineError(ReprotrainError):
    """``dvc repro`` / ``dvc exp run`` failed; the message holds the stage's error line."""


def override_args(overrides: Mapping[str, Any]) -> list[str]:
    """``-S key=value`` arguments for ``dvc exp run``, keys dotted (``train_head.epochs``)
    or with ``__`` for the dot (``train_head__epochs``, usable as a keyword argument).

    Values are written as YAML scalars/flow lists, which is how DVC parses them.
    """
    args: list[str] = []
    for key, value in overrides.items():
        if not key or not re.fullmatch(r"[A-Za-z0-9_.]+", key):
            raise ConfigError(f"param override {key!r}: expected a dotted params.yaml key")
        args += ["-S", f"{key.replace('__', '.')}={_yaml_value(value)}"]
    return args


def _yaml_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)  # numbers, true/false, null, [lists] and {maps} are YAML too


def first_error(lines: Iterable[str]) -> str | None:
    """The one-line ``error: ...`` a stage prints (``cli.run``), or DVC's ``ERROR: ...``."""
    found = None
    for line in lines:
        text = line.strip()
        if text.startswith("error: "):
            return text.removeprefix("error: ")
        if found is None and text.startswith("ERROR: "):
            found = text.removeprefix("ERROR: ")
    return found


def run_dvc(
    cmd: Sequence[str], root: Path, env: Mapping[str, str], *, stages: int, echo: bool
) -> None:
    """Run ``cmd`` (``python -m dvc ...``) in ``root`` with a stage progress bar; a failure
    raises :class:`PipelineError` with the stage's one-line error. Interrupted (Ctrl-C in a
    notebook), ``dvc`` is stopped (:func:`stop`) and the interrupt goes on."""
    from reprotrain.progress import progress

    tail: deque[str] = deque(maxlen=TAIL_LINES)
    errors: list[str] = []  # every stage's `error:` line (a long log may push it out of tail)
    logger.info("$ %s  (in %s)", " ".join(cmd[2:]), root)
    proc = subprocess.Popen(
        list(cmd),
        cwd=root,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,  # Ctrl-C in the notebook stops it through stop() only
    )
    try:
        with progress(stages, "dvc", unit="stage") as bar:
            assert proc.stdout is not None
            for line in proc.stdout:
                tail.append(line.rstrip("\n"))
                if line.startswith("error: "):
                    errors.append(line.strip())
                if echo:
                    sys.stderr.write(line)
                if match := STAGE_LINE.match(line):
                    bar.set_postfix_str(match["run"] or f"{match['skip']} (unchanged)")
                    bar.update(1)
        code = proc.wait()
    except BaseException:  # KeyboardInterrupt in a notebook: stop dvc, keep the kernel
        stop(proc)
        raise
    if code != 0:
        reason = first_error([*errors, *tail]) or (tail[-1] if tail else "no output")
        raise PipelineError(f"`dvc {' '.join(cmd[3:])}` failed (exit {code}) in {root}: {reason}")


def stop(proc: subprocess.Popen[str]) -> None:
    """Stop a ``dvc`` process group the way Ctrl-C in a terminal would (SIGINT: the
    stage's run ends KILLED), then SIGKILL if it has not ended within STOP_TIMEOUT."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
