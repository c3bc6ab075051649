"""Network architectures for the restorers; built by name through ``uir_models.factory``."""

from typing import Any

from uir_models.archs.nafnet import NAFBlock, NAFNet, NAFNetConfig

# DA-CLIP pulls in open_clip (seconds to import): resolved on first access only.
_DACLIP_EXPORTS = (
    "DaCLIP",
    "DaClipConfig",
    "DaClipOutput",
    "build_daclip",
    "load_daclip_checkpoint",
)


def __getattr__(name: str) -> Any:
    if name in _DACLIP_EXPORTS:
        from uir_models.archs import daclip

        return getattr(daclip, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["NAFBlock", "NAFNet", "NAFNetConfig", *_DACLIP_EXPORTS]
