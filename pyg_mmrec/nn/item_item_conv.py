from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from torch_geometric import EdgeIndex
from torch_geometric.typing import SparseTensor
from torch_geometric.utils import is_torch_sparse_tensor

from pyg_mmrec.nn.adjacency import CSRAdjacency, csr_spmm
from pyg_mmrec.nn.missing_aware_conv import MissingAwareConv

__all__ = ["ItemItemConv", "normalize_weight"]

_NORMS = ("sym", "row", "none")


def normalize_weight(src: Tensor, dst: Tensor, weight: Tensor, num_nodes: int,
                     norm: str) -> Tensor:
    """``"sym"``/``"row"``/``"none"`` normalisation of edge weights ``src -> dst``;
    the one implementation shared by this layer and ``pyg_mmrec.data.knn``."""
    # d_i = weighted in-degree of target i (the adjacency's row sum).
    if norm == "none":
        return weight
    deg = weight.new_zeros(num_nodes).index_add_(0, dst, weight)
    if norm == "row":
        inv = torch.where(deg > 0, 1.0 / deg.clamp_min(1e-30), torch.zeros_like(deg))
        return weight * inv[dst]
    inv_sqrt = torch.where(deg > 0, deg.clamp_min(1e-30).rsqrt(), torch.zeros_like(deg))
    return inv_sqrt[dst] * weight * inv_sqrt[src]


class ItemItemConv(MissingAwareConv):
    r"""Propagation over a modality's item–item kNN graph, as in `LATTICE
    <https://arxiv.org/abs/2104.09036>`_ and `FREEDOM
    <https://arxiv.org/abs/2211.06924>`_, where items whose modality is
    missing (`I³-MRec <https://arxiv.org/abs/2508.04247>`_ setting) are never
    used as sources.

    With kNN weights :math:`S_{ij}` (edge :math:`j \to i`), their
    normalisation :math:`\hat{S}` and the presence mask :math:`m`,

    .. math::
        \hat{S}_{ij} = \frac{S_{ij}}{\sqrt{d_i d_j}} \;(\texttt{"sym"}),\quad
        \frac{S_{ij}}{d_i} \;(\texttt{"row"}),\quad S_{ij}\;(\texttt{"none"}),
        \qquad d_i = \sum_j S_{ij},

        \mathbf{h}^{\prime}_i = c_i \sum_{j} \hat{S}_{ij}\, m_j\, \mathbf{h}_j,
        \qquad c_i = \begin{cases} \dfrac{\sum_j \hat{S}_{ij}}{\sum_j
        \hat{S}_{ij} m_j} & \texttt{renormalize=True} \\ 1 &
        \texttt{renormalize=False} \end{cases}

    (:math:`c_i = 0` when no neighbour is present). Degrees come from the
    whole graph, so the normalisation does not change when a mask does;
    ``normalize="row", renormalize=True`` is the weighted mean over the
    present neighbours. Graphs from :func:`pyg_mmrec.data.knn.knn_graph`
    already leave missing items out; the mask also covers masks that change
    without rebuilding the graph (e.g. simulated missingness at train time).
    The normalised CSR graph is cached while the same ``edge_index`` /
    ``edge_weight`` objects are passed again; the product runs on
    :func:`pyg_mmrec.ops.masked_spmm` (``conv.fuse = False``: PyG
    ``message`` + ``aggregate``, same numbers).

    Args:
        normalize (str): ``"sym"``, ``"row"`` or ``"none"``. (default: ``"sym"``)
        renormalize (bool): rescale over present neighbours, see above.
            (default: ``False``)
        cached (bool): cache the (normalised) CSR graph. (default: ``True``)
        **kwargs (optional): additional arguments of
            :class:`torch_geometric.nn.conv.MessagePassing`.

    Shapes:
        - **input:** item features :math:`(I, F)`, edge indices
          :math:`(2, |\mathcal{E}|)` (``edge_index[0]`` = neighbour,
          ``edge_index[1]`` = centre item; or any adjacency of
          :func:`~pyg_mmrec.nn.to_csr`), mask :math:`(I)` bool *(optional)*,
          edge weights :math:`(|\mathcal{E}|)` *(optional, default 1)*
        - **output:** :math:`(I, F)`
    """

    def __init__(self, normalize: str = "sym", renormalize: bool = False, cached: bool = True,
                 **kwargs) -> None:
        if normalize not in _NORMS:
            raise ValueError(f"normalize: expected one of {_NORMS}, got {normalize!r}")
        super().__init__(None, None, aggr="sum", cached=cached, **kwargs)
        self.normalize = normalize
        self.renormalize = bool(renormalize)

    def forward(self, x: Tensor, edge_index, mask: Optional[Tensor] = None,
                edge_weight: Optional[Tensor] = None,
                return_weight_sum: bool = False):
        r"""Args:
            x (Tensor): item features :math:`[I, F]`.
            edge_index: the kNN graph.
            mask (Tensor, optional): bool :math:`[I]`, ``True`` = present.
            edge_weight (Tensor, optional): kNN weights :math:`[E]`.
            return_weight_sum (bool): also return :math:`\sum_j \hat{S}_{ij} m_j`.
        """
        if not isinstance(x, Tensor):
            raise ValueError("x: expected item features [num_items, F] (no bipartite input)")
        return super().forward(x, edge_index, mask=mask, edge_weight=edge_weight,
                               return_weight_sum=return_weight_sum)

    # fused path: normalise the cached CSR once ------------------------------
    def _normalize_csr(self, adj: CSRAdjacency) -> CSRAdjacency:
        w = adj.value if adj.value is not None else \
            torch.ones(adj.num_edges, device=adj.device)
        w = normalize_weight(adj.col, adj.row(), w, adj.num_dst, self.normalize)
        return adj.with_value(w)

    def _adjacency(self, edge_index, edge_weight: Optional[Tensor], num_src: int,
                   num_dst: Optional[int]) -> CSRAdjacency:
        size = (num_src, num_src)
        if self.cached:
            adj = self._cache(edge_index, size, edge_weight, transform=self._normalize_csr)
        else:
            adj = self._normalize_csr(super()._adjacency(edge_index, edge_weight, num_src,
                                                         num_src))
        if adj.shape != (num_src, num_src):
            raise ValueError(f"edge_index: expected a square item-item graph over {num_src} "
                             f"items, got shape {adj.shape}")
        return adj

    def _fused(self, h: Tensor, edge_index, mask: Optional[Tensor],
               edge_weight: Optional[Tensor], num_src: int,
               num_dst: Optional[int]) -> Tuple[Tensor, Tensor]:
        adj = self._adjacency(edge_index, edge_weight, num_src, num_dst)
        out, weight_sum = csr_spmm(adj, h, mask, reduce="sum")
        if mask is not None and self.renormalize:
            value = adj.value.to(h.dtype)
            if not value.requires_grad:  # constant weights: no backward into weight_sum
                weight_sum = weight_sum.detach()
            row_sum = torch.zeros_like(weight_sum).index_add_(0, adj.row(), value)
            out = self._rescale(out, weight_sum, row_sum)
        return out, weight_sum

    @staticmethod
    def _rescale(out: Tensor, weight_sum: Tensor, row_sum: Tensor) -> Tensor:
        scale = torch.where(weight_sum > 0, row_sum / weight_sum.clamp_min(1e-30),
                            torch.zeros_like(weight_sum))
        return out * scale.unsqueeze(-1)

    # unfused path: an independent COO computation of the same numbers ----------
    def _unfused(self, h: Tensor, edge_index, mask: Optional[Tensor],
                 edge_weight: Optional[Tensor], num_src: int,
                 num_dst: Optional[int]) -> Tuple[Tensor, Tensor]:
        if isinstance(edge_index, CSRAdjacency):
            ei, w = edge_index.to_edge_index()
            w = w if edge_weight is None else edge_index.gather(edge_weight)
        elif is_torch_sparse_tensor(edge_index):
            coo = edge_index.to_sparse_coo().coalesce()
            ei, w = coo.indices().flip(0), coo.values()
        elif isinstance(edge_index, SparseTensor):
            row, col, w = edge_index.coo()
            ei = torch.stack([col, row])
        else:
            ei = edge_index.as_tensor() if isinstance(edge_index, EdgeIndex) else edge_index
            w = edge_weight
        if w is None:
            w = torch.ones(ei.size(1), dtype=h.dtype, device=h.device)
        w = normalize_weight(ei[0], ei[1], w.to(h.dtype), num_src, self.normalize)
        out, weight_sum = super()._unfused(h, ei, mask, w, num_src, num_src)
        if mask is not None and self.renormalize:
            row_sum = torch.zeros_like(weight_sum).index_add_(0, ei[1], w)
            out = self._rescale(out, weight_sum, row_sum)
        return out, weight_sum

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(normalize={self.normalize!r}, "
                f"renormalize={self.renormalize})")
