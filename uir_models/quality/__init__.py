"""Perceive-IR three-tier quality: the proxy restorer (``proxy``), the prompt-learned CLIP
quality perceiver (``perceiver``), its training (``prompt_training``) and the type-balanced
sampling both train with (``balance``).

Import from the submodules: the perceiver needs open_clip, the proxy restorer only torch, so
a restorer-only environment can train and render proxies.
"""

QUALITY_CLASSES = ("terrible", "mediocre", "excellent")
"""The perceiver's classes; their order is the label: bad (LQ)=0, medium (MQ)=1, good (HQ)=2.

Defined here, free of imports, so the dataset side can name the classes without open_clip."""
