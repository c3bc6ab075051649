"""Make one sample's shard members: decode, crop, degrade (or read the real LQ), encode.

Variants of one HQ are consecutive in a chunk, so the decoded HQ (and its encoding, for
full-image samples) is kept for the next sample instead of being redone K times.

PNGs come from `uir.imageio.encode_png` (libdeflate, deterministic for a given imagecodecs
build, whose version is part of every chunk digest).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from degradations.engine import synthesize_sample
from uir.dataset import schema
from uir.dataset.plan import SampleSpec, ShardSettings, real_prompt
from uir.dataset.provenance import library_versions
from uir.imageio import encode_png, load_rgb, read_depth


def _crop(image: np.ndarray, box: tuple[int, int, int, int] | None, scale: int = 1) -> np.ndarray:
    if box is None:
        return image
    top, left, height, width = (value // scale for value in box)
    return np.ascontiguousarray(image[top : top + height, left : left + width])


# The last HQ (and depth) decoded in this process, kept across chunks: the next chunk a worker
# takes usually continues the same HQ's variants, so each photo is decoded about once per
# worker instead of once per chunk. At most one image is held; a changed file is re-read.
_last_decoded: tuple[tuple[Any, ...], np.ndarray, dict[str, np.ndarray]] | None = None


def _stamp(path: str | None) -> tuple[int, int, int] | None:
    if path is None:
        return None
    stat = os.stat(path)
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _decode(spec: SampleSpec, max_pixels: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    global _last_decoded
    key = (spec.hq_path, spec.depth_path, max_pixels, _stamp(spec.hq_path),
           _stamp(spec.depth_path))
    if _last_decoded is not None and _last_decoded[0] == key:
        return _last_decoded[1], _last_decoded[2]
    _last_decoded = None  # let the previous image go before the next one is decoded
    full = load_rgb(spec.hq_path, max_pixels=max_pixels, name=spec.hq_rel)
    depth = {"depth": read_depth(spec.depth_path)} if spec.depth_path else {}
    _last_decoded = (key, full, depth)
    return full, depth


@dataclass
class SampleMaker:
    """Turns specs into members; one per worker, holding the last HQ it decoded."""

    settings: ShardSettings
    _hq_key: tuple[str, tuple[int, int, int, int] | None] | None = None
    _full: np.ndarray | None = None
    _hq: np.ndarray | None = None
    _hq_png: bytes = b""
    _depth: dict[str, np.ndarray] = field(default_factory=dict)

    def _load_hq(self, spec: SampleSpec) -> tuple[np.ndarray, bytes]:
        key = (spec.hq_path, spec.crop)
        if self._hq_key != key:
            if self._hq_key is None or self._hq_key[0] != spec.hq_path:
                self._full, self._depth = _decode(spec, self.settings.max_pixels)
            self._hq = _crop(self._full, spec.crop)
            self._hq_png = encode_png(self._hq, self.settings.png_compression)
            self._hq_key = key
        assert self._hq is not None and self._full is not None
        return self._hq, self._hq_png

    def _side_inputs(self, spec: SampleSpec) -> dict[str, np.ndarray]:
        assert self._full is not None
        inputs = {}
        for name, array in self._depth.items():
            if array.shape[:2] != self._full.shape[:2]:
                array = cv2.resize(
                    array, (self._full.shape[1], self._full.shape[0]),
                    interpolation=cv2.INTER_LINEAR,
                )
            inputs[name] = _crop(array, spec.crop)
        return inputs

    def make(self, spec: SampleSpec) -> tuple[dict[str, bytes], dict[str, Any]]:
        """The sample's members (by extension) and its metadata."""
        hq, hq_png = self._load_hq(spec)
        members: dict[str, bytes] = {schema.HQ: hq_png}
        metadata: dict[str, Any] = {
            "schema": schema.SCHEMA_VERSION,
            "key": spec.key,
            "split": spec.split,
            "dataset": {"name": self.settings.dataset, "version": self.settings.version},
            "source": {"name": spec.source, "hq": spec.hq_rel, "lq": spec.lq_rel},
            "hq_sha256": spec.hq_hash,
            "crop": list(spec.crop) if spec.crop else None,
            "caption": spec.caption,
            "captioner": spec.captioner,
            "seed": spec.seed,
            "versions": library_versions(),
        }
        if spec.is_real:
            assert spec.lq_path is not None and spec.label is not None
            assert self._full is not None
            full_lq = load_rgb(spec.lq_path, max_pixels=self.settings.max_pixels, name=spec.lq_rel)
            scale = self._full.shape[0] // full_lq.shape[0]
            lq = _crop(full_lq, spec.crop, scale)
            metadata.update(
                kind="real", labels=[spec.label], prompt=real_prompt(spec.label), recipe=None,
                lq_sha256=spec.lq_hash, degradation=None,
            )
            extras: dict[str, np.ndarray] = {}
        else:
            assert spec.preset is not None
            sample = synthesize_sample(
                hq, spec.preset, spec.seed, inputs=self._side_inputs(spec), **spec.overrides
            )
            lq, extras = sample.lq, sample.extras
            metadata.update(
                kind="synthetic", labels=sample.record["labels"],
                prompt=sample.record["prompt"], recipe=spec.recipe, lq_sha256=None,
                degradation=sample.record,
            )
        metadata["hq_size"] = [int(hq.shape[0]), int(hq.shape[1])]
        metadata["lq_size"] = [int(lq.shape[0]), int(lq.shape[1])]
        members[schema.LQ] = encode_png(lq, self.settings.png_compression)
        if "mask" in extras:
            members[schema.MASK] = encode_png(
                (extras["mask"] > 0).astype(np.uint8) * 255, self.settings.png_compression
            )
        members[schema.CAPTION] = spec.caption.encode()
        members[schema.METADATA] = json.dumps(metadata, sort_keys=True).encode()
        return members, metadata


def tally(metadata: dict[str, Any], counts: dict[str, Counter[str]]) -> None:
    """Per-chunk counts by label, kind and recipe, for the stats file and the manifest."""
    for label in metadata["labels"] or ["none"]:
        counts["labels"][label] += 1
    counts["kinds"][metadata["kind"]] += 1
    counts["recipes"][metadata["recipe"] or f"real:{metadata['source']['name']}"] += 1

