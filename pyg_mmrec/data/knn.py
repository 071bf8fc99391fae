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

**Cost and the approximate builder.** The exact search (``method="exact"``,
the default) costs :math:`O(I^2 F)` time: at :math:`I = 800\,000` items and
:math:`F = 128` that is about :math:`10^{14}` multiply-adds per modality, too
slow for one core. ``method="faiss"`` (the optional ``faiss-cpu`` package)
searches an inverted-file index instead (see :func:`knn_graph`), whose cost
grows as :math:`O(I^{1.5} F)` with the default parameters; the output has the
same format, masks and self-loop rule.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from pyg_mmrec.errors import MissingExtraError
from pyg_mmrec.nn.item_item_conv import normalize_weight

__all__ = ["knn_graph", "knn_graph_anchored", "normalize_edge_weight", "mask_key",
           "KNN_METHODS", "check_knn_method", "faiss_nlist"]

#: the neighbour searches :func:`knn_graph` offers
KNN_METHODS = ("exact", "faiss")
#: inverted lists probed per query by ``method="faiss"`` unless ``nprobe`` is given
FAISS_NPROBE = 16


def check_knn_method(method: str, what: str = "knn_method") -> str:
    r"""Validates a kNN search method (one of :data:`KNN_METHODS`) and, for
    ``"faiss"``, that the package is installed; returns the method.

    Raises:
        ValueError: an unknown method.
        MissingExtraError: ``"faiss"`` without the ``faiss`` package.
    """
    if method not in KNN_METHODS:
        raise ValueError(f"{what}: expected one of {list(KNN_METHODS)}, got {method!r}")
    if method == "faiss":
        import importlib.util
        try:
            found = importlib.util.find_spec("faiss") is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise MissingExtraError(f"{what}='faiss' needs the faiss package, which is not "
                                    f"installed; install it with: pip install faiss-cpu")
    return method


def faiss_nlist(num_items: int) -> int:
    r"""Default number of inverted lists of ``method="faiss"`` for
    ``num_items`` indexed items: :math:`4\sqrt{I}`, at most :math:`I/39` (the
    fewest training points per centroid k-means accepts without a warning),
    at least 1."""
    return max(1, min(int(round(4 * num_items ** 0.5)), num_items // 39))


def _positive_or_none(name: str, value) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name}: expected a positive integer or None, got {value!r}")
    return int(value)


def _exact_topk(queries: Tensor, base: Tensor, k: int, chunk_size: int,
                self_cols: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Top-``k`` inner products of every query row against ``base``, in row
    chunks; ``self_cols[r]`` (optional) is the column query ``r`` may not pick.
    Returns ``(values [Q, k], indices [Q, k])``."""
    n, device = base.size(0), base.device
    # Bound one similarity block to ~2^26 floats (256 MB) whatever the catalog size.
    chunk_size = max(1, min(int(chunk_size), (1 << 26) // max(n, 1)))
    nbrs, sims = [], []
    for start in range(0, queries.size(0), chunk_size):
        stop = min(start + chunk_size, queries.size(0))
        sim = queries[start:stop] @ base.t()  # [chunk, n]
        if self_cols is not None:
            rows = torch.arange(stop - start, device=device)
            sim[rows, self_cols[start:stop]] = float("-inf")
        top = sim.topk(k, dim=-1)
        # free the block before the next one is allocated: one block alive, not two
        del sim
        nbrs.append(top.indices)
        sims.append(top.values)
    if not nbrs:
        return base.new_empty(0, k), torch.empty(0, k, dtype=torch.long, device=device)
    return torch.cat(sims, dim=0), torch.cat(nbrs, dim=0)


def _faiss_index(base: Tensor, nlist: Optional[int]):
    """An inverted-file inner-product index over the unit rows of ``base``
    (k-means trained with faiss's fixed seed, so the same rows give the same
    index)."""
    import faiss
    n, d = base.shape
    nlist = faiss_nlist(n) if nlist is None else min(int(nlist), n)
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.spherical = True  # cosine: unit-norm centroids
    # k-means on a sample of 64 points per list (faiss's default: 256) for 10
    # iterations: a coarse partition is enough, the search is exact within lists
    index.cp.max_points_per_centroid = 64
    index.cp.niter = 10
    xb = base.detach().to("cpu", torch.float32).contiguous().numpy()
    index.train(xb)
    index.add(xb)
    return index


def _faiss_topk(index, queries: Tensor, base: Tensor, k: int, nprobe: Optional[int],
                chunk_size: int, self_cols: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """:func:`_exact_topk` answered by a faiss index over ``base``: searches
    ``k + 1`` candidates (``k`` without ``self_cols``), drops the query itself,
    and answers the rare rows that got fewer than ``k`` valid candidates (the
    probed lists held too few items) exactly."""
    device = queries.device
    index.nprobe = min(FAISS_NPROBE if nprobe is None else int(nprobe), index.nlist)
    extra = 0 if self_cols is None else 1
    nq = queries.size(0)
    q_cpu = queries.detach().to("cpu", torch.float32)
    own = None if self_cols is None else self_cols.to("cpu")
    vals, idxs, short = [], [], []
    step = 1 << 14  # queries per call: bounds the result buffers, not the cost
    for start in range(0, nq, step):
        stop = min(start + step, nq)
        D, I = index.search(q_cpu[start:stop].contiguous().numpy(), k + extra)
        D, I = torch.from_numpy(D), torch.from_numpy(I)
        valid = I >= 0  # -1: fewer candidates than asked in the probed lists
        if own is not None:
            valid &= I != own[start:stop, None]
        # keep the first k valid candidates of every row, in faiss's (descending) order
        order = torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices[:, :k]
        vals.append(D.gather(1, order))
        idxs.append(I.gather(1, order))
        short.append(start + (valid.sum(1) < k).nonzero().view(-1))
    values = torch.cat(vals, dim=0).to(device=device, dtype=queries.dtype)
    indices = torch.cat(idxs, dim=0).to(device)
    short_rows = torch.cat(short).to(device)
    if short_rows.numel():
        v, i = _exact_topk(queries[short_rows], base, k, chunk_size,
                           None if self_cols is None else self_cols[short_rows])
        values[short_rows], indices[short_rows] = v, i
    return values, indices


def _topk(queries: Tensor, base: Tensor, k: int, chunk_size: int, self_cols: Optional[Tensor],
          method: str, nprobe: Optional[int], nlist: Optional[int]) -> Tuple[Tensor, Tensor]:
    if method == "exact":
        return _exact_topk(queries, base, k, chunk_size, self_cols)
    return _faiss_topk(_faiss_index(base, nlist), queries, base, k, nprobe, chunk_size,
                       self_cols)


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
              chunk_size: int = 2048, method: str = "exact", nprobe: Optional[int] = None,
              nlist: Optional[int] = None) -> Tuple[Tensor, Tensor]:
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
        chunk_size (int): rows of the similarity matrix computed at once
            (at most :math:`2^{26}/I_{present}`, i.e. 256 MB of float32
            scores, whatever the value).
        method (str): ``"exact"`` (default): every pair is scored,
            :math:`O(I^2 F)` time and :math:`O(Ik + 2^{26})` memory beyond the
            normalised features. ``"faiss"``: approximate search with faiss
            (``pip install faiss-cpu``), see below.
        nprobe (int, optional): ``method="faiss"``: inverted lists scanned per
            item (default :data:`FAISS_NPROBE` = 16); ``nprobe >= nlist``
            scans every list, which is the exact search.
        nlist (int, optional): ``method="faiss"``: number of inverted lists
            (default :func:`faiss_nlist`: :math:`4\sqrt{I_{present}}`).

    **The approximate search** (``method="faiss"``) indexes the
    :math:`L_2`-normalised present rows in a faiss ``IndexIVFFlat`` with the
    inner-product metric (so scores are cosines): spherical k-means (faiss's
    fixed seed, 10 iterations on 64 sampled items per list) splits the items
    into ``nlist`` lists, and every item is compared only with the items of
    the ``nprobe`` lists whose centroids are closest to it. Time is
    :math:`O(I\cdot(\text{nlist} + \text{nprobe}\cdot I/\text{nlist})\,F)`,
    i.e. :math:`O(I^{1.5}F)` with the defaults, plus the k-means
    :math:`O(\text{nlist}^2 F)`; memory is one float32 copy of the features
    plus :math:`O(Ik)`. Why an inverted file rather than a graph index
    (HNSW): its scores are exact inner products within the scanned lists, so
    ``nprobe = nlist`` reproduces the exact graph (ties aside) and one knob
    trades recall for time; it stores no link lists (HNSW keeps
    :math:`2M` links per item and is built one insertion at a time), and its
    k-means and list scans run as batched distance computations. The item
    itself is dropped from its candidates; an item whose probed lists hold
    fewer than :math:`k` other items is answered exactly. Weights are the
    float32 cosines faiss returns (recomputed from ``x`` when ``x`` requires
    a gradient, as for the exact search).

    Returns:
        ``(edge_index [2, E], weight [E])`` with :math:`E = I_{present}\cdot
        \min(k, I_{present}-1)`; ``edge_index[0]`` = neighbour (source),
        ``edge_index[1]`` = centre item (target), sorted by target.
    """
    _check_inputs(x, k, mask, chunk_size)
    # the arguments first, then whether the optional package is installed
    nprobe, nlist = _positive_or_none("nprobe", nprobe), _positive_or_none("nlist", nlist)
    method = check_knn_method(method, "method")
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
        # exclude self loops: row r of xn is column r
        sims, nbr_local = _topk(xn, xn, k_eff, chunk_size, torch.arange(n, device=device),
                                method, nprobe, nlist)  # [n, k_eff], indices into present

    target = present.repeat_interleave(k_eff)
    source = present[nbr_local.reshape(-1)]
    if not (x.requires_grad and torch.is_grad_enabled()):
        # The top-k values already are the weights: no [I*k, F] gather needed.
        return torch.stack([source, target], dim=0), sims.reshape(-1)
    # Differentiable similarities of the selected pairs only.
    xs = F.normalize(x, dim=-1)
    weight = (xs[target] * xs[source]).sum(-1)
    return torch.stack([source, target], dim=0), weight


def knn_graph_anchored(x: Tensor, k: int = 10, mask: Optional[Tensor] = None,
                       num_anchors: Optional[int] = None,
                       chunk_size: int = 2048, method: str = "exact",
                       nprobe: Optional[int] = None,
                       nlist: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    r""":func:`knn_graph` whose neighbours are drawn from the *anchor* items
    ``0..num_anchors-1`` only, for a catalogue grown after training.

    The anchors' edges are exactly ``knn_graph(x[:A], k, mask[:A])``; every
    later (present) item :math:`i \geq A` gets its top-:math:`k` present
    anchors by cosine similarity (all of them when fewer are present) and is
    nobody's neighbour, so adding items never changes an anchor's neighbour
    list. ``num_anchors=None`` (or :math:`\geq I`) is :func:`knn_graph`.
    ``method``, ``nprobe``, ``nlist``: as in :func:`knn_graph`; with
    ``"faiss"`` the later items are searched in an index over the present
    anchors (the same, seeded, as the one of the anchors' own graph).

    Returns:
        ``(edge_index [2, E], weight [E])``: ``edge_index[0]`` = neighbour
        (source), ``edge_index[1]`` = centre item (target), sorted by target;
        weights differentiable in ``x`` as in :func:`knn_graph`.
    """
    num_items = x.size(0) if isinstance(x, Tensor) and x.dim() == 2 else None
    if num_anchors is None or num_items is None or num_anchors >= num_items:
        return knn_graph(x, k, mask, chunk_size, method, nprobe, nlist)
    _check_inputs(x, k, mask, chunk_size)
    A = int(num_anchors)
    if A < 0:
        raise ValueError(f"num_anchors: expected >= 0, got {num_anchors}")
    ei, w = knn_graph(x[:A], k, None if mask is None else mask[:A], chunk_size, method,
                      nprobe, nlist)
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
        sims, nbrs = _topk(qn, an, k_eff, chunk_size, None, method, nprobe, nlist)
    target = queries.repeat_interleave(k_eff)
    source = anchors[nbrs.reshape(-1)]
    if x.requires_grad and torch.is_grad_enabled():
        xs = F.normalize(x, dim=-1)
        w_new = (xs[target] * xs[source]).sum(-1)
    else:
        w_new = sims.reshape(-1)
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
