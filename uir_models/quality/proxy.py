"""Proxy restorer for Perceive-IR's medium tier: training loop, checkpoints and rendering.

The medium image of a sample is its LQ restored by a restorer that never saw it (2-fold
cross-validation, see ``shared/specs/perceive_ir.md``). This module trains one such restorer
on a set of (LQ, HQ) pairs and renders LQ images with it; splitting into folds, reading
shards and writing the manifest belong to the integration layer.

Reproducibility is the design constraint: model init and every batch derive from
``settings.seed`` (batch ``s`` from ``np.random.default_rng([seed, s])``), and a checkpoint
holds everything else (weights, optimizer, schedule, loss history), so an interrupted run
that resumes gives, on CPU, bit-identical losses and weights to an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, Protocol, get_args, runtime_checkable

import numpy as np
import torch
from torch import nn

from uir_models.checkpoints import CheckpointError, read_checkpoint, write_atomic
from uir_models.data.transforms import paired_channel_shuffle
from uir_models.devices import resolve_device
from uir_models.factory import create_model, get_model_config
from uir_models.losses import PixelLoss, loss_identity, restoration_loss
from uir_models.quality.balance import Balance, balanced_indices, type_groups
from uir_models.tiling import restore_tiled

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
"""Bumped when the checkpoint layout changes; other versions are refused, not guessed at."""
TRAINER_VERSION = 2
"""Part of the settings digest: bump when batch drawing or the update rule changes, so an old
checkpoint is not resumed with different semantics."""
_CHECKPOINT_KIND = "uir-proxy-restorer"
_CHECKPOINT_KEYS = frozenset(
    ("format", "kind", "model_config", "model", "optimizer", "scheduler", "step", "losses")
) | {"digest"}
_NOT_IN_DIGEST = frozenset({"device", "amp", "checkpoint_every"})

Condition = Literal["none", "types"]
CONDITIONED_ARCH = "nafnet_daclip"
"""The architecture a type-conditioned proxy needs (with ``content_attention: false``): a
NAFNet whose blocks a vector modulates."""


class ProxyCheckpointError(CheckpointError):
    """A proxy checkpoint exists but cannot be read; it is never discarded silently."""


def _model_config(model: str | Mapping[str, Any]) -> dict[str, Any]:
    """The full config a factory name or path stands for, so checkpoints survive renames."""
    if isinstance(model, str):
        return get_model_config(model)
    if isinstance(model, Mapping):
        return dict(model)
    raise TypeError(f"model must be a factory name or a config mapping, got {type(model)}")


@dataclass(frozen=True)
class ProxyTrainSettings:
    """Everything that decides the trained weights, plus how to run (device, amp, checkpoints).

    Defaults follow the Perceive-IR reference (L1, AdamW 2e-4 cosine to 1e-6, patch 128),
    except the model, which is CI-sized: pass ``"nafnet-proxy"`` for the paper-sized one.
    """

    model: str | Mapping[str, Any] = "nafnet-tiny"
    iterations: int = 20000
    batch_size: int = 8
    patch_size: int = 128
    lr: float = 2e-4
    min_lr: float = 1e-6
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    checkpoint_every: int = 500
    seed: int = 0
    device: str = "auto"
    # bf16 autocast on CUDA; off by default: at batch 8 the paper-size step is launch-bound and
    # bf16 casts made it slower on an H100 (122 vs 162 ms); it pays from batch ~32.
    amp: bool = False
    # "l1" is the Perceive-IR reference. "psnr" (NAFNet's PSNR loss, mean of per-sample log MSE)
    # weighs every sample alike: with few images and degradations of very different strength,
    # L1 is dominated by the severe ones and the proxy over-processes mild ones.
    loss: PixelLoss = "l1"
    # "types": draw a degradation type uniformly, then a pair carrying it (needs the pairs'
    # labels). With few images the types only some recipes make (low light, haze, shadow)
    # are otherwise a few percent of the batches, and the proxy never learns to undo them.
    balance: Balance = "none"
    # The same random RGB order on LQ and HQ (the RGB permutation of Yoo et al., CVPR 2020):
    # trained on a few photos' palettes, a proxy otherwise shifts the colours of an unseen
    # palette (the demo's red fundus photo lost 5-8 dB on nearly clean samples).
    channel_shuffle: bool = False
    # "types": the proxy is told each image's degradation types (a multi-hot vector over the
    # types it trained on), so it needs a conditioned model (nafnet-typed-tiny). A blind proxy
    # trained on few photos averages what the types need (brightening, desnowing) and applies
    # it everywhere; told the types, it can leave a motion-blurred photo's colours alone.
    condition: Condition = "none"

    def __post_init__(self) -> None:
        # Settings often come from YAML: normalise types so equal settings digest equally.
        for name in ("lr", "min_lr", "weight_decay"):
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        positive = ("iterations", "batch_size", "patch_size", "checkpoint_every")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0 (numpy seeds are non-negative), got {self.seed}")
        if not (self.lr > 0 and 0 <= self.min_lr <= self.lr):
            raise ValueError(f"need lr > 0 and 0 <= min_lr <= lr, got {self.lr=}, {self.min_lr=}")
        if len(self.betas) != 2:
            raise ValueError(f"betas must be two numbers, got {self.betas}")
        if self.balance not in get_args(Balance):
            raise ValueError(f"balance must be one of {get_args(Balance)}, got {self.balance!r}")
        if self.condition not in get_args(Condition):
            raise ValueError(
                f"condition must be one of {get_args(Condition)}, got {self.condition!r}"
            )
        config = _model_config(self.model)
        conditioned = config.get("arch") == CONDITIONED_ARCH
        attends = config.get("content_attention", conditioned)  # the arch's default: true
        if conditioned != (self.condition == "types") or attends:
            raise ValueError(
                f"condition {self.condition!r} with model {self.model!r}: condition 'types' "
                f"needs a conditioned model (arch {CONDITIONED_ARCH} with content_attention "
                "false, such as nafnet-typed-tiny), condition 'none' a blind one (such as "
                "nafnet-tiny)"
            )

    def canonical(self) -> dict[str, Any]:
        """The digested fields, with the model resolved to its full config."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values = {k: v for k, v in values.items() if k not in _NOT_IN_DIGEST}
        values["model"] = _model_config(self.model)
        values["loss"] = loss_identity(self.loss)  # the PSNR floor too, as for the restorers
        values["betas"] = list(self.betas)
        values["trainer_version"] = TRAINER_VERSION
        return values

    def digest(self) -> str:
        """sha256 of the canonical JSON of every field except device, amp, checkpoint_every.

        Those three change how fast a run goes, not what it computes (amp changes CUDA
        rounding only), so a run may resume on another device or checkpoint cadence.
        """
        text = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


class PairSet(Protocol):
    """Random-access (LQ, HQ) pairs: uint8 HxWx3 arrays of the same size."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]: ...


@runtime_checkable
class LabelledPairSet(PairSet, Protocol):
    """Pairs that also name their degradation types, for type-balanced batches and the
    type-conditioned proxy."""

    def labels(self, index: int) -> tuple[str, ...]: ...


class TypeConditionedProxy(nn.Module):
    """A proxy restorer told which degradation types an image carries.

    ``forward(x, types)`` takes the multi-hot ``(B, len(types))`` from :meth:`encode`; labels
    the proxy never trained on are left out of the vector. :meth:`bind` fixes one image's
    labels, giving the ``forward(x)`` module that tiling runs.
    """

    def __init__(self, model: nn.Module, types: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.types = tuple(types)
        self._column = {name: i for i, name in enumerate(self.types)}

    @property
    def size_multiple(self) -> int:
        return int(getattr(self.model, "size_multiple", 1))

    def encode(self, labels: Sequence[Sequence[str]], device: torch.device) -> torch.Tensor:
        hot = torch.zeros(len(labels), len(self.types), device=device)
        for row, names in enumerate(labels):
            for name in names:
                if name in self._column:
                    hot[row, self._column[name]] = 1.0
        return hot

    def forward(self, x: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        return self.model(x, types)

    def bind(self, labels: Sequence[str]) -> nn.Module:
        return _BoundTypes(self, labels)


class _BoundTypes(nn.Module):
    """One image's labels, encoded once for all of its tiles."""

    def __init__(self, proxy: TypeConditionedProxy, labels: Sequence[str]) -> None:
        super().__init__()
        self.proxy = proxy
        device = next(proxy.parameters()).device
        self.hot = proxy.encode([tuple(labels)], device)

    @property
    def size_multiple(self) -> int:
        return self.proxy.size_multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proxy(x, self.hot.to(x.device).expand(x.shape[0], -1))


@dataclass
class ProxyTrainResult:
    """The trained model (eval mode, on the training device) and how training went."""

    model: nn.Module
    losses: list[float]
    resumed_from: int
    steps_per_second: float


def _load_pair(pairs: PairSet, index: int) -> tuple[np.ndarray, np.ndarray]:
    lq, hq = pairs[index]
    lq, hq = np.asarray(lq), np.asarray(hq)
    for name, arr in (("LQ", lq), ("HQ", hq)):
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(
                f"pair {index}: {name} must be uint8 HxWx3, got {arr.dtype} {arr.shape}"
            )
    if lq.shape != hq.shape:
        raise ValueError(f"pair {index}: LQ {lq.shape} and HQ {hq.shape} differ in size")
    return lq, hq


def draw_batch(
    pairs: PairSet,
    batch_size: int,
    patch_size: int,
    seed: int,
    step: int,
    groups: dict[str, list[int]] | None = None,
    channel_shuffle: bool = False,
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """The (LQ, HQ) uint8 batch (B, P, P, 3) of training step ``step`` and the indices of its
    pairs; a pure function.

    Pairs are drawn with replacement, uniformly or, given ``groups`` (pair indices by type),
    a type uniformly and then a pair of it. Each gets a random crop, horizontal flip and rot90
    (the 8 dihedral transforms) and, with ``channel_shuffle``, a random order of its RGB
    channels, the same on LQ and HQ so they stay aligned. A pair smaller than the patch is not
    an error: the batch's side is ``min(patch_size, smallest side of the drawn pairs)``, so
    small images train at their own size.
    """
    rng = np.random.default_rng([seed, step])
    if groups is None:
        indices = [int(i) for i in rng.integers(0, len(pairs), size=batch_size)]
    else:
        indices = balanced_indices(groups, batch_size, rng)
    loaded = [_load_pair(pairs, i) for i in indices]
    size = min(patch_size, *(min(lq.shape[:2]) for lq, _ in loaded))
    out_lq = np.empty((batch_size, size, size, 3), dtype=np.uint8)
    out_hq = np.empty_like(out_lq)
    for j, (lq, hq) in enumerate(loaded):
        top = int(rng.integers(0, lq.shape[0] - size + 1))
        left = int(rng.integers(0, lq.shape[1] - size + 1))
        flip = bool(rng.integers(0, 2))
        turns = int(rng.integers(0, 4))
        crops = (lq[top : top + size, left : left + size], hq[top : top + size, left : left + size])
        if channel_shuffle:  # on the crops: permuting whole images copies them
            crops = paired_channel_shuffle(*crops, rng)
        for crop, dst in zip(crops, (out_lq, out_hq), strict=True):
            dst[j] = np.rot90(crop[:, ::-1] if flip else crop, turns)
    return out_lq, out_hq, indices


def _to_device(batch: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 BxHxWx3 -> float NCHW in [0,1] on ``device``; converts after the (4x smaller) copy.

    On CUDA the copy is from pinned memory and asynchronous, so the CPU can draw the next
    batch while the GPU still runs this step.
    """
    tensor = torch.from_numpy(batch)
    if device.type == "cuda":
        tensor = tensor.pin_memory().to(device, non_blocking=True)
    return tensor.permute(0, 3, 1, 2).float().div_(255.0)


def _read_checkpoint(path: Path) -> dict[str, Any]:
    return read_checkpoint(
        path,
        "proxy restorer checkpoint",
        kind=_CHECKPOINT_KIND,
        format_version=CHECKPOINT_FORMAT,
        keys=_CHECKPOINT_KEYS,
        error=ProxyCheckpointError,
    )


def _build_model(config: Mapping[str, Any], seed: int) -> nn.Module:
    """Build the model with its init drawn from ``seed``, leaving the global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_model(config)


def _wrap(model: nn.Module, types: Sequence[str] | None) -> nn.Module:
    return model if types is None else TypeConditionedProxy(model, types)


def train_proxy(
    pairs: PairSet,
    settings: ProxyTrainSettings,
    checkpoint: Path,
    progress: Callable[[int, int, float], None] | None = None,
    stop_after: int | None = None,
) -> ProxyTrainResult:
    """Train (or resume training) a proxy restorer on ``pairs`` with ``settings.loss``.

    ``checkpoint`` is resumed when it holds the same settings digest and pair count, and
    restarted (with a warning) when they differ; it is rewritten atomically every
    ``checkpoint_every`` steps and when this call ends. ``progress(step, total, loss)`` runs
    about every 1% of the iterations and at the end; ``stop_after`` caps the steps run here.
    """
    n_pairs = len(pairs)
    if n_pairs == 0:
        raise ValueError("train_proxy needs at least one (LQ, HQ) pair; the pair set is empty")
    groups, types = None, None
    if "types" in (settings.balance, settings.condition):
        if not isinstance(pairs, LabelledPairSet):
            raise ValueError("balance or condition 'types' needs pairs with a labels(index) method")
        if settings.balance == "types":
            groups = type_groups(n_pairs, pairs.labels, "types")
        if settings.condition == "types":
            types = sorted({name for i in range(n_pairs) for name in pairs.labels(i)})
    if stop_after is not None and stop_after < 0:
        raise ValueError(f"stop_after must be >= 0, got {stop_after}")
    checkpoint = Path(checkpoint)
    device = resolve_device(settings.device)
    digest = settings.digest()
    config = _model_config(settings.model)
    if types is not None:  # the condition vector has one entry per type trained on
        config = {**config, "context_dim": len(types)}
    core = _build_model(config, settings.seed).to(device)  # what the checkpoint stores
    model = _wrap(core, types)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=settings.lr,
        betas=settings.betas,
        weight_decay=settings.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=settings.iterations, eta_min=settings.min_lr
    )
    step, losses = 0, []
    if checkpoint.exists():
        state = _read_checkpoint(checkpoint)
        found = (state["digest"], state.get("num_pairs"), state.get("types"))
        if found != (digest, n_pairs, types):
            log.warning(
                "proxy checkpoint %s was made with other settings or data (digest %s, %s pairs,"
                " types %s; now %s, %s pairs, types %s): starting over and overwriting it",
                checkpoint,
                state["digest"][:12],
                state.get("num_pairs"),
                state.get("types"),
                digest[:12],
                n_pairs,
                types,
            )
        else:
            core.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            step, losses = int(state["step"]), [float(x) for x in state["losses"]]
    resumed_from = step

    def save() -> None:
        write_atomic(
            {
                "format": CHECKPOINT_FORMAT,
                "kind": _CHECKPOINT_KIND,
                "model_config": config,
                "model": core.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "step": step,
                "iterations": settings.iterations,
                "losses": losses,
                "digest": digest,
                "settings": settings.canonical(),
                "num_pairs": n_pairs,
                "types": types,
            },
            checkpoint,
        )

    total = settings.iterations
    end = total if stop_after is None else min(total, step + stop_after)
    report_every = max(1, total // 100)
    use_amp = settings.amp and device.type == "cuda"
    # Losses stay on the device until a report or checkpoint needs them: reading each one
    # would make the CPU wait for the GPU every step.
    pending: list[torch.Tensor] = []

    def flush() -> None:
        if pending:
            losses.extend(torch.stack(pending).tolist())
            pending.clear()

    model.train()
    start = time.perf_counter()
    while step < end:
        step += 1
        lq_np, hq_np, indices = draw_batch(
            pairs,
            settings.batch_size,
            settings.patch_size,
            settings.seed,
            step,
            groups,
            settings.channel_shuffle,
        )
        lq, hq = _to_device(lq_np, device), _to_device(hq_np, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            if isinstance(model, TypeConditionedProxy):
                pred = model(lq, model.encode([pairs.labels(i) for i in indices], device))
            else:
                pred = model(lq)
        loss = restoration_loss(pred.float(), hq, settings.loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        pending.append(loss.detach())
        if progress is not None and (step % report_every == 0 or step == end):
            flush()
            progress(step, total, losses[-1])
        if step % settings.checkpoint_every == 0 and step < end:
            flush()
            save()
    flush()
    elapsed = time.perf_counter() - start
    ran = step - resumed_from
    if ran:
        if not math.isfinite(losses[-1]):
            log.warning("proxy training loss is %s at step %d", losses[-1], step)
        save()
    model.eval()
    return ProxyTrainResult(
        model=model,
        losses=losses,
        resumed_from=resumed_from,
        steps_per_second=ran / elapsed if ran and elapsed > 0 else 0.0,
    )


def load_proxy(checkpoint: Path, device: str = "auto") -> nn.Module:
    """The restorer stored in a checkpoint (finished or not), in eval mode on ``device``; a
    :class:`TypeConditionedProxy` when it was trained with ``condition: types``."""
    state = _read_checkpoint(Path(checkpoint))
    model = create_model(state["model_config"])
    model.load_state_dict(state["model"])
    return _wrap(model, state.get("types")).to(resolve_device(device)).eval()


def render_medium(
    model: nn.Module,
    lq: np.ndarray,
    tile: int = 512,
    overlap: int = 32,
    labels: Sequence[str] = (),
) -> np.ndarray:
    """Restore a uint8 HxWx3 image tile by tile; returns uint8 HxWx3 of the same size.

    A :class:`TypeConditionedProxy` is told ``labels`` (the image's degradation types); a
    blind model ignores them. Rounds half to even after clipping to [0, 255], so an identity
    model returns its input exactly (the float round trip through [0, 1] is within half a
    level).
    """
    lq = np.asarray(lq)
    if lq.dtype != np.uint8 or lq.ndim != 3 or lq.shape[2] != 3:
        raise ValueError(f"expected a uint8 HxWx3 image, got {lq.dtype} {lq.shape}")
    image = torch.from_numpy(np.ascontiguousarray(lq)).permute(2, 0, 1)[None].float() / 255.0
    if isinstance(model, TypeConditionedProxy):
        model = model.bind(labels)
    out = restore_tiled(model, image, tile=tile, overlap=overlap)
    out = out[0].permute(1, 2, 0).mul(255.0).round().clamp_(0, 255).to(torch.uint8)
    return out.cpu().numpy()


__all__ = [
    "CHECKPOINT_FORMAT",
    "Condition",
    "LabelledPairSet",
    "PairSet",
    "ProxyCheckpointError",
    "ProxyTrainResult",
    "ProxyTrainSettings",
    "TypeConditionedProxy",
    "draw_batch",
    "load_proxy",
    "render_medium",
    "resolve_device",
    "train_proxy",
]
