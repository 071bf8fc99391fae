"""pyg_mmrec: multimodal recommendation with missing modalities on PyTorch Geometric."""
__version__ = "0.1.0"

# the inference entry is imported on first use, so `import pyg_mmrec` stays cheap
_LAZY = {"load": "pyg_mmrec.inference", "TrainedRecommender": "pyg_mmrec.inference"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pyg_mmrec' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
