"""Built-in pipelines; importing this package registers them."""

from degradations.pipelines import mixed, prompt, realesrgan, tip

__all__ = ["mixed", "prompt", "realesrgan", "tip"]
