"""Loading training and evaluation batches from UIR Forge shards (see ``pipeline`` for the
DDP design and what is seeded)."""

from uir_models.data.balance import Balance
from uir_models.data.embeddings import EmbeddingTable, MissingEmbeddingError
from uir_models.data.pipeline import (
    EvalLoader,
    LoaderConfig,
    TrainLoader,
    eval_loader,
    rank_and_world,
    train_loader,
)
from uir_models.data.shards import DatasetError, SplitShards, split_shards

__all__ = [
    "Balance",
    "DatasetError",
    "EmbeddingTable",
    "EvalLoader",
    "LoaderConfig",
    "MissingEmbeddingError",
    "SplitShards",
    "TrainLoader",
    "eval_loader",
    "rank_and_world",
    "split_shards",
    "train_loader",
]
