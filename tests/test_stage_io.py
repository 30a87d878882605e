"""stage_io's pure parts (its savers and loaders run in the training and stage tests)."""

from __future__ import annotations

from reprotrain.stage_io import kept_line


def test_the_saved_line_names_what_the_task_measures() -> None:
    classifier = {"val_accuracy": 0.93, "best_val_accuracy": 0.95, "val_loss": 0.2}
    assert kept_line(classifier, 3) == "val_accuracy=0.9300 (epoch 3), best val_accuracy=0.9500"
    # A forecaster has no accuracy: its line is the kept epoch's val_loss, never "nan".
    assert kept_line({"val_loss": 0.01234}, 46) == "val_loss=0.01234 (epoch 46, the lowest)"
