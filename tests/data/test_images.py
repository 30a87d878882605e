"""Decoding and normalisation of the file kinds real folders contain."""

from __future__ import annotations

import functools
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from reprotrain.data import images
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


# ------------------------------------------------------------------------ decode memory


def _whole_image_reference(data: bytes, max_side: int | None, quality: int) -> bytes:
    """The normalisation done the straightforward way (how images.py did it before its
    decode memory was bounded): a transposed copy, the whole image scaled in float64 and
    converted to RGB, then downscaled. The bounded path must give the same bytes."""
    img = Image.open(io.BytesIO(data))
    img.load()
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img)
        if img.mode == "F":
            lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
            scaled = (arr - lo) / (hi - lo or 1.0) * 255.0
        else:
            bits = 16 if img.mode.startswith("I;16") or arr.max(initial=0) < 65536 else 32
            scaled = arr.astype(np.float64) / (2**bits - 1) * 255.0
        with np.errstate(invalid="ignore"):  # NaN pixels (the float case)
            img = Image.fromarray(np.clip(scaled + 0.5, 0, 255).astype(np.uint8), "L")
    img = img.convert("RGB")
    if max_side and max(img.size) > max_side:
        scale = max_side / max(img.size)
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(size, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=quality, optimize=False, subsampling=0)
    return out.getvalue()


@functools.cache
def _deep_and_gray_images() -> dict[str, bytes]:
    """Images taller than one conversion strip (``STRIP_PIXELS`` / width rows), in every
    mode the bounded path treats differently: 16-bit, 32-bit, float, 8-bit grayscale
    (resized before its RGB conversion), and an EXIF-rotated photo (rotated in place)."""
    rng = np.random.default_rng(7)
    gray = np.asarray(_rgb((300, 1000), seed=3).convert("L"))
    g16 = (gray.astype(np.uint16) * 257 + rng.integers(0, 200, gray.shape)).astype(np.uint16)
    flt = g16.astype(np.float32) / 7.0 - 100.0
    flt[0, 0] = np.nan
    exif = Image.Exif()
    exif[0x0112] = 6
    return {
        "16-bit png": _encode(Image.fromarray(g16), "PNG"),
        "32-bit tiff": _encode(Image.fromarray(g16.astype(np.int32) * 3000, "I"), "TIFF"),
        "small 32-bit tiff": _encode(Image.fromarray(g16.astype(np.int32) - 2000, "I"), "TIFF"),
        "float tiff": _encode(Image.fromarray(flt, "F"), "TIFF"),
        "gray png": _encode(Image.fromarray(gray), "PNG"),
        "gray jpeg": _encode(Image.fromarray(gray), "JPEG"),
        "rotated jpeg": _encode(_rgb((300, 1000)), "JPEG", exif=exif.tobytes()),
        "rotated 16-bit png": _encode(Image.fromarray(g16), "PNG", exif=exif.tobytes()),
    }


@pytest.mark.parametrize("name", list(_deep_and_gray_images()))
def test_bounded_decode_gives_the_bytes_of_the_whole_image_path(name: str) -> None:
    data = _deep_and_gray_images()[name]
    assert Image.open(io.BytesIO(data)).height > images.STRIP_PIXELS // 300  # several strips
    for max_side in (None, 320, 96):
        out = normalize(data, max_side, 95)
        assert isinstance(out, Normalized), out
        assert out.jpeg == _whole_image_reference(data, max_side, 95), (name, max_side)


#: Runs in a fresh interpreter. The peak is Linux's VmHWM, reset just before the decode
#: (``clear_refs``), minus the resident size then: the decode's own cost, not the
#: interpreter's start-up (ru_maxrss would not do: Linux carries it over from the parent
#: through exec, and the parent is pytest).
PEAK_SCRIPT = """
import re, sys
from pathlib import Path
from reprotrain.data.images import Normalized, normalize
def kib(field):
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\\s+(\\d+) kB", text, re.M).group(1))
data = Path(sys.argv[1]).read_bytes()
Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
before = kib("VmRSS")
assert kib("VmHWM") - before < 1024, "the peak was not reset"
out = normalize(data, 320, 95)
assert isinstance(out, Normalized), out
print((kib("VmHWM") - before) * 1024)
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc")
@pytest.mark.parametrize("mode", ["I;16", "RGB"])
def test_decode_memory_is_a_small_multiple_of_the_rgb_output(mode: str, tmp_path: Path) -> None:
    """A 4000×4000 PNG (a few hundred KB on disk) costs at most twice its 8-bit RGB pixels
    (48 MB) at peak, measured in a subprocess. The whole-image float64 path cost +460 MB
    for the 16-bit file, and the orientation's full-size copy +124 MB for the RGB one."""
    side = 4000
    ramp = np.add.outer(np.arange(side, dtype=np.uint16), np.arange(side, dtype=np.uint16))
    if mode == "I;16":
        img = Image.fromarray(ramp * 8)
    else:
        img = Image.fromarray((ramp // 8 % 256).astype(np.uint8)).convert("RGB")
    assert img.mode == mode
    path = tmp_path / "big.png"
    img.save(path, compress_level=1)
    del img, ramp
    proc = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    peak = int(proc.stdout.strip().splitlines()[-1])
    rgb_output = side * side * 3
    assert peak < 2 * rgb_output, f"{path.stat().st_size} B {mode} PNG: +{peak / 2**20:.0f} MB"
