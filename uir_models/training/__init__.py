"""One training loop for every model (``loop``), the tasks it drives (``tasks``), and its
parts: process groups (``distributed``), EMA (``ema``), atomic checkpoints (``checkpoint``)."""

from uir_models.training.checkpoint import CheckpointError
from uir_models.training.distributed import (
    DistContext,
    init_distributed,
    resolve_device,
    shutdown_distributed,
)
from uir_models.training.ema import ModelEma
from uir_models.training.loop import TrainConfig, TrainResult, evaluate, lr_factor, train
from uir_models.training.tasks import EvaluatedTask, RestorerTask, TrainTask

__all__ = [
    "CheckpointError",
    "DistContext",
    "EvaluatedTask",
    "ModelEma",
    "RestorerTask",
    "TrainConfig",
    "TrainResult",
    "TrainTask",
    "evaluate",
    "init_distributed",
    "lr_factor",
    "resolve_device",
    "shutdown_distributed",
    "train",
]
