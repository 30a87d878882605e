"""Decoding and normalisation of the file kinds real folders contain."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from reprotrain.data.images import Normalized, Rejected, normalize


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rgb(size: tuple[int, int] = (40, 30), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _decode(n: Normalized) -> np.ndarray:
    img = Image.open(io.BytesIO(n.jpeg))
    assert img.format == "JPEG" and img.mode == "RGB"
    return np.asarray(img)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"<html><body>404 Not Found</body></html>\n", "not an image"),
        (_encode(_rgb((64, 64)), "JPEG")[:400], "corrupt or truncated image"),
    ],
    ids=["zero-byte", "text-named-jpg", "truncated-jpeg"],
)
def test_unusable_files_are_rejected_with_a_reason(data: bytes, reason: str) -> None:
    out = normalize(data, max_side=None, quality=95)
    assert isinstance(out, Rejected)
    assert out.reason.startswith(reason)


def test_unsupported_format_is_rejected() -> None:
    out = normalize(_encode(_rgb(), "ICO"), None, 95)
    assert isinstance(out, Rejected) and "unsupported image format ICO" in out.reason


def test_cmyk_jpeg_becomes_rgb() -> None:
    out = normalize(_encode(_rgb().convert("CMYK"), "JPEG"), None, 95)
    assert isinstance(out, Normalized) and out.original_mode == "CMYK"
    assert _decode(out).shape == (30, 40, 3)


def test_rgba_png_is_composited_on_white() -> None:
    rgba = np.zeros((20, 20, 4), dtype=np.uint8)
    rgba[:10, :, :] = (255, 0, 0, 255)  # opaque red top half, transparent bottom half
    out = normalize(_encode(Image.fromarray(rgba, "RGBA"), "PNG"), None, 100)
    assert isinstance(out, Normalized)
    arr = _decode(out).astype(int)
    assert arr[2, 10, 0] > 230 and arr[2, 10, 1] < 30  # red stays red
    assert (arr[17, 10] > 240).all()  # transparent → white, not black


def test_16bit_png_is_scaled_not_clipped() -> None:
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (16, 1))
    data = _encode(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = normalize(data, None, 100)
    assert isinstance(out, Normalized)
    row = _decode(out)[8, :, 0].astype(int)
    assert row[0] < 10 and row[-1] > 245 and 100 < row[32] < 155  # a ramp, not all white


def test_palette_gif_becomes_rgb() -> None:
    gif = _encode(_rgb().convert("P"), "GIF")
    out = normalize(gif, None, 95)
    assert isinstance(out, Normalized) and out.original_format == "GIF"
    assert _decode(out).shape == (30, 40, 3)


def test_exif_orientation_is_applied() -> None:
    img = _rgb((40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    out = normalize(_encode(img, "JPEG", exif=exif.tobytes()), None, 95)
    assert isinstance(out, Normalized)
    assert (out.width, out.height) == (20, 40)


def test_downscale_keeps_aspect_ratio_and_is_deterministic() -> None:
    data = _encode(_rgb((400, 200)), "PNG")
    a, b = normalize(data, 100, 90), normalize(data, 100, 90)
    assert isinstance(a, Normalized) and (a.width, a.height) == (100, 50)
    assert a == b  # byte-identical: DVC hashes the output
