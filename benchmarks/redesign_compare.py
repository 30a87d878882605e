"""What differs between two runs' outputs, key by key, and why (``benchmarks/redesign.py``).

Why apart from the runner: the comparison is pure (files in, a verdict out) and the notes in
:data:`EXPLAINED` are the findings, which a reader checks without the clone-and-run code.
"""

from __future__ import annotations

import csv
import fnmatch
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

#: Why a key may differ between the two commits, by ``fnmatch`` pattern over
#: ``file:dotted.key`` (``splits.csv`` for the ledger); the first match explains it. Found by
#: reading both runs' outputs and ``git log -G`` over the range; anything not matched is
#: reported as unexplained (``"explained": null``).
EXPLAINED: dict[str, str] = {
    "evaluate.run:pipeline_id": "a hash of the git commit, params.yaml, dvc.yaml and the "
    "source files (lineage.pipeline_key): different commits, different id by design (the same "
    "in every round of one commit)",
    "evaluate.run:*": "MLflow run ids: new random ids every run (they differ between two "
    "runs of one commit too)",
    "export:*latency_ms": "wall-clock latency under the machine's load at that moment, not "
    "behaviour (differs between rounds of one commit too)",
    "export:formats.saved_model.size_bytes": "the SavedModel's graph and checkpoint carry "
    "per-process object names and a fingerprint, so its size moves by a few bytes between two "
    "runs of one commit too; every score of it is identical",
    "finetune:vs_head.*": "new report of issue 27 (aa406dd: what fine-tuning added over the "
    "head, a paired test); before says the same as kept_start_weights: true, and the "
    "evaluated model's metrics are identical",
    "promotion:mode": "new key of issue 23 (cda901b: nothing promoted before review); "
    "promoted, alias, version and reason are identical",
    "promotion:proposed": "new key of issue 23 (cda901b), see promotion:mode",
    "splits.csv": "88b2e6e added the ledger's present column (a removed image keeps its row); "
    "the images and their splits are identical",
}


def leaves(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted.key, value)`` for every leaf of a nested mapping (lists are leaves)."""
    if isinstance(tree, Mapping) and tree:
        for key, value in tree.items():
            yield from leaves(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1], tree


def read_metrics(run: Path) -> dict[str, Any]:
    """Every metric of a run as ``file:dotted.key`` (``metrics/*.json``)."""
    found: dict[str, Any] = {}
    for path in sorted((run / "metrics").glob("*.json")):
        for key, value in leaves(json.loads(path.read_text())):
            found[f"{path.stem}:{key}"] = value
    return found


def read_ledger(run: Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    """The split ledger's columns and its rows by their first column (the image's id)."""
    with (run / "splits.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        columns = list(reader.fieldnames or [])
    return columns, {r[columns[0]]: r for r in rows}


def explain(key: str) -> str | None:
    return next((note for pat, note in EXPLAINED.items() if fnmatch.fnmatchcase(key, pat)), None)


def compare_metrics(before: Path, after: Path) -> dict[str, Any]:
    """Identical / different per key; different keys carry both values and any note."""
    old, new = read_metrics(before), read_metrics(after)
    identical, different = [], {}
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if a == b:
            identical.append(key)
        else:
            different[key] = {"before": a, "after": b, "explained": explain(key)}
    return {"identical": identical, "different": different}


def compare_ledgers(before: Path, after: Path) -> dict[str, Any]:
    """The ledgers on the columns both have: same images, same splits; extra columns named."""
    (old_cols, old), (new_cols, new) = read_ledger(before), read_ledger(after)
    shared = [c for c in old_cols if c in new_cols]
    differing = [k for k in old.keys() & new.keys() if any(old[k][c] != new[k][c] for c in shared)]
    return {
        "rows": [len(old), len(new)],
        "only_before": len(old.keys() - new.keys()),
        "only_after": len(new.keys() - old.keys()),
        "rows_differing_on_shared_columns": len(differing),
        "shared_columns": shared,
        "columns_only_after": [c for c in new_cols if c not in old_cols],
        "columns_only_before": [c for c in old_cols if c not in new_cols],
        "identical_on_shared_columns": not differing and old.keys() == new.keys(),
        "explained": explain("splits.csv"),
    }
