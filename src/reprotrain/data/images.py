"""THE image normalisation: file bytes → the exact uint8 RGB pixels the model sees.

prepare, predict and the served model all call it (train/serve parity is tested, not
hoped for): :func:`normalize` (PIL decode, EXIF orientation, any mode → 8-bit RGB,
downscale to ``max_side``, re-encode as the JPEG prepare stores) then
:func:`decode_and_resize` (the TensorFlow decode and antialiased resize the tf.data
pipeline applies to the stored JPEG), rounded to uint8 as the pipeline caches it.
:func:`model_pixels` chains both for one file. Importable with PIL, numpy and TensorFlow
only (TensorFlow imported lazily), so a serving container needs nothing else.

Why here and not in tf.data: real folders hold CMYK JPEGs, 16-bit PNGs, palette GIFs,
RGBA screenshots, rotated phone photos (EXIF orientation), zero-byte files and HTML error
pages saved as ``.jpg``. ``tf.io.decode_image`` mishandles several of these (CMYK, 16-bit,
EXIF) or fails mid-epoch. Normalising once at prepare time means the training pipeline only
ever sees clean 8-bit RGB JPEGs, and every file that cannot be used is quarantined with a
reason instead of crashing a run an hour in.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: Formats accepted (Pillow's names). Others (PSD, ICO, EPS, ...) are quarantined.
SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF", "MPO"})

# A decompression bomb (e.g. a 100k × 100k PNG) must be quarantined, not exhaust memory.
Image.MAX_IMAGE_PIXELS = 120_000_000


@dataclass(frozen=True)
class Normalized:
    """A usable image: JPEG bytes of the (possibly downscaled) RGB image and its size."""

    jpeg: bytes
    height: int
    width: int
    original_mode: str
    original_format: str


@dataclass(frozen=True)
class Rejected:
    """A file that cannot be used, and the reason shown in ``quarantine.csv``."""

    reason: str


def normalize(data: bytes, max_side: int | None, quality: int) -> Normalized | Rejected:
    """Decode ``data`` fully, fix orientation and mode, downscale, re-encode as JPEG."""
    if not data:
        return Rejected("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format or "unknown"
            if fmt not in SUPPORTED_FORMATS:
                return Rejected(f"unsupported image format {fmt}")
            img.load()  # full decode: truncated/corrupt data fails here, not at training time
            mode = img.mode
            img = ImageOps.exif_transpose(img)
            rgb = to_rgb8(img)
    except UnidentifiedImageError:
        return Rejected("not an image (unrecognised file content)")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return Rejected("image too large (decompression bomb guard)")
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        return Rejected(f"corrupt or truncated image ({_one_line(exc)})")
    if rgb.width < 1 or rgb.height < 1:
        return Rejected("image has no pixels")
    if max_side and max(rgb.size) > max_side:
        scale = max_side / max(rgb.size)
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        rgb = rgb.resize(size, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=quality, optimize=False, subsampling=0)
    return Normalized(out.getvalue(), rgb.height, rgb.width, mode, fmt)


def to_rgb8(img: Image.Image) -> Image.Image:
    """Any Pillow mode → 8-bit RGB.

    Transparency is composited on white (not dropped to black: a transparent PNG background
    would otherwise become a black one). 16/32-bit integer and float images are scaled by
    their bit depth, not clipped (clipping a 16-bit image to 255 makes it all white).
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img)
        if img.mode == "F":
            lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
            scaled = (arr - lo) / (hi - lo or 1.0) * 255.0
        else:
            bits = 16 if img.mode.startswith("I;16") or arr.max(initial=0) < 65536 else 32
            scaled = arr.astype(np.float64) / (2**bits - 1) * 255.0
        return Image.fromarray(np.clip(scaled + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode == "RGB":
        return img
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def _one_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


# --------------------------------------------------------------------------- model pixels


def decode_and_resize(encoded: Any, image_size: int) -> Any:
    """JPEG/PNG bytes → float32 ``[S, S, 3]`` in 0..255, resized with antialiasing.

    Values stay in 0..255 because the model applies ``mobilenet_v2.preprocess_input``
    itself: a saved model then works on raw pixels, wherever it is used. The tf.data
    pipeline maps it over TFRecord images; eager and in-graph results are identical
    (tested), so :func:`model_pixels` can call it eagerly.
    """
    import tensorflow as tf

    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image = tf.image.resize(image, (image_size, image_size), antialias=True)
    image = tf.clip_by_value(image, 0.0, 255.0)
    image.set_shape((image_size, image_size, 3))
    return image


def to_uint8(image: Any) -> Any:
    """Float 0..255 → uint8, rounded: what the pipeline caches and the model is fed."""
    import tensorflow as tf

    return tf.cast(tf.round(image), tf.uint8)


def model_pixels(
    data: bytes, image_size: int, max_side: int | None, quality: int
) -> np.ndarray | Rejected:
    """A file's bytes → the uint8 ``[S, S, 3]`` pixels the model saw for it in training.

    ``max_side`` and ``quality`` must be the training data's ``prepare.max_side`` and
    ``prepare.jpeg_quality`` (prepare records them in ``stats.json``): the stored JPEG is
    part of what the model learnt from, so serving re-creates it byte for byte.
    """
    result = normalize(data, max_side, quality)
    if isinstance(result, Rejected):
        return result
    import tensorflow as tf

    return to_uint8(decode_and_resize(tf.constant(result.jpeg), image_size)).numpy()
