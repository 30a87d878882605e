"""train (data.kind: series): fit the forecaster on the train period's windows.

Reads data/series/prepared (windows, stats.json), writes models/series/model.keras, its
forecast config (model.forecast.json: frequency, columns, the split-conformal interval
widths from the val period), the history, metrics/train.json, TensorBoard logs and the run
sidecar. Training is the image stages' (``training.train``: fit or the custom loop,
clip_norm, early stopping on val_loss, resume after a kill, determinism on CPU) with a
regression loss (``series.loss``).
"""

from __future__ import annotations

import logging

from reprotrain import dag, paths, runtime, stage_io, training
from reprotrain.cli import run_main
from reprotrain.config import load_params
from reprotrain.errors import DataError
from reprotrain.series import serving, windows
from reprotrain.series import training as series_training

SPEC = dag.stage("train", "series")
logger = logging.getLogger("reprotrain.stages.series.train")


def main() -> int:
    params = load_params()
    cfg = params.series
    info = runtime.configure(params.runtime, params.seed)
    prepared = paths.SERIES_PREPARED
    meta = windows.load_meta(prepared)
    train, val = windows.load_windows(prepared, "train"), windows.load_windows(prepared, "val")
    for split, w in (("train", train), ("val", val)):
        if len(w) == 0:
            raise DataError(
                f"the {split} period has no complete window of {meta.window} + {meta.horizon} "
                f"steps: lower series.window/horizon or raise series.{split}_fraction"
            )
    batches = dict(batch_size=cfg.batch_size, seed=params.seed)
    train_ds = series_training.in_memory_dataset(train.x, train.y, shuffle=True, **batches)
    val_ds = series_training.in_memory_dataset(val.x, val.y, shuffle=False, **batches)
    digest = series_training.prepared_digest(prepared)
    with stage_io.training_stage(SPEC, params, info, digests=[digest]) as stage:
        with info.strategy.scope():
            model = series_training.build_model(cfg, meta, train)
        stage.run.set_tags({"reprotrain.series.model": cfg.model})
        result = training.train(
            model, train_ds, val_ds, cfg, info, stage.fit_options(), regression=cfg.loss
        )
        forecast = series_training.forecast_config(model, meta, val, cfg.intervals)
        config_file = serving.config_path(paths.SERIES_MODEL)
        forecast.write(config_file)
        extra = {
            "train_windows": len(train),
            "val_windows": len(val),
            "params": model.count_params(),
        }
        stage.finish(model, result, extra)
        stage.run.log_artifact(config_file)
    return 0


if __name__ == "__main__":
    run_main(main)
