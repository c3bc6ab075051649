"""The one place where built-in degradation type names are spelt."""

from enum import StrEnum


class Degradation(StrEnum):
    BLURRY = "blurry"
    LOW_RESOLUTION = "low-resolution"
    NOISY = "noisy"
    JPEG_COMPRESSED = "jpeg-compressed"


BLIND_PROMPT = "Remove all degradation"
