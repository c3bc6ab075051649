"""The one place where built-in degradation type names are spelt."""

from enum import StrEnum


class Degradation(StrEnum):
    BLURRY = "blurry"
    LOW_RESOLUTION = "low-resolution"
    NOISY = "noisy"
    JPEG_COMPRESSED = "jpeg-compressed"
    MOTION_BLURRY = "motion-blurry"
    HAZY = "hazy"
    LOW_LIGHT = "low-light"
    RAINDROP = "raindrop"
    RAINY = "rainy"
    SHADOWED = "shadowed"
    SNOWY = "snowy"
    UNCOMPLETED = "uncompleted"


# DA-CLIP's ten types, spelt as its labels and degradation texts ("uncompleted" = inpainting).
DACLIP_TYPES = (
    Degradation.MOTION_BLURRY,
    Degradation.HAZY,
    Degradation.JPEG_COMPRESSED,
    Degradation.LOW_LIGHT,
    Degradation.NOISY,
    Degradation.RAINDROP,
    Degradation.RAINY,
    Degradation.SHADOWED,
    Degradation.SNOWY,
    Degradation.UNCOMPLETED,
)

BLIND_PROMPT = "Remove all degradation"
