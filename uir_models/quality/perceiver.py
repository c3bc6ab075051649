"""CoOp-style quality perceiver over a frozen open_clip model (Perceive-IR).

Three learned prompts ("terrible", "mediocre", "excellent") tell bad (LQ), medium (proxy-restored)
and good (HQ) images apart in CLIP space; the same prompts give the ``L_clip`` restoration loss.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import CLIP, text_global_pool
from torch import nn

from uir_models.quality import QUALITY_CLASSES

EXCELLENT = QUALITY_CLASSES.index("excellent")
_CONTEXT_FORMAT = 1
_TRUTHY = {"1", "on", "yes", "true"}


class WeightsUnavailableError(RuntimeError):
    """Pretrained CLIP weights cannot be had (offline and not cached, or the download failed)."""


@dataclass(frozen=True)
class ClipBundle:
    """A loaded CLIP with what the perceiver needs to rebuild and describe it."""

    model: CLIP
    tokenizer: open_clip.tokenizer.SimpleTokenizer
    model_name: str
    pretrained: str | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def _hub_offline() -> bool:
    """Read the env at call time: huggingface_hub only reads HF_HUB_OFFLINE on import."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUTHY


def _cached_tag_file(tag_cfg: dict, cache_dir: str | None) -> str | None:
    """Locally cached weights for a tag, found without touching the network."""
    from huggingface_hub import try_to_load_from_cache

    hub = tag_cfg.get("hf_hub", "")
    if hub:
        repo_id, filename = os.path.split(hub)
        filename = filename or open_clip.pretrained.HF_WEIGHTS_NAME
        names = [*open_clip.pretrained._get_safe_alternatives(filename), filename]
        for name in names:
            found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
            if isinstance(found, str):
                return found
        return None
    url = tag_cfg.get("url", "")
    if url:
        root = cache_dir or os.path.expanduser("~/.cache/clip")
        path = os.path.join(root, os.path.basename(url))
        return path if os.path.isfile(path) else None
    return None


CLIP_CONFIG_DIR = Path(__file__).resolve().parents[1] / "clip_configs"
"""Our own open_clip architectures (tiny CI models), found by name like open_clip's own."""


def _register_config(model_name: str, model_config: dict) -> None:
    """open_clip only builds models from registered JSON configs, so register one file."""
    missing = {"embed_dim", "vision_cfg", "text_cfg"} - set(model_config)
    if missing:
        raise ValueError(f"model_config for {model_name!r} lacks {sorted(missing)}")
    # open_clip reads the file when it is added and keeps the config after the file is gone
    with tempfile.TemporaryDirectory(prefix="uir_clip_cfg_") as folder:
        path = Path(folder) / f"{model_name}.json"
        path.write_text(json.dumps(model_config))
        open_clip.add_model_config(path)


def _unavailable(model_name: str, tag: str, why: str) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"open_clip weights {model_name!r} / tag {tag!r} are unavailable: {why}. Download them "
        f"where a network is reachable, or pass a local checkpoint file as "
        f"load_clip({model_name!r}, pretrained='/path/to/open_clip_model.safetensors')."
    )


def load_clip(
    model_name: str = "ViT-B-32",
    pretrained: str | None = "laion2b_s34b_b79k",
    *,
    model_config: dict | None = None,
    cache_dir: str | None = None,
) -> ClipBundle:
    """Build an open_clip model with weights from a tag, a local checkpoint path, or none.

    ``model_config`` registers a custom architecture under ``model_name`` (tiny test models);
    names of files in ``uir_models/clip_configs`` (e.g. ``uir-clip-tiny``) register themselves;
    ``pretrained=None`` leaves its weights random. Tags are resolved from the local cache first
    when HF_HUB_OFFLINE is set, so an offline run fails at once instead of retrying the network.
    """
    bundled = CLIP_CONFIG_DIR / f"{model_name}.json"
    if model_config is None and bundled.is_file():
        model_config = json.loads(bundled.read_text())
    if model_config is not None:
        _register_config(model_name, model_config)
    source = pretrained
    extra: dict = {}
    tag_cfg = None
    if pretrained is not None and not os.path.isfile(pretrained):
        tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained) or None
        if tag_cfg is None:
            raise ValueError(
                f"{pretrained!r} is neither a checkpoint file nor an open_clip tag of "
                f"{model_name!r}; tags: {open_clip.list_pretrained_tags_by_model(model_name)}"
            )
        if _hub_offline():
            cached = _cached_tag_file(tag_cfg, cache_dir)
            if cached is None:
                raise _unavailable(model_name, pretrained, "HF_HUB_OFFLINE is set, not cached")
            source = cached
            extra = {"image_mean": tag_cfg.get("mean"), "image_std": tag_cfg.get("std")}
    try:
        model, _, _ = open_clip.create_model_and_transforms(
            model_name, pretrained=source, cache_dir=cache_dir, **extra
        )
    except RuntimeError as err:
        if tag_cfg is None:
            raise
        raise _unavailable(model_name, str(pretrained), str(err)) from err
    if not isinstance(model, CLIP):
        raise TypeError(f"{model_name!r} builds {type(model).__name__}; the perceiver needs CLIP")
    pre = model.visual.preprocess_cfg
    return ClipBundle(
        model=model,
        tokenizer=open_clip.get_tokenizer(model_name),
        model_name=model_name,
        pretrained=pretrained,
        mean=tuple(pre["mean"]),
        std=tuple(pre["std"]),
    )


def clip_input_size(clip: CLIP) -> tuple[int, int]:
    """(height, width) of CLIP's image input: open_clip's ResNet towers (RN50...) store an int."""
    size = clip.visual.image_size
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


class QualityPerceiver(nn.Module):
    """Three CoOp prompts of ``n_ctx`` learned vectors over a frozen CLIP.

    Only ``ctx`` (3, n_ctx, text width) trains; the last context vector of each prompt starts at
    its class word's token embedding ("partial random initialisation" in Perceive-IR).
    """

    def __init__(
        self, bundle: ClipBundle, n_ctx: int = 16, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        clip = bundle.model
        clip.eval()
        clip.requires_grad_(False)
        self.clip = clip
        self.model_name = bundle.model_name
        self.pretrained = bundle.pretrained
        self.n_ctx = n_ctx

        placeholder = " ".join(["X"] * n_ctx)
        tokens = bundle.tokenizer([f"{placeholder} {name}." for name in QUALITY_CLASSES])
        class_ids = []
        for name in QUALITY_CLASSES:
            ids = bundle.tokenizer([name])[0]
            if int((ids != 0).sum()) != 3:
                raise ValueError(f"class word {name!r} is not a single BPE token")
            class_ids.append(int(ids[1]))
        with torch.no_grad():
            embedded = clip.token_embedding(tokens)
            ctx = torch.randn(len(QUALITY_CLASSES), n_ctx, embedded.shape[-1], generator=generator)
            ctx = ctx * 0.02
            ctx[:, -1] = clip.token_embedding(torch.tensor(class_ids))
        self.ctx = nn.Parameter(ctx)
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("prefix", embedded[:, :1].clone(), persistent=False)
        self.register_buffer("suffix", embedded[:, 1 + n_ctx :].clone(), persistent=False)
        self.register_buffer("mean", torch.tensor(bundle.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(bundle.std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> QualityPerceiver:
        """Keep the frozen CLIP in eval mode whatever the perceiver's mode."""
        super().train(mode)
        self.clip.eval()
        return self

    def prompt_features(self) -> torch.Tensor:
        """Unit text features of the three prompts: SOS + ctx + rest, pooled at EOT."""
        clip = self.clip
        x = torch.cat([self.prefix, self.ctx, self.suffix], dim=1)
        x = x + clip.positional_embedding.to(x.dtype)
        x = clip.transformer(x, attn_mask=clip.attn_mask)
        x = clip.ln_final(x)
        eos_id = getattr(clip, "text_eos_id", None)
        x = text_global_pool(x, self.tokens, clip.text_pool_type, eos_id)
        if clip.text_projection is not None:
            proj = clip.text_projection
            x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        return F.normalize(x, dim=-1)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Unit image features of [0, 1] RGB images, resized to CLIP's input when needed."""
        size = clip_input_size(self.clip)
        if tuple(images.shape[-2:]) != size:
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        images = (images - self.mean) / self.std
        return F.normalize(self.clip.encode_image(images), dim=-1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, 3): logit_scale.exp() * cosine(image, prompt)."""
        cos = self.image_features(images) @ self.prompt_features().t()
        return self.clip.logit_scale.exp() * cos

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Softmax over (terrible, mediocre, excellent)."""
        return self(images).softmax(dim=-1)

    def clip_quality_loss(self, images: torch.Tensor) -> torch.Tensor:
        """L_clip = mean(1 - P(excellent)), scaled logits (unscaled, the softmax is ~uniform)."""
        return (1.0 - self.probabilities(images)[:, EXCELLENT]).mean()

    def save_context(self, path: str | Path) -> None:
        """Write only the learned context and what it was learned over (a small file)."""
        torch.save(
            {
                "format": _CONTEXT_FORMAT,
                "ctx": self.ctx.detach().cpu(),
                "model_name": self.model_name,
                "pretrained": self.pretrained,
                "n_ctx": self.n_ctx,
                "classes": list(QUALITY_CLASSES),
            },
            path,
        )

    def load_context(self, path: str | Path) -> None:
        """Restore the learned context; refuse a file made for another CLIP or prompt length."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        expected = (self.model_name, self.n_ctx, list(QUALITY_CLASSES))
        found = (state["model_name"], state["n_ctx"], state["classes"])
        if found != expected or state["ctx"].shape != self.ctx.shape:
            raise ValueError(f"context file {path} is for {found}, this perceiver is {expected}")
        with torch.no_grad():
            self.ctx.copy_(state["ctx"])


def train_step(
    perceiver: QualityPerceiver,
    optimizer: torch.optim.Optimizer,
    lq: torch.Tensor,
    mq: torch.Tensor,
    hq: torch.Tensor,
) -> tuple[float, float]:
    """One cross-entropy step over the stacked triplet, labels bad=0 / medium=1 / good=2.

    Returns the loss and the batch's three-way accuracy (before the update).
    """
    perceiver.train()
    images = torch.cat([lq, mq, hq])
    labels = torch.arange(len(QUALITY_CLASSES), device=images.device).repeat_interleave(len(lq))
    logits = perceiver(images)
    loss = F.cross_entropy(logits, labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach()), float((logits.detach().argmax(-1) == labels).float().mean())
