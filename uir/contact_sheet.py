"""Captioned image grids, so a person can eyeball degradations, restorations and masks at once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (246, 246, 246)
LETTERBOX = (222, 222, 222)  # a shade darker than the page, so each tile's bounds stay visible
TEXT_COLOUR = (24, 24, 24)
GAP = 10
CAPTION_FONT_SIZE = 14
TITLE_FONT_SIZE = 20
LINE_SPACING = 3

Font = ImageFont.ImageFont | ImageFont.FreeTypeFont


@dataclass
class Tile:
    """One image and the caption printed under it."""

    image: np.ndarray
    caption: str


def make_contact_sheet(
    rows: Sequence[Sequence[Tile]],
    *,
    tile_size: int = 256,
    title: str | None = None,
) -> np.ndarray:
    """Render one sheet row per input row, so variants of one image line up side by side.

    Returns uint8 HxWx3 RGB. Each row is as tall as its longest wrapped caption needs.
    """
    if not any(rows):
        raise ValueError("a contact sheet needs at least one tile")
    caption_font = ImageFont.load_default(size=CAPTION_FONT_SIZE)
    title_font = ImageFont.load_default(size=TITLE_FONT_SIZE)
    width = GAP + max(len(row) for row in rows) * (tile_size + GAP)

    title_lines = _wrap(title, title_font, width - 2 * GAP) if title else []
    captions = [[_wrap(tile.caption, caption_font, tile_size) for tile in row] for row in rows]
    caption_line_height = _line_height(caption_font)
    title_line_height = _line_height(title_font)
    row_heights = [
        tile_size + GAP + max((len(lines) for lines in row), default=0) * caption_line_height
        for row in captions
    ]
    title_height = len(title_lines) * title_line_height + (GAP if title_lines else 0)
    sheet = Image.new("RGB", (width, GAP + title_height + sum(row_heights)), BACKGROUND)
    draw = ImageDraw.Draw(sheet)

    y = GAP
    for line in title_lines:
        draw.text((GAP, y), line, font=title_font, fill=TEXT_COLOUR)
        y += title_line_height
    y += GAP if title_lines else 0
    for row, row_captions, row_height in zip(rows, captions, row_heights, strict=True):
        for column, (tile, lines) in enumerate(zip(row, row_captions, strict=True)):
            x = GAP + column * (tile_size + GAP)
            sheet.paste(Image.fromarray(_letterbox(tile.image, tile_size)), (x, y))
            for index, line in enumerate(lines):
                text_y = y + tile_size + LINE_SPACING + index * caption_line_height
                draw.text((x, text_y), line, font=caption_font, fill=TEXT_COLOUR)
        y += row_height
    return np.array(sheet)


def _letterbox(image: np.ndarray, size: int) -> np.ndarray:
    """Fit into a size x size square keeping aspect; small inputs are enlarged with NEAREST so
    their real pixels (the thing being judged) stay visible instead of being smoothed away."""
    rgb = _as_rgb8(image)
    height, width = rgb.shape[:2]
    scale = size / max(height, width)
    new_width, new_height = max(1, round(width * scale)), max(1, round(height * scale))
    interpolation = cv2.INTER_NEAREST if scale > 1 else cv2.INTER_AREA
    resized = cv2.resize(rgb, (new_width, new_height), interpolation=interpolation)
    canvas = np.full((size, size, 3), LETTERBOX, dtype=np.uint8)
    top, left = (size - new_height) // 2, (size - new_width) // 2
    canvas[top : top + new_height, left : left + new_width] = resized
    return canvas


def _as_rgb8(image: np.ndarray) -> np.ndarray:
    """Accept masks and maps as well as photos: bool, float in [0, 1] and 0/1 label masks all
    become visible 0-255 grey."""
    pixels = np.asarray(image)
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[..., 0]
    if pixels.dtype == np.bool_:
        pixels = pixels.astype(np.uint8) * 255
    elif pixels.dtype.kind == "f":
        pixels = np.clip(np.rint(np.nan_to_num(pixels) * 255), 0, 255).astype(np.uint8)
    elif pixels.dtype != np.uint8:
        raise ValueError(f"tile images must be uint8, bool or float, got {pixels.dtype}")
    elif pixels.ndim == 2 and pixels.size and pixels.max() <= 1:
        pixels = pixels * 255
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., np.newaxis], 3, axis=2)
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.size == 0:
        raise ValueError(f"tile images must be non-empty HxW or HxWx3, got shape {pixels.shape}")
    return np.ascontiguousarray(pixels)


def _wrap(text: str, font: Font, width: int) -> list[str]:
    """Greedy word wrap by rendered width; words wider than a line (paths, hashes) are split."""
    lines: list[str] = []
    for paragraph in text.splitlines():
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}" if line else word
            if font.getlength(candidate) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            while font.getlength(word) > width and len(word) > 1:
                cut = len(word) - 1
                while cut > 1 and font.getlength(word[:cut]) > width:
                    cut -= 1
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        if line:
            lines.append(line)
    return lines


def _line_height(font: Font) -> int:
    _, top, _, bottom = font.getbbox("Ag")
    return int(bottom - top) + LINE_SPACING + 2
