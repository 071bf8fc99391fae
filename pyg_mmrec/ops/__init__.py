"""Low-level operators (no PyG dependency).

Public API (stable, used by pyg_mmrec.nn)::

    masked_spmm(rowptr, col, x, mask=None, value=None, reduce="mean", *, csc=None)
        -> (out [N_dst, F], weight_sum [N_dst])
    csr_transpose(rowptr, col, num_src) -> (colptr, row_t, perm)   # pass as csc=
    masked_spmm_reference(...)   # pure-PyTorch definition (also the fallback)
    WITH_EXT                     # True when the compiled kernels (pyg_mmrec._C) are active

Semantics: docs/architecture.md and csrc/masked_spmm.cpp.
"""
from .masked_spmm import (
    EXT_DEVICES,
    WITH_EXT,
    csr_transpose,
    masked_spmm,
    masked_spmm_reference,
)

__all__ = [
    "WITH_EXT",
    "EXT_DEVICES",
    "masked_spmm",
    "masked_spmm_reference",
    "csr_transpose",
]
