"""The hand-written reference: the Keras transfer-learning tutorial, as users write it.

    python benchmarks/reference_script.py DATA_DIR [--test-list FILE] [--out FILE]

``DATA_DIR`` holds train/ and val/ with one folder per class (hymenoptera). What the
tutorial does, unchanged in substance: ``image_dataset_from_directory`` at 224 px, batch 32,
augmentation layers in the model, MobileNetV2 (ImageNet) frozen + a new head for 10 epochs,
then the top layers (from layer 100) fine-tuned at a tenth of the learning rate for 10 more.
No tracking, no caching, no checkpoints: the baseline that ``benchmarks/pipeline.py`` times
the tracked pipeline against. ``--test-list`` (one image path per line) also scores the
images of our test split, so both accuracies are on the same photos.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

IMG = (224, 224)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path)
    ap.add_argument("--test-list", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--epochs", type=int, default=10)
    args = ap.parse_args()
    start = time.perf_counter()
    keras.utils.set_random_seed(42)

    train_ds = keras.utils.image_dataset_from_directory(
        args.data / "train", shuffle=True, batch_size=32, image_size=IMG, seed=42
    )
    val_ds = keras.utils.image_dataset_from_directory(
        args.data / "val", shuffle=False, batch_size=32, image_size=IMG
    )
    class_names = train_ds.class_names
    train_ds = train_ds.prefetch(tf.data.AUTOTUNE)
    val_ds = val_ds.prefetch(tf.data.AUTOTUNE)

    augment = keras.Sequential(
        [keras.layers.RandomFlip("horizontal"), keras.layers.RandomRotation(0.2)]
    )
    base = keras.applications.MobileNetV2(input_shape=(*IMG, 3), include_top=False)
    base.trainable = False
    inputs = keras.Input(shape=(*IMG, 3))
    x = augment(inputs)
    x = keras.applications.mobilenet_v2.preprocess_input(x)
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(len(class_names), activation="softmax")(x)
    model = keras.Model(inputs, outputs)

    lr = 1e-3
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(train_ds, epochs=args.epochs, validation_data=val_ds, verbose=2)

    base.trainable = True
    for layer in base.layers[:100]:
        layer.trainable = False
    model.compile(
        optimizer=keras.optimizers.RMSprop(lr / 10),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(
        train_ds,
        epochs=2 * args.epochs,
        initial_epoch=args.epochs,
        validation_data=val_ds,
        verbose=2,
    )

    _, val_acc = model.evaluate(val_ds, verbose=0)
    result = {"val_accuracy": float(val_acc), "seconds": time.perf_counter() - start}
    if args.test_list:
        paths = [p for p in args.test_list.read_text().splitlines() if p]
        images = np.stack(
            [keras.utils.img_to_array(keras.utils.load_img(p, target_size=IMG)) for p in paths]
        )
        labels = np.array([class_names.index(Path(p).parent.name) for p in paths])
        pred = model.predict(images, batch_size=32, verbose=0).argmax(axis=1)
        result["test_accuracy"] = float((pred == labels).mean())
        result["test_images"] = len(paths)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
