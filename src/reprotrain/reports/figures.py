"""The model card's own figures: the reliability diagram and Grad-CAM on the worst mistakes.

(The confusion matrix is ``evaluation.plots``'; the card reuses it.)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reprotrain.evaluation.metrics import reliability_bins
from reprotrain.evaluation.plots import new_figure, save_png


def plot_reliability(y_true: np.ndarray, probs: np.ndarray, path: Path, bins: int = 10) -> Path:
    """Accuracy against confidence per bin; the diagonal is perfect calibration."""
    rows = [r for r in reliability_bins(y_true, probs, bins) if r["count"]]
    fig = new_figure(4.5, 4.5)
    ax = fig.add_subplot()
    width = 1.0 / bins
    ax.bar(
        [r["lo"] for r in rows],
        [r["accuracy"] for r in rows],
        width=width,
        align="edge",
        edgecolor="black",
        alpha=0.7,
        label="accuracy",
    )
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    for r in rows:
        ax.text(r["lo"] + width / 2, 0.02, str(r["count"]), ha="center", fontsize=7)
    ax.set(
        xlabel="confidence (top-1 probability)",
        ylabel="accuracy",
        xlim=(0, 1),
        ylim=(0, 1),
        title="Reliability (test split; n per bin)",
    )
    ax.legend(loc="upper left", fontsize=8)
    return save_png(fig, path)


def _nested_base(model: Any, name: str) -> Any:
    try:
        layer = model.get_layer(name)
    except ValueError:
        return None
    return layer if hasattr(layer, "layers") else None


def grad_cams(
    model: Any,
    images: np.ndarray,
    class_indices: Sequence[int] | None = None,
    base_name: str = "base",
) -> np.ndarray:
    """Grad-CAM heat maps ``[n, h, w]`` in 0..1 on the last convolutional feature map.

    For the transfer model that map is the output of the nested backbone layer
    (``base_name``), so the outer model is replayed layer by layer with the tape watching the
    base's output; for any other model, the last layer with a 4-D output is used. Each map
    is for ``class_indices[i]`` (default: the predicted class).

    One forward and backward pass for the whole batch: in inference mode the images do not
    interact, so the gradient of the summed scores with respect to image i's feature map is
    image i's own. (An eager pass per image cost ~0.9 s of the evaluate stage each.)
    """
    import keras
    import tensorflow as tf

    x = tf.constant(np.asarray(images, dtype=np.float32))
    base = _nested_base(model, base_name)
    with tf.GradientTape() as tape:
        if base is not None:
            h = x
            for layer in model.layers:
                if isinstance(layer, keras.layers.InputLayer):
                    continue
                h = layer(h, training=False)
                if layer is base:
                    features = h
                    tape.watch(features)
            preds = h
        else:
            conv = [layer for layer in model.layers if len(layer.output.shape) == 4][-1]
            sub = keras.Model(model.inputs, [conv.output, model.outputs[0]])
            features, preds = sub(x, training=False)
            tape.watch(features)
        if class_indices is None:
            index = tf.argmax(preds, axis=1, output_type=tf.int32)
        else:
            index = tf.constant(np.asarray(class_indices, dtype=np.int32))
        score = tf.reduce_sum(tf.gather(preds, index, axis=1, batch_dims=1))
    grads = tape.gradient(score, features)
    weights = tf.reduce_mean(grads, axis=(1, 2))  # one weight per image and channel
    cams = tf.nn.relu(tf.reduce_sum(features * weights[:, tf.newaxis, tf.newaxis, :], axis=-1))
    cams = cams.numpy().astype(np.float64)
    top = cams.max(axis=(1, 2), keepdims=True)
    return np.divide(cams, top, out=cams.copy(), where=top > 0)


def grad_cam(
    model: Any, image: np.ndarray, class_index: int | None = None, base_name: str = "base"
) -> np.ndarray:
    """One image's Grad-CAM heat map ``[h, w]`` (:func:`grad_cams` of a batch of one)."""
    indices = None if class_index is None else [int(class_index)]
    return grad_cams(model, np.asarray(image)[np.newaxis], indices, base_name)[0]


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The heat map upsampled to the image (bilinear), coloured (jet) and blended: uint8."""
    from matplotlib import colormaps
    from PIL import Image

    img = np.asarray(image, dtype=np.float32)
    h, w = img.shape[:2]
    up = Image.fromarray((np.clip(heat, 0, 1) * 255).astype(np.uint8)).resize(
        (w, h), Image.Resampling.BILINEAR
    )
    colour = colormaps["jet"](np.asarray(up, dtype=np.float32) / 255.0)[..., :3] * 255.0
    return np.clip((1 - alpha) * img + alpha * colour, 0, 255).astype(np.uint8)


def plot_grad_cam(image: np.ndarray, heat: np.ndarray, title: str, path: Path) -> Path:
    """The image beside its Grad-CAM overlay."""
    fig = new_figure(6, 3.3)
    axes = fig.subplots(1, 2)
    axes[0].imshow(np.asarray(image, dtype=np.uint8))
    axes[0].set_title("image", fontsize=8)
    axes[1].imshow(overlay(image, heat))
    axes[1].set_title("Grad-CAM: where the model looked", fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=8)
    return save_png(fig, path)
