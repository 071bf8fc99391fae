r"""Layer-wise neighbour sampling for mini-batch LightGCN-style propagation.

Full-graph training (MMRec's scheme) re-propagates the whole user–item graph
for every BPR batch: a step costs :math:`O(E)` and an epoch of :math:`E/B`
steps :math:`O(E^2/B)`. Here a step only propagates over a sampled
computation graph of the batch's seed nodes, as in `GraphSAGE
<https://arxiv.org/abs/1706.02216>`_ and `PinSage
<https://arxiv.org/abs/1806.01973>`_, so it costs
:math:`O(B \prod_l (1 + f_l))` whatever the size of the graph.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from pyg_mmrec.nn.adjacency import CSRAdjacency
from pyg_mmrec.ops import masked_spmm

from .fanout import check_fanout  # noqa: F401  (re-exported; light, no torch)

__all__ = ["check_fanout", "LayerwiseSampler", "SampledSubgraph", "present_weight_sum",
           "exact_sampler", "renormalize_rows"]

_COMBINE = ("mean", "sum", "last")


@torch.no_grad()
def present_weight_sum(adj: CSRAdjacency, node_mask: Tensor) -> Tensor:
    r"""Exact :math:`\sum_{u \in \mathcal{N}(v)} \hat{A}_{vu} m_u` for every
    target :math:`v` (:math:`O(E)`, one call per mask): the denominator of the
    missing-aware renormalisation, shared by all sampled steps with that mask."""
    ones = torch.ones(adj.num_src, 1, dtype=torch.float, device=adj.device)
    value = None if adj.value is None else adj.value.float()
    return masked_spmm(adj.rowptr, adj.col, ones, mask=node_mask, value=value, reduce="sum")[1]


def renormalize_rows(out: Tensor, targets: Tensor, row_sum: Tensor,
                     present_sum: Tensor) -> Tensor:
    r"""Rescales the masked sums ``out`` of the nodes ``targets`` (global ids)
    by ``row_sum / present_sum`` (0 where nothing is present): the
    missing-aware renormalisation of :class:`~pyg_mmrec.nn.LightGCNConv`
    with exact (whole-graph) denominators."""
    full, present = row_sum[targets].to(out.dtype), present_sum[targets].to(out.dtype)
    scale = torch.where(present > 0, full / present.clamp_min(1e-30), torch.zeros_like(present))
    return out * scale.unsqueeze(-1)


def exact_sampler(adj: CSRAdjacency, num_layers: int) -> "LayerwiseSampler":
    r"""A :class:`LayerwiseSampler` whose fan-out is the maximum row degree of
    ``adj`` at every hop: it draws nothing at random and returns the exact
    ``num_layers``-hop computation graph of the seeds, e.g. of a batch's items
    over a kNN item–item graph, whose rows hold at most :math:`k` (per
    modality) neighbours, so the neighbourhood stays :math:`O(B k^L)`."""
    deg = int(adj.rowptr.diff().max()) if adj.num_dst > 0 and adj.num_edges > 0 else 1
    return LayerwiseSampler([max(deg, 1)] * num_layers, num_layers)


@dataclass
class SampledSubgraph:
    r"""The nested node sets and per-hop edges of one sampled batch.

    The node sets :math:`\mathcal{D}_0 \subseteq \mathcal{D}_1 \subseteq \dots
    \subseteq \mathcal{D}_L` are prefixes of :attr:`n_id`: :math:`\mathcal{D}_j`
    = ``n_id[:sizes[j]]``, :math:`\mathcal{D}_0` = the unique seeds (sorted).
    Block :math:`j` is a CSR graph with targets :math:`\mathcal{D}_j` and
    sources :math:`\mathcal{D}_{j+1}` (local ids), holding the sampled
    neighbours of every node of :math:`\mathcal{D}_j` with rescaled weights.

    Attributes:
        n_id (Tensor): global node ids of :math:`\mathcal{D}_L` ``[sizes[-1]]``.
        sizes (list of int): :math:`|\mathcal{D}_0|, \dots, |\mathcal{D}_L|`.
        seed_index (Tensor): row in :math:`\mathcal{D}_0` of every input seed.
        blocks (list): ``(rowptr, col, value)`` of the hops :math:`0, \dots, L-1`.
        edges (list): ``(edge_id, scale)`` of every sampled edge of each hop:
            its position in the sampled graph's CSR and the factor
            (:math:`d_v / f_j` or 1) applied to its weight, so that
            :meth:`hop` can re-read weights that carry gradients.
    """

    n_id: Tensor
    sizes: List[int]
    seed_index: Tensor
    blocks: List[Tuple[Tensor, Tensor, Tensor]]
    edges: Optional[List[Tuple[Tensor, Tensor]]] = None

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    @property
    def seeds(self) -> Tensor:
        """The unique seed ids :math:`\\mathcal{D}_0` (sorted ascending)."""
        return self.n_id[: self.sizes[0]]

    def num_sampled_edges(self) -> int:
        return sum(int(b[1].numel()) for b in self.blocks)

    def propagate(self, x: Tensor, node_mask: Optional[Tensor] = None,
                  row_sum: Optional[Tensor] = None, present_sum: Optional[Tensor] = None,
                  combine: str = "mean") -> Tensor:
        r"""The :math:`L`-layer propagation read out at the seeds
        :math:`\mathcal{D}_0`, e.g. LightGCN's
        :math:`\frac{1}{L+1}\sum_{l=0}^{L} (\hat{A}^l E)[\mathcal{D}_0]`.

        Args:
            x (Tensor): layer-0 inputs of :math:`\mathcal{D}_L`, ``[len(n_id), F]``
                (rows in :attr:`n_id` order).
            node_mask (Tensor, optional): bool ``[len(n_id)]``, ``False`` =
                the node sends no message (its modality is missing).
            row_sum (Tensor, optional): global ``[N]`` full weight
                :math:`\sum_u \hat{A}_{vu}` of every node; with ``present_sum``
                (global ``[N]``, :func:`present_weight_sum`) the masked sum of
                node :math:`v` is rescaled by ``row_sum[v] / present_sum[v]``
                (0 if nothing is present), as
                :class:`~pyg_mmrec.nn.LightGCNConv` with ``renormalize=True``.
            combine (str): ``"mean"``, ``"sum"`` or ``"last"`` over the layers.

        Returns:
            ``[sizes[0], F]``, rows in :attr:`seeds` order (use
            :attr:`seed_index` to map back to the input seeds).
        """
        if combine not in _COMBINE:
            raise ValueError(f"combine: expected one of {_COMBINE}, got {combine!r}")
        if not isinstance(x, Tensor) or x.dim() != 2 or x.size(0) != self.n_id.numel():
            raise ValueError(f"x: expected shape [{self.n_id.numel()}, F] (one row per sampled "
                             f"node), got {list(x.shape) if isinstance(x, Tensor) else x!r}")
        if node_mask is not None and (node_mask.dtype != torch.bool or
                                      node_mask.shape != (self.n_id.numel(),)):
            raise ValueError(f"node_mask: expected a bool tensor of shape [{self.n_id.numel()}]"
                             f", got {node_mask.dtype} {list(node_mask.shape)}")
        if (row_sum is None) != (present_sum is None):
            raise ValueError("row_sum and present_sum: give both (renormalised masking) or "
                             "neither")
        n0, L = self.sizes[0], self.num_layers
        h, total = x, x[:n0]
        for j in reversed(range(L)):  # hop L-1 first: D_L -> D_{L-1} -> ... -> D_0
            h = self.hop(j, h, node_mask, row_sum, present_sum)
            total = total + h[:n0]
        if combine == "last":
            return h[:n0]
        return total / (L + 1) if combine == "mean" else total

    def hop(self, j: int, h: Tensor, node_mask: Optional[Tensor] = None,
            row_sum: Optional[Tensor] = None, present_sum: Optional[Tensor] = None,
            edge_value: Optional[Tensor] = None) -> Tensor:
        r"""One sampled layer, block ``j``: the estimate of
        :math:`(\hat{A} h)[\mathcal{D}_j]` from the rows of
        :math:`\mathcal{D}_{j+1}`.

        Args:
            j (int): the hop (``0``: the block whose targets are the seeds).
            h (Tensor): inputs of (at least) :math:`\mathcal{D}_{j+1}`,
                ``[>= sizes[j+1], F]`` in :attr:`n_id` order.
            node_mask (Tensor, optional): bool, ``False`` = sends nothing
                (rows in :attr:`n_id` order, at least ``sizes[j+1]``).
            row_sum, present_sum (Tensor, optional): global ``[N]`` full and
                present weights for the missing-aware renormalisation (see
                :meth:`propagate`).
            edge_value (Tensor, optional): the weights of the sampled graph in
                its CSR order (e.g. ones that carry gradients); default: the
                weights read when sampling (constants).

        Shapes:
            - **output:** ``[sizes[j], F]``.
        """
        rowptr, col, value = self.blocks[j]
        n_src = self.sizes[j + 1]
        if edge_value is not None:
            if self.edges is None:
                raise ValueError("edge_value: this sample kept no edge ids")
            eid, scale = self.edges[j]
            value = edge_value[eid] * scale.to(edge_value.dtype)
        mask = None if node_mask is None else node_mask[:n_src]
        out, _ = masked_spmm(rowptr, col, h[:n_src], mask=mask, value=value.to(h.dtype),
                             reduce="sum")
        if mask is not None and row_sum is not None:
            # exact denominators: the estimate stays unbiased, and equals the
            # full-graph layer when nothing is subsampled
            out = renormalize_rows(out, self.n_id[: self.sizes[j]], row_sum, present_sum)
        return out

class LayerwiseSampler:
    r"""Vectorised layer-wise uniform neighbour sampler for mini-batch
    propagation over a normalised graph :math:`\hat{A}` (CSR, rows =
    targets), e.g. :attr:`pyg_mmrec.nn.LightGCNConv.adj`.

    Starting from the unique seeds :math:`\mathcal{D}_0`, hop :math:`j` draws
    for every node :math:`v \in \mathcal{D}_j` with degree :math:`d_v`:

    * all its neighbours with their weights :math:`\hat{A}_{vu}` when
      :math:`d_v \leq f_j` (exact);
    * otherwise :math:`f_j` neighbours uniformly *with replacement*, each with
      weight :math:`\hat{A}_{vu}\, d_v / f_j`,

    so that :math:`\sum_{\text{draws}} w\, h_u` is an unbiased estimate of
    :math:`\sum_{u \in \mathcal{N}(v)} \hat{A}_{vu} h_u`, and
    :math:`\mathcal{D}_{j+1} = \mathcal{D}_j \cup \{\text{drawn}\}`. Every
    node of :math:`\mathcal{D}_j` is resampled at hop :math:`j` (independent
    draws per hop), so layer :math:`k` at the seeds,

    .. math::
        \tilde{h}^{(k)}_{\mathcal{D}_{L-k}} = \tilde{A}_{L-k}\,
        \tilde{h}^{(k-1)}_{\mathcal{D}_{L-k+1}}, \qquad
        \tilde{h}^{(0)} = E^{(0)}_{\mathcal{D}_L},

    is an unbiased estimate of :math:`(\hat{A}^k E^{(0)})_{\mathcal{D}_0}`
    (linear in independent unbiased factors), and exact when every
    :math:`f_j \geq \max_v d_v`. A step touches at most
    :math:`|\mathcal{D}_0| \prod_j (1 + f_j)` nodes: its cost is bounded
    independently of the size of the graph (below the bound it grows with the
    number of distinct nodes the sample reaches). Randomness comes from torch's global RNG (one
    ``torch.rand`` per hop), so seeding and checkpointed RNG states replay it.

    Args:
        fanout (list of int): :math:`f_0, \dots, f_{L-1}`; ``fanout[0]`` is
            the hop next to the seeds.
        num_layers (int, optional): :math:`L`, checked against
            ``len(fanout)``.
    """

    def __init__(self, fanout: Sequence[int], num_layers: Optional[int] = None) -> None:
        if num_layers is None:
            num_layers = len(fanout) if isinstance(fanout, (list, tuple)) else 0
        self.fanout = check_fanout(fanout, num_layers)
        self._local: Optional[Tensor] = None

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(fanout={self.fanout})"

    @staticmethod
    def _hop(adj: CSRAdjacency, targets: Tensor, f: int
             ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Sampled edges of ``targets``: ``(rowptr [T+1], src (global) [e], weight [e],
        edge id [e], scale [e])``."""
        dev = targets.device
        start = adj.rowptr[targets]
        deg = adj.rowptr[targets + 1] - start
        k = deg.clamp(max=f)
        rowptr = torch.zeros(targets.numel() + 1, dtype=torch.long, device=dev)
        torch.cumsum(k, 0, out=rowptr[1:])
        n_e = int(rowptr[-1])
        row = torch.repeat_interleave(torch.arange(targets.numel(), device=dev), k,
                                      output_size=n_e)
        d = deg[row]
        exact = d <= f
        # float64 draws: floor(r * d) < d even for very large degrees
        r = torch.rand(n_e, dtype=torch.float64, device=dev)
        drawn = torch.minimum((r * d).long(), d - 1)
        offset = torch.where(exact, torch.arange(n_e, device=dev) - rowptr[row], drawn)
        eid = start[row] + offset
        value = adj.value[eid] if adj.value is not None else \
            torch.ones(n_e, dtype=torch.float, device=dev)
        scale = torch.where(exact, torch.ones_like(value), d.to(value.dtype) / f)
        return rowptr, adj.col[eid], value * scale, eid, scale

    @torch.no_grad()
    def sample(self, adj: CSRAdjacency, seeds: Tensor) -> SampledSubgraph:
        r"""Samples the computation graph of ``seeds`` (global node ids
        ``[S]``, duplicates allowed) over ``adj`` (square, rows = targets)."""
        if not isinstance(adj, CSRAdjacency) or adj.num_src != adj.num_dst:
            raise ValueError(f"adj: expected a square CSRAdjacency, got {adj!r}")
        if not isinstance(seeds, Tensor) or seeds.dim() != 1 or seeds.is_floating_point() \
                or seeds.dtype == torch.bool:
            raise ValueError(f"seeds: expected a 1-D integer tensor of node ids, got "
                             f"{getattr(seeds, 'dtype', type(seeds).__name__)} "
                             f"{list(getattr(seeds, 'shape', []))}")
        seeds = seeds.long()
        if seeds.numel() == 0:
            raise ValueError("seeds: expected at least one seed node, got none")
        lo, hi = torch.aminmax(seeds)
        if int(lo) < 0 or int(hi) >= adj.num_dst:
            raise ValueError(f"seeds: node ids must lie in [0, {adj.num_dst}), got "
                             f"[{int(lo)}, {int(hi)}]")
        nodes, seed_index = torch.unique(seeds, return_inverse=True)
        sizes, blocks, edges = [nodes.numel()], [], []
        # global -> local id map: a scratch array of -1 kept between calls, of which
        # a step writes and resets only its own entries (no sort, O(sampled nodes))
        local = self._scratch(adj.num_dst, seeds.device)
        local[nodes] = torch.arange(nodes.numel(), device=nodes.device)
        try:
            for f in self.fanout:
                rowptr, src, value, eid, scale = self._hop(adj, nodes, f)
                unseen = src[local[src] < 0]
                if unseen.numel() > 0:
                    # first occurrence of every new id, in draw order (deterministic)
                    pos = torch.arange(unseen.numel(), device=src.device)
                    local.scatter_reduce_(0, unseen, pos, reduce="amin", include_self=False)
                    new = unseen[local[unseen] == pos]
                    local[new] = torch.arange(nodes.numel(), nodes.numel() + new.numel(),
                                              device=src.device)
                    nodes = torch.cat([nodes, new])
                sizes.append(nodes.numel())
                blocks.append((rowptr, local[src], value))
                edges.append((eid, scale))
        except BaseException:
            local.fill_(-1)  # the map may hold partial writes: reset all of it
            raise
        local[nodes] = -1
        return SampledSubgraph(nodes, sizes, seed_index, blocks, edges)

    def _scratch(self, num_nodes: int, device: torch.device) -> Tensor:
        buf = self._local
        if buf is None or buf.numel() != num_nodes or buf.device != device:
            buf = torch.full((num_nodes,), -1, dtype=torch.long, device=device)
            self._local = buf
        return buf
