"""Recommenders, one per file; looked up by (case-insensitive) name."""
from __future__ import annotations

import importlib
from typing import Dict, Type

from .base import Recommender, RecOutput, bpr_loss

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


def get_model_class(name: str) -> Type[Recommender]:
    key = name.lower().replace("-", "").replace("_", "")
    if key not in MODELS:
        raise ValueError(f"unknown model '{name}'; expected one of {model_names()}")
    module, cls = MODELS[key].split(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except ModuleNotFoundError as e:  # listed but not importable
        raise ValueError(f"model '{name}' is not available: {e}") from e


__all__ = ["Recommender", "RecOutput", "bpr_loss", "MODELS", "model_names", "get_model_class"]
