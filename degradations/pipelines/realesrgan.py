"""Real-ESRGAN second-order degradation, every random choice drawn per sample.

Defaults are the x4plus training options (shared/specs/realesrgan.md). Unlike the reference,
nothing is drawn once per batch (so no 180-pair remix pool is needed), JPEG is a real codec,
and the plan is recorded so the sample can be replayed.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from degradations.config import Config, Probability, Range
from degradations.kernels import KernelFamily, sample_kernel, sample_sinc
from degradations.names import BLIND_PROMPT, Degradation
from degradations.primitives import ResizeMode
from degradations.registry import Plan, register_pipeline, step
from degradations.seeding import draw_seed

ODD_SIZES = tuple(range(7, 22, 2))
LQSize = Literal["lr", "hr"]


class KernelConfig(Config):
    sizes: tuple[int, ...] = ODD_SIZES
    sinc_prob: Probability = 0.1
    sinc_small_size: int = 13  # below it the sinc cutoff starts at pi/3, else at pi/5
    family_probs: dict[KernelFamily, Probability] = Field(
        default_factory=lambda: {
            KernelFamily.ISO: 0.45,
            KernelFamily.ANISO: 0.25,
            KernelFamily.GENERALIZED_ISO: 0.12,
            KernelFamily.GENERALIZED_ANISO: 0.03,
            KernelFamily.PLATEAU_ISO: 0.12,
            KernelFamily.PLATEAU_ANISO: 0.03,
        }
    )
    sigma: Range = (0.2, 3.0)
    generalized_beta: Range = (0.5, 4.0)
    plateau_beta: Range = (1.0, 2.0)

    @model_validator(mode="after")
    def _check(self) -> KernelConfig:
        if not self.sizes or any(s < 1 or s % 2 == 0 for s in self.sizes):
            raise ValueError(f"kernel sizes must be positive odd integers, got {self.sizes}")
        bad = {KernelFamily.SINC, KernelFamily.PULSE} & set(self.family_probs)
        if bad:
            raise ValueError(f"family_probs cannot contain {sorted(bad)}; use sinc_prob")
        if not math.isclose(sum(self.family_probs.values()), 1.0, abs_tol=1e-6):
            raise ValueError("family_probs must sum to 1")
        return self


class ResizeConfig(Config):
    up_prob: Probability = 0.2
    down_prob: Probability = 0.7
    keep_prob: Probability = 0.1
    up: Range = (1.0, 1.5)
    down: Range = (0.15, 1.0)
    modes: tuple[ResizeMode, ...] = (ResizeMode.AREA, ResizeMode.BILINEAR, ResizeMode.BICUBIC)

    @model_validator(mode="after")
    def _check(self) -> ResizeConfig:
        if not math.isclose(self.up_prob + self.down_prob + self.keep_prob, 1.0, abs_tol=1e-6):
            raise ValueError("up_prob + down_prob + keep_prob must be 1")
        return self


class NoiseConfig(Config):
    gaussian_prob: Probability = 0.5
    gaussian_sigma: Range = (1.0, 30.0)  # on the 0-255 scale, as the reference writes it
    poisson_scale: Range = (0.05, 3.0)
    gray_prob: Probability = 0.4


class StageConfig(Config):
    blur_prob: Probability = 1.0
    kernel: KernelConfig = KernelConfig()
    resize: ResizeConfig = ResizeConfig()
    noise: NoiseConfig = NoiseConfig()


class SharpenConfig(Config):
    enabled: bool = True
    kernel_size: int = 51
    sigma: float = 8.0
    weight: float = 0.5
    threshold: float = 10.0


SECOND_STAGE = StageConfig(
    blur_prob=0.8,
    kernel=KernelConfig(sigma=(0.2, 1.5)),
    resize=ResizeConfig(up_prob=0.3, down_prob=0.4, keep_prob=0.3, up=(1.0, 1.2), down=(0.3, 1.0)),
    noise=NoiseConfig(gaussian_sigma=(1.0, 25.0), poisson_scale=(0.05, 2.5)),
)


class RealESRGANConfig(Config):
    scale_key: ClassVar[str] = "scale"

    scale: Literal[1, 2, 4] = 4
    lq_size: LQSize = "lr"  # "hr": resize the LQ back to HQ size for same-size restorers
    resize_back_mode: ResizeMode = ResizeMode.BICUBIC
    sharpen: SharpenConfig = SharpenConfig()
    first: StageConfig = StageConfig()
    first_jpeg_quality: Range = (30.0, 95.0)
    second: StageConfig = SECOND_STAGE
    final_sinc_prob: Probability = 0.8
    final_sinc_sizes: tuple[int, ...] = ODD_SIZES
    final_sinc_cutoff: Range = (math.pi / 3, math.pi)
    final_jpeg_quality: Range = (30.0, 95.0)
    resize_then_jpeg_prob: Probability = 0.5  # final order A (resize, sinc, JPEG) vs B


def _resize_factor(rng: np.random.Generator, config: ResizeConfig) -> float:
    direction = rng.choice(3, p=[config.up_prob, config.down_prob, config.keep_prob])
    if direction == 0:
        return float(rng.uniform(*config.up))
    if direction == 1:
        return float(rng.uniform(*config.down))
    return 1.0


def _mode(rng: np.random.Generator, modes: tuple[ResizeMode, ...]) -> str:
    return str(modes[int(rng.integers(len(modes)))])


def _noise(rng: np.random.Generator, config: NoiseConfig) -> dict[str, Any]:
    if rng.uniform() < config.gaussian_prob:
        sigma = float(rng.uniform(*config.gaussian_sigma)) / 255.0
        return step("gaussian_noise", sigma=sigma, gray=bool(rng.uniform() < config.gray_prob),
                    seed=draw_seed(rng))
    scale = float(rng.uniform(*config.poisson_scale))
    return step("poisson_noise", scale=scale, gray=bool(rng.uniform() < config.gray_prob),
                seed=draw_seed(rng))


def _jpeg(rng: np.random.Generator, quality: tuple[float, float]) -> dict[str, Any]:
    return step("jpeg", quality=round(rng.uniform(*quality)))


def _labels(ops: list[dict[str, Any]], scale: int) -> list[str]:
    names = {o["op"] for o in ops}
    blurred = any(o["op"] == "filter" and o["params"]["kernel"]["family"] != "pulse" for o in ops)
    labels = [Degradation.BLURRY] if blurred else []
    if scale > 1:
        labels.append(Degradation.LOW_RESOLUTION)
    if names & {"gaussian_noise", "poisson_noise"}:
        labels.append(Degradation.NOISY)
    labels.append(Degradation.JPEG_COMPRESSED)
    return [str(label) for label in labels]


def plan_realesrgan(
    shape: tuple[int, int], rng: np.random.Generator, config: RealESRGANConfig
) -> Plan:
    """Real-ESRGAN second-order degradation (x4plus defaults), per-sample draws."""
    height, width = shape
    lr_height, lr_width = max(1, height // config.scale), max(1, width // config.scale)
    ops: list[dict[str, Any]] = []
    if config.sharpen.enabled:
        sharpen = config.sharpen
        ops.append(step("usm_sharpen", kernel_size=sharpen.kernel_size, sigma=sharpen.sigma,
                        weight=sharpen.weight, threshold=sharpen.threshold))

    # First stage: blur, resize by a factor, noise, JPEG.
    first = config.first
    if rng.uniform() < first.blur_prob:
        ops.append(step("filter", kernel=sample_kernel(rng, first.kernel)))
    factor = _resize_factor(rng, first.resize)
    size = [max(1, math.floor(height * factor)), max(1, math.floor(width * factor))]
    ops.append(step("resize", size=size, mode=_mode(rng, first.resize.modes)))
    ops.append(_noise(rng, first.noise))
    ops.append(_jpeg(rng, config.first_jpeg_quality))

    # Second stage: blur (sometimes), resize relative to the LR size, noise.
    second = config.second
    if rng.uniform() < second.blur_prob:
        ops.append(step("filter", kernel=sample_kernel(rng, second.kernel)))
    factor = _resize_factor(rng, second.resize)
    size = [max(1, int(height / config.scale * factor)), max(1, int(width / config.scale * factor))]
    ops.append(step("resize", size=size, mode=_mode(rng, second.resize.modes)))
    ops.append(_noise(rng, second.noise))

    # Final stage: resize to LR + sinc, and JPEG, in one of two orders.
    if rng.uniform() < config.final_sinc_prob:
        kernel = sample_sinc(rng, config.final_sinc_sizes, config.final_sinc_cutoff)
    else:
        kernel = {"family": "pulse", "size": 21}
    resize_to_lr = step("resize", size=[lr_height, lr_width], mode=_mode(rng, second.resize.modes))
    sinc = step("filter", kernel=kernel)
    final_jpeg = _jpeg(rng, config.final_jpeg_quality)
    if rng.uniform() < config.resize_then_jpeg_prob:
        ops += [resize_to_lr, sinc, final_jpeg]
        order = "resize-sinc-jpeg"
    else:
        ops += [final_jpeg, resize_to_lr, sinc]
        order = "jpeg-resize-sinc"

    if config.lq_size == "hr":
        ops.append(step("quantize"))
        ops.append(step("resize", size=[height, width], mode=config.resize_back_mode))
    return Plan(
        ops=ops,
        prompt=BLIND_PROMPT,
        labels=_labels(ops, config.scale),
        info={"scale": config.scale, "lq_size": config.lq_size, "final_order": order,
              "sharpen_gt": config.sharpen.enabled},
    )


register_pipeline("realesrgan", version=1, config=RealESRGANConfig)(plan_realesrgan)
