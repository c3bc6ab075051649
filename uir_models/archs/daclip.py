"""DA-CLIP controller (Luo et al., "Controlling Vision-Language Models for Multi-Task Image
Restoration", ICLR 2024), written from the paper's description and ../shared/specs/daclip.md.

A frozen open_clip CLIP; a trainable copy of its image encoder (the *controller*); after each
controller block a zero-initialised ``Linear(width, width)`` maps the block output to a *control*
that is added to the output of a block of the frozen encoder. The controller's pooled output is
the degradation embedding, the controlled frozen encoder's output the content embedding. At init
every control is zero, so the content embedding is exactly frozen CLIP's image embedding.

Losses: content InfoNCE (image vs caption) and a degradation loss over the type texts. Unlike the
reference's plain InfoNCE on ten texts (same-type pairs in a batch count as negatives, so the loss
cannot fall below about log(batch/10)), every loss here is the KL divergence from a target
distribution that puts equal mass on all true matches: its minimum is 0 for any batch.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from degradations.names import DACLIP_TYPES
from uir_models.config_keys import check_keys
from uir_models.quality.perceiver import ClipBundle, clip_input_size, load_clip

CONTROL_ORDERS = ("reference", "aligned")
"""reference: controller block L-1-i controls frozen block i (the release); aligned: block i."""
DEGRADATION_LOSSES = ("cross_entropy", "multi_positive")
_MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's clamp on the learned temperature


@dataclass(frozen=True)
class DaClipConfig:
    """Declarative DA-CLIP; unknown keys are rejected so a typo in a config fails loudly.

    ``pretrained`` is an open_clip tag, a local CLIP checkpoint or null (random weights);
    ``checkpoint`` is a DA-CLIP checkpoint (the release's or ours) loaded after building, and
    when given, ``pretrained`` is not fetched since the checkpoint holds the CLIP weights too.
    ``degradation_types`` order is the class index; ``type_prompt`` turns a name into its text
    ("{}" = the bare name, as the reference trains and evaluates).
    """

    clip_model: str = "ViT-B-32"
    pretrained: str | None = "laion2b_s34b_b79k"
    clip_model_config: Mapping[str, Any] | None = None
    checkpoint: str | None = None
    control_order: str = "reference"
    degradation_types: Sequence[str] = field(default_factory=lambda: [str(t) for t in DACLIP_TYPES])
    type_prompt: str = "{}"
    degradation_loss: str = "cross_entropy"
    content_loss_weight: float = 1.0
    degradation_loss_weight: float = 1.0

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DaClipConfig:
        check_keys(cls, values, "DA-CLIP config")
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.control_order not in CONTROL_ORDERS:
            raise ValueError(f"control_order {self.control_order!r} not in {CONTROL_ORDERS}")
        if self.degradation_loss not in DEGRADATION_LOSSES:
            raise ValueError(
                f"degradation_loss {self.degradation_loss!r} not in {DEGRADATION_LOSSES}"
            )
        types = list(self.degradation_types)
        if len(types) < 2 or len(set(types)) != len(types) or not all(types):
            raise ValueError(f"degradation_types must be >= 2 unique names, got {types}")
        if self.type_prompt.count("{}") != 1:
            raise ValueError(f"type_prompt must contain one '{{}}', got {self.type_prompt!r}")
        if self.content_loss_weight < 0 or self.degradation_loss_weight < 0:
            raise ValueError("loss weights must be >= 0")


@dataclass
class DaClipOutput:
    """Unit embeddings of a batch and what the losses need."""

    content: torch.Tensor
    degradation: torch.Tensor
    logit_scale: torch.Tensor
    caption_features: torch.Tensor | None = None
    caption_tokens: torch.Tensor | None = None


def floor_free_cross_entropy(logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean KL(p || softmax(logits)) over rows, p = ``weights`` normalised per row.

    Equals cross-entropy with soft targets minus their entropy: same gradients, but 0 at the
    optimum even when a row has several true matches. Rows without any weight are skipped.
    """
    valid = weights.sum(dim=-1) > 0
    if not bool(valid.any()):
        return logits.sum() * 0.0
    p = weights[valid].to(logits.dtype)
    p = p / p.sum(dim=-1, keepdim=True)
    log_q = F.log_softmax(logits[valid], dim=-1)
    return (torch.special.xlogy(p, p) - p * log_q).sum(dim=-1).mean()


def _symmetric(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """CLIP's two directions (image->text and text->image), averaged."""
    return 0.5 * (
        floor_free_cross_entropy(logits, positives)
        + floor_free_cross_entropy(logits.t(), positives.t())
    )


def _run_with_block_hooks(
    tower: nn.Module, x: torch.Tensor, hooks: Sequence[Callable[..., Any]]
) -> torch.Tensor:
    """Run a ViT tower with one forward hook per block, removed afterwards.

    Hooks keep open_clip's own forward (embeddings, pooling, projection); gradient checkpointing
    would re-run blocks without them, so it is refused.
    """
    if tower.transformer.grad_checkpointing:
        raise RuntimeError("DA-CLIP's block controls do not support grad checkpointing")
    blocks = tower.transformer.resblocks
    handles = [b.register_forward_hook(h) for b, h in zip(blocks, hooks, strict=True)]
    try:
        return tower(x)
    finally:
        for handle in handles:
            handle.remove()


class DaCLIP(nn.Module):
    """Frozen CLIP + trainable controller (image-encoder copy) + zero-init per-block controls.

    Trainable: ``controller``, ``controls`` and the learned ``logit_scale`` (started from CLIP's,
    as in the reference); everything under ``clip`` stays frozen and in eval mode.
    """

    def __init__(self, bundle: ClipBundle, config: DaClipConfig) -> None:
        super().__init__()
        config.validate()
        clip = bundle.model
        visual = clip.visual
        blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
        if blocks is None or getattr(visual, "output_tokens", False):
            raise TypeError(f"{bundle.model_name!r}: DA-CLIP needs a ViT image tower (no tokens)")
        clip.eval()
        clip.requires_grad_(False)
        self.clip = clip
        self.config = config
        self.model_name = bundle.model_name
        self.tokenizer = bundle.tokenizer
        self.controller = copy.deepcopy(visual).requires_grad_(True)
        width = visual.transformer.width
        self.controls = nn.ModuleList(nn.Linear(width, width) for _ in blocks)
        for proj in self.controls:
            nn.init.zeros_(proj.weight)
            nn.init.zeros_(proj.bias)
        self.logit_scale = nn.Parameter(clip.logit_scale.detach().clone())
        self.degradation_types = tuple(config.degradation_types)
        prompts = [config.type_prompt.format(name) for name in self.degradation_types]
        self.register_buffer("type_tokens", self.tokenizer(prompts), persistent=False)
        self.register_buffer("mean", torch.tensor(bundle.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(bundle.std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> DaCLIP:
        """Keep the frozen CLIP in eval mode whatever the controller's mode."""
        super().train(mode)
        self.clip.eval()
        return self

    @property
    def image_size(self) -> tuple[int, int]:
        return clip_input_size(self.clip)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] RGB (B, 3, H, W) -> CLIP input: shortest side resized (bicubic), centre crop,
        normalised. The reference's Resize + CenterCrop, done on tensors so it runs batched."""
        size = self.image_size
        if tuple(images.shape[-2:]) != size:
            h, w = images.shape[-2:]
            scale = max(size[0] / h, size[1] / w)
            new = (max(size[0], round(h * scale)), max(size[1], round(w * scale)))
            images = F.interpolate(images, size=new, mode="bicubic", antialias=True)
            top, left = (new[0] - size[0]) // 2, (new[1] - size[1]) // 2
            images = images[..., top : top + size[0], left : left + size[1]].clamp(0, 1)
        return (images - self.mean) / self.std

    def encode_image(
        self, images: torch.Tensor, *, preprocess: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(content, degradation) unit embeddings; ``images`` in [0, 1] unless not preprocess."""
        x = self.preprocess(images) if preprocess else images
        controls: list[torch.Tensor] = []

        def capture(proj: nn.Module) -> Callable[..., None]:
            return lambda _mod, _inp, out: controls.append(proj(out))

        degradation = _run_with_block_hooks(self.controller, x, [capture(p) for p in self.controls])
        if self.config.control_order == "reference":
            controls.reverse()

        def add(control: torch.Tensor) -> Callable[..., torch.Tensor]:
            return lambda _mod, _inp, out: out + control

        content = _run_with_block_hooks(self.clip.visual, x, [add(c) for c in controls])
        return F.normalize(content, dim=-1), F.normalize(degradation, dim=-1)

    def tokenize(self, texts: torch.Tensor | Sequence[str]) -> torch.Tensor:
        tokens = texts if isinstance(texts, torch.Tensor) else self.tokenizer(list(texts))
        return tokens.to(self.type_tokens.device)

    @torch.no_grad()
    def encode_text(self, texts: torch.Tensor | Sequence[str]) -> torch.Tensor:
        """Unit text features from the frozen text tower (no gradient: nothing there trains)."""
        return self.clip.encode_text(self.tokenize(texts), normalize=True)

    def type_features(self) -> torch.Tensor:
        """Unit text features (K, D) of the degradation type prompts, in class order."""
        return self.encode_text(self.type_tokens)

    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(0, _MAX_LOGIT_SCALE).exp()

    def forward(
        self, images: torch.Tensor, captions: torch.Tensor | Sequence[str] | None = None
    ) -> DaClipOutput:
        """Embeddings of [0, 1] images, and caption features when captions are given."""
        content, degradation = self.encode_image(images)
        out = DaClipOutput(content=content, degradation=degradation, logit_scale=self.scale())
        if captions is not None:
            out.caption_tokens = self.tokenize(captions)
            out.caption_features = self.encode_text(out.caption_tokens)
        return out

    def content_loss(self, out: DaClipOutput) -> torch.Tensor:
        """Symmetric InfoNCE image content vs captions; identical captions count as matches."""
        if out.caption_features is None or out.caption_tokens is None:
            raise ValueError("the content loss needs captions: call forward(images, captions)")
        logits = out.logit_scale * out.content @ out.caption_features.t()
        tokens = out.caption_tokens
        same = (tokens[:, None, :] == tokens[None, :, :]).all(dim=-1)
        return _symmetric(logits, same.to(logits.dtype))

    def degradation_loss(self, out: DaClipOutput, targets: torch.Tensor) -> torch.Tensor:
        """Degradation embedding vs type texts; ``targets`` (B, K) weights, several per row ok.

        cross_entropy: softmax over the K type texts, target mass split over the sample's
        labels. multi_positive: the reference's batch-wise contrast (each sample against every
        sample's degradation text) with all samples sharing a label as positives.
        """
        if targets.shape != (out.degradation.shape[0], len(self.degradation_types)):
            raise ValueError(
                f"targets shape {tuple(targets.shape)} != (batch, {len(self.degradation_types)})"
            )
        targets = targets.to(out.degradation.dtype)
        types = self.type_features().to(out.degradation.dtype)
        if self.config.degradation_loss == "cross_entropy":
            return floor_free_cross_entropy(out.logit_scale * out.degradation @ types.t(), targets)
        valid = targets.sum(dim=-1) > 0
        t = targets[valid]
        sample_texts = F.normalize(t @ types, dim=-1)  # a mixed sample's text: mean of its types
        logits = out.logit_scale * out.degradation[valid] @ sample_texts.t()
        return _symmetric(logits, t @ t.t())

    def loss(self, out: DaClipOutput, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted sum ``loss`` and its two parts, for logging."""
        content = self.content_loss(out)
        degradation = self.degradation_loss(out, targets)
        total = (
            self.config.content_loss_weight * content
            + self.config.degradation_loss_weight * degradation
        )
        return {"loss": total, "content_loss": content, "degradation_loss": degradation}

    @torch.no_grad()
    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """Probabilities (B, K) over ``degradation_types`` of [0, 1] images (zero-shot top-1)."""
        _, degradation = self.encode_image(images)
        return (self.scale() * degradation @ self.type_features().t()).softmax(dim=-1)

    def label_targets(
        self, labels: Sequence[Sequence[str]], *, ignore_unknown: bool = False
    ) -> torch.Tensor:
        """Multi-hot targets (B, K) from per-sample label lists (the shards' ``labels``).

        A label outside ``degradation_types`` raises unless ``ignore_unknown``; a sample left
        without any known label gets a zero row, which the degradation loss skips.
        """
        index = {name: i for i, name in enumerate(self.degradation_types)}
        targets = torch.zeros(len(labels), len(index), device=self.type_tokens.device)
        for row, names in enumerate(labels):
            for name in names:
                if name in index:
                    targets[row, index[name]] = 1.0
                elif not ignore_unknown:
                    raise ValueError(f"label {name!r} is not a degradation type {list(index)}")
        return targets


def build_daclip(config: DaClipConfig) -> DaCLIP:
    """CLIP from ``pretrained`` (skipped when a DA-CLIP ``checkpoint`` supplies it) + controller."""
    pretrained = None if config.checkpoint else config.pretrained
    model_config = dict(config.clip_model_config) if config.clip_model_config else None
    bundle = load_clip(config.clip_model, pretrained, model_config=model_config)
    model = DaCLIP(bundle, config)
    if config.checkpoint:
        load_daclip_checkpoint(model, config.checkpoint)
    return model


def release_to_ours(name: str) -> str:
    """Our parameter name for one of the reference release's.

    The release (``DaCLIP`` in the reference's open_clip fork) holds ``clip.*`` (the frozen
    CLIP), ``visual.*`` (the same image tower again), ``visual_control.*`` (the controller, whose
    ``transformer`` wraps the blocks as ``transformer.transformer.resblocks.*`` next to the
    ``transformer.zero_modules.*`` controls) and ``logit_scale``. Our own names map to
    themselves, so checkpoints we wrote load the same way.
    """
    rules = (
        ("visual_control.transformer.zero_modules.", "controls."),
        ("visual_control.transformer.transformer.", "controller.transformer."),
        ("visual_control.", "controller."),
        ("visual.", "clip.visual."),
    )
    for prefix, replacement in rules:
        if name.startswith(prefix):
            return replacement + name.removeprefix(prefix)
    return name


def _read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors of a .pt/.pth (bare or an open_clip training checkpoint) or .safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DA-CLIP checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} holds {type(state).__name__}, not a state dict")
    # DDP training checkpoints prefix every name with "module.".
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_daclip_checkpoint(model: DaCLIP, path: str | os.PathLike[str]) -> None:
    """Load a released DA-CLIP checkpoint (or one of ours) into ``model``, all or nothing.

    Raises ``ValueError`` naming missing, unexpected and mis-shaped tensors, e.g. a ViT-B-32
    release loaded into another CLIP size.
    """
    mapped: dict[str, torch.Tensor] = {}
    for name, tensor in _read_state_dict(path).items():
        # clip.visual.* comes before its duplicate visual.* in the release: keep the first.
        mapped.setdefault(release_to_ours(name), tensor)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(mapped))
    unexpected = sorted(set(mapped) - set(expected))
    shapes = sorted(
        f"{k}: file {tuple(mapped[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(mapped) & set(expected)
        if mapped[k].shape != expected[k].shape
    )
    if missing or unexpected or shapes:

        def head(items: list[str]) -> str:
            return ", ".join(items[:8]) + (f" ... ({len(items)} in all)" if len(items) > 8 else "")

        problems = [
            f"{label}: {head(items)}"
            for label, items in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("shape mismatch", shapes),
            )
            if items
        ]
        raise ValueError(
            f"DA-CLIP checkpoint {path} does not fit {model.model_name!r} with "
            f"{len(model.controls)} controlled blocks; " + "; ".join(problems)
        )
    model.load_state_dict(mapped, strict=True)
