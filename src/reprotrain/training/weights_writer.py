"""The per-epoch backup's weights file, written without Keras' object-graph walk each epoch.

``model.save_weights`` finds what to save by walking the model's attributes (``dir`` and
``getattr`` over every layer and the optimizer, and, in Keras 3.15, re-creating a reference
``Layer`` per visited object because its skip-list cache misses); for a small model that
walk is most of the backup's time (measured on the co2 LSTM: ``benchmarks/
series_training.py``'s ``backup_write_ms``). The objects and the paths it finds do not
change between the epochs of one run, so :class:`WeightsWriter` records them the first time
(running Keras' own walk against a recording store) and then writes every epoch by calling
the same ``save_own_variables`` of the same objects, in the same order, into Keras' own
``H5IOStore``: the same file, read back by ``model.load_weights``, without the walk.

Where the recording cannot be trusted (another Keras whose saver is laid out otherwise, a
model whose variables changed since), it falls back to ``model.save_weights``.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: Keras' function that calls ``save_own_variables(store.make(path, metadata))`` per object.
_SAVE_STATE = "_save_state"


@dataclass(frozen=True)
class _Entry:
    path: str
    metadata: dict[str, Any] | None
    saveable: Any


def _saving_lib() -> Any:
    from keras.src.saving import saving_lib

    return saving_lib


def _signature(model: Any) -> tuple[int, int, int]:
    """What must not change for a recorded plan to stay valid: the model, its variables and
    the optimizer's (built at the first train step, so a plan is recorded after it)."""
    optimizer = getattr(model, "optimizer", None)
    n_opt = len(optimizer.variables) if optimizer is not None else -1
    return id(model), len(model.variables), n_opt


def record_plan(model: Any) -> list[_Entry] | None:
    """The (path, metadata, object) triples ``model.save_weights`` writes, in its order, or
    None when Keras' saver is not laid out as expected here."""
    saving_lib = _saving_lib()
    entries: list[_Entry] = []
    ok = True

    class Recorder(saving_lib.H5IOStore):  # isinstance-checked by Keras' _save_state
        def __init__(self) -> None:  # no file: only records
            pass

        def __bool__(self) -> bool:
            return True

        def make(self, path: str, metadata: dict[str, Any] | None = None) -> Any:
            nonlocal ok
            caller = sys._getframe(1)
            saveable = caller.f_locals.get("saveable")
            if caller.f_code.co_name != _SAVE_STATE or saveable is None:
                ok = False
            entries.append(_Entry(path, metadata, saveable))
            return self

        def __setitem__(self, key: str, value: Any) -> None:
            pass

        def close(self) -> None:
            pass

    try:
        saving_lib._save_state(
            model,
            weights_store=Recorder(),
            assets_store=None,
            inner_path="",
            visited_saveables=set(),
        )
    except (AttributeError, TypeError, ValueError) as exc:
        logger.debug("weights writer: Keras' saver is not as expected (%s)", exc)
        return None
    return entries if ok else None


class WeightsWriter:
    """Writes ``model``'s weights file (what ``model.save_weights`` writes) from a plan
    recorded on first use; see the module docstring."""

    def __init__(self) -> None:
        self._plan: list[_Entry] | None = None
        self._signature: tuple[int, int, int] | None = None
        self.fallback = False  # True: the plan could not be recorded, save_weights is used

    def save(self, model: Any, path: Path) -> None:
        """Write ``model``'s weights and optimizer state to ``path`` (``*.weights.h5``)."""
        signature = _signature(model)
        if signature != self._signature:
            self._plan, self._signature = record_plan(model), signature
            self.fallback = self._plan is None
        if self._plan is None:
            model.save_weights(path)
            return
        store = _saving_lib().H5IOStore(Path(path), mode="w")
        try:
            for entry in self._plan:
                entry.saveable.save_own_variables(store.make(entry.path, metadata=entry.metadata))
        finally:
            store.close()
