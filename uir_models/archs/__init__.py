"""Network architectures for the restorers; built by name through ``uir_models.factory``."""

from uir_models.archs.nafnet import NAFBlock, NAFNet, NAFNetConfig

__all__ = ["NAFBlock", "NAFNet", "NAFNetConfig"]
