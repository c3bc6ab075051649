"""Built-in degradation types; importing this package registers them."""

from degradations.types import basic

__all__ = ["basic"]
