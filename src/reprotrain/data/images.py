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

Decode memory is bounded by about the full-size image Pillow decodes plus its 8-bit copy,
whatever the source's depth (prepare decodes one image per core, predict one per thread,
the server one per request): the orientation is applied in place, 16/32-bit and float
images are scaled to 8 bits a strip of rows at a time, and grayscale stays one byte per
pixel until after the downscale. A 4000×4000 16-bit PNG peaked at +460 MB on the former
whole-image float64 path, +56 MB now (an 8-bit RGB one: +124 → +69 MB). None of this
changes a pixel: the output is byte-identical to converting the whole image at once
(tested).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: Formats accepted (Pillow's names). Others (PSD, ICO, EPS, ...) are quarantined.
SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF", "MPO"})

# A decompression bomb (e.g. a 100k × 100k PNG) must be quarantined, not exhaust memory.
Image.MAX_IMAGE_PIXELS = 120_000_000

#: Pillow modes deeper than 8 bits per channel: scaled to 8-bit grayscale strip by strip.
DEEP_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
#: Pixels scaled per strip of a deep image: its float64 working copy stays ~2 MB.
STRIP_PIXELS = 1 << 18


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
            ImageOps.exif_transpose(img, in_place=True)  # in place: no full-size copy
            img8 = to_8bit(img)
    except UnidentifiedImageError:
        return Rejected("not an image (unrecognised file content)")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return Rejected("image too large (decompression bomb guard)")
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        return Rejected(f"corrupt or truncated image ({_one_line(exc)})")
    if img8.width < 1 or img8.height < 1:
        return Rejected("image has no pixels")
    if max_side and max(img8.size) > max_side:
        scale = max_side / max(img8.size)
        size = (max(1, round(img8.width * scale)), max(1, round(img8.height * scale)))
        img8 = img8.resize(size, Image.Resampling.LANCZOS)
    rgb = img8 if img8.mode == "RGB" else img8.convert("RGB")
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=quality, optimize=False, subsampling=0)
    return Normalized(out.getvalue(), rgb.height, rgb.width, mode, fmt)


def to_rgb8(img: Image.Image) -> Image.Image:
    """Any Pillow mode → 8-bit RGB (:func:`to_8bit`, then grayscale to RGB)."""
    img8 = to_8bit(img)
    return img8 if img8.mode == "RGB" else img8.convert("RGB")


def to_8bit(img: Image.Image) -> Image.Image:
    """Any Pillow mode → 8-bit ``L`` (grayscale and deeper-than-8-bit sources) or ``RGB``.

    Grayscale stays ``L`` (one byte per pixel, a quarter of Pillow's RGB) so the caller can
    downscale before converting: resizing ``L`` then converting equals converting then
    resizing, byte for byte. Transparency is composited on white (not dropped to black: a
    transparent PNG background would otherwise become a black one). 16/32-bit integer and
    float images are scaled by their bit depth, not clipped (clipping a 16-bit image to 255
    makes it all white).
    """
    if img.mode in DEEP_MODES:
        return _deep_to_l(img)
    if img.mode == "L":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode == "RGB":
        return img
    return img.convert("RGB")  # 1, P, CMYK, YCbCr, LAB, HSV


def _strips(img: Image.Image) -> Iterator[np.ndarray]:
    """The image's pixels as arrays of whole rows, :data:`STRIP_PIXELS` at a time."""
    rows = max(1, STRIP_PIXELS // max(1, img.width))
    for top in range(0, img.height, rows):
        yield np.asarray(img.crop((0, top, img.width, min(img.height, top + rows))))


def _deep_to_l(img: Image.Image) -> Image.Image:
    """A 16/32-bit integer or float image → 8-bit ``L``, scaled by its bit depth (integers)
    or its value range (floats), one strip of rows at a time.

    Why strips: the same formula on the whole array made float64 copies of it, 8 bytes a
    pixel each (+428 MB at 4000×4000 for a 31 KB PNG); per strip the working copies are a
    few MB and the 8-bit result is the only full-size array. Elementwise, so the pixels are
    the same as for the whole array.
    """
    if img.mode == "F":
        with warnings.catch_warnings():  # an all-NaN strip; the image's range ignores it
            warnings.simplefilter("ignore", RuntimeWarning)
            lo = float(np.nanmin([np.nanmin(s) for s in _strips(img)]))
            hi = float(np.nanmax([np.nanmax(s) for s in _strips(img)]))
    elif img.mode.startswith("I;16"):
        bits = 16
    else:
        bits = 16 if max((int(s.max(initial=0)) for s in _strips(img)), default=0) < 65536 else 32
    out = np.empty((img.height, img.width), dtype=np.uint8)
    top = 0
    for arr in _strips(img):
        if img.mode == "F":
            scaled = (arr - lo) / (hi - lo or 1.0) * 255.0
        else:
            scaled = arr.astype(np.float64) / (2**bits - 1) * 255.0
        # NaN pixels (float images) become 0, as the cast made them, without its warning.
        out[top : top + len(arr)] = np.clip(np.nan_to_num(scaled + 0.5), 0, 255).astype(np.uint8)
        top += len(arr)
    return Image.fromarray(out, "L")


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
