"""Low-level operators (no PyG dependency).

TEMPORARY: pure-PyTorch reference only; the compiled op replaces it (issue 2).
Public API (stable, used by pyg_mmrec.nn):

    masked_spmm(rowptr, col, x, mask=None, value=None, reduce="mean")
        -> (out [N_dst, F], weight_sum [N_dst])
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

WITH_EXT = False


def masked_spmm(rowptr: Tensor, col: Tensor, x: Tensor, mask: Optional[Tensor] = None,
                value: Optional[Tensor] = None, reduce: str = "mean") -> Tuple[Tensor, Tensor]:
    n_dst = rowptr.numel() - 1
    row = torch.repeat_interleave(torch.arange(n_dst, device=x.device), rowptr.diff())
    w = value if value is not None else torch.ones(col.numel(), dtype=x.dtype, device=x.device)
    if mask is not None:
        w = w * mask[col].to(x.dtype)
    out = x.new_zeros(n_dst, x.size(1)).index_add_(0, row, x[col] * w.unsqueeze(-1))
    wsum = x.new_zeros(n_dst).index_add_(0, row, w)
    if reduce == "mean":
        out = out / torch.where(wsum > 0, wsum, torch.ones_like(wsum)).unsqueeze(-1)
    return out, wsum
