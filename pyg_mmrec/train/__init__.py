"""Training: the :class:`Trainer` loop, :func:`run` (one configured run end to end),
atomic checkpoints, early stopping on validation metrics, and data-parallel training
(:class:`DistributedTrainer`; :func:`launch` runs a function on N local ranks)."""
import importlib
from typing import Any

from .checkpoint import load_checkpoint, save_checkpoint
from .optim import LazyAdam
from .run import RunResult, evaluate_run, run, set_seed
from .trainer import FitResult, TrainData, Trainer, TrainingInterrupted

__all__ = ["run", "evaluate_run", "RunResult", "set_seed", "Trainer", "TrainData", "FitResult",
           "TrainingInterrupted", "save_checkpoint", "load_checkpoint", "EarlyStopping", "LazyAdam",
           "DistributedTrainer", "launch"]


def __getattr__(name: str) -> Any:
    # early_stopping.py is maintained separately; import it on first use.
    if name == "EarlyStopping":
        return importlib.import_module(f"{__name__}.early_stopping").EarlyStopping
    if name in ("DistributedTrainer", "launch"):  # torch.distributed: imported on first use
        return getattr(importlib.import_module(f"{__name__}.distributed"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
