"""train (table kind): the table model, its preprocessing adapted on the train split.

Reads data/table/prepared (train and val rows, schema.json), writes models/table/model.keras
(+ history, TensorBoard logs, metrics/train.json and the MLflow run sidecar). The model takes
the raw columns (reprotrain.tables.model); training is the image stages' (fit or the custom
loop, class weights, resume after a kill, determinism on CPU: reprotrain.training).
"""

from __future__ import annotations

import logging

from reprotrain import dag, paths, runtime, stage_io, training
from reprotrain.cli import run_main
from reprotrain.config import load_params
from reprotrain.tables import inference
from reprotrain.tables import model as table_model
from reprotrain.tables.training import load_train_data, make_dataset

SPEC = dag.stage("train", "table")
logger = logging.getLogger("reprotrain.stages.table.train")


def main() -> int:
    params = load_params()
    dag.check_kind(SPEC, params.data.kind)
    cfg = params.table
    # Seeds, dtype policy and strategy: before any model or dataset is built.
    info = runtime.configure(params.runtime, params.seed)
    data = load_train_data(paths.TABLE_PREPARED, cfg.class_weight)
    with stage_io.training_stage(SPEC, params, info, digests=[data.digest]) as stage:
        with info.strategy.scope():
            model = table_model.build(
                data.spec, len(data.schema.labels), data.train.inputs, cfg, params.model.api
            )
        logger.info(
            "%s: %d inputs (%s), %d params",
            model.name,
            len(data.spec.columns),
            ", ".join(data.spec.columns),
            model.count_params(),
        )
        train, val = (
            make_dataset(
                inference.feed(model, split.inputs, data.spec),
                split.y,
                batch_size=cfg.batch_size,
                shuffle_buffer=params.pipeline.shuffle_buffer if shuffle else 0,
                seed=params.seed,
            )
            for split, shuffle in ((data.train, True), (data.val, False))
        )
        stage.run.set_tags({"reprotrain.table.api": model.name})
        result = training.train(
            model, train, val, cfg, info, stage.fit_options(), class_weight=data.class_weight
        )
        stage.finish(model, result, {"params": model.count_params(), "train_rows": len(data.train)})
    return 0


if __name__ == "__main__":
    run_main(main)
