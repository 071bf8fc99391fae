r"""Building blocks of sampled training (``fanout``) shared by the models.

A sampled step computes a model's representations only for the batch's
users and items, from their sampled computation graph, instead of
propagating the whole graph (see :mod:`pyg_mmrec.nn.neighbor_sampling`):

* :class:`UserItemSample`: one layer-wise neighbour sample of the batch over
  a user–item :class:`~pyg_mmrec.nn.LightGCNConv` (users ``0..U-1``, items
  ``U..U+I-1``), with the bookkeeping every model needs (which sampled nodes
  are users or items, joint input rows, masks, exact renormalisation).
* :class:`ItemNeighbourhood`: the *exact* :math:`L`-hop neighbourhood of
  items over an item–item (kNN) graph, whose rows hold at most :math:`k`
  neighbours per modality, so it stays :math:`O(B k^L)` without sampling.
* :class:`PresentWeights`: the exact per-node present weights
  (:func:`~pyg_mmrec.nn.neighbor_sampling.present_weight_sum`) of a conv
  under a modality mask, computed once per graph and mask.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

from ..nn.adjacency import CSRAdjacency
from ..nn.neighbor_sampling import LayerwiseSampler, exact_sampler, present_weight_sum

__all__ = ["UserItemSample", "ItemNeighbourhood", "PresentWeights", "cached_neighbourhood"]


class UserItemSample:
    r"""The sampled computation graph of a batch over a user–item graph.

    Shapes are static (see :class:`~pyg_mmrec.nn.SampledSubgraph`): the
    seed users and the seed items get segments of ``users.numel()`` and
    ``items.numel()`` rows of :math:`\mathcal{D}_0` (sorted unique ids, then
    padding that repeats the last one, so ``searchsorted`` on
    :attr:`user_ids` / :attr:`item_ids` finds the real rows), and nothing
    here reads a device value on the host.

    Args:
        sampler (LayerwiseSampler): the model's sampler (``fanout``).
        conv: the :class:`~pyg_mmrec.nn.LightGCNConv` whose normalised graph
            :math:`\hat{A}` is sampled (e.g. this epoch's pruned graph).
        users, items (Tensor): the batch's global ids (any shape, duplicates
            allowed; drawn from the training graph, so not range-checked).

    Attributes:
        sub (SampledSubgraph): the sample; :math:`\mathcal{D}_0` holds the
            users' segment, then the items' segment.
        user_ids, item_ids (Tensor): global ids of the seed users / items (the
            rows of the partial output, padded as above).
        is_user (Tensor): bool ``[len(n_id)]``, whether a sampled node is a user.
        user_index, item_index (Tensor): ``[len(n_id)]`` user / item id to
            read for every sampled node (a seed's id where the node is of the
            other kind or padding: rows of the batch, whose gradients get exact
            zeros), see :meth:`gather`.
    """

    def __init__(self, sampler: LayerwiseSampler, conv, users: Tensor, items: Tensor) -> None:
        U = conv.num_users
        self.conv, self.num_users = conv, U
        users, items = users.reshape(-1), items.reshape(-1)
        seeds = torch.cat([users, items + U])
        sub = sampler.sample(conv.adj, seeds, groups=[users.numel(), items.numel()],
                             check_ids=False)
        self.sub = sub
        n = users.numel()
        self.num_seed_users = n
        d0 = sub.seeds
        self.user_ids, self.item_ids = d0[:n], d0[n:] - U
        self.is_user = sub.n_id < U
        real = sub.valid
        # (no seed user: user 0, whose row then gets an exact zero gradient)
        first_user = d0[:1] if n > 0 else torch.zeros_like(d0[:1])
        self.user_index = torch.where(self.is_user & real, sub.n_id, first_user)
        self.item_index = torch.where(~self.is_user & real, sub.n_id - U, self.item_ids[:1])

    def gather(self, user_fn: Callable[[Tensor], Tensor],
               item_fn: Callable[[Tensor], Tensor]) -> Tensor:
        r"""The ``[len(n_id), F]`` input of the sampled nodes: ``user_fn(ids)``
        / ``item_fn(ids)`` return the rows of user / item ids (e.g. ID
        embeddings); both are read for every node and one is kept."""
        u, i = user_fn(self.user_index), item_fn(self.item_index)
        return torch.where(self.is_user.unsqueeze(-1), u, i.to(u.dtype))

    @property
    def num_nodes(self) -> int:
        return self.sub.n_id.numel()

    def node_mask(self, item_mask: Tensor) -> Tensor:
        r"""Bool ``[len(n_id)]`` from a global item mask ``[I]`` (users: True)."""
        return self.is_user | item_mask[self.item_index]

    def split(self, h: Tensor) -> Tuple[Tensor, Tensor]:
        r"""``(user rows, item rows)`` of a ``[|D_0|, F]`` seed read-out."""
        n = self.num_seed_users
        return h[:n], h[n:self.sub.sizes[0]]

    def propagate(self, x: Tensor, combine: str = "mean", item_mask: Optional[Tensor] = None,
                  present: Optional["PresentWeights"] = None, key=None
                  ) -> Tuple[Tensor, Tensor]:
        r"""All layers over the sample, read out at the seeds as
        ``(users, items)``; ``item_mask`` (global ``[I]``) silences missing
        items in *every* layer, renormalised exactly when the conv does
        (``present``: the model's :class:`PresentWeights`, ``key``: the mask's
        name)."""
        mask = rs = ps = None
        if item_mask is not None:
            mask = self.node_mask(item_mask)
            if self.conv.renormalize:
                rs, ps = self.conv.row_sum, present(self.conv, key, item_mask)
        return self.split(self.sub.propagate(x, mask, rs, ps, combine=combine))

    def hop(self, j: int, h: Tensor, item_mask: Optional[Tensor] = None,
            present: Optional["PresentWeights"] = None, key=None) -> Tensor:
        r"""Layer ``j`` of the sample (``D_{j+1} -> D_j``), masked like
        :meth:`LightGCNConv.forward` with ``item_mask`` (global ``[I]``)."""
        if item_mask is None:
            return self.sub.hop(j, h)
        mask = self.node_mask(item_mask)
        if not self.conv.renormalize:
            return self.sub.hop(j, h, mask)
        return self.sub.hop(j, h, mask, self.conv.row_sum, present(self.conv, key, item_mask))


class PresentWeights:
    r"""Cache of :math:`\sum_u \hat{A}_{vu} m_u` for every node of a conv's
    graph under an item mask (the exact denominators of masked sampled
    layers), rebuilt when the conv's graph or the mask changes."""

    def __init__(self) -> None:
        self._cache: Dict[object, Tuple[Tensor, Tensor, Tensor]] = {}

    def __call__(self, conv, key, item_mask: Tensor) -> Tensor:
        hit = self._cache.get(key)
        if hit is not None and hit[0] is conv.value and hit[1] is item_mask:
            return hit[2]
        users = torch.ones(conv.num_users, dtype=torch.bool, device=item_mask.device)
        total = present_weight_sum(conv.adj, torch.cat([users, item_mask]))
        self._cache[key] = (conv.value, item_mask, total)
        return total

    def clear(self) -> None:
        self._cache.clear()


class ItemNeighbourhood:
    r"""Exact :math:`L`-layer propagation over an item–item graph for a few
    items only: the rows ``items`` of :math:`S^L X`, from their :math:`L`-hop
    neighbourhood (:func:`~pyg_mmrec.nn.neighbor_sampling.exact_sampler`).

    Args:
        adj (CSRAdjacency): the (normalised) item–item graph, rows = centre
            items, as :class:`~pyg_mmrec.nn.ItemItemConv` caches it.
        num_layers (int): :math:`L`.
    """

    def __init__(self, adj: CSRAdjacency, num_layers: int) -> None:
        self.adj, self.num_layers = adj, int(num_layers)
        self.sampler = exact_sampler(adj, self.num_layers) if self.num_layers > 0 else None

    def rows(self, items: Tensor, x_fn: Callable[[Tensor], Tensor],
             item_mask: Optional[Tensor] = None, edge_value: Optional[Tensor] = None) -> Tensor:
        r"""Rows ``items`` (global ids, any order, duplicates allowed) of
        :math:`S^L X`, in the order of ``items``, where
        ``x_fn(ids)`` returns the rows ``ids`` of :math:`X`; ``item_mask``
        (global ``[I]``): missing items send nothing (no renormalisation, as
        :class:`~pyg_mmrec.nn.ItemItemConv` by default); ``edge_value``: the
        graph's weights in CSR order when they carry gradients."""
        if self.sampler is None:
            return x_fn(items)
        sub = self.sampler.sample(self.adj, items, check_ids=False)
        h = x_fn(sub.n_id)
        mask = None if item_mask is None else item_mask[sub.n_id]
        for j in reversed(range(self.num_layers)):
            h = sub.hop(j, h, mask, edge_value=edge_value)
        return h[sub.seed_index]


def cached_neighbourhood(store: Dict[object, ItemNeighbourhood], key, adj: CSRAdjacency,
                         num_layers: int) -> ItemNeighbourhood:
    r"""The :class:`ItemNeighbourhood` of ``adj`` kept in ``store[key]``,
    rebuilt when the graph's structure changed (a new kNN graph)."""
    hood = store.get(key)
    if hood is None or hood.adj.col is not adj.col or hood.num_layers != num_layers:
        hood = store[key] = ItemNeighbourhood(adj, num_layers)
    else:
        hood.adj = adj  # same structure, possibly new weights
    return hood
