"""reprotrain from Python: notebooks and scripts drive the same pipeline as the CLI.

::

    from reprotrain.api import Project

    project = Project("path/to/project")          # the folder holding dvc.yaml
    metrics = project.repro()                     # dvc repro; {"evaluate": {...}, ...}
    metrics = project.repro(**{"train_head.epochs": 3})   # dvc exp run -S train_head.epochs=3
    project.runs()                                # pandas DataFrame: one row per execution
    project.predict(["photo.jpg", "folder/"])     # DataFrame: path, label, confidence, ...
    project.promote(3, reason="approved after review")
    project.reproduce(run_id)                     # Reproduction(identical, report, run_id)

A facade, not a second implementation: the pipeline runs as ``dvc repro`` in a subprocess
(the stages are separate processes under DVC, exactly as on the command line), and every
other method calls the functions the commands use (``commands.predict``, ``commands.labels``,
``commands.normalization``, ``tracking.registry``, ``commands.reproduce``); how ``dvc``
runs as a child process is :mod:`reprotrain.dvc_runner`. Like ``commands/``, it may import
anything.

Why nothing here exits or changes the caller's process: a notebook kernel is a long-lived
process the user owns. No method calls ``sys.exit``, configures logging, sets environment
variables or changes the working directory or MLflow's global tracking URI; what the stage
processes need (:data:`reprotrain.cli.PROCESS_ENV`) is put in *their* environment. Errors
are :class:`reprotrain.errors.ReprotrainError` subclasses whose message says what to fix.
Progress is a tqdm bar (a notebook widget under Jupyter, :mod:`reprotrain.progress`).
Importing this module imports neither TensorFlow nor MLflow (each method imports what it
uses), and sets nothing; the first method that opens the MLflow store switches MLflow's
telemetry off, as every reprotrain process does (``reprotrain.tracking.store``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reprotrain import cli, paths
from reprotrain.config import Params, load_params
from reprotrain.dvc_runner import (
    STOP_TIMEOUT,
    TAIL_LINES,
    PipelineError,
    override_args,
    run_dvc,
)
from reprotrain.errors import ConfigError

# How ``dvc`` runs as a child process lives in ``dvc_runner``; these names stay importable
# from here.
__all__ = [
    "STOP_TIMEOUT",
    "TAIL_LINES",
    "PipelineError",
    "Project",
    "Reproduction",
    "override_args",
]


@contextmanager
def _mlflow_globals_kept() -> Iterator[None]:
    """Put MLflow's process-wide tracking and registry URIs (and the ``MLFLOW_*_URI``
    variables ``mlflow.set_tracking_uri`` exports) back as they were: the registry code the
    commands share makes the project's store MLflow's default, which is right for a command
    process and wrong for a notebook that has its own MLflow work."""
    import mlflow

    from reprotrain.tracking.process import scoped_environ

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    tracking_uri, registry_uri = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    # Outermost, so the variables are put back after set_*_uri below has exported its own.
    with scoped_environ(**{k: os.environ.get(k) for k in names}):
        try:
            yield
        finally:
            mlflow.set_tracking_uri(tracking_uri)
            mlflow.set_registry_uri(registry_uri)


#: The model ``Project.predict`` uses by default, by ``data.kind``.
KIND_MODELS = {"table": paths.TABLE_MODEL, "series": paths.SERIES_MODEL}


@dataclass(frozen=True)
class Reproduction:
    """What :meth:`Project.reproduce` found: ``identical`` metrics or not, the side-by-side
    table, and the id of the new run."""

    identical: bool
    report: str
    run_id: str


class Project:
    """A reprotrain project: the folder holding ``dvc.yaml`` and ``params.yaml``.

    ``path`` may be any folder inside it (like ``git``, the root is found upwards);
    default: the working directory.
    """

    def __init__(self, path: str | Path = ".") -> None:
        root = paths.project_root(Path(path))
        if not (root / "dvc.yaml").is_file():
            raise ConfigError(
                f"{Path(path).resolve()} is not inside a reprotrain project (no dvc.yaml in it "
                "or above it): pass the project folder"
            )
        self.root = root

    def __repr__(self) -> str:
        return f"Project({str(self.root)!r})"

    # ------------------------------------------------------------------ configuration

    @property
    def params(self) -> Params:
        """``params.yaml``, validated (read on every access: it may have changed)."""
        return load_params(self.root / "params.yaml")

    def env(self) -> dict[str, str]:
        """The environment of the processes this project starts: the caller's, with this
        interpreter's ``bin/`` first on PATH (the stages call ``python`` and ``dvc``) and
        the stage-process defaults of :data:`reprotrain.cli.PROCESS_ENV`."""
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        return cli.configure_process(env)

    def store_uri(self) -> str:
        """The MLflow store the pipeline writes to (``MLFLOW_TRACKING_URI``, else the
        project's ``tracking.store``), as ``python -m reprotrain ui`` shows it."""
        from reprotrain.commands.ui import store_uri

        return store_uri(self.root)

    # ------------------------------------------------------------------ the pipeline

    def repro(
        self, *targets: str, force: bool = False, echo: bool = False, **overrides: Any
    ) -> dict[str, Any]:
        """Run the pipeline and return :meth:`metrics`.

        Without ``overrides``: ``dvc repro [--force] [targets]``. With them: ``dvc exp run``
        with one ``-S key=value`` per override (``repro(**{"finetune.learning_rate": 1e-4})``
        or ``repro(finetune__learning_rate=1e-4)``): a DVC experiment, which also writes the
        values into the workspace's ``params.yaml``, as on the command line. ``echo`` copies
        the processes' output to ``sys.stderr`` (otherwise only a stage progress bar shows).
        A failed stage raises :class:`PipelineError` with its one-line error.
        """
        from reprotrain.tracking import lineage

        verb = ["exp", "run", *override_args(overrides)] if overrides else ["repro"]
        cmd = [sys.executable, "-m", "dvc", *verb]
        cmd += (["--force"] if force else []) + list(targets)
        stages = len(lineage.read_yaml(self.root / "dvc.yaml")["stages"])
        run_dvc(cmd, self.root, self.env(), stages=stages, echo=echo)
        return self.metrics()

    def metrics(self) -> dict[str, Any]:
        """Every ``metrics/<name>.json`` of the workspace by name (``evaluate``,
        ``train_head``, ``promotion``, ...), as the last run left them."""
        out: dict[str, Any] = {}
        for path in sorted((self.root / paths.METRICS_DIR).glob("*.json")):
            if not path.name.endswith(".run.json"):  # run sidecars, not metrics
                out[path.stem] = json.loads(path.read_text(encoding="utf-8"))
        return out

    # ------------------------------------------------------------------ MLflow

    def runs(self, kind: str = "pipeline") -> Any:
        """The project's MLflow runs as a pandas DataFrame, newest first: one row per
        pipeline execution (``kind="pipeline"``, the UI's top-level rows) or per stage run
        (``"stage"``). Columns as ``mlflow.search_runs`` names them: ``run_id``,
        ``run_name``, ``status``, ``start_time``, ``end_time``, ``metrics.*``, ``params.*``,
        ``tags.*``."""
        import mlflow
        import pandas as pd

        from reprotrain import tracking

        if kind not in ("pipeline", "stage"):
            raise ConfigError(f"runs(kind={kind!r}): expected 'pipeline' or 'stage'")
        uri = self.store_uri()
        tracking.check_reachable(uri)
        client = mlflow.MlflowClient(uri)
        experiment = client.get_experiment_by_name(self.params.tracking.experiment)
        if experiment is None:
            return pd.DataFrame(columns=["run_id", "run_name", "status"])
        found = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`{tracking.TAG_ROLE}` = '{kind}'",
            order_by=["attributes.start_time DESC"],
            max_results=10_000,
        )
        return pd.DataFrame([_run_row(r) for r in found])

    def promote(self, version: int, reason: str, model: str | None = None) -> dict[str, Any]:
        """Move the ``champion`` alias of ``model`` (default ``tracking.registered_model``)
        to ``version``, audited like ``python -m reprotrain promote``; returns what moved
        (``champion``, ``previous``, ``by``, ``reason``)."""
        from reprotrain import tracking
        from reprotrain.tracking import registry

        uri = self.store_uri()
        tracking.check_reachable(uri)
        name = model or self.params.tracking.registered_model
        by = registry.current_user(self.root)
        with _mlflow_globals_kept():
            return registry.promote(uri, name, int(version), reason, by=by)

    def champion(self, model: str | None = None) -> int | None:
        """The version ``champion`` points at (None: no champion yet)."""
        from reprotrain import tracking
        from reprotrain.tracking import registry, store

        uri = self.store_uri()
        tracking.check_reachable(uri)
        name = model or self.params.tracking.registered_model
        with _mlflow_globals_kept():
            client = store.client(uri)
            return registry.champion_version(client, name, uri, "no champion read")

    def rollback(self, reason: str, model: str | None = None) -> dict[str, Any]:
        """Move ``champion`` back to the previous champion (``promote --rollback``)."""
        from reprotrain import tracking
        from reprotrain.tracking import registry

        uri = self.store_uri()
        tracking.check_reachable(uri)
        name = model or self.params.tracking.registered_model
        with _mlflow_globals_kept():
            return registry.rollback(uri, name, reason, by=registry.current_user(self.root))

    def reproduce(self, run_id: str, workdir: str | Path | None = None) -> Reproduction:
        """Rerun an MLflow run (a stage run or a pipeline row) from its commit and data in
        a new git work tree, as ``python -m reprotrain reproduce``, and compare metrics."""
        from reprotrain.commands import reproduce

        with _mlflow_globals_kept():
            code, report, new_id = reproduce.reproduce(
                run_id, self.root, Path(workdir) if workdir else None
            )
        return Reproduction(identical=code == 0, report=report, run_id=new_id)

    # ------------------------------------------------------------------ inference

    def predict(
        self,
        inputs: Any,
        model: str | Path | None = None,
        *,
        top_k: int = 3,
        batch_size: int = 32,
    ) -> Any:
        """Predict with ``model`` (a ``.keras`` path relative to the project, or
        ``models:/NAME@alias`` / ``models:/NAME/VERSION``; default: the project's kind's
        model), as ``python -m reprotrain predict`` does, dispatched by the model's kind.
        A pandas DataFrame:

        - images: ``inputs`` files and folders (walked recursively); one row per file:
          ``path``, ``label``, ``confidence``, ``top_k`` (``{label, probability}`` list),
          ``error`` (why a file could not be used; the others are still predicted).
        - table: ``inputs`` a DataFrame of rows or CSV/Parquet paths; one row per input row:
          ``source``, ``row``, ``label``, ``confidence``, ``probabilities``, ``error``.
        - series: ``inputs`` the history (a DataFrame or a file); one row per step:
          ``step``, ``time``, ``forecast``, ``lower_<L>``/``upper_<L>``.
        """
        import pandas as pd

        from reprotrain.commands import labels as class_labels
        from reprotrain.commands import predict as cmd
        from reprotrain.models.loading import load_model

        spec = str(model or KIND_MODELS.get(self.params.data.kind, paths.FINETUNED_MODEL))
        registry_uri = spec.startswith(cmd.REGISTRY_PREFIXES)
        if registry_uri:
            with _mlflow_globals_kept():
                path = cmd.model_file(spec, self.root)
        else:
            path = cmd.model_file(str(self.root / spec), self.root)
        kind = cmd.model_kind(path)
        if kind == "table":
            return pd.DataFrame(self._predict_rows(spec, path, inputs, batch_size))
        if kind == "series":
            from reprotrain.series.predict import forecast

            history = self._path(inputs) if isinstance(inputs, str | Path) else inputs
            return pd.DataFrame(forecast(path, history)[0])
        keras_model = load_model(path, hint="pass a .keras model saved by reprotrain")
        n = int(keras_model.output_shape[-1])
        labels = class_labels.class_names(*self._labels_source(spec, registry_uri, path, n))
        batch = [inputs] if isinstance(inputs, str | Path) else list(inputs)
        found = cmd.collect_inputs([self._path(p) for p in batch])
        results = cmd.predict_files(
            keras_model,
            found.files,
            labels,
            batch_size=batch_size,
            top_k=top_k,
            normalization=self._normalization(path),
        )
        results += [{"path": p, "error": "no such file or directory"} for p in found.missing]
        columns = ["path", "label", "confidence", "top_k", "error"]
        return pd.DataFrame([{c: r.get(c) for c in columns} for r in results], columns=columns)

    def _predict_rows(self, spec: str, path: Path, inputs: Any, batch_size: int) -> list:
        """A table model's answers for a DataFrame or CSV/Parquet files (the columns and
        classes: the registered model's, else this project's prepared schema)."""
        from reprotrain.tables import predict as rows

        schema = self.root / paths.TABLE_PREPARED / "schema.json"
        labels, inputs_spec = rows.labels_and_inputs(spec, path, schema)
        if hasattr(inputs, "columns"):  # a DataFrame
            frame = rows.dataframe_rows(inputs)
        else:
            batch = [inputs] if isinstance(inputs, str | Path) else list(inputs)
            frame = rows.read_rows([str(self._path(p)) for p in batch], [], inputs_spec)
        return rows.predict_frame(path, labels, inputs_spec, frame, batch_size)

    def _path(self, p: str | Path) -> Path:
        """A user's path: as given if absolute or existing, else relative to the project."""
        p = Path(p)
        return p if p.is_absolute() or p.exists() else self.root / p

    def _labels_source(
        self, spec: str, registry_uri: bool, path: Path, n: int
    ) -> tuple[Path | None, Path, int, list[str] | None]:
        """``class_names``' arguments: the registered names for a ``models:/`` URI; for a
        file, ``class_names`` finds the labels of the model's own project (``path`` is
        absolute, so not the working directory's) and checks they are the ones it was
        trained on."""
        if registry_uri:
            from reprotrain.tracking import registry

            with _mlflow_globals_kept():
                return None, path, n, registry.resolve_labels(spec, root=self.root)
        return None, path, n, None

    def _normalization(self, model_path: Path) -> Any:
        """The training data's normalisation: the model's own ``stats.json``, else this
        project's ``data/prepared/stats.json``, through ``commands.normalization``."""
        from reprotrain.commands import normalization

        project = self.root / paths.PREPARED_DIR / "stats.json"
        for stats in (model_path.parent / "stats.json", project):
            # The command's own reader of prepare's record (no second copy of it here).
            norm = normalization.recorded_normalization(stats)
            if norm is not None:
                return normalization.Normalization(
                    norm.get("max_side"), int(norm["jpeg_quality"]), str(stats)
                )
        return normalization.resolve_normalization("keep", None, model_path)


def _run_row(run: Any) -> dict[str, Any]:
    """One MLflow run as a flat row, with ``mlflow.search_runs``' column names."""
    import pandas as pd

    info, data = run.info, run.data
    row: dict[str, Any] = {
        "run_id": info.run_id,
        "run_name": info.run_name,
        "status": info.status,
        "start_time": pd.to_datetime(info.start_time, unit="ms", utc=True),
        "end_time": pd.to_datetime(info.end_time, unit="ms", utc=True) if info.end_time else None,
    }
    row.update({f"metrics.{k}": v for k, v in sorted(data.metrics.items())})
    row.update({f"params.{k}": v for k, v in sorted(data.params.items())})
    row.update({f"tags.{k}": v for k, v in sorted(data.tags.items())})
    return row
