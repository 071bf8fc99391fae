"""pyg_mmrec: multimodal recommendation with missing modalities on PyTorch Geometric."""
__version__ = "0.1.0"
