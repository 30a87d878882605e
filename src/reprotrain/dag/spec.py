"""What a stage declares: :class:`Stage` and its :class:`Output` files, plus the helpers
every kind's list of stages is written with."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reprotrain import paths
from reprotrain.config import flatten


@dataclass(frozen=True)
class Output:
    """One output of a stage. ``cache: false`` outputs are small files git keeps (sidecars,
    metrics, the ledger); ``persist`` ones DVC does not delete before the stage runs."""

    path: str
    cache: bool = True
    persist: bool = False
    note: str = ""  # a comment above it in dvc.yaml


@dataclass(frozen=True)
class Stage:
    """One stage: ``python stages/<name>.py`` (images) or ``stages/<kind>/<name>.py``."""

    name: str
    #: Dotted ``params.yaml`` keys the stage reads (a section name is the whole section).
    params: tuple[str, ...]
    #: Upstream outputs it reads: DVC deps, so a change upstream reruns it.
    reads: tuple[str, ...] = ()
    outs: tuple[Output, ...] = ()
    metrics: tuple[Output, ...] = ()
    #: The run sidecar it writes, naming its MLflow run for downstream stages.
    sidecar: str | None = None
    #: Upstream stages' sidecars it links its run to (lineage, never a DVC dep: linking must
    #: not cause reruns).
    upstream: tuple[str, ...] = ()
    always_changed: bool = False
    note: str = ""  # a comment above it in dvc.yaml
    #: A training stage's model file and history (also among ``outs``).
    model: str | None = None
    history: str | None = None
    #: The data kind (``data.kind``) whose pipeline this stage belongs to.
    kind: str = "images"
    #: The script, when it is not the kind's ``stages/[<kind>/]<name>.py`` (fetch is shared).
    script_file: str | None = field(default=None, repr=False)

    @property
    def script(self) -> str:
        if self.script_file:
            return self.script_file
        return (
            f"stages/{self.name}.py"
            if self.kind == "images"
            else f"stages/{self.kind}/{self.name}.py"
        )

    @property
    def sidecar_path(self) -> Path | None:
        return Path(self.sidecar) if self.sidecar else None

    @property
    def upstream_paths(self) -> list[Path]:
        return [Path(p) for p in self.upstream]


@dataclass(frozen=True)
class Kind:
    """One ``data.kind``'s pipeline: its stages in order, its ``dvc plots`` definitions and
    the line dvc.yaml's header describes it with."""

    name: str
    stages: dict[str, Stage]
    plots: list[dict[str, Any]]
    summary: str


def sidecar(path: Path | str) -> Output:
    """A run sidecar (``*.run.json``): git-tracked."""
    return Output(str(path), cache=False)


def git_file(path: Path | str) -> Output:
    """A small output git keeps (metrics, history)."""
    return Output(str(path), cache=False)


#: The classifier kinds' test-split plots (confusion, ROC, precision-recall), drawn the same
#: way for images and tables.
CLASSIFIER_PLOTS: tuple[dict[str, Any], ...] = (
    {
        "plots/confusion.csv": {
            "template": "confusion",
            "x": "predicted",
            "y": "actual",
            "title": "Confusion matrix (test split)",
        }
    },
    {
        "ROC": {
            "template": "simple",
            "x": "fpr",
            "y": {"plots/roc.csv": "tpr"},
            "title": "ROC curve (test split)",
        }
    },
    {
        "Precision-recall": {
            "template": "simple",
            "x": "recall",
            "y": {"plots/pr.csv": "precision"},
            "title": "Precision-recall curve (test split)",
        }
    },
)

PLOT_NOTE = (
    "Plot data: drawn by the top-level `plots:` definitions below (listing them under a\n"
    "stage's `plots:` as well would render each one twice in `dvc plots show`)."
)


def plot_data(*names: str) -> tuple[Output, ...]:
    """evaluate's plot CSVs (git-tracked), the note once above the first."""
    return tuple(
        Output(str(paths.PLOTS_DIR / f"{n}.csv"), cache=False, note=PLOT_NOTE if i == 0 else "")
        for i, n in enumerate(names)
    )


def training(name: str, model: Path, history: Path, run_file: Path, **kw: Any) -> Stage:
    """A training stage's outputs: the model, its TensorBoard logs, history and metrics."""
    return Stage(
        name,
        outs=(
            Output(str(model)),
            Output(str(paths.TENSORBOARD_DIR / name)),
            git_file(history),
            sidecar(run_file),
        ),
        metrics=(git_file(paths.METRICS_DIR / f"{name}.json"),),
        sidecar=str(run_file),
        model=str(model),
        history=str(history),
        **kw,
    )


def export_stage(
    kind: str,
    folder: Path,
    run_file: Path,
    *,
    params: tuple[str, ...],
    reads: tuple[str, ...],
    upstream: tuple[str, ...],
) -> Stage:
    """An export stage: its formats folder and sidecar, and metrics/export.json (the same
    file for every kind: evaluate attaches it to the registered version)."""
    return Stage(
        "export",
        params=params,
        reads=reads,
        outs=(Output(str(folder)), sidecar(run_file)),
        metrics=(git_file(paths.EXPORT_METRICS),),
        sidecar=str(run_file),
        upstream=upstream,
        kind=kind,
    )


#: What every kind's evaluate reads from params.yaml (the gate, the registry, the card's
#: data lines); a kind adds its own sections.
EVALUATE_PARAMS = (
    "seed",
    "runtime",
    "evaluate",
    "tracking.registered_model",
    "data.source",
    "data.sha256",
)


def evaluate_stage(
    kind: str,
    *,
    params: tuple[str, ...],
    reads: tuple[str, ...],
    outs: tuple[Output, ...],
    upstream: tuple[str, ...],
) -> Stage:
    """An evaluate stage: the kind's own params (after :data:`EVALUATE_PARAMS`) and outputs
    (plots), plus what every kind's evaluate writes: the model card, the promotion decision,
    the run sidecar and metrics/evaluate.json."""
    return Stage(
        "evaluate",
        params=(*EVALUATE_PARAMS, *params),
        reads=(*reads, str(paths.EXPORT_METRICS)),
        outs=(
            *outs,
            git_file(paths.MODEL_CARD),
            sidecar(paths.EVALUATE_RUN),
            git_file(paths.METRICS_DIR / "promotion.json"),
        ),
        metrics=(git_file(paths.METRICS_DIR / "evaluate.json"),),
        sidecar=str(paths.EVALUATE_RUN),
        upstream=upstream,
        kind=kind,
    )


#: fetch's params: shared by every kind (one script snapshots any source).
FETCH_PARAMS = (
    "data.kind",
    "data.source",
    "data.sha256",
    "data.archive_max_gb",
    "data.archive_max_ratio",
    "data.archive_max_members",
)
FETCH_NOTE = (
    "The source (URL, folder, archive or file) lives outside the repo, where DVC\n"
    "cannot watch it, so fetch re-snapshots it on every repro (cheap: downloads are\n"
    "cached and unchanged files are skipped). Downstream stages rerun only if the\n"
    "snapshot changed."
)


def fetch_stage(kind: str) -> Stage:
    """The fetch stage of ``kind`` (the same script for every kind)."""
    return Stage(
        "fetch",
        params=FETCH_PARAMS,
        outs=(Output(str(paths.RAW_DIR), persist=True),),
        always_changed=True,
        note=FETCH_NOTE,
        kind=kind,
        script_file="stages/fetch.py",
    )


def param_values(params: Any, keys: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """The values of dotted ``keys`` in a loaded params object, flattened to dotted names:
    ``("seed", "model.image_size")`` → ``{"seed": 42, "model.image_size": 224}``, a section
    expanded to its fields (``"prepare"`` → ``prepare.val_fraction``, ...)."""
    out: dict[str, Any] = {}
    for key in keys:
        node = params
        for part in key.split("."):
            node = node[part] if isinstance(node, Mapping) else getattr(node, part)
        out.update(flatten(node, key))
    return out
