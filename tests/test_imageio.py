"""Every odd input is built here in tmp_path, so the decoder is tested without committed files."""

from __future__ import annotations

import io
import struct
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import ExifTags, Image, PngImagePlugin

from uir.demo import DEMO_DIR_ENV, demo_images
from uir.imageio import (
    CAPTION_SUFFIX,
    DEPTH_SUFFIX,
    ImageDecodeError,
    encode_png,
    load_rgb,
    read_depth,
    save_image,
    sidecar,
)

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def _assert_rgb(image: np.ndarray, height: int, width: int) -> None:
    assert image.shape == (height, width, 3)
    assert image.dtype == np.uint8
    assert image.flags.c_contiguous
    assert image.flags.writeable


def _chunk(kind: bytes, payload: bytes) -> bytes:
    checksum = struct.pack(">I", zlib.crc32(kind + payload))
    return struct.pack(">I", len(payload)) + kind + payload + checksum


def _hand_made_png(
    width: int,
    height: int,
    *,
    bit_depth: int = 8,
    colour_type: int = 2,
    rows: bytes = b"",
    exif: bytes | None = None,
) -> bytes:
    """Write a PNG byte by byte, so headers can claim what no encoder would produce."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    chunks = [_chunk(b"IHDR", header)]
    if exif is not None:
        chunks.append(_chunk(b"eXIf", exif))
    chunks += [_chunk(b"IDAT", zlib.compress(rows)), _chunk(b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def _save(tmp_path: Path, name: str, image: Image.Image, **options: object) -> Path:
    path = tmp_path / name
    image.save(path, **options)
    return path


def _noise(height: int = 120, width: int = 160) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


# --- colour modes ------------------------------------------------------------------------------


def test_greyscale_is_repeated_into_three_channels(tmp_path):
    path = _save(tmp_path, "grey.png", Image.new("L", (5, 3), 77))
    rgb = load_rgb(path)
    _assert_rgb(rgb, 3, 5)
    assert (rgb == 77).all()


def test_bilevel_becomes_black_and_white(tmp_path):
    bilevel = Image.new("1", (4, 2), 0)
    bilevel.putpixel((3, 1), 1)
    rgb = load_rgb(_save(tmp_path, "bilevel.png", bilevel))
    assert tuple(rgb[1, 3]) == WHITE
    assert tuple(rgb[0, 0]) == (0, 0, 0)


def test_grey_alpha_is_composited_onto_white(tmp_path):
    grey_alpha = Image.new("LA", (3, 1))
    for x, alpha in enumerate((0, 128, 255)):
        grey_alpha.putpixel((x, 0), (100, alpha))
    rgb = load_rgb(_save(tmp_path, "la.png", grey_alpha))
    # (100 * a + 255 * (255 - a)) / 255, rounded: transparent shows the white page.
    assert rgb[0, :, 0].tolist() == [255, 177, 100]


def test_rgba_is_composited_onto_white_numerically(tmp_path):
    path = _save(tmp_path, "rgba.png", Image.new("RGBA", (2, 2), (200, 100, 0, 128)))
    rgb = load_rgb(path)
    _assert_rgb(rgb, 2, 2)
    expected = np.rint(np.array([200, 100, 0]) * 128 / 255 + 255 * (1 - 128 / 255))
    assert rgb[0, 0].tolist() == expected.tolist() == [227, 177, 127]


def test_palette_with_transparency_turns_transparent_index_white(tmp_path):
    palette_image = Image.new("P", (2, 1))
    palette_image.putpalette([*BLUE, *RED] + [0] * 762)
    palette_image.putpixel((1, 0), 1)  # pixel 0 keeps index 0 (blue), then made transparent
    for extension in ("png", "gif"):
        path = _save(tmp_path, f"palette.{extension}", palette_image, transparency=0)
        rgb = load_rgb(path)
        assert tuple(rgb[0, 0]) == WHITE, extension
        assert tuple(rgb[0, 1]) == RED, extension


def test_palette_without_transparency_keeps_colours(tmp_path):
    palette_image = Image.new("P", (2, 1))
    palette_image.putpalette([*BLUE, *RED] + [0] * 762)
    palette_image.putpixel((1, 0), 1)
    rgb = load_rgb(_save(tmp_path, "palette.png", palette_image))
    assert [tuple(pixel) for pixel in rgb[0]] == [BLUE, RED]


def test_16bit_grey_png_is_rounded_not_clipped(tmp_path):
    values = np.array([[0, 255, 32896, 65535]], dtype=np.uint16)
    path = _save(tmp_path, "grey16.png", Image.fromarray(values))
    assert Image.open(path).mode == "I;16"
    rgb = load_rgb(path)
    assert rgb[0, :, 0].tolist() == [0, 1, 128, 255]
    assert (rgb[..., 0] == rgb[..., 2]).all()


def test_16bit_big_endian_tiff_is_scaled(tmp_path):
    values = np.array([[0, 32896, 65535]], dtype=">u2")
    path = _save(tmp_path, "grey16b.tif", Image.fromarray(values))
    assert load_rgb(path)[0, :, 1].tolist() == [0, 128, 255]


def test_32bit_integer_grey_in_16bit_range_is_scaled_as_16bit(tmp_path):
    values = np.array([[0, 32896, 65535]], dtype=np.int32)
    path = _save(tmp_path, "grey32.tif", Image.fromarray(values))
    assert Image.open(path).mode == "I"
    assert load_rgb(path)[0, :, 0].tolist() == [0, 128, 255]


def test_32bit_integer_grey_beyond_16bit_is_stretched(tmp_path):
    values = np.array([[-1000, 0, 1_000_000]], dtype=np.int32)
    rgb = load_rgb(_save(tmp_path, "wide.tif", Image.fromarray(values)))
    assert rgb[0, :, 0].tolist() == [0, 0, 255]


def test_float_grey_in_unit_range_maps_to_0_255(tmp_path):
    values = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    path = _save(tmp_path, "float.tif", Image.fromarray(values))
    assert Image.open(path).mode == "F"
    assert load_rgb(path)[0, :, 0].tolist() == [0, 128, 255]


def test_16bit_rgb_png_keeps_the_low_byte(tmp_path):
    values = np.zeros((2, 3, 3), dtype=np.uint16)
    values[..., 0], values[..., 1], values[..., 2] = 65535, 32896, 255
    path = tmp_path / "rgb16.png"
    path.write_bytes(cv2.imencode(".png", values[..., ::-1].copy())[1].tobytes())
    # Pillow opens it as 8-bit by keeping the high byte only (255 -> 0); load_rgb must round.
    assert np.asarray(Image.open(path))[0, 0].tolist() == [255, 128, 0]
    rgb = load_rgb(path)
    _assert_rgb(rgb, 2, 3)
    assert rgb[0, 0].tolist() == [255, 128, 1]


def test_16bit_rgba_png_is_scaled_then_composited(tmp_path):
    values = np.zeros((1, 2, 4), dtype=np.uint16)
    values[0, 0] = (0, 0, 65535, 65535)  # opaque blue
    values[0, 1] = (0, 0, 65535, 0)  # fully transparent
    path = tmp_path / "rgba16.png"
    path.write_bytes(cv2.imencode(".png", values[..., [2, 1, 0, 3]].copy())[1].tobytes())
    rgb = load_rgb(path)
    assert [tuple(pixel) for pixel in rgb[0]] == [BLUE, WHITE]


def test_16bit_rgb_png_still_gets_exif_orientation(tmp_path):
    height, width = 2, 3
    values = np.full((height, width, 3), 65535, dtype=np.uint16)
    values[0, 0] = (65535, 0, 0)  # red marker in the stored top-left corner
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in values)
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    data = _hand_made_png(
        width, height, bit_depth=16, colour_type=2, rows=rows, exif=exif.tobytes()[6:]
    )
    rgb = load_rgb(data, name="rotated16.png")
    _assert_rgb(rgb, width, height)
    assert tuple(rgb[0, -1]) == RED


def test_cmyk_jpeg_has_roughly_the_right_colours(tmp_path):
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # no cyan, full magenta + yellow = red
    cmyk.paste((255, 0, 0, 0), (8, 0, 16, 16))  # full cyan = cyan
    rgb = load_rgb(_save(tmp_path, "cmyk.jpg", cmyk, quality=95)).astype(int)
    red, cyan = rgb[8, 2], rgb[8, 13]
    assert red[0] > 200 and red[1] < 60 and red[2] < 60
    assert cyan[0] < 60 and cyan[1] > 200 and cyan[2] > 200


def test_exif_orientation_6_rotates_clockwise(tmp_path):
    stored = np.full((20, 40, 3), 128, dtype=np.uint8)
    stored[:8, :8] = RED  # marker in the stored top-left corner
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    path = _save(tmp_path, "rotated.jpg", Image.fromarray(stored), exif=exif, quality=95)
    rgb = load_rgb(path).astype(int)
    _assert_rgb(rgb.astype(np.uint8), 40, 20)
    # Displayed 90 degrees clockwise: the stored top-left ends up top-right.
    top_right, top_left = rgb[3, -4], rgb[3, 3]
    assert top_right[0] > 200 and top_right[1] < 60
    assert abs(top_left - 128).max() < 20


def test_multi_frame_gif_gives_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (4, 4), RED), Image.new("RGB", (4, 4), BLUE)]
    path = tmp_path / "animated.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert Image.open(path).n_frames == 2
    assert tuple(load_rgb(path)[2, 2]) == RED


def test_bytes_input_decodes_and_names_errors():
    buffer = io.BytesIO()
    Image.new("RGB", (6, 4), BLUE).save(buffer, "PNG")
    rgb = load_rgb(buffer.getvalue())
    _assert_rgb(rgb, 4, 6)
    assert tuple(rgb[0, 0]) == BLUE
    with pytest.raises(ImageDecodeError, match=r"^upload\.png: not an image"):
        load_rgb(b"hello", name="upload.png")


# --- broken and hostile files -----------------------------------------------------------------


@pytest.mark.parametrize("extension", ["png", "jpg"])
def test_truncated_files_fail_at_load(tmp_path, extension):
    full = tmp_path / f"full.{extension}"
    Image.fromarray(_noise()).save(full)
    data = full.read_bytes()
    path = tmp_path / f"cut.{extension}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError) as error:
        load_rgb(path)
    assert str(error.value) == f"cut.{extension}: truncated image data"


def test_empty_file(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match=r"^x\.png: empty file$"):
        load_rgb(path)


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_text("this is not a photograph\n")
    with pytest.raises(ImageDecodeError) as error:
        load_rgb(path)
    assert str(error.value) == "photo.jpg: not an image (cannot identify format)"


def test_zero_sized_png_is_rejected(tmp_path):
    path = tmp_path / "zero.png"
    path.write_bytes(_hand_made_png(0, 0))
    with pytest.raises(ImageDecodeError, match=r"^zero\.png: "):
        load_rgb(path)


def test_huge_header_is_rejected_before_decoding(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(_hand_made_png(100_000, 100_000))
    assert path.stat().st_size < 100
    started = time.perf_counter()
    with pytest.raises(ImageDecodeError) as error:
        load_rgb(path)
    assert time.perf_counter() - started < 1.0
    assert str(error.value) == "huge.png: 10,000,000,000 pixels exceeds the 178,956,970-pixel limit"


def test_max_pixels_is_checked_from_the_header(tmp_path):
    # 25 MP is under Pillow's own limit, so only load_rgb's check can stop it; decoding the
    # empty IDAT would fail with "truncated" instead.
    path = tmp_path / "big.png"
    path.write_bytes(_hand_made_png(5000, 5000))
    with pytest.raises(ImageDecodeError) as error:
        load_rgb(path, max_pixels=1_000_000)
    assert str(error.value) == (
        "big.png: 5000x5000 = 25,000,000 pixels exceeds the 1,000,000-pixel limit"
    )


def test_unexpected_decoder_errors_become_one_line(tmp_path, monkeypatch):
    def explode(self: Image.Image) -> None:
        raise RuntimeError("decoder exploded\nwith a second line")

    path = _save(tmp_path, "fine.png", Image.new("RGB", (2, 2)))
    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", explode)
    with pytest.raises(ImageDecodeError) as error:
        load_rgb(path)
    expected = "fine.png: cannot decode (RuntimeError: decoder exploded with a second line)"
    assert str(error.value) == expected
    assert isinstance(error.value, ValueError)


def test_missing_file_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_rgb(tmp_path / "absent.png")


# --- writing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("extension", [".png", ".webp"])
def test_lossless_formats_round_trip_exactly(tmp_path, extension):
    image = _noise(30, 40)
    path = tmp_path / f"out{extension}"
    save_image(path, image)
    assert np.array_equal(load_rgb(path), image)


def test_jpeg_is_close_at_quality_95(tmp_path):
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    image[:, :16] = RED
    image[:, 16:] = (20, 200, 90)
    save_image(tmp_path / "out.jpeg", image)
    difference = np.abs(load_rgb(tmp_path / "out.jpeg").astype(int) - image.astype(int))
    assert np.median(difference) <= 3


def test_greyscale_saves_as_grey(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    save_image(tmp_path / "grey.png", grey)
    assert Image.open(tmp_path / "grey.png").mode == "L"
    assert np.array_equal(load_rgb(tmp_path / "grey.png")[..., 1], grey)


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "out.png"
    path.write_bytes(b"old")
    save_image(path, _noise(8, 8))
    assert [entry.name for entry in tmp_path.iterdir()] == ["out.png"]
    assert load_rgb(path).shape == (8, 8, 3)


def test_save_rejects_unknown_extensions_and_bad_arrays(tmp_path):
    with pytest.raises(ValueError, match=r"out\.bmp: cannot save images with extension '\.bmp'"):
        save_image(tmp_path / "out.bmp", _noise(4, 4))
    with pytest.raises(ValueError, match="uint8"):
        save_image(tmp_path / "out.png", np.zeros((4, 4, 3), dtype=np.float32))
    assert list(tmp_path.iterdir()) == []


def test_encode_png_decodes_back_to_the_same_pixels():
    image = _noise(10, 12)
    data = encode_png(image)
    assert data.startswith(b"\x89PNG")
    assert np.array_equal(load_rgb(data), image)


# --- sidecars and demo data -------------------------------------------------------------------


def test_read_depth_scales_16bit_to_unit_range(tmp_path):
    values = np.array([[0, 32768, 65535]], dtype=np.uint16)
    path = _save(tmp_path, "scene.depth.png", Image.fromarray(values))
    depth = read_depth(path)
    assert depth.dtype == np.float32
    assert depth.shape == (1, 3)
    assert np.allclose(depth, [[0.0, 32768 / 65535, 1.0]])


def test_read_depth_rejects_colour_images(tmp_path):
    path = _save(tmp_path, "colour.depth.png", Image.new("RGB", (2, 2)))
    with pytest.raises(ImageDecodeError, match="single-channel"):
        read_depth(path)


def test_sidecar_finds_files_sharing_the_stem(tmp_path):
    image = tmp_path / "scene.png"
    (tmp_path / "scene.txt").write_text("a scene\n")
    assert sidecar(image, CAPTION_SUFFIX) == tmp_path / "scene.txt"
    assert sidecar(image, DEPTH_SUFFIX) is None


def test_demo_images_are_usable_photographs():
    photos = demo_images()
    assert len(photos) >= 6
    assert all(not photo.name.endswith(DEPTH_SUFFIX) for photo in photos)
    for photo in photos:
        rgb = load_rgb(photo)
        assert min(rgb.shape[:2]) >= 256, photo.name
        assert rgb.std() > 10, photo.name  # a real photograph, not a flat placeholder
        caption_path = sidecar(photo, CAPTION_SUFFIX)
        assert caption_path is not None, photo.name
        caption = caption_path.read_text(encoding="utf-8").strip()
        assert caption and "\n" not in caption, photo.name


def test_demo_depth_sidecars_match_their_photographs():
    with_depth = [photo for photo in demo_images() if sidecar(photo, DEPTH_SUFFIX)]
    assert with_depth
    for photo in with_depth:
        depth_path = sidecar(photo, DEPTH_SUFFIX)
        assert depth_path is not None
        depth = read_depth(depth_path)
        assert depth.shape == load_rgb(photo).shape[:2]
        assert 0.0 <= depth.min() < depth.max() == 1.0


def test_demo_dir_can_be_overridden_and_reports_a_missing_folder(tmp_path, monkeypatch):
    save_image(tmp_path / "one.png", _noise(4, 4))
    save_image(tmp_path / "one.depth.png", np.zeros((4, 4), dtype=np.uint8))
    monkeypatch.setenv(DEMO_DIR_ENV, str(tmp_path))
    assert demo_images() == [tmp_path / "one.png"]
    monkeypatch.setenv(DEMO_DIR_ENV, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match=DEMO_DIR_ENV):
        demo_images()
