"""Built-in pipelines; importing this package registers them."""

from degradations.pipelines import prompt, realesrgan, tip

__all__ = ["prompt", "realesrgan", "tip"]
