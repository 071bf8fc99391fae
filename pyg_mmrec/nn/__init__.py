"""PyG layers and heads (one per file). Imported lazily so that a missing
optional dependency in one layer never breaks the others."""
from __future__ import annotations

import importlib

_EXPORTS = {
    "MissingAwareConv": "missing_aware_conv",
    "LightGCNConv": "lightgcn_conv",
    "ItemItemConv": "item_item_conv",
    "to_csr": "adjacency",
    "CSRAdjacency": "adjacency",
    "IRMPenalty": "invariance",
    "VRExPenalty": "invariance",
    "InfoNCE": "infonce",
    "CLUB": "mi_estimators",
    "MINE": "mi_estimators",
    "SigmoidCLUBSample": "mi_estimators",
    "MissingAwareFusion": "missing_aware_fusion",
    "VariationalBottleneck": "variational_bottleneck",
    "StackedVariationalBottleneck": "variational_bottleneck",
    "LayerwiseSampler": "neighbor_sampling",
    "SampledSubgraph": "neighbor_sampling",
    "degree_sensitive_prune": "edge_pruning",
    "resample_pruned_conv": "edge_pruning",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return __all__
