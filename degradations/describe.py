"""A one-line human summary of a record's ops, for contact sheets and logs.

Prompts say what to restore ("Remove all degradation"); curators also want to see what was
actually done to the image, which the record holds in full.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _kernel(kernel: Mapping[str, Any]) -> str:
    family, size = kernel["family"], kernel["size"]
    if family == "sinc":
        return f"sinc{size} wc={kernel['cutoff']:.2f}"
    if "sigma" in kernel:
        shape = f"s={kernel['sigma']:.2f}"
    else:
        shape = f"s={kernel['sigma_x']:.1f}/{kernel['sigma_y']:.1f}"
    beta = f" b={kernel['beta']:.2f}" if "beta" in kernel else ""
    return f"{family}{size} {shape}{beta}"


def describe_op(entry: Mapping[str, Any]) -> str | None:
    """Short text for one op; None for ops that change nothing visible."""
    name, params = entry["op"], entry.get("params", {})
    if name == "filter":
        return None if params["kernel"]["family"] == "pulse" else _kernel(params["kernel"])
    if name == "resize":
        return f"resize {params['size'][1]}x{params['size'][0]} {params['mode']}"
    if name == "gaussian_noise":
        return f"{'grey ' if params['gray'] else ''}gauss {params['sigma'] * 255:.1f}/255"
    if name == "poisson_noise":
        return f"{'grey ' if params['gray'] else ''}poisson x{params['scale']:.2f}"
    if name == "jpeg":
        return f"jpeg q{params['quality']}"
    if name == "usm_sharpen":
        return "usm"
    if name == "quantize":
        return None
    shown = " ".join(f"{k}={v}" for k, v in params.items() if k != "seed")
    return f"{name} {shown}".strip()


def describe(record: Mapping[str, Any]) -> str:
    parts = (describe_op(entry) for entry in record["ops"])
    return " > ".join(part for part in parts if part)
