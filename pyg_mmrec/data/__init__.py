"""Datasets, missing-modality protocols, fills and samplers.

Public API (see docs/architecture.md):

* :class:`MMRecDataset` - MMRec-format data as a PyG ``HeteroData``.
* :mod:`pyg_mmrec.data.missing` - :func:`make_masks`, :class:`MaskSet`,
  :func:`parse_missing_spec`, :func:`fill_features`.
* :class:`BPRSampler` - vectorised, seeded BPR triples.

Every submodule is imported lazily (on attribute access): importing
``pyg_mmrec.data.raw`` (NumPy only) or ``pyg_mmrec.data.missing_spec`` does not
pull in PyTorch or PyG, which keeps the command line's start-up short.
"""
import importlib
from typing import Any

_LAZY_SUBMODULES = ("knn", "features", "download", "build_dataset", "missing", "sampler",
                    "dataset", "raw", "missing_spec")
_LAZY_NAMES = {
    "MMRecDataset": "dataset",
    "make_masks": "missing", "MaskSet": "missing", "parse_missing_spec": "missing",
    "fill_features": "missing", "MissingSpec": "missing",
    "BPRSampler": "sampler",
}

__all__ = ["MMRecDataset", "BPRSampler", "MaskSet", "make_masks", "parse_missing_spec",
           "fill_features"]


def __getattr__(name: str) -> Any:
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY_NAMES:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY_NAMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
