"""Built-in degradation types; importing this package registers them."""

from degradations.types import basic, haze, inpaint, lowlight, motion, shadow, weather

__all__ = ["basic", "haze", "inpaint", "lowlight", "motion", "shadow", "weather"]
