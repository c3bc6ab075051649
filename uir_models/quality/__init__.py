"""Perceive-IR three-tier quality: the proxy restorer (``proxy``), the prompt-learned CLIP
quality perceiver (``perceiver``) and its training (``prompt_training``).

Import from the submodules: the perceiver needs open_clip, the proxy restorer only torch, so
a restorer-only environment can train and render proxies.
"""
