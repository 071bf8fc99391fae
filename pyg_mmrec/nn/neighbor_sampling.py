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
           "exact_sampler", "renormalize_rows", "sorted_unique", "sorted_segments"]

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
    = ``n_id[:sizes[j]]``, :math:`\mathcal{D}_0` = the unique seeds (sorted,
    per seed group). Block :math:`j` is a CSR graph with targets
    :math:`\mathcal{D}_j` and sources :math:`\mathcal{D}_{j+1}` (local ids),
    holding the sampled neighbours of every node of :math:`\mathcal{D}_j` with
    rescaled weights.

    **Static shapes.** Every size is a *capacity* computed on the host from
    the number of seeds :math:`S`, the fan-outs and the graph (its number of
    nodes :math:`N` and maximum degree :math:`\Delta`), never from the drawn
    ids, so that sampling never waits for the device:
    :math:`|\mathcal{D}_0| = S`, every target has :math:`s_j = \min(f_j,
    \Delta)` edge slots (``rowptr`` is ``arange * s_j``) and
    :math:`|\mathcal{D}_{j+1}| = |\mathcal{D}_j| + \min(|\mathcal{D}_j|\, s_j,
    N)`, hence :math:`|\mathcal{D}_L| \leq S \prod_j (1 + f_j)` rows and
    :math:`|\mathcal{D}_j|\, s_j` edge slots per hop. Rows past the distinct
    ids are *padding* (:attr:`valid` ``False``; their id repeats a sampled
    one) and draw nothing; slots past a node's draws have weight 0 and read
    row 0. Both add exact zeros, so the numbers of the real rows are those
    of the compact sample. Memory: the capacity is the no-duplicates worst
    case, e.g. 6144 seeds (2048 users, their positives and negatives) with
    fan-outs ``[10, 10]`` give about :math:`7.4 \cdot 10^5` rows (190 MB of
    float32 inputs at :math:`d = 64`) and :math:`6.8 \cdot 10^5` slots per
    hop, whatever the number of interactions (50M or 50K): the bound of
    the sampled step, not a function of the graph beyond the cap by
    :math:`N` per hop.

    Attributes:
        n_id (Tensor): global node ids of :math:`\mathcal{D}_L` ``[sizes[-1]]``.
        sizes (list of int): the capacities :math:`|\mathcal{D}_0|, \dots,
            |\mathcal{D}_L|` (host ints).
        seed_index (Tensor): row in :math:`\mathcal{D}_0` of every input seed.
        blocks (list): ``(rowptr, col, value)`` of the hops :math:`0, \dots, L-1`.
        edges (list): ``(edge_id, scale)`` of every edge slot of each hop:
            its position in the sampled graph's CSR and the factor
            (:math:`d_v / f_j`, 1, or 0 for an inactive slot) applied to its
            weight, so that :meth:`hop` can re-read weights that carry
            gradients.
        valid (Tensor): bool ``[sizes[-1]]``, ``False`` on padding rows.
    """

    n_id: Tensor
    sizes: List[int]
    seed_index: Tensor
    blocks: List[Tuple[Tensor, Tensor, Tensor]]
    edges: Optional[List[Tuple[Tensor, Tensor]]] = None
    valid: Optional[Tensor] = None

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    @property
    def seeds(self) -> Tensor:
        """The unique seed ids :math:`\\mathcal{D}_0` (sorted ascending)."""
        return self.n_id[: self.sizes[0]]

    def num_sampled_edges(self) -> int:
        """The number of drawn edges (inactive slots left out; a host read)."""
        if self.edges is None:
            return sum(int(b[1].numel()) for b in self.blocks)
        return sum(int((scale != 0).sum()) for _, scale in self.edges)

    def num_nodes(self) -> int:
        """The number of distinct sampled nodes (padding left out; a host read)."""
        return self.n_id.numel() if self.valid is None else int(self.valid.sum())

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
        # built by the sampler from a CSRAdjacency: valid by construction, so the op
        # skips its data checks (host reads of index values)
        out, _ = masked_spmm(rowptr, col, h[:n_src], mask=mask, value=value.to(h.dtype),
                             reduce="sum", trusted=True)
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
    ``torch.rand`` per hop, one number per edge *slot*), so seeding and
    checkpointed RNG states replay it. With ``static_shapes`` (the default
    on accelerators) shapes are static (see :class:`SampledSubgraph`):
    sampling makes no host read per call; on the CPU each hop keeps only the
    nodes it reached (the same real rows, fewer padding rows).

    Args:
        fanout (list of int): :math:`f_0, \dots, f_{L-1}`; ``fanout[0]`` is
            the hop next to the seeds.
        num_layers (int, optional): :math:`L`, checked against
            ``len(fanout)``.
        static_shapes (bool, optional): see :attr:`static_shapes`.
    """

    #: ``True``: every hop's node set has its static capacity (padding rows),
    #: no host read; ``False``: each hop keeps only the nodes it reached (one
    #: host read of their count per hop); ``None`` (default): static on
    #: accelerators, where a host read waits for the device, compact on the
    #: CPU, where it costs nothing and the padding would cost 2-3x per step
    static_shapes: Optional[bool] = None

    def __init__(self, fanout: Sequence[int], num_layers: Optional[int] = None,
                 static_shapes: Optional[bool] = None) -> None:
        if num_layers is None:
            num_layers = len(fanout) if isinstance(fanout, (list, tuple)) else 0
        self.fanout = check_fanout(fanout, num_layers)
        if static_shapes is not None:
            self.static_shapes = bool(static_shapes)
        self._local: Optional[Tensor] = None
        self._degree: Optional[Tuple[Tensor, int]] = None

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(fanout={self.fanout})"

    def _max_degree(self, adj: CSRAdjacency) -> int:
        # one host read per graph structure (a conv builds a new CSRAdjacency
        # view at every access, over the same rowptr), not one per step
        hit = self._degree
        if hit is not None and hit[0] is adj.rowptr:
            return hit[1]
        deg = int(adj.rowptr.diff().max()) if adj.num_dst > 0 and adj.num_edges > 0 else 0
        self._degree = (adj.rowptr, deg)
        return deg

    @staticmethod
    def _hop(adj: CSRAdjacency, targets: Tensor, valid: Tensor, f: int, slots: int
             ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Sampled edges of ``targets`` in ``slots`` fixed slots per target:
        ``(rowptr [T+1], src (global) [T*slots], weight, edge id, scale, active)``;
        inactive slots (past the target's draws, or of a padding target) have
        weight and scale 0 and read edge 0 / source ``targets[0]``."""
        dev = targets.device
        T = targets.numel()
        start = adj.rowptr[targets]
        deg = adj.rowptr[targets + 1] - start
        k = torch.where(valid, deg.clamp(max=f), torch.zeros_like(deg))
        rowptr = torch.arange(T + 1, device=dev) * slots
        row = torch.arange(T, device=dev).repeat_interleave(slots)  # static: no output_size
        pos = torch.arange(slots, device=dev).repeat(T)
        d, active = deg[row], pos < k[row]
        exact = d <= f
        # float64 draws: floor(r * d) < d even for very large degrees
        r = torch.rand(T * slots, dtype=torch.float64, device=dev)
        drawn = torch.minimum((r * d).long(), (d - 1).clamp(min=0))
        eid = torch.where(active, start[row] + torch.where(exact, pos, drawn),
                          torch.zeros_like(pos))
        col, weight = adj.col, adj.value
        if adj.num_edges == 0:  # nothing to draw: a placeholder edge read by no slot
            col = targets.new_zeros(1)
            weight = None if weight is None else weight.new_zeros(1)
        value = weight[eid] if weight is not None else \
            torch.ones(T * slots, dtype=torch.float, device=dev)
        scale = torch.where(exact, torch.ones_like(value), d.to(value.dtype) / f)
        scale = torch.where(active, scale, torch.zeros_like(scale))
        src = torch.where(active, col[eid], targets[:1].expand(T * slots))
        return rowptr, src, value * scale, eid, scale, active

    @torch.no_grad()
    def sample(self, adj: CSRAdjacency, seeds: Tensor, groups: Optional[Sequence[int]] = None,
               check_ids: bool = True) -> SampledSubgraph:
        r"""Samples the computation graph of ``seeds`` (global node ids
        ``[S]``, duplicates allowed) over ``adj`` (square, rows = targets).

        Every shape is fixed by ``S``, the fan-outs and the graph's size and
        maximum degree (host numbers), never by the drawn ids, so that a step
        never waits for the device (see :class:`SampledSubgraph`).

        Args:
            groups (list of int, optional): sizes of consecutive groups of
                ``seeds`` with *disjoint* id ranges (e.g. users, then items):
                :math:`\mathcal{D}_0` holds the sorted unique ids of each
                group in its own segment of ``groups[g]`` rows (padded), so
                that where a group's rows start is known on the host.
                Default: one group.
            check_ids (bool): check that the ids lie in ``[0, N)`` (a host
                read of their range); callers whose ids come from a validated
                graph (the training loop) pass ``False``.
        """
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
        groups = [seeds.numel()] if groups is None else [int(g) for g in groups]
        if sum(groups) != seeds.numel() or min(groups) < 0:
            raise ValueError(f"groups: expected sizes >= 0 that add up to the {seeds.numel()} "
                             f"seeds, got {groups}")
        if check_ids:
            lo, hi = torch.aminmax(seeds)
            if int(lo) < 0 or int(hi) >= adj.num_dst:
                raise ValueError(f"seeds: node ids must lie in [0, {adj.num_dst}), got "
                                 f"[{int(lo)}, {int(hi)}]")
        N, dev = adj.num_dst, seeds.device
        nodes, valid, seed_index = _unique_segments(seeds, groups)
        sizes, blocks, edges = [nodes.numel()], [], []
        # global -> local id map: a scratch array of -1 (plus a dummy entry N that
        # absorbs the writes of padding slots) kept between calls, of which a step
        # writes and resets only its own entries
        local = self._scratch(N + 1, dev)
        dummy = torch.full_like(nodes, N)
        local.scatter_(0, torch.where(valid, nodes, dummy), torch.arange(nodes.numel(),
                                                                         device=dev))
        local[N] = -1
        max_deg = self._max_degree(adj)
        static = self.static_shapes if self.static_shapes is not None else dev.type != "cpu"
        try:
            for f in self.fanout:
                slots = max(1, min(f, max_deg))
                rowptr, src, value, eid, scale, active = self._hop(adj, nodes, valid, f, slots)
                E, C = src.numel(), nodes.numel()
                cap = min(E, N)  # new distinct nodes of this hop, at most
                new = active & (local[src] < 0)
                # first occurrence of every new id, in draw order (deterministic):
                # the smallest slot position per id, written to the map and compared
                pos = torch.arange(E, device=dev)
                at = torch.where(new, src, torch.full_like(src, N))
                local.scatter_reduce_(0, at, pos, reduce="amin", include_self=False)
                first = new & (local[src] == pos)
                rank = torch.cumsum(first, 0) - 1
                local.scatter_(0, torch.where(first, src, torch.full_like(src, N)), C + rank)
                local[N] = -1
                added = nodes.new_zeros(cap + 1)
                added.scatter_(0, torch.where(first, rank, torch.full_like(rank, cap)), src)
                count = rank[-1] + 1
                if not static:  # keep only the reached nodes (a free host read on the CPU)
                    cap = int(count)
                added_valid = torch.arange(cap, device=dev) < count
                nodes = torch.cat([nodes, torch.where(added_valid, added[:cap], nodes[:1])])
                valid = torch.cat([valid, added_valid])
                sizes.append(nodes.numel())
                blocks.append((rowptr, torch.where(active, local[src], torch.zeros_like(src)),
                               value))
                edges.append((eid, scale))
        except BaseException:
            local.fill_(-1)  # the map may hold partial writes: reset all of it
            raise
        local.index_fill_(0, nodes, -1)  # padding rows repeat sampled ids: reset too
        return SampledSubgraph(nodes, sizes, seed_index, blocks, edges, valid)

    def _scratch(self, num_nodes: int, device: torch.device) -> Tensor:
        buf = self._local
        if buf is None or buf.numel() != num_nodes or buf.device != device:
            buf = torch.full((num_nodes,), -1, dtype=torch.long, device=device)
            self._local = buf
        return buf


def sorted_unique(ids: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    r"""``torch.unique`` with a static shape (no host read): for ``ids`` of
    any shape, ``(sorted [n], first [n], inverse [*ids.shape])`` with
    ``n = ids.numel()``: the sorted distinct ids, then padding rows that
    repeat the largest one (so ``searchsorted`` finds the real row of an id),
    ``first`` ``True`` on the distinct rows (use it as a 0/1 weight where
    ``unique`` would drop the duplicates) and the row of every input id."""
    flat = ids.reshape(-1)
    if flat.numel() == 0:
        return flat, torch.zeros(0, dtype=torch.bool, device=flat.device), ids.long()
    uniq, first, index = _unique_segments(flat, [flat.numel()])
    return uniq, first, index.view(ids.shape)


def sorted_segments(ids: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""Static-shape grouping of equal ids (no output size depends on the data,
    so no host read on a GPU): ``(order, segment, distinct, slot)``, all of
    ``ids``' length :math:`n > 0`. ``order`` sorts ``ids``; ``segment[j]`` is the
    rank among the distinct ids of ``ids[order[j]]``; ``distinct[:D]`` are the
    :math:`D` sorted distinct ids (zeros after); ``slot = min(j, D - 1)``, so
    ``distinct[slot]`` repeats the last distinct id past :math:`D`."""
    n = ids.numel()
    sorted_ids, order = torch.sort(ids)
    first = torch.ones(n, dtype=torch.bool, device=ids.device)
    first[1:] = sorted_ids[1:] != sorted_ids[:-1]
    segment = torch.cumsum(first, 0) - 1
    distinct = sorted_ids.new_zeros(n).scatter_(0, segment, sorted_ids)  # equal values collide
    slot = torch.minimum(torch.arange(n, device=ids.device), segment[-1])
    return order, segment, distinct, slot


def _unique_segments(seeds: Tensor, groups: Sequence[int]) -> Tuple[Tensor, Tensor, Tensor]:
    r"""The sorted unique ids of every group of ``seeds`` in a segment of the
    group's size (static shapes: a sort, first occurrences, a cumulative sum):
    ``(ids [S], valid [S], seed_index [S])``. Padding rows repeat the segment's
    last (largest) id, so a segment stays sorted for ``searchsorted``."""
    ids, valid, index, offset = [], [], [], 0
    for part in seeds.split(list(groups)):
        n = part.numel()
        if n == 0:
            continue
        order, rank, uniq, slot = sorted_segments(part)
        ids.append(uniq[slot])
        valid.append(torch.arange(n, device=part.device) <= rank[-1])
        index.append(torch.empty_like(rank).scatter_(0, order, rank) + offset)
        offset += n
    return torch.cat(ids), torch.cat(valid), torch.cat(index)
