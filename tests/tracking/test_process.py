"""tracking.process's environment scope: MLflow's knobs set (or unset) for one block."""

from __future__ import annotations

import os

import pytest

from reprotrain.tracking.process import scoped_environ


def test_the_scope_sets_unsets_and_restores_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPROTRAIN_T_SET", "before")
    monkeypatch.delenv("REPROTRAIN_T_NEW", raising=False)
    with pytest.raises(RuntimeError), scoped_environ(REPROTRAIN_T_SET=None, REPROTRAIN_T_NEW="x"):
        assert "REPROTRAIN_T_SET" not in os.environ
        assert os.environ["REPROTRAIN_T_NEW"] == "x"
        raise RuntimeError  # restored on the way out of a failing block too
    assert os.environ["REPROTRAIN_T_SET"] == "before"
    assert "REPROTRAIN_T_NEW" not in os.environ
