"""The pipeline's stages, each declared once, one list per kind of data (``data.kind``).

A stage's spec (:class:`Stage`) says which ``params.yaml`` keys it reads, which upstream
outputs it reads, what it writes and which upstream runs it links to. Everything that used
to repeat it reads the spec instead:

* ``dvc.yaml`` is generated from the list of the kind ``params.yaml`` names
  (``python scripts/write_dvc_yaml.py``, run by ``make repro``; a test fails when the
  committed file is stale), its code deps derived from the stage script's imports;
* the stage's MLflow run logs exactly the params DVC reruns it for, and the resume key of a
  training stage is made of the same params (``tracking.stage_run``,
  ``stage_io.training_stage``);
* the run sidecar it writes and the upstream sidecars it reads come from here.

Why one ``dvc.yaml`` per kind instead of every kind's stages side by side: DVC has no
conditional stages, and a stage of another kind would either fail or pretend to work. Each
kind writes under its own folders (``data/<kind>/``, ``models/<kind>/``), so switching
``data.kind`` and back never mixes one kind's outputs into another's.
"""

from __future__ import annotations

import importlib

from reprotrain.config_kinds import DATA_KINDS
from reprotrain.dag import images
from reprotrain.dag.spec import Kind, Output, Stage, param_values
from reprotrain.errors import ConfigError

__all__ = [
    "KINDS",
    "PLOTS",
    "STAGES",
    "Kind",
    "Output",
    "Stage",
    "check_kind",
    "kind",
    "param_values",
    "stage",
]

#: The kinds, each a module ``reprotrain.dag.<kind>`` with its ``KIND``; imported on use, so
#: a stage's code deps (its imports) hold its own kind's specs only.
KINDS: tuple[str, ...] = DATA_KINDS
#: The image pipeline (the default kind).
STAGES = images.STAGES
PLOTS = images.PLOTS


def kind(name: str) -> Kind:
    """The pipeline of ``data.kind = name``."""
    if name not in KINDS:
        raise KeyError(f"unknown data kind {name!r}: one of {', '.join(KINDS)}")
    return importlib.import_module(f"reprotrain.dag.{name}").KIND


def stage(name: str, kind_name: str = "images") -> Stage:
    """The spec of stage ``name`` of a kind (a KeyError names the known stages)."""
    stages = kind(kind_name).stages
    try:
        return stages[name]
    except KeyError:
        raise KeyError(
            f"unknown stage {name!r} of kind {kind_name}: one of {', '.join(stages)}"
        ) from None


def check_kind(spec: Stage, data_kind: str) -> None:
    """A one-line error when ``dvc.yaml`` is another kind's (``data.kind`` changed, and
    ``dvc repro`` ran without regenerating it): the stage would read the wrong data."""
    if spec.kind != data_kind:
        raise ConfigError(
            f"params.yaml says data.kind: {data_kind}, but dvc.yaml is the {spec.kind} pipeline "
            f"(stage {spec.name}); run `make repro`, or `python scripts/write_dvc_yaml.py` "
            "then `dvc repro`"
        )
