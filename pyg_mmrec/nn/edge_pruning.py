r"""Degree-sensitive edge pruning of a user–item graph (FREEDOM's denoising)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .lightgcn_conv import LightGCNConv

__all__ = ["degree_sensitive_prune", "resample_pruned_conv"]

# torch.multinomial draws from at most 2^24 categories
_MULTINOMIAL_MAX = 1 << 24


def degree_sensitive_prune(edge_index: Tensor, num_users: int, num_items: int,
                           drop: float) -> Tensor:
    r"""Keep a fraction :math:`1 - \rho` of the distinct interactions,
    sampled without replacement with probability :math:`\propto 1 / \sqrt{d_u
    d_i}`, as in `FREEDOM <https://arxiv.org/abs/2211.06924>`_: edges between
    high-degree nodes, the likeliest noise, are pruned first.

    Args:
        edge_index (Tensor): ``(user, item)`` pairs :math:`[2, E]` (duplicates
            count once).
        num_users (int), num_items (int): node counts.
        drop (float): :math:`\rho \in [0, 1)`, the fraction of edges removed.

    Returns:
        The kept ``(user, item)`` pairs, :math:`[2, \max(1, \lfloor E(1-\rho)
        \rfloor)]`. Up to :math:`2^{24}` edges the draw is
        :func:`torch.multinomial`; beyond, the equivalent exponential race
        (top-:math:`k` of :math:`u^{1/p}`, Efraimidis–Spirakis).
    """
    if not 0.0 <= drop < 1.0:
        raise ValueError(f"drop: expected a fraction in [0, 1), got {drop}")
    if edge_index.dim() != 2 or edge_index.size(0) != 2 or edge_index.size(1) == 0:
        raise ValueError(f"edge_index: expected a non-empty [2, E] tensor, got "
                         f"{list(edge_index.shape)}")
    ei = torch.unique(edge_index, dim=1)
    deg_u = torch.bincount(ei[0], minlength=num_users).float()
    deg_i = torch.bincount(ei[1], minlength=num_items).float()
    p = (deg_u[ei[0]] * deg_i[ei[1]]).rsqrt()
    keep = max(1, int(ei.size(1) * (1.0 - drop)))
    if p.numel() <= _MULTINOMIAL_MAX:
        idx = torch.multinomial(p, keep, replacement=False)
    else:
        idx = (torch.rand_like(p).log() / p).topk(keep).indices
    return ei[:, idx]


def resample_pruned_conv(full: LightGCNConv, edge_index: Tensor, drop: float,
                reuse: Optional[LightGCNConv] = None) -> LightGCNConv:
    r"""A :class:`~pyg_mmrec.nn.LightGCNConv` configured as ``full`` (layers,
    renormalisation) over a fresh :func:`degree_sensitive_prune` draw of
    ``edge_index``; ``reuse`` (the previous epoch's) is rebuilt in place."""
    kept = degree_sensitive_prune(edge_index, full.num_users, full.num_items, drop)
    if reuse is None:
        return LightGCNConv(full.num_users, full.num_items, kept, num_layers=full.num_layers,
                            renormalize=full.renormalize)
    reuse.set_graph(kept)
    return reuse
