r"""Item–item kNN graphs from modality features, built in chunks.

Multimodal recommenders such as `LATTICE <https://arxiv.org/abs/2104.09036>`_,
`FREEDOM <https://arxiv.org/abs/2211.06924>`_ and
`MGCN <https://arxiv.org/abs/2308.03588>`_ connect every item to its :math:`k`
most similar items under cosine similarity of a modality's features,

.. math::
    S_{ij} = \frac{x_i^\top x_j}{\lVert x_i\rVert\,\lVert x_j\rVert}, \qquad
    \mathcal{N}_k(i) = \operatorname{top-}k_{j \ne i}\, S_{ij},

and then normalise the adjacency symmetrically, :math:`D^{-1/2} A D^{-1/2}`.

:func:`knn_graph` never materialises the dense :math:`I \times I` similarity:
rows are processed ``chunk_size`` at a time, so memory is
:math:`O(I k + \text{chunk\_size} \cdot I)`. Items whose modality is missing
(``mask[i] == False``) are excluded on both sides: they get no neighbours and
never serve as one, so a filled (zero or mean) feature cannot leak into the graph.

Edge convention (PyG ``source_to_target`` flow): ``edge_index[0]`` is the
neighbour :math:`j` (source), ``edge_index[1]`` the centre item :math:`i`
(target); edges are sorted by target, so a propagation
:math:`h_i' = \sum_{j \in \mathcal{N}_k(i)} w_{ij} h_j` reads the graph as CSR
with rows = ``edge_index[1]``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from pyg_mmrec.nn.item_item_conv import normalize_weight

__all__ = ["knn_graph", "knn_graph_anchored", "normalize_edge_weight", "mask_key"]


def _check_inputs(x: Tensor, k: int, mask: Optional[Tensor], chunk_size: int) -> None:
    if not isinstance(x, Tensor) or x.dim() != 2:
        raise ValueError(f"features: expected a 2-D tensor [num_items, F], got "
                         f"{getattr(x, 'shape', type(x))}")
    if not x.is_floating_point():
        raise ValueError(f"features: expected a floating point tensor, got {x.dtype}")
    if int(k) != k or k < 1:
        raise ValueError(f"k: expected a positive integer, got {k!r}")
    if int(chunk_size) != chunk_size or chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive integer, got {chunk_size!r}")
    if mask is not None and (mask.dtype != torch.bool or mask.shape != (x.size(0),)):
        raise ValueError(f"mask: expected a bool tensor of shape [{x.size(0)}], got "
                         f"{mask.dtype} {list(mask.shape)}")


def knn_graph(x: Tensor, k: int = 10, mask: Optional[Tensor] = None,
              chunk_size: int = 2048) -> Tuple[Tensor, Tensor]:
    r"""Top-:math:`k` cosine item–item graph, without self loops.

    The neighbour search runs without autograd; the returned weights (the
    cosine similarities of the selected pairs) are recomputed from ``x`` so they
    are differentiable in ``x`` at :math:`O(Ik\,F)` memory (LATTICE learns
    its graph from transformed features this way).

    Args:
        x (Tensor): item features :math:`[I, F]`.
        k (int): neighbours per item. When fewer than :math:`k+1` items are
            present, every present item links to all other present items.
        mask (Tensor, optional): bool :math:`[I]`, ``True`` = modality present.
            Missing items get no neighbours and are nobody's neighbour.
        chunk_size (int): rows of the similarity matrix computed at once.

    Returns:
        ``(edge_index [2, E], weight [E])`` with :math:`E = I_{present}\cdot
        \min(k, I_{present}-1)`; ``edge_index[0]`` = neighbour (source),
        ``edge_index[1]`` = centre item (target), sorted by target.
    """
    _check_inputs(x, k, mask, chunk_size)
    num_items, device = x.size(0), x.device
    present = (torch.arange(num_items, device=device) if mask is None
               else mask.to(device).nonzero().view(-1))
    n = present.numel()
    k_eff = min(int(k), n - 1)
    if k_eff <= 0:
        empty = torch.empty(2, 0, dtype=torch.long, device=device)
        return empty, x.new_empty(0)

    with torch.no_grad():
        # Only present rows take part: a [n, F] matrix of unit vectors.
        xn = F.normalize(x.detach()[present], dim=-1)
        # Bound one similarity block to ~2^26 floats (256 MB) whatever the catalog size.
        chunk_size = max(1, min(int(chunk_size), (1 << 26) // n))
        nbrs, sims = [], []
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            sim = xn[start:stop] @ xn.t()  # [chunk, n]
            # exclude self loops (local row r is global column start + r)
            rows = torch.arange(stop - start, device=device)
            sim[rows, rows + start] = float("-inf")
            top = sim.topk(k_eff, dim=-1)
            nbrs.append(top.indices)
            sims.append(top.values)
        nbr_local = torch.cat(nbrs, dim=0)  # [n, k_eff], indices into present

    target = present.repeat_interleave(k_eff)
    source = present[nbr_local.reshape(-1)]
    if not (x.requires_grad and torch.is_grad_enabled()):
        # The top-k values already are the weights: no [I*k, F] gather needed.
        return torch.stack([source, target], dim=0), torch.cat(sims, dim=0).reshape(-1)
    # Differentiable similarities of the selected pairs only.
    xs = F.normalize(x, dim=-1)
    weight = (xs[target] * xs[source]).sum(-1)
    return torch.stack([source, target], dim=0), weight


def knn_graph_anchored(x: Tensor, k: int = 10, mask: Optional[Tensor] = None,
                       num_anchors: Optional[int] = None,
                       chunk_size: int = 2048) -> Tuple[Tensor, Tensor]:
    r""":func:`knn_graph` whose neighbours are drawn from the *anchor* items
    ``0..num_anchors-1`` only, for a catalogue grown after training.

    The anchors' edges are exactly ``knn_graph(x[:A], k, mask[:A])``; every
    later (present) item :math:`i \geq A` gets its top-:math:`k` present
    anchors by cosine similarity (all of them when fewer are present) and is
    nobody's neighbour, so adding items never changes an anchor's neighbour
    list. ``num_anchors=None`` (or :math:`\geq I`) is :func:`knn_graph`.

    Returns:
        ``(edge_index [2, E], weight [E])``: ``edge_index[0]`` = neighbour
        (source), ``edge_index[1]`` = centre item (target), sorted by target;
        weights differentiable in ``x`` as in :func:`knn_graph`.
    """
    num_items = x.size(0) if isinstance(x, Tensor) and x.dim() == 2 else None
    if num_anchors is None or num_items is None or num_anchors >= num_items:
        return knn_graph(x, k, mask, chunk_size)
    _check_inputs(x, k, mask, chunk_size)
    A = int(num_anchors)
    if A < 0:
        raise ValueError(f"num_anchors: expected >= 0, got {num_anchors}")
    ei, w = knn_graph(x[:A], k, None if mask is None else mask[:A], chunk_size)
    device = x.device
    idx = torch.arange(num_items, device=device)
    keep = torch.ones(num_items, dtype=torch.bool, device=device) if mask is None \
        else mask.to(device)
    anchors, queries = idx[:A][keep[:A]], idx[A:][keep[A:]]
    k_eff = min(int(k), anchors.numel())
    if k_eff == 0 or queries.numel() == 0:
        return ei, w
    with torch.no_grad():
        an = F.normalize(x.detach()[anchors], dim=-1)
        qn = F.normalize(x.detach()[queries], dim=-1)
        chunk_size = max(1, min(int(chunk_size), (1 << 26) // anchors.numel()))
        nbrs, sims = [], []
        for start in range(0, queries.numel(), chunk_size):
            top = (qn[start:start + chunk_size] @ an.t()).topk(k_eff, dim=-1)
            nbrs.append(top.indices)
            sims.append(top.values)
    target = queries.repeat_interleave(k_eff)
    source = anchors[torch.cat(nbrs, dim=0).reshape(-1)]
    if x.requires_grad and torch.is_grad_enabled():
        xs = F.normalize(x, dim=-1)
        w_new = (xs[target] * xs[source]).sum(-1)
    else:
        w_new = torch.cat(sims, dim=0).reshape(-1)
    return (torch.cat([ei, torch.stack([source, target], dim=0)], dim=1),
            torch.cat([w, w_new.to(w.dtype)]))


def normalize_edge_weight(edge_index: Tensor, weight: Optional[Tensor], num_nodes: int,
                          norm: str = "sym") -> Tensor:
    r"""Normalise the weights of a (kNN) graph given as ``(source, target)`` pairs.

    With :math:`d_i = \sum_j w_{ij}` the weighted in-degree of target :math:`i`
    (the row sum of the adjacency :math:`A_{ij}=w_{ij}`):

    * ``"sym"``: :math:`w_{ij} / \sqrt{d_i d_j}` (LATTICE, FREEDOM, MGCN);
    * ``"row"``: :math:`w_{ij} / d_i` (a weighted mean over neighbours);
    * ``"none"``: unchanged.

    Nodes with :math:`d = 0` contribute zero. ``weight=None`` means all ones
    (FREEDOM's indicator graph). Differentiable in ``weight``.
    """
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"edge_index: expected shape [2, E], got {list(edge_index.shape)}")
    if norm not in ("sym", "row", "none"):
        raise ValueError(f"norm: expected 'sym', 'row' or 'none', got {norm!r}")
    src, dst = edge_index[0], edge_index[1]
    if weight is None:
        weight = torch.ones(src.numel(), device=edge_index.device)
    if weight.shape != src.shape:
        raise ValueError(f"weight: expected shape [{src.numel()}], got {list(weight.shape)}")
    return normalize_weight(src, dst, weight, num_nodes, norm)


def mask_key(mask: Optional[Tensor]) -> Tuple:
    """Hashable key of a presence mask's *content*, for caching derived graphs."""
    if mask is None:
        return ("all",)
    m = mask.detach().to("cpu", torch.bool)
    return (m.numel(), m.numpy().tobytes())
