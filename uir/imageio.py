"""Robust image decoding and fast encoding shared by every UIR Forge stage.

Scraped datasets hold every PNG/JPEG/TIFF flavour plus broken and hostile files. Reading them all
through `load_rgb` gives each stage the same uint8 RGB pixels, and turns every failure into one
readable `ImageDecodeError` line instead of a traceback.
"""

from __future__ import annotations

import io
import os
import re
import struct
import uuid
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import imagecodecs
import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 178_956_970
"""Pillow's own decompression-bomb error threshold (2 * `Image.MAX_IMAGE_PIXELS`)."""

CAPTION_SUFFIX = ".txt"
DEPTH_SUFFIX = ".depth.png"
SIDECAR_SUFFIXES = (CAPTION_SUFFIX, DEPTH_SUFFIX)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# IHDR colour types that Pillow reduces to 8 bits by dropping the low byte: RGB, grey+alpha, RGBA.
# 16-bit plain grey (type 0) is kept as I;16 by Pillow and scaled by `_to_rgb`.
_TRUNCATED_16BIT_COLOUR_TYPES = frozenset({2, 4, 6})
_ALPHA_MODES = frozenset({"LA", "PA", "RGBA", "RGBa"})
_ORIENTATION_TRANSPOSES = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_ENCODINGS: dict[str, tuple[str, list[int]]] = {
    # PNG level 1: shards and previews are rewritten often; size matters less than speed.
    ".png": (".png", [cv2.IMWRITE_PNG_COMPRESSION, 1]),
    ".jpg": (".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95]),
    ".jpeg": (".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95]),
    # OpenCV encodes WebP losslessly when quality is above 100.
    ".webp": (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]),
}


class ImageDecodeError(ValueError):
    """An unusable image; the message is one line naming the file and the reason."""


def load_rgb(
    source: str | Path | bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
) -> np.ndarray:
    """Decode one image to a C-contiguous uint8 HxWx3 RGB array, or raise `ImageDecodeError`.

    The pixel count is checked from the header before any pixel is decoded, so a hostile header
    costs nothing. Pillow's own bomb check still applies on top of `max_pixels`; raise
    `PIL.Image.MAX_IMAGE_PIXELS` to go beyond 178.9 MP. Multi-frame files give their first frame.
    """
    data, label = _read_source(source, name)
    with _decode_errors_as(label):
        with warnings.catch_warnings():
            # The explicit max_pixels check below replaces Pillow's warning tier.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
        with image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageDecodeError(
                    f"{label}: {width}x{height} = {width * height:,} pixels exceeds the "
                    f"{max_pixels:,}-pixel limit"
                )
            if width == 0 or height == 0:
                raise ImageDecodeError(f"{label}: zero-sized image ({width}x{height})")
            image.load()  # decode everything now so truncated files fail here
            orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
            if _is_truncated_by_pillow(data):
                rgb = _to_rgb(Image.fromarray(_scale_16_to_8(imagecodecs.png_decode(data))))
            else:
                rgb = _to_rgb(image)
            return _apply_orientation(rgb, orientation)


def read_depth(path: str | Path) -> np.ndarray:
    """Read a `.depth.png` sidecar as float32 HxW in [0, 1] where 1 is the farthest point."""
    data, label = _read_source(path, None)
    with _decode_errors_as(label), Image.open(io.BytesIO(data)) as image:
        image.load()
        values = np.asarray(image)
    if values.ndim != 2 or values.dtype.kind not in "ui":
        raise ImageDecodeError(
            f"{label}: depth map must be single-channel integers, got mode {image.mode}"
        )
    full_scale = 255 if values.dtype == np.uint8 else 65535
    return values.astype(np.float32) / full_scale


def sidecar(path: Path, suffix: str) -> Path | None:
    """Find `<stem><suffix>` next to an image, where captions and depth maps travel with it."""
    candidate = path.with_name(path.stem + suffix)
    return candidate if candidate.is_file() else None


def save_image(path: str | Path, image: np.ndarray) -> None:
    """Write uint8 HxWx3 RGB or HxW grey, atomically so readers never see half a file."""
    path = Path(path)
    encoding = _ENCODINGS.get(path.suffix.lower())
    if encoding is None:
        raise ValueError(
            f"{path.name}: cannot save images with extension {path.suffix!r}; "
            f"use one of {', '.join(_ENCODINGS)}"
        )
    data = _encode(image, encoding)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "xb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


_PNG_COLOUR_TYPES = {1: 0, 3: 2, 4: 6}  # channels -> grey, RGB, RGBA
_FILTER_NONE, _FILTER_UP = 0, 2
_IDAT_MAX = 1 << 30  # chunk lengths must stay below 2**31


def _png_chunk(tag: bytes, data: bytes | memoryview) -> list[bytes | memoryview]:
    crc = imagecodecs.deflate_crc32(data, zlib.crc32(tag))  # libdeflate's: 5x zlib's speed
    return [struct.pack(">I", len(data)), tag, data, struct.pack(">I", crc)]


_PNG_END = b"".join(_png_chunk(b"IEND", b""))


def encode_png(image: np.ndarray, compression: int = 1) -> bytes:
    """uint8 HxW grey, HxWx3 RGB or HxWx4 RGBA as PNG; ``compression`` 0 stores, 1-9 deflate.

    Built here rather than by OpenCV/libpng because shards encode two images per pair: every
    row gets the Up filter (one numpy subtraction, about as small as libpng's adaptive choice on
    photos) and libdeflate is 3-4x faster than zlib at level 1 for the same size; level 0
    stores the rows (no deflate work, ~50% larger).
    """
    channels = 1 if image.ndim == 2 else image.shape[2] if image.ndim == 3 else 0
    if image.dtype != np.uint8 or channels not in _PNG_COLOUR_TYPES or 0 in image.shape:
        raise ValueError(f"cannot encode a {image.shape} {image.dtype} image as PNG")
    height, width = image.shape[:2]
    rows = np.ascontiguousarray(image).reshape(height, width * channels)
    filtered = np.empty((height, rows.shape[1] + 1), np.uint8)
    if compression <= 0:
        filtered[:, 0] = _FILTER_NONE
        filtered[:, 1:] = rows
    else:
        filtered[:, 0] = _FILTER_UP
        filtered[0, 1:] = rows[0]
        np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # wraps mod 256, as PNG wants
    stream = memoryview(imagecodecs.deflate_encode(filtered, level=max(compression, 0)))
    header = struct.pack(">IIBBBBB", width, height, 8, _PNG_COLOUR_TYPES[channels], 0, 0, 0)
    parts: list[bytes | memoryview] = [_PNG_SIGNATURE, *_png_chunk(b"IHDR", header)]
    for start in range(0, len(stream), _IDAT_MAX):
        parts += _png_chunk(b"IDAT", stream[start : start + _IDAT_MAX])
    parts.append(_PNG_END)
    return b"".join(parts)


def _read_source(source: str | Path | bytes, name: str | None) -> tuple[bytes, str]:
    """Return the encoded bytes and the label used in error messages."""
    if isinstance(source, bytes):
        data, label = source, name or "<bytes>"
    else:
        data, label = Path(source).read_bytes(), name or Path(source).name
    if not data:
        raise ImageDecodeError(f"{label}: empty file")
    return data, label


@contextmanager
def _decode_errors_as(label: str) -> Iterator[None]:
    """Map whatever a decoder throws to one `ImageDecodeError` so callers catch a single type."""
    try:
        yield
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageDecodeError(f"{label}: {_bomb_reason(error)}") from error
    except UnidentifiedImageError as error:
        raise ImageDecodeError(f"{label}: not an image (cannot identify format)") from error
    except Exception as error:
        detail = " ".join(str(error).split())
        if isinstance(error, EOFError) or "truncated" in detail.lower():
            raise ImageDecodeError(f"{label}: truncated image data") from error
        reason = f"{type(error).__name__}: {detail}" if detail else type(error).__name__
        raise ImageDecodeError(f"{label}: cannot decode ({reason})") from error


def _bomb_reason(error: Image.DecompressionBombError) -> str:
    """Restate Pillow's bomb error in megapixels; Pillow raises it before the size is known."""
    counts = re.search(r"\((\d+) pixels\) exceeds limit of (\d+) pixels", str(error))
    if counts is None:
        return f"decompression bomb ({error})"
    pixels, limit = (int(count) for count in counts.groups())
    return f"{pixels:,} pixels exceeds the {limit:,}-pixel limit"


def _is_truncated_by_pillow(data: bytes) -> bool:
    """Spot 16-bit colour PNGs, which Pillow opens as 8-bit by dropping the low byte."""
    return (
        data.startswith(_PNG_SIGNATURE)
        and len(data) > 25
        and data[24] == 16
        and data[25] in _TRUNCATED_16BIT_COLOUR_TYPES
    )


def _to_rgb(image: Image.Image) -> np.ndarray:
    """Convert any decoded Pillow mode to uint8 RGB without Pillow's clipping of wide modes."""
    if image.mode == "I" or image.mode.startswith("I;16"):
        values = np.asarray(image)
        if values.min() >= 0 and values.max() <= 65535:
            # Pillow also uses mode I for 16-bit data, so that range is read as 16-bit.
            return _grey_to_rgb(_scale_16_to_8(values))
        return _grey_to_rgb(_stretch_to_8(values, float(values.min()), float(values.max())))
    if image.mode == "F":
        values = np.asarray(image)
        finite = values[np.isfinite(values)]
        low, high = float(finite.min()), float(finite.max())
        if low >= 0 and high <= 1:
            low, high = 0.0, 1.0
        return _grey_to_rgb(_stretch_to_8(values, low, high))
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        return _composite_on_white(np.asarray(image.convert("RGBA")))
    return np.array(image.convert("RGB"))


def _scale_16_to_8(values: np.ndarray) -> np.ndarray:
    """Round 16-bit values to 8 bits, mapping 65535 to 255 and 32896 to 128."""
    return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _stretch_to_8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map [low, high] linearly to [0, 255]; wide data has no agreed range, so use its own."""
    span = high - low if high > low else 1.0
    scaled = np.nan_to_num((values.astype(np.float64) - low) * (255 / span), nan=0.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., np.newaxis], 3, axis=2)


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """Flatten alpha onto white: logos, scans and cut-outs are made to be seen on a white page,
    and black would hide their dark line art and text."""
    colour = rgba[..., :3].astype(np.uint32)
    alpha = rgba[..., 3:].astype(np.uint32)
    return ((colour * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)


def _apply_orientation(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """Apply the EXIF orientation as `ImageOps.exif_transpose` would, after bit-depth conversion
    so the 16-bit PNG path gets it too."""
    transpose = _ORIENTATION_TRANSPOSES.get(orientation)
    if transpose is not None:
        rgb = np.array(Image.fromarray(rgb).transpose(transpose))
    return np.ascontiguousarray(rgb)


def _encode(image: np.ndarray, encoding: tuple[str, list[int]]) -> bytes:
    if image.dtype != np.uint8 or not (
        image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)
    ):
        raise ValueError(f"expected a uint8 HxW or HxWx3 image, got {image.dtype} {image.shape}")
    cv2_extension, parameters = encoding
    bgr = image if image.ndim == 2 else image[..., ::-1]
    encoded, buffer = cv2.imencode(cv2_extension, np.ascontiguousarray(bgr), parameters)
    if not encoded:
        raise ValueError(f"OpenCV could not encode a {image.shape} image as {cv2_extension}")
    return buffer.tobytes()
