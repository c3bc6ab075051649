"""Per-sample work done in the DataLoader workers: PNG decoding, paired crops and flips, labels.

LQ and HQ always get the same geometric transform: a box on LQ is the box on HQ divided by the
integer scale between them, so a super-resolution pair stays aligned pixel for pixel.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import cv2
import imagecodecs
import numpy as np
import torch

from uir.dataset import schema
from uir_models.data.embeddings import EmbeddingTable

CropMode = Literal["random", "center", "full"]
RawSample = dict[str, Any]
"""A sample as read from a shard: ``__key__``, member bytes by schema name, parsed ``meta``."""


def decode_rgb(data: bytes, where: str) -> np.ndarray:
    """8-bit RGB HxWx3 from PNG bytes (the shards hold only what our encoder wrote)."""
    try:
        image = imagecodecs.png_decode(data)
    except Exception as err:  # imagecodecs raises its own error types per codec
        raise ValueError(f"{where}: cannot decode PNG ({err})") from None
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{where}: expected 8-bit RGB, got {image.dtype} {image.shape}")
    return image


def pair_scale(lq: np.ndarray, hq: np.ndarray, key: str) -> int:
    """The integer factor by which HQ is larger than LQ (1 for same-size pairs)."""
    (lh, lw), (hh, hw) = lq.shape[:2], hq.shape[:2]
    scale = hh // lh if lh else 0
    if scale < 1 or (hh, hw) != (lh * scale, lw * scale):
        raise ValueError(
            f"sample {key}: LQ {lw}x{lh} and HQ {hw}x{hh} are not an integer scale apart"
        )
    return scale


def _check_crop(size: int, scale: int, lq: np.ndarray, key: str) -> int:
    if size % scale:
        raise ValueError(f"sample {key}: crop {size} is not divisible by the LQ scale {scale}")
    lq_size = size // scale
    if min(lq.shape[:2]) < lq_size:
        raise ValueError(
            f"sample {key}: LQ {lq.shape[1]}x{lq.shape[0]} is smaller than the "
            f"crop {lq_size} (HQ crop {size} / scale {scale})"
        )
    return lq_size


def paired_crop(
    lq: np.ndarray, hq: np.ndarray, size: int, top: int, left: int, key: str
) -> tuple[np.ndarray, np.ndarray]:
    """The ``size`` HQ box at LQ position (``top``, ``left``), on both images."""
    scale = pair_scale(lq, hq, key)
    lq_size = _check_crop(size, scale, lq, key)
    lq_box = lq[top : top + lq_size, left : left + lq_size]
    hq_box = hq[top * scale : (top + lq_size) * scale, left * scale : (left + lq_size) * scale]
    return lq_box, hq_box


def paired_random_crop(
    lq: np.ndarray, hq: np.ndarray, size: int, rng: np.random.Generator, key: str
) -> tuple[np.ndarray, np.ndarray]:
    """A random ``size`` x ``size`` HQ patch and its LQ patch (``size`` / scale)."""
    lq_size = _check_crop(size, pair_scale(lq, hq, key), lq, key)
    top = int(rng.integers(0, lq.shape[0] - lq_size + 1))
    left = int(rng.integers(0, lq.shape[1] - lq_size + 1))
    return paired_crop(lq, hq, size, top, left, key)


def paired_center_crop(
    lq: np.ndarray, hq: np.ndarray, size: int, key: str
) -> tuple[np.ndarray, np.ndarray]:
    lq_size = _check_crop(size, pair_scale(lq, hq, key), lq, key)
    top, left = (lq.shape[0] - lq_size) // 2, (lq.shape[1] - lq_size) // 2
    return paired_crop(lq, hq, size, top, left, key)


def paired_flip(
    lq: np.ndarray, hq: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Horizontal and vertical flips, each with probability 1/2, the same on both images."""
    if rng.random() < 0.5:
        lq, hq = lq[:, ::-1], hq[:, ::-1]
    if rng.random() < 0.5:
        lq, hq = lq[::-1], hq[::-1]
    return lq, hq


def paired_channel_shuffle(
    lq: np.ndarray, hq: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The same random permutation of the RGB channels on both images. A colour augmentation
    that keeps every degradation type what it is (noise, blur, rain, haze, darkness and
    blocks survive a channel swap) while a few photos' palettes pass for many."""
    order = rng.permutation(3)
    return lq[..., order], hq[..., order]


def upsample_to(lq: np.ndarray, hq: np.ndarray) -> np.ndarray:
    """LQ resized (bicubic) to HQ's size, for restorers whose output is the input's size."""
    if lq.shape == hq.shape:
        return lq
    return cv2.resize(lq, (hq.shape[1], hq.shape[0]), interpolation=cv2.INTER_CUBIC)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 -> float32 3xHxW in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255)


def multi_hot(labels: Sequence[str], types: Sequence[str]) -> torch.Tensor:
    """1 at the position of each label in ``types``; labels outside ``types`` are not encoded."""
    vector = torch.zeros(len(types))
    for label in labels:
        if label in types:
            vector[types.index(label)] = 1.0
    return vector


def parse_sample(sample: Mapping[str, Any]) -> RawSample:
    """Check the members a loader needs and parse the metadata once (before balancing)."""
    key = sample["__key__"]
    missing = [m for m in (schema.LQ, schema.HQ, schema.METADATA) if m not in sample]
    if missing:
        raise ValueError(f"sample {key} in {sample.get('__url__')}: missing {missing}")
    return {
        "__key__": key,
        schema.LQ: sample[schema.LQ],
        schema.HQ: sample[schema.HQ],
        "meta": json.loads(sample[schema.METADATA]),
    }


@dataclass(frozen=True)
class SampleDecoder:
    """Raw sample -> tensors: decode, crop (random / center / none), flip, channel shuffle,
    labels, embeddings.

    ``upsample_lq`` resizes the LQ crop to the HQ crop's size after cropping (cheaper than
    resizing whole images), so pairs of different scales share a batch.
    """

    types: tuple[str, ...]
    crop: CropMode
    crop_size: int | None = None
    flip: bool = False
    channel_shuffle: bool = False
    upsample_lq: bool = True
    embeddings: EmbeddingTable | None = None

    def __post_init__(self) -> None:
        if (self.crop == "full") != (self.crop_size is None):
            raise ValueError(
                f"crop {self.crop!r} needs crop_size only when cropping, got "
                f"crop_size={self.crop_size}"
            )

    def __call__(self, raw: RawSample, rng: np.random.Generator | None = None) -> dict[str, Any]:
        """``rng`` drives the random crop, flips and channel shuffle (required for any of them)."""
        key, meta = raw["__key__"], raw["meta"]
        if rng is None and (self.crop == "random" or self.flip or self.channel_shuffle):
            raise ValueError("a random crop, flip or channel shuffle needs a seeded generator")
        lq = decode_rgb(raw[schema.LQ], f"sample {key} {schema.LQ}")
        hq = decode_rgb(raw[schema.HQ], f"sample {key} {schema.HQ}")
        if self.crop_size is not None:
            if rng is not None and self.crop == "random":
                lq, hq = paired_random_crop(lq, hq, self.crop_size, rng, key)
            else:
                lq, hq = paired_center_crop(lq, hq, self.crop_size, key)
        if rng is not None and self.flip:
            lq, hq = paired_flip(lq, hq, rng)
        if rng is not None and self.channel_shuffle:
            lq, hq = paired_channel_shuffle(lq, hq, rng)
        if self.upsample_lq:
            lq = upsample_to(lq, hq)
        sample = {
            "lq": to_tensor(lq),
            "hq": to_tensor(hq),
            "labels": multi_hot(meta["labels"], self.types),
            "types": list(meta["labels"]),
            "caption": meta["caption"],
            "prompt": meta["prompt"],
            "key": key,
        }
        if self.embeddings is not None:
            sample["degra_emb"], sample["content_emb"] = self.embeddings.lookup(key)
        return sample


_STACKED = ("lq", "hq", "labels", "degra_emb", "content_emb")


def collate(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack tensors, list the rest; full-size images of different sizes cannot share a batch."""
    batch: dict[str, Any] = {}
    for name in samples[0]:
        values = [sample[name] for sample in samples]
        if name not in _STACKED:
            batch[name] = values
            continue
        shapes = {tuple(v.shape) for v in values}
        if len(shapes) > 1:
            raise ValueError(
                f"cannot batch {name} of shapes {sorted(shapes)} (keys "
                f"{[s['key'] for s in samples]}); use batch_size 1, a crop or upsample_lq"
            )
        batch[name] = torch.stack(values)
    return batch
