"""The pipeline row: one parent MLflow run per execution of the DVC pipeline.

DVC runs every stage as its own process, so the stages find their common parent run by a
tag, ``reprotrain.pipeline_id`` (:func:`lineage.pipeline_key`). The first stage that runs
creates the parent (all params flattened; named after what distinguishes it: the DVC
experiment name, or the short commit and the params that differ from HEAD's params.yaml,
which its note also lists); later stages of the same execution nest under it. If the newest
parent with that id already holds a run of the same stage, this is a new execution of an
unchanged configuration (``dvc repro -f``) and a new parent is created.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reprotrain.config import Params, flatten, to_dict
from reprotrain.tracking import lineage
from reprotrain.tracking.tags import (
    TAG_COMMIT,
    TAG_EXP,
    TAG_HOST,
    TAG_NOTE,
    TAG_PID,
    TAG_PID_START,
    TAG_PIPELINE,
    TAG_REPRODUCES,
    TAG_ROLE,
    TAG_STAGE,
)

logger = logging.getLogger(__name__)

#: The parent run keeps the exact params.yaml as an artifact (reproduce restores it).
PARAMS_ARTIFACT = "params.yaml"


def param_value(value: Any) -> str:
    """A param as MLflow stores it (JSON for lists and mappings, at most 6000 characters)."""
    text = json.dumps(value) if isinstance(value, dict | list) else str(value)
    return text[:6000]


def pipeline_name(root: Path, commit: str, exp_name: str | None, reproduces: str | None) -> str:
    """What distinguishes this execution: the DVC experiment name, else the short commit and
    the params that differ from HEAD's params.yaml (``a1b2c3d finetune.learning_rate=1e-4``)."""
    if reproduces:
        return f"reproduce {reproduces[:8]}"
    if exp_name:
        return exp_name
    changed = lineage.changed_params(root)
    parts = [commit[:7]] + [f"{k}={new}" for k, (_, new) in changed.items()]
    return " ".join(parts)[:250]


def pipeline_note(root: Path, commit: str) -> str:
    """The pipeline row's note: which params differ from the commit's params.yaml."""
    changed = lineage.changed_params(root)
    if not changed:
        return f"params.yaml as committed in {commit[:7]}."
    rows = [f"- `{k}`: {old} → {new}" for k, (old, new) in changed.items()]
    return f"params.yaml differs from {commit[:7]}:\n" + "\n".join(rows)


def _find_parent(client: Any, exp_id: str, pipeline_id: str, stage: str) -> str | None:
    """The newest parent with ``pipeline_id`` that has no run of ``stage`` yet."""
    parents = client.search_runs(
        [exp_id],
        filter_string=f"tags.`{TAG_PIPELINE}` = '{pipeline_id}' and tags.`{TAG_ROLE}` = 'pipeline'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not parents:
        return None
    parent = parents[0].info.run_id
    siblings = client.search_runs(
        [exp_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent}' and tags.`{TAG_STAGE}` = '{stage}'",
        max_results=1,
    )
    return None if siblings else parent


def open_parent(
    client: Any, exp_id: str, stage: str, params: Params, tags: Mapping[str, str], root: Path
) -> str:
    """Find or create this execution's parent run and mark it RUNNING for the stage."""
    from mlflow.entities import Param, RunTag

    pipeline_id = tags[TAG_PIPELINE]
    parent = _find_parent(client, exp_id, pipeline_id, stage)
    if parent is None:
        commit = tags[TAG_COMMIT]
        name = pipeline_name(root, commit, tags.get(TAG_EXP), tags.get(TAG_REPRODUCES))
        run = client.create_run(
            exp_id,
            run_name=name,
            tags={**tags, TAG_ROLE: "pipeline", TAG_NOTE: pipeline_note(root, commit)},
        )
        parent = run.info.run_id
        flat = {k: param_value(v) for k, v in flatten(to_dict(params)).items()}
        items = [Param(k, v) for k, v in flat.items()]
        for i in range(0, len(items), 100):
            client.log_batch(parent, params=items[i : i + 100])
        if (root / PARAMS_ARTIFACT).is_file():
            client.log_artifact(parent, str(root / PARAMS_ARTIFACT))
        logger.info("MLflow: new pipeline run %s %r (pipeline id %s)", parent, name, pipeline_id)
    else:
        client.update_run(parent, status="RUNNING")
    owner = [RunTag(k, v) for k, v in tags.items() if k in (TAG_HOST, TAG_PID, TAG_PID_START)]
    client.log_batch(parent, tags=[*owner, RunTag(f"reprotrain.run.{stage}", "pending")])
    return parent
