from __future__ import annotations

import numpy as np
import pytest

from uir.contact_sheet import BACKGROUND, GAP, LETTERBOX, Tile, make_contact_sheet
from uir.demo import demo_images
from uir.imageio import load_rgb

TILE = 64


def _photo(height: int = 48, width: int = 64) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _caption_band(sheet: np.ndarray, row_top: int, column: int = 0) -> np.ndarray:
    """The strip under one tile where its caption is drawn."""
    left = GAP + column * (TILE + GAP)
    return sheet[row_top + TILE : row_top + TILE + 40, left : left + TILE]


def test_sheet_is_rgb_and_grows_with_rows_and_columns():
    one = make_contact_sheet([[Tile(_photo(), "a")]], tile_size=TILE)
    two_rows = make_contact_sheet([[Tile(_photo(), "a")], [Tile(_photo(), "b")]], tile_size=TILE)
    wide = make_contact_sheet([[Tile(_photo(), "a"), Tile(_photo(), "b")]], tile_size=TILE)
    assert one.dtype == np.uint8 and one.ndim == 3 and one.shape[2] == 3
    assert two_rows.shape[0] >= 2 * one.shape[0] - GAP
    assert two_rows.shape[1] == one.shape[1] == GAP + TILE + GAP
    assert wide.shape[1] == GAP + 2 * (TILE + GAP)
    assert tuple(one[0, 0]) == BACKGROUND


def test_captions_draw_dark_text_under_their_tile():
    sheet = make_contact_sheet([[Tile(_photo(), "JPEG q=10"), Tile(_photo(), "")]], tile_size=TILE)
    captioned, empty = _caption_band(sheet, GAP, 0), _caption_band(sheet, GAP, 1)
    assert (captioned.max(axis=2) < 100).sum() > 20
    assert (empty == BACKGROUND).all()


def test_long_captions_wrap_and_the_row_grows_to_fit():
    short = make_contact_sheet([[Tile(_photo(), "short")]], tile_size=TILE)
    caption = "gaussian noise sigma 25 then jpeg quality 30 then bicubic downscale by four"
    long = make_contact_sheet([[Tile(_photo(), caption), Tile(_photo(), "x")]], tile_size=TILE)
    assert long.shape[0] - short.shape[0] >= 3 * 14
    # Wrapped text never spills into the neighbouring tile's column.
    gutter = long[GAP + TILE :, GAP + TILE + 1 : GAP + TILE + GAP - 1]
    assert (gutter == BACKGROUND).all()


def test_single_channel_masks_are_visible():
    mask = np.zeros((32, 32), dtype=bool)
    mask[8:24, 8:24] = True
    masks = [mask, mask.astype(np.uint8), mask.astype(np.float32), mask[..., None].astype(np.uint8)]
    sheet = make_contact_sheet([[Tile(m, "mask") for m in masks]], tile_size=TILE)
    for column in range(len(masks)):
        left = GAP + column * (TILE + GAP)
        tile = sheet[GAP : GAP + TILE, left : left + TILE]
        assert (tile == 255).all(axis=2).sum() == (TILE // 2) ** 2, column
        assert (tile == 0).all(axis=2).sum() == TILE**2 - (TILE // 2) ** 2, column


def test_small_images_are_enlarged_with_visible_pixels_and_letterboxed():
    checker = np.zeros((4, 8, 3), dtype=np.uint8)
    checker[::2, ::2] = checker[1::2, 1::2] = 200
    sheet = make_contact_sheet([[Tile(checker, "")]], tile_size=TILE)
    tile = sheet[GAP : GAP + TILE, GAP : GAP + TILE]
    # 8x4 fills the width and half the height; the rest is the letterbox colour.
    assert set(np.unique(tile[TILE // 4 : 3 * TILE // 4])) == {0, 200}
    assert (tile[: TILE // 4] == LETTERBOX).all()
    assert (tile[3 * TILE // 4 :] == LETTERBOX).all()


def test_title_adds_height_and_text():
    plain = make_contact_sheet([[Tile(_photo(), "a")]], tile_size=TILE)
    titled = make_contact_sheet([[Tile(_photo(), "a")]], tile_size=TILE, title="Demo sheet")
    extra = titled.shape[0] - plain.shape[0]
    assert extra > 0
    assert (titled[GAP : GAP + extra].max(axis=2) < 100).sum() > 20


def test_empty_input_is_rejected():
    with pytest.raises(ValueError, match="at least one tile"):
        make_contact_sheet([])
    with pytest.raises(ValueError, match="at least one tile"):
        make_contact_sheet([[]])


def test_demo_photographs_fit_a_sheet():
    photos = demo_images()
    tiles = [Tile(load_rgb(photo), photo.stem) for photo in photos]
    sheet = make_contact_sheet([tiles[:3], tiles[3:6]], tile_size=128, title="demo")
    assert sheet.shape[1] == GAP + 3 * (128 + GAP)
    assert sheet.shape[0] > 2 * 128
