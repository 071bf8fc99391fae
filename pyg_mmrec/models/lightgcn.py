r"""LightGCN: simplified graph convolution for collaborative filtering."""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from ..nn.lightgcn_conv import LightGCNConv
from ..nn.neighbor_sampling import LayerwiseSampler
from ._sampled import UserItemSample
from .base import Recommender, RecOutput, batch_l2, bpr_loss


class LightGCN(Recommender):
    r"""LightGCN from `He et al.: LightGCN: Simplifying and Powering Graph
    Convolution Network for Recommendation <https://arxiv.org/abs/2002.02126>`_
    (SIGIR 2020).

    ID embeddings :math:`E^{(0)}` are smoothed over the symmetrically normalised
    user–item graph :math:`\hat{A} = D^{-1/2} A D^{-1/2}` and the layers averaged:

    .. math::
        E^{(l+1)} = \hat{A} E^{(l)}, \qquad
        E = \frac{1}{L+1} \sum_{l=0}^{L} E^{(l)}.

    Scores are :math:`\hat{y}_{ui} = e_u^\top e_i`, trained with BPR plus an
    L2 penalty on the batch's ego embeddings (``reg_weight``). Modality
    features, if given, are ignored (``uses_features = False``).

    **Sampled training** (``fanout``): instead of propagating the whole graph
    for every batch (MMRec), :meth:`loss` propagates over a layer-wise
    neighbour sample of the batch's users and items
    (:class:`~pyg_mmrec.nn.neighbor_sampling.LayerwiseSampler`: an unbiased
    estimate of the full propagation, exact for nodes of degree
    :math:`\leq f_l`), so a step costs :math:`O(B \prod_l f_l)` instead of
    :math:`O(E)`. The ID embeddings then have sparse gradients, which the
    trainer steps with :class:`~pyg_mmrec.train.optim.LazyAdam` (only the
    batch's rows). Evaluation always propagates the full graph.

    Args:
        embedding_size (int): :math:`d` (MMRec: 64).
        n_layers (int): :math:`L`.
        reg_weight (float): weight of the L2 penalty on ego embeddings.
        fanout (list of int, optional): neighbours sampled per node at each
            hop (``fanout[0]``: the hop next to the batch), one per layer;
            ``None``: full-graph propagation at every step.
    """

    uses_features = False

    def __init__(self, num_users: int, num_items: int, train_edge_index: Tensor,
                 features: Optional[Dict[str, Tensor]] = None,
                 masks: Optional[Dict[str, Tensor]] = None, *,
                 embedding_size: int = 64, n_layers: int = 2,
                 reg_weight: float = 1e-4, fanout: Optional[List[int]] = None) -> None:
        super().__init__(num_users, num_items, train_edge_index, features, masks)
        if n_layers < 0:
            raise ValueError(f"n_layers: expected >= 0, got {n_layers}")
        self.embedding_size, self.n_layers = int(embedding_size), int(n_layers)
        self.reg_weight = float(reg_weight)
        self.sampler = None if fanout is None else LayerwiseSampler(fanout, self.n_layers)
        # a sampled step touches only the sampled rows: sparse gradients keep the
        # optimiser step independent of the number of users and items
        sparse = self.sampler is not None
        self._init_id_embeddings(self.embedding_size, sparse=sparse)
        self.conv = LightGCNConv(num_users, num_items, train_edge_index, num_layers=n_layers)
        self._finish_init()

    def reset_parameters(self) -> None:
        self._reset_id_embeddings()

    def forward(self) -> RecOutput:
        u, i = self.conv.propagate_layers((self.user_embedding.weight,
                                           self.item_embedding.weight), combine="mean")
        return RecOutput(user=u, item=i)

    def sampled_forward(self, users: Tensor, items: Tensor) -> Tuple[Tensor, Tensor]:
        r"""Estimates of :meth:`forward`'s ``user[users]`` and ``item[items]``
        (any shapes, duplicates allowed) from one neighbour sample of those
        nodes; exact when every fan-out is at least the maximum degree.
        Needs ``fanout``. Returns ``([*users.shape, d], [*items.shape, d])``."""
        if self.sampler is None:
            raise RuntimeError("sampled_forward: the model was built with fanout=None")
        s = UserItemSample(self.sampler, self.conv, users, items)
        x = s.gather(self.user_embedding, self.item_embedding)
        h = s.sub.propagate(x, combine="mean")[s.sub.seed_index]
        n_u = users.numel()
        return h[:n_u].view(*users.shape, -1), h[n_u:].view(*items.shape, -1)

    def sampled_output(self, users: Tensor, items: Tensor) -> RecOutput:
        r"""The partial output of a sampled step: rows ``user_ids`` /
        ``item_ids`` (sorted unique ``users`` / ``items``)."""
        if self.sampler is None:
            raise RuntimeError("sampled_output: the model was built with fanout=None")
        s = UserItemSample(self.sampler, self.conv, users, items)
        x = s.gather(self.user_embedding, self.item_embedding)
        u, i = s.propagate(x, combine="mean")
        return RecOutput(user=u, item=i, user_ids=s.user_ids, item_ids=s.item_ids)

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor,
             out: Optional[RecOutput] = None) -> Dict[str, Tensor]:
        if out is None and self.sampler is not None and self.training:
            u, items = self.sampled_forward(users, torch.cat([pos.reshape(-1),
                                                              neg.reshape(-1)]))
            p, n = items[:pos.numel()], items[pos.numel():].view(*neg.shape, -1)
            terms = {"bpr": bpr_loss(u, p, n)}
        elif out is None:
            # forward()'s numbers (bit for bit) where the loss reads them: the layer
            # mean on the batch rows only saves two full-size passes per step.
            n = self.n_layers + 1
            u_sum, i_sum = self.conv.propagate_layers(
                (self.user_embedding.weight, self.item_embedding.weight), combine="sum")
            terms = {"bpr": bpr_loss(u_sum[users] / n, i_sum[pos] / n, i_sum[neg] / n)}
        else:
            terms = {"bpr": bpr_loss(out.user[users], out.item[pos], out.item[neg])}
        if self.reg_weight:
            # LightGCN regularises the layer-0 (ego) embeddings of the batch.
            e_u, e_p, e_n = (self.user_embedding(users), self.item_embedding(pos),
                             self.item_embedding(neg))
            terms["reg"] = batch_l2(self.reg_weight, e_u, e_p, e_n)
        return terms


__all__ = ["LightGCN"]
