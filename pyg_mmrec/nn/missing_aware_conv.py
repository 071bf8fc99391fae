from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor
from torch.nn import Parameter

from torch_geometric import EdgeIndex
from torch_geometric.nn.conv import MessagePassing
from torch_geometric.nn.dense.linear import Linear
from torch_geometric.nn.inits import zeros
from torch_geometric.utils import is_sparse

from pyg_mmrec.nn.adjacency import AdjacencyCache, CSRAdjacency, csr_spmm, to_csr

__all__ = ["MissingAwareConv"]


def _check_mask(mask: Optional[Tensor], num_src: int, name: str = "mask") -> None:
    if mask is None:
        return
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise ValueError(f"{name}: expected a bool tensor (True = modality present), got "
                         f"{getattr(mask, 'dtype', type(mask).__name__)}")
    if mask.dim() != 1 or mask.size(0) != num_src:
        raise ValueError(f"{name}: expected shape [{num_src}] (one entry per source node), "
                         f"got {list(mask.shape)}")


def _check_features(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D tensor [num_nodes, channels], got "
                         f"{list(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating point tensor, got {x.dtype}")


class MissingAwareConv(MessagePassing):
    r"""Missing-modality-aware neighbourhood aggregation, as used for the
    modality-specific propagation of `"I³-MRec: Invariant Learning with
    Information Bottleneck for Incomplete Modality Recommendation"
    <https://arxiv.org/abs/2508.04247>`_: a node only aggregates the features
    of neighbours whose modality is *present*, and the aggregate is
    renormalised over those neighbours, so a filled (zero / mean) feature of a
    missing item never leaks into its neighbours.

    With presence mask :math:`m_j \in \{0, 1\}` and edge weights :math:`w_{ji}`,

    .. math::
        s_i = \sum_{j \in \mathcal{N}(i)} w_{ji}\, m_j, \qquad
        \mathbf{a}_i = \frac{1}{s_i} \sum_{j \in \mathcal{N}(i)} w_{ji}\, m_j\,
        \mathbf{x}_j \quad (\mathbf{a}_i = \mathbf{0} \text{ if } s_i = 0),

        \mathbf{x}^{\prime}_i = \mathbf{\Theta}_{\text{rel}}\, \mathbf{a}_i +
        \mathbf{\Theta}_{\text{root}}\, \mathbf{x}_i + \mathbf{b}

    for ``aggr="mean"``; ``aggr="sum"`` drops the division by :math:`s_i`.
    :math:`\mathbf{\Theta}_{\text{rel}}` is the identity when
    ``out_channels=None``; the root term and :math:`\mathbf{b}` are optional.
    :math:`s_i` (the *present-weight sum*) is returned with
    ``return_weight_sum=True`` so callers can tell "no information"
    (:math:`s_i = 0`) from a genuine zero aggregate.

    The fused path (default) runs :func:`pyg_mmrec.ops.masked_spmm` on a CSR
    copy of the graph, converted once and cached while the same adjacency
    object is passed again (see :class:`~pyg_mmrec.nn.AdjacencyCache`); set
    ``conv.fuse = False`` for the PyG ``message`` + ``aggregate`` path, which
    computes the same numbers.

    Args:
        in_channels (int or tuple, optional): size of each input sample, or
            ``(src, dst)`` sizes for bipartite graphs; ``-1`` = lazy. Only
            needed with ``out_channels``.
        out_channels (int, optional): size of each output sample; ``None``
            keeps the features untransformed (no :math:`\mathbf{\Theta}`).
        aggr (str): ``"mean"`` (renormalised over present neighbours) or
            ``"sum"``. (default: ``"mean"``)
        root_weight (bool): add the target's own features
            (:math:`\mathbf{\Theta}_{\text{root}}\,\mathbf{x}_i`, or
            :math:`\mathbf{x}_i` when ``out_channels=None``). (default: ``False``)
        bias (bool): learn an additive bias (needs ``out_channels``).
            (default: ``False``)
        cached (bool): cache the CSR conversion of a static graph.
            (default: ``True``)
        **kwargs (optional): additional arguments of
            :class:`torch_geometric.nn.conv.MessagePassing`.

    Shapes:
        - **input:**
          node features :math:`(|\mathcal{V}|, F_{in})` or
          :math:`((|\mathcal{V}_s|, F_{s}), (|\mathcal{V}_t|, F_{t}))` if bipartite
          (e.g. items -> users),
          edge indices :math:`(2, |\mathcal{E}|)` (or ``EdgeIndex``,
          ``torch.sparse`` / ``SparseTensor`` ``adj_t``, :class:`CSRAdjacency`),
          mask :math:`(|\mathcal{V}_s|)` bool *(optional)*,
          edge weights :math:`(|\mathcal{E}|)` *(optional)*
        - **output:** node features :math:`(|\mathcal{V}_t|, F_{out})`, and
          with ``return_weight_sum=True`` also :math:`s` of shape
          :math:`(|\mathcal{V}_t|)`
    """

    def __init__(self, in_channels: Optional[Union[int, Tuple[int, int]]] = None,
                 out_channels: Optional[int] = None, aggr: str = "mean",
                 root_weight: bool = False, bias: bool = False, cached: bool = True,
                 **kwargs) -> None:
        if aggr not in ("mean", "sum"):
            raise ValueError(f"aggr: expected 'mean' or 'sum', got {aggr!r}")
        if bias and out_channels is None:
            raise ValueError("bias=True needs out_channels (there is nothing to add a "
                             "learnable bias to in the untransformed layer)")
        if out_channels is not None and in_channels is None:
            raise ValueError("in_channels: required when out_channels is given (use -1 for "
                             "lazy initialisation)")
        # Messages are always summed (the weight sum rides along as an extra
        # channel); "mean" divides afterwards, exactly like the fused op.
        super().__init__(aggr="sum", **kwargs)
        self.reduce = aggr
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.root_weight = root_weight
        self.cached = cached
        self._cache = AdjacencyCache()

        if isinstance(in_channels, int) or in_channels is None:
            in_channels = (in_channels, in_channels)  # type: ignore[assignment]
        self.lin_rel: Optional[Linear] = None
        self.lin_root: Optional[Linear] = None
        if out_channels is not None:
            self.lin_rel = Linear(in_channels[0], out_channels, bias=False)
            if root_weight:
                self.lin_root = Linear(in_channels[1], out_channels, bias=False)
        if bias:
            self.bias = Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.lin_rel is not None:
            self.lin_rel.reset_parameters()
        if self.lin_root is not None:
            self.lin_root.reset_parameters()
        zeros(self.bias)
        self._cache.clear()

    # ------------------------------------------------------------------ forward
    def forward(self, x: Union[Tensor, Tuple[Tensor, Optional[Tensor]]], edge_index,
                mask: Optional[Tensor] = None, edge_weight: Optional[Tensor] = None,
                size: Optional[Tuple[int, int]] = None,
                return_weight_sum: bool = False
                ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        r"""Runs one layer.

        Args:
            x (Tensor or (Tensor, Tensor)): features, or ``(x_src, x_dst)``;
                ``x_dst`` may be ``None`` without ``root_weight``.
            edge_index: the graph (see :func:`~pyg_mmrec.nn.to_csr`).
            mask (Tensor, optional): bool :math:`[N_{src}]`, ``True`` = the
                source's modality is present. ``None`` = all present.
            edge_weight (Tensor, optional): :math:`[E]`, with ``edge_index``.
            size ((int, int), optional): ``(N_src, N_dst)``; inferred from
                ``x`` when omitted.
            return_weight_sum (bool): also return :math:`s` :math:`[N_{dst}]`.
        """
        x_src, x_dst = (x, x) if isinstance(x, Tensor) else x
        _check_features(x_src, "x" if isinstance(x, Tensor) else "x[0]")
        if x_dst is not None and x_dst is not x_src:
            _check_features(x_dst, "x[1]")
        num_src = x_src.size(0)
        _check_mask(mask, num_src)
        if is_sparse(edge_index) and edge_weight is not None:
            raise ValueError("edge_weight: must be None when edge_index is a sparse matrix "
                             "(its values are the edge weights)")
        if size is not None and size[0] is not None and int(size[0]) != num_src:
            raise ValueError(f"size: size[0] = {size[0]} but x has {num_src} source nodes")
        num_dst: Optional[int] = None
        if x_dst is not None:
            num_dst = x_dst.size(0)
        elif size is not None and size[1] is not None:
            num_dst = int(size[1])
        elif not (is_sparse(edge_index) or isinstance(edge_index, CSRAdjacency) or
                  (isinstance(edge_index, EdgeIndex) and edge_index.sparse_size(1) is not None)):
            # a plain edge_index does not know how many targets there are
            raise ValueError("size: (N_src, N_dst) is required when x = (x_src, None) and "
                             "the graph is an edge_index without a sparse size")
        if self.root_weight and x_dst is None:
            raise ValueError("x: root_weight=True needs the target features x = (x_src, x_dst)")

        # Transform before propagating when that shrinks the messages (linear
        # maps commute with the weighted sum/mean; the bias is added last).
        lin_first = (self.lin_rel is not None and self.lin_rel.in_channels > 0
                     and self.lin_rel.out_channels < self.lin_rel.in_channels)
        h = self.lin_rel(x_src) if lin_first else x_src

        if self.fuse and not self.explain:
            out, weight_sum = self._fused(h, edge_index, mask, edge_weight, num_src, num_dst)
        else:
            out, weight_sum = self._unfused(h, edge_index, mask, edge_weight, num_src, num_dst)

        if self.lin_rel is not None and not lin_first:
            out = self.lin_rel(out)
        if self.root_weight:
            assert x_dst is not None
            out = out + (self.lin_root(x_dst) if self.lin_root is not None else x_dst)
        if self.bias is not None:
            out = out + self.bias
        return (out, weight_sum) if return_weight_sum else out

    def _adjacency(self, edge_index, edge_weight: Optional[Tensor], num_src: int,
                   num_dst: Optional[int]) -> CSRAdjacency:
        size = (num_src, num_dst)  # num_dst None: taken from a sized adjacency
        if self.cached:
            adj = self._cache(edge_index, size, edge_weight)
        else:
            adj = to_csr(edge_index, size, edge_weight)
        if adj.num_src != num_src or (num_dst is not None and adj.num_dst != num_dst):
            raise ValueError(f"edge_index: the graph has shape (N_dst, N_src) = {adj.shape} but "
                             f"the inputs have N_src = {num_src}, N_dst = {num_dst}")
        return adj

    def _fused(self, h: Tensor, edge_index, mask: Optional[Tensor],
               edge_weight: Optional[Tensor], num_src: int,
               num_dst: Optional[int]) -> Tuple[Tensor, Tensor]:
        adj = self._adjacency(edge_index, edge_weight, num_src, num_dst)
        return self.message_and_aggregate(adj, h, mask)

    def _unfused(self, h: Tensor, edge_index, mask: Optional[Tensor],
                 edge_weight: Optional[Tensor], num_src: int,
                 num_dst: Optional[int]) -> Tuple[Tensor, Tensor]:
        if self.decomposed_layers != 1:
            raise ValueError("decomposed_layers > 1 is only supported on the fused path")
        if isinstance(edge_index, CSRAdjacency):
            ei, w = edge_index.to_edge_index()
            edge_weight = w if edge_weight is None else edge_index.gather(edge_weight)
            edge_index, num_dst = ei, edge_index.num_dst
        elif isinstance(edge_index, Tensor) and edge_index.layout == torch.sparse_coo and \
                not edge_index.is_coalesced():
            edge_index = edge_index.coalesce()  # PyG reads .indices() of COO inputs
        # The presence indicator travels as one extra channel, so one scatter
        # yields both sum_j w m x_j and the weight sum s_i. `where` (not a
        # product) keeps NaN/inf in a missing node's row from leaking.
        if mask is None:
            m = h.new_ones(num_src, 1)
            h_aug = torch.cat([h, m], dim=-1)
        else:
            m = mask.view(-1, 1)
            h_aug = torch.cat([torch.where(m, h, torch.zeros_like(h)), m.to(h.dtype)], dim=-1)
        size = None if is_sparse(edge_index) or num_dst is None else (num_src, num_dst)
        res = self.propagate(edge_index, x=(h_aug, None), edge_weight=edge_weight, size=size)
        out, weight_sum = res[:, :-1], res[:, -1]
        if self.reduce == "mean":
            out = out / torch.where(weight_sum > 0, weight_sum,
                                    torch.ones_like(weight_sum)).unsqueeze(-1)
        return out, weight_sum

    def message(self, x_j: Tensor, edge_weight: Optional[Tensor]) -> Tensor:
        return x_j if edge_weight is None else edge_weight.view(-1, 1).to(x_j.dtype) * x_j

    def message_and_aggregate(self, adj_t, x: Tensor,
                              mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        r"""Fused masked aggregation: ``(out [N_dst, F], weight_sum [N_dst])``
        via :func:`pyg_mmrec.ops.masked_spmm`. ``adj_t`` is a
        :class:`CSRAdjacency` (or anything :func:`to_csr` accepts)."""
        if not isinstance(adj_t, CSRAdjacency):
            adj_t = self._cache(adj_t) if self.cached else to_csr(adj_t)
        return csr_spmm(adj_t, x, mask, reduce=self.reduce)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
                f"aggr={self.reduce!r}, root_weight={self.root_weight})")
