"""Recommenders, one per file; looked up by (case-insensitive) name.

Importing this package is cheap (no PyTorch): the registry below is plain
data, and every model module, ``base`` included, is imported on first use, so
that the command line can validate a configuration before any heavy import.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Dict, Type

if TYPE_CHECKING:
    from .base import Recommender

# name -> "module:Class"; modules are imported on first use.
MODELS: Dict[str, str] = {
    "bpr": "pyg_mmrec.models.bpr:BPR",
    "lightgcn": "pyg_mmrec.models.lightgcn:LightGCN",
    "vbpr": "pyg_mmrec.models.vbpr:VBPR",
    "mmgcn": "pyg_mmrec.models.mmgcn:MMGCN",
    "lattice": "pyg_mmrec.models.lattice:LATTICE",
    "freedom": "pyg_mmrec.models.freedom:FREEDOM",
    "mgcn": "pyg_mmrec.models.mgcn:MGCN",
    "lgmrec": "pyg_mmrec.models.lgmrec:LGMRec",
    "i3mrec": "pyg_mmrec.models.i3mrec:I3MRec",
}


def model_names() -> list[str]:
    return sorted(MODELS)


def model_entry(name: str) -> str:
    """The ``"module:Class"`` of a registered model (case-insensitive; ``-``/``_``
    ignored), without importing it."""
    key = name.lower().replace("-", "").replace("_", "")
    if key not in MODELS:
        raise ValueError(f"unknown model '{name}'; expected one of {model_names()}")
    return MODELS[key]


def get_model_class(name: str) -> Type[Recommender]:
    module, cls = model_entry(name).split(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except ModuleNotFoundError as e:  # listed but not importable
        raise ValueError(f"model '{name}' is not available: {e}") from e


_BASE_NAMES = ("Recommender", "RecOutput", "bpr_loss")


def __getattr__(name: str) -> Any:
    if name in _BASE_NAMES:
        return getattr(importlib.import_module(f"{__name__}.base"), name)
    if name == "base" or any(e.split(":")[0] == f"{__name__}.{name}" for e in MODELS.values()):
        return importlib.import_module(f"{__name__}.{name}")  # e.g. pyg_mmrec.models.freedom
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Recommender", "RecOutput", "bpr_loss", "MODELS", "model_names", "model_entry",
           "get_model_class"]
