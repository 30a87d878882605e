"""The pipeline's stages, each declared once.

A stage's spec says which ``params.yaml`` keys it reads, which upstream outputs it reads,
what it writes and which upstream runs it links to. Everything that used to repeat it reads
the spec instead:

* ``dvc.yaml`` is generated from :data:`STAGES` (``python scripts/write_dvc_yaml.py``; a test
  fails when the committed file is stale), its code deps derived from the stage script's
  imports;
* the stage's MLflow run logs exactly the params DVC reruns it for, and the resume key of a
  training stage is made of the same params (``tracking.stage_run``,
  ``stage_io.training_stage``);
* the run sidecar it writes and the upstream sidecars it reads come from here.

A new kind of data adds its own list of specs; the runner and the generator stay as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
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
    """One stage: ``python stages/<name>.py``."""

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

    @property
    def script(self) -> str:
        return f"stages/{self.name}.py"

    @property
    def sidecar_path(self) -> Path | None:
        return Path(self.sidecar) if self.sidecar else None

    @property
    def upstream_paths(self) -> list[Path]:
        return [Path(p) for p in self.upstream]


def _sidecar(path: Path) -> Output:
    return Output(str(path), cache=False)


def _git(path: Path | str) -> Output:
    return Output(str(path), cache=False)


_MODEL_PARAMS = ("seed", "model", "pipeline", "runtime")
_PLOT_NOTE = (
    "Plot data: drawn by the top-level `plots:` definitions below (listing them under a\n"
    "stage's `plots:` as well would render each one twice in `dvc plots show`)."
)


def _plot_data(*names: str) -> tuple[Output, ...]:
    """evaluate's plot CSVs (git-tracked), the note once above the first."""
    return tuple(
        Output(str(paths.PLOTS_DIR / f"{n}.csv"), cache=False, note=_PLOT_NOTE if i == 0 else "")
        for i, n in enumerate(names)
    )


def _training(name: str, model: Path, history: Path, sidecar: Path, **kw: Any) -> Stage:
    """A training stage's outputs: the model, its TensorBoard logs, history and metrics."""
    return Stage(
        name,
        outs=(
            Output(str(model)),
            Output(str(paths.TENSORBOARD_DIR / name)),
            _git(history),
            _sidecar(sidecar),
        ),
        metrics=(_git(paths.METRICS_DIR / f"{name}.json"),),
        sidecar=str(sidecar),
        model=str(model),
        history=str(history),
        **kw,
    )


#: The image pipeline: fetch → prepare → train_head → finetune → export → evaluate, and
#: prepare → baseline.
STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage(
            "fetch",
            params=(
                "data.source",
                "data.sha256",
                "data.archive_max_gb",
                "data.archive_max_ratio",
                "data.archive_max_members",
            ),
            outs=(Output(str(paths.RAW_DIR), persist=True),),
            always_changed=True,
            note=(
                "The source (URL, folder, archive or CSV) lives outside the repo, where DVC\n"
                "cannot watch it, so fetch re-snapshots it on every repro (cheap: downloads are\n"
                "cached and unchanged files are skipped). Downstream stages rerun only if the\n"
                "snapshot changed."
            ),
        ),
        Stage(
            "prepare",
            params=("seed", "prepare"),
            reads=(str(paths.RAW_DIR),),
            outs=(
                Output(str(paths.PREPARED_DIR)),
                _sidecar(paths.PREPARE_RUN),
                Output(
                    str(paths.SPLITS_LEDGER),
                    cache=False,
                    persist=True,
                    note=(
                        "The split ledger: read and extended by prepare (an image's split never\n"
                        "moves). Git-tracked (cache: false) and kept by DVC before each run\n"
                        "(persist: true)."
                    ),
                ),
            ),
            sidecar=str(paths.PREPARE_RUN),
        ),
        _training(
            "train_head",
            paths.HEAD_MODEL,
            paths.HEAD_HISTORY,
            paths.HEAD_RUN,
            params=(*_MODEL_PARAMS, "train_head"),
            reads=(str(paths.PREPARED_DIR),),
            upstream=(str(paths.PREPARE_RUN),),
        ),
        _training(
            "finetune",
            paths.FINETUNED_MODEL,
            paths.FINETUNED_HISTORY,
            paths.FINETUNED_RUN,
            params=("seed", "model.image_size", "pipeline", "runtime", "finetune"),
            reads=(str(paths.PREPARED_DIR), str(paths.HEAD_MODEL)),
            upstream=(str(paths.PREPARE_RUN), str(paths.HEAD_RUN)),
        ),
        Stage(
            "export",
            params=("seed", "model.image_size", "pipeline", "runtime", "export"),
            reads=(str(paths.PREPARED_DIR), str(paths.FINETUNED_MODEL)),
            outs=(Output(str(paths.EXPORT_DIR)), _sidecar(paths.EXPORT_RUN)),
            metrics=(_git(paths.EXPORT_METRICS),),
            sidecar=str(paths.EXPORT_RUN),
            upstream=(str(paths.PREPARE_RUN), str(paths.FINETUNED_RUN)),
        ),
        _training(
            "baseline",
            paths.BASELINE_MODEL,
            paths.BASELINE_HISTORY,
            paths.BASELINE_RUN,
            params=("seed", "pipeline", "runtime", "baseline"),
            reads=(str(paths.PREPARED_DIR),),
            upstream=(str(paths.PREPARE_RUN),),
            note=(
                "A from-scratch model (reprotrain.models.scratch) on the same TFRecords, parallel\n"
                "to train_head: evaluate compares it with the transfer models (transfer_gain)."
            ),
        ),
        Stage(
            "evaluate",
            params=(
                "seed",
                "runtime",
                "evaluate",
                "baseline.image_size",
                "tracking.registered_model",
                # Shown on the model card:
                "data.source",
                "data.sha256",
                "model",
                "prepare.max_side",
                "train_head",
                "finetune",
            ),
            reads=(
                str(paths.PREPARED_DIR),
                str(paths.HEAD_MODEL),
                str(paths.FINETUNED_MODEL),
                str(paths.HEAD_HISTORY),
                str(paths.FINETUNED_HISTORY),
                str(paths.BASELINE_MODEL),
                str(paths.EXPORT_METRICS),
            ),
            outs=(
                Output(str(paths.PLOTS_DIR / "images")),
                Output(str(paths.PLOTS_DIR / "predictions.csv")),
                _git(paths.MODEL_CARD),
                Output(str(paths.REPORTS_DIR / "model_card")),
                _sidecar(paths.EVALUATE_RUN),
                _git(paths.METRICS_DIR / "promotion.json"),
                *_plot_data("confusion", "roc", "pr", "training_curves", "recall_by_model"),
            ),
            metrics=(_git(paths.METRICS_DIR / "evaluate.json"),),
            sidecar=str(paths.EVALUATE_RUN),
            upstream=(
                str(paths.PREPARE_RUN),
                str(paths.HEAD_RUN),
                str(paths.FINETUNED_RUN),
                str(paths.BASELINE_RUN),
                str(paths.EXPORT_RUN),
            ),
        ),
    )
}

#: How ``dvc plots show/diff`` draws the files evaluate writes (dvc.yaml's top-level ``plots``).
PLOTS: list[dict[str, Any]] = [
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
    {
        "Training curves": {
            "template": "linear",
            "x": "step",
            "y": {"plots/training_curves.csv": ["val_accuracy", "accuracy"]},
            "title": "Accuracy across train_head then finetune epochs",
        }
    },
    {
        "Per-class recall by model": {
            "template": "simple",
            "x": "class",
            "y": {"plots/recall_by_model.csv": ["finetuned", "head", "baseline"]},
            "title": "Per-class test recall, fine-tuned vs head-only vs from-scratch baseline",
        }
    },
]


def stage(name: str) -> Stage:
    """The spec of stage ``name`` (a KeyError names the known stages)."""
    try:
        return STAGES[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r}: one of {', '.join(STAGES)}") from None


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
