"""Precomputed DA-CLIP embeddings per sample key, so restorer training does not run CLIP.

The controller is frozen while restorers train and sees a fixed 224 centre crop of the LQ image,
so its two embeddings are a function of the sample alone: compute them once, save them with
``EmbeddingTable.save`` (``.pt`` or ``.npz``), and let the loader attach them by key.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = "uir-embeddings/1"
DEGRA = "degra_emb"
CONTENT = "content_emb"


class MissingEmbeddingError(LookupError):
    """A sample whose key the embedding table lacks (embeddings of another dataset version)."""


@dataclass(frozen=True)
class EmbeddingTable:
    """Rows of ``degra`` and ``content`` (N x D float32) for ``keys``, looked up by key."""

    keys: tuple[str, ...]
    degra: torch.Tensor
    content: torch.Tensor
    source: str = "<memory>"
    _rows: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = len(self.keys)
        for name, table in ((DEGRA, self.degra), (CONTENT, self.content)):
            if table.ndim != 2 or table.shape[0] != n:
                raise ValueError(
                    f"{self.source}: {name} has shape {tuple(table.shape)}, "
                    f"expected ({n}, D) for {n} keys"
                )
        rows = {key: row for row, key in enumerate(self.keys)}
        if len(rows) != n:
            raise ValueError(f"{self.source}: duplicate sample keys")
        object.__setattr__(self, "_rows", rows)

    @classmethod
    def from_mapping(
        cls, values: Mapping[str, Mapping[str, torch.Tensor]], source: str = "<memory>"
    ) -> EmbeddingTable:
        """From ``{key: {"degra_emb": (D,), "content_emb": (D,)}}``."""
        keys = tuple(values)
        if not keys:
            raise ValueError(f"{source}: no embeddings")
        degra = torch.stack([torch.as_tensor(values[k][DEGRA]) for k in keys]).float()
        content = torch.stack([torch.as_tensor(values[k][CONTENT]) for k in keys]).float()
        return cls(keys, degra, content, source)

    @classmethod
    def load(cls, path: str | Path) -> EmbeddingTable:
        """A table written by ``save``: ``.pt`` (torch, weights-only load) or ``.npz``."""
        path = Path(path)
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                keys = [str(k) for k in data["keys"]]
                degra, content = torch.from_numpy(data[DEGRA]), torch.from_numpy(data[CONTENT])
        elif path.suffix == ".pt":
            data = torch.load(path, map_location="cpu", weights_only=True)
            if data.get("format") != FORMAT:
                raise ValueError(f"{path}: not a {FORMAT} file")
            keys, degra, content = data["keys"], data[DEGRA], data[CONTENT]
        else:
            raise ValueError(f"{path}: embeddings must be a .pt or .npz file")
        return cls(tuple(keys), degra.float(), content.float(), str(path))

    def state(self) -> dict[str, Any]:
        """What a ``.pt`` file holds (for writers that save it their own way, e.g. atomically)."""
        return {"format": FORMAT, "keys": list(self.keys), DEGRA: self.degra, CONTENT: self.content}

    def save(self, path: str | Path) -> None:
        path = Path(path)
        if path.suffix == ".npz":
            np.savez(
                path,
                keys=np.array(self.keys),
                **{DEGRA: self.degra.numpy(), CONTENT: self.content.numpy()},
            )
        elif path.suffix == ".pt":
            torch.save(self.state(), path)
        else:
            raise ValueError(f"{path}: embeddings must be a .pt or .npz file")

    @functools.cached_property
    def sha256(self) -> str:
        """Of keys and values: a resumed restorer run must see the embeddings it started with
        (they change when the controller is retrained)."""
        digest = hashlib.sha256("\n".join(self.keys).encode())
        for table in (self.degra, self.content):
            digest.update(table.contiguous().numpy().tobytes())
        return digest.hexdigest()

    def lookup(self, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(degradation, content) embeddings of one sample (copies: batches must not alias)."""
        row = self._rows.get(key)
        if row is None:
            raise MissingEmbeddingError(
                f"sample {key} has no precomputed embedding in {self.source} "
                f"({len(self.keys)} keys); recompute the embeddings for this dataset"
            )
        return self.degra[row].clone(), self.content[row].clone()


def as_embedding_table(
    embeddings: EmbeddingTable | Mapping[str, Mapping[str, torch.Tensor]] | str | Path | None,
) -> EmbeddingTable | None:
    """What loaders accept: a table, a ``{key: {...}}`` mapping or a file path."""
    if embeddings is None or isinstance(embeddings, EmbeddingTable):
        return embeddings
    if isinstance(embeddings, str | Path):
        return EmbeddingTable.load(embeddings)
    return EmbeddingTable.from_mapping(embeddings)
