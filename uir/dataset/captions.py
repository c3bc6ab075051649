"""Captions of the clean HQ images, from `<stem>.txt` sidecars or BLIP, cached across runs.

DA-CLIP captions the GT image (never the LQ one) with BLIP-large, greedy, at most 32 new tokens,
and writes every caption at the very end, so a crash loses them all. Here each BLIP batch is
committed to a sqlite cache keyed by (HQ content hash, captioner id) as soon as it is captioned,
so a crash loses at most one batch and a rerun captions only what is missing.

torch and transformers are imported only when BLIP weights are loaded: sidecar-only and
all-cached runs need neither.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Self, get_args

import numpy as np

from uir.imageio import CAPTION_SUFFIX, load_rgb, sidecar

if TYPE_CHECKING:
    import torch
    from transformers import BlipForConditionalGeneration, BlipProcessor

DEFAULT_BLIP_MODEL = "Salesforce/blip-image-captioning-large"
SIDECAR_CAPTIONER = "sidecar"
CaptionSource = Literal["sidecar", "blip", "sidecar-or-blip"]

# Files of a saved model directory that decide its captions; READMEs and the `.cache/` metadata
# that `hf download --local-dir` writes (with timestamps) are left out of the id.
_MODEL_FILE_SUFFIXES = frozenset({".json", ".txt", ".safetensors", ".bin"})
_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_TRUE_VALUES = frozenset({"1", "ON", "YES", "TRUE"})
# Well under SQLite's bound-parameter limit, which is only 999 in older builds.
_QUERY_CHUNK = 500
_LOCK_TIMEOUT_S = 60.0  # how long an opening or a commit waits for another process


class CaptionError(RuntimeError):
    """A caption cannot be had; the message is one readable line saying what to do about it."""


@dataclass(frozen=True)
class Caption:
    text: str
    captioner: str
    """`SIDECAR_CAPTIONER` or the `BlipCaptioner.id` that wrote it, recorded for provenance."""


@dataclass(frozen=True)
class CaptionRequest:
    hq_hash: str
    """Content hash of the HQ image (hex): the cache key, so moved or renamed files keep theirs."""
    path: Path
    """The full HQ image file, never the LQ one."""


class CaptionCache:
    """Persistent, crash-safe captions keyed by (hq_hash, captioner id).

    A sqlite file in WAL mode: every `put_many` is its own committed transaction, so a crash
    loses at most the batch being captioned, and several processes may read and write at once.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # Writers hold the lock for one small commit, so waiting beats failing with "locked".
        self._db = sqlite3.connect(path, timeout=_LOCK_TIMEOUT_S)
        self._enable_wal()
        with self._db:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS captions ("
                "hq_hash TEXT NOT NULL, captioner TEXT NOT NULL, caption TEXT NOT NULL, "
                "PRIMARY KEY (hq_hash, captioner)) WITHOUT ROWID"
            )

    def _enable_wal(self) -> None:
        """Switch to WAL, retrying while another process holds the lock.

        sqlite answers the switch with "database is locked" at once, without waiting out the
        connection's timeout, while another process is creating or switching the same new file
        (6 of 600 openings by 6 processes started together failed before this loop).
        """
        deadline = time.monotonic() + _LOCK_TIMEOUT_S
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def get_many(self, hashes: Sequence[str], captioner: str) -> dict[str, str]:
        """Cached captions of `hashes` by `captioner`; hashes not cached are simply absent."""
        unique = list(dict.fromkeys(hashes))
        found: dict[str, str] = {}
        for start in range(0, len(unique), _QUERY_CHUNK):
            chunk = unique[start : start + _QUERY_CHUNK]
            rows = self._db.execute(
                "SELECT hq_hash, caption FROM captions "
                f"WHERE captioner = ? AND hq_hash IN ({', '.join('?' * len(chunk))})",
                (captioner, *chunk),
            )
            found.update(rows)
        return found

    def put_many(self, captions: Mapping[str, str], captioner: str) -> None:
        """Store and commit `captions` (hq_hash -> text) at once, replacing older ones."""
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO captions (hq_hash, captioner, caption) VALUES (?, ?, ?)",
                [(hq_hash, captioner, text) for hq_hash, text in captions.items()],
            )

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM captions").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class BlipCaptioner:
    """BLIP image captioning as DA-CLIP runs it: unconditional, greedy, `max_new_tokens` at most.

    `model` is a hub id (the Hugging Face cache is used first, the network only when the cache
    lacks it and HF_HUB_OFFLINE is unset) or a directory saved with `save_pretrained`. Device
    "auto" is cuda when available, else cpu; `fp16=None` means fp16 on CUDA only. Weights load
    on the first `caption` or on `load()`, so building one just to read its `id` is cheap.
    """

    def __init__(
        self,
        model: str = DEFAULT_BLIP_MODEL,
        *,
        device: str = "auto",
        fp16: bool | None = None,
        batch_size: int = 16,
        max_new_tokens: int = 32,
    ) -> None:
        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError(
                f"batch_size and max_new_tokens must be at least 1, got {batch_size} and "
                f"{max_new_tokens}"
            )
        self.model = model
        self.device = device
        self.fp16 = fp16
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self._loaded: tuple[BlipProcessor, BlipForConditionalGeneration] | None = None

    @cached_property
    def id(self) -> str:
        """Cache key naming what decides the captions: the model and the decoding settings.

        A hub id is used as is (`blip:Salesforce/blip-image-captioning-large:greedy:32`). A local
        directory is named by content, `blip:local:<12 hex>:greedy:32`, where the hex is a sha256
        over the names and sha256 of its top-level .json/.txt/.safetensors/.bin files: a copy of
        the folder elsewhere keeps its cached captions, a fine-tuned or re-saved model does not.
        Hashing the weights reads them once (about 1.5 s for BLIP-large). Precision and device
        are left out, so GPU (fp16) and CPU (fp32) runs share one cache.
        """
        directory = Path(self.model)
        source = f"local:{_directory_digest(directory)}" if directory.is_dir() else self.model
        return f"blip:{source}:greedy:{self.max_new_tokens}"

    def load(self) -> None:
        """Load the processor and weights now instead of at the first batch, e.g. to fail early."""
        self._blip()

    def caption(self, images: Sequence[np.ndarray]) -> list[str]:
        """Caption uint8 HxWx3 RGB images, `batch_size` at a time, as single-line strings."""
        for image in images:
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"expected uint8 HxWx3 RGB, got {image.dtype} {image.shape}")
        if not images:
            return []
        import torch

        processor, network = self._blip()
        captions: list[str] = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                batch = list(images[start : start + self.batch_size])
                # Explicit layout: a 3-pixel-high image would otherwise be read as channels-first.
                pixels = processor(
                    images=batch, return_tensors="pt", input_data_format="channels_last"
                )["pixel_values"]
                tokens = network.generate(
                    pixel_values=pixels.to(network.device, network.dtype),
                    max_new_tokens=self.max_new_tokens,
                    # Greedy whatever the checkpoint's generation_config asks for.
                    do_sample=False,
                    num_beams=1,
                )
                texts = processor.batch_decode(tokens, skip_special_tokens=True)
                captions += (_single_line(text) for text in texts)
        return captions

    def _blip(self) -> tuple[BlipProcessor, BlipForConditionalGeneration]:
        if self._loaded is None:
            import torch

            name = self.device
            if name == "auto":
                name = "cuda" if torch.cuda.is_available() else "cpu"
            device = torch.device(name)
            fp16 = device.type == "cuda" if self.fp16 is None else self.fp16
            processor, network = self._from_pretrained(torch.float16 if fp16 else torch.float32)
            self._loaded = processor, network.to(device).eval()
        return self._loaded

    def _from_pretrained(
        self, dtype: torch.dtype
    ) -> tuple[BlipProcessor, BlipForConditionalGeneration]:
        """Try the local cache before the hub: without a network huggingface_hub retries every
        file for about 20 s, which a model downloaded earlier should never pay."""
        from transformers import BlipForConditionalGeneration, BlipProcessor

        hub_allowed = not (_hub_offline() or Path(self.model).is_dir())
        failure: Exception | None = None
        for local_only in (True, False) if hub_allowed else (True,):
            try:
                # Weights first: when they are missing, the processor's many retries are skipped.
                network = BlipForConditionalGeneration.from_pretrained(
                    self.model, dtype=dtype, local_files_only=local_only
                )
                processor = BlipProcessor.from_pretrained(self.model, local_files_only=local_only)
            except (OSError, ValueError) as error:  # missing files, no network, bad repo id
                failure = error
            else:
                return processor, network
        reason = " ".join(str(failure).split())
        raise CaptionError(
            f"BLIP model {self.model!r} could not be loaded offline ({reason}). Provide weights "
            f"by downloading them once where there is a network: `hf download "
            f"{DEFAULT_BLIP_MODEL} --local-dir <dir>` (or copy a saved model directory), then set "
            f"captions.model in params.yaml to that local path; or set captions.source: sidecar "
            f"to use <stem>{CAPTION_SUFFIX} captions instead"
        ) from failure


def caption_all(
    requests: Sequence[CaptionRequest],
    *,
    source: CaptionSource,
    cache: CaptionCache,
    captioner_factory: Callable[[], BlipCaptioner] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Caption]:
    """Caption each distinct HQ hash once, in request order: hq_hash -> Caption.

    "sidecar" reads `<stem>.txt` next to the image (missing or blank is a `CaptionError`),
    "blip" captions everything with BLIP, "sidecar-or-blip" uses a non-blank sidecar where there
    is one and BLIP elsewhere. For duplicate hashes the first request's file is used. BLIP
    captions come from `cache` when present; only the rest are decoded and captioned, and each
    batch is committed before the next starts. `captioner_factory` (default: `BlipCaptioner()`)
    is called only when some hash needs BLIP, to learn the captioner id; weights load only when
    some hash is not cached. `progress(done, total)` is called once the sidecars and cache are
    read and after each batch.
    """
    if source not in get_args(CaptionSource):
        raise ValueError(f"unknown caption source {source!r}; use one of {get_args(CaptionSource)}")
    paths: dict[str, Path] = {}
    for request in requests:
        paths.setdefault(request.hq_hash, request.path)
    captions: dict[str, Caption] = {}

    def report() -> None:
        if progress is not None:
            progress(len(captions), len(paths))

    for hq_hash, path in paths.items():
        text = None if source == "blip" else _read_sidecar(path)
        if text is not None:
            captions[hq_hash] = Caption(text, SIDECAR_CAPTIONER)
        elif source == "sidecar":
            raise CaptionError(
                f"{path.with_name(path.stem + CAPTION_SUFFIX)}: caption sidecar is missing or "
                f"empty (captions.source is sidecar)"
            )
    wanted = [hq_hash for hq_hash in paths if hq_hash not in captions]
    if wanted:
        captioner = (captioner_factory or BlipCaptioner)()
        cached = cache.get_many(wanted, captioner.id)
        captions.update((hq_hash, Caption(text, captioner.id)) for hq_hash, text in cached.items())
        missing = [hq_hash for hq_hash in wanted if hq_hash not in cached]
        report()
        for start in range(0, len(missing), captioner.batch_size):
            batch = missing[start : start + captioner.batch_size]
            texts = captioner.caption([load_rgb(paths[hq_hash]) for hq_hash in batch])
            cache.put_many(dict(zip(batch, texts, strict=True)), captioner.id)
            captions.update(
                (hq_hash, Caption(text, captioner.id))
                for hq_hash, text in zip(batch, texts, strict=True)
            )
            report()
    else:
        report()
    return {hq_hash: captions[hq_hash] for hq_hash in paths}


def _read_sidecar(image: Path) -> str | None:
    """The single-line caption in `<stem>.txt` next to `image`; None when missing or blank."""
    path = sidecar(image, CAPTION_SUFFIX)
    if path is None:
        return None
    try:
        # utf-8-sig: captions written with Windows editors start with a byte-order mark.
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise CaptionError(f"{path}: cannot read caption ({error})") from error
    return _single_line(text) or None


def _single_line(text: str) -> str:
    """Strip and collapse all whitespace (tabs, newlines) to single spaces: captions go into TSV
    files and one-line metadata."""
    return " ".join(text.split())


def _directory_digest(directory: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(directory.iterdir()):
        if file.is_file() and file.suffix in _MODEL_FILE_SUFFIXES:
            with file.open("rb") as handle:
                content = hashlib.file_digest(handle, "sha256").hexdigest()
            digest.update(f"{file.name}\0{content}\n".encode())
    return digest.hexdigest()[:12]


def _hub_offline() -> bool:
    """Read the offline switches now: huggingface_hub reads them once at import, too early for a
    setting made later in the same process."""
    return any(os.environ.get(name, "").upper() in _TRUE_VALUES for name in _OFFLINE_VARIABLES)
