r"""LightGCN: simplified graph convolution for collaborative filtering."""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import Tensor

from .base import Recommender, RecOutput, bpr_loss
from ..nn.lightgcn_conv import LightGCNConv


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

    Args:
        embedding_size (int): :math:`d` (MMRec: 64).
        n_layers (int): :math:`L`.
        reg_weight (float): weight of the L2 penalty on ego embeddings.
    """

    uses_features = False

    def __init__(self, num_users: int, num_items: int, train_edge_index: Tensor,
                 features: Optional[Dict[str, Tensor]] = None,
                 masks: Optional[Dict[str, Tensor]] = None, *,
                 embedding_size: int = 64, n_layers: int = 2,
                 reg_weight: float = 1e-4) -> None:
        super().__init__(num_users, num_items, train_edge_index, features, masks)
        if n_layers < 0:
            raise ValueError(f"n_layers: expected >= 0, got {n_layers}")
        self.embedding_size, self.n_layers = int(embedding_size), int(n_layers)
        self.reg_weight = float(reg_weight)
        self.user_embedding = torch.nn.Embedding(num_users, embedding_size)
        self.item_embedding = torch.nn.Embedding(num_items, embedding_size)
        self.conv = LightGCNConv(num_users, num_items, train_edge_index, num_layers=n_layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_uniform_(self.user_embedding.weight)
        torch.nn.init.xavier_uniform_(self.item_embedding.weight)

    def forward(self) -> RecOutput:
        u, i = self.conv.propagate_layers((self.user_embedding.weight,
                                           self.item_embedding.weight), combine="mean")
        return RecOutput(user=u, item=i)

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor,
             out: Optional[RecOutput] = None) -> Dict[str, Tensor]:
        out = self.forward() if out is None else out
        terms = {"bpr": bpr_loss(out.user[users], out.item[pos], out.item[neg])}
        if self.reg_weight:
            # LightGCN regularises the layer-0 (ego) embeddings of the batch.
            e_u, e_p, e_n = (self.user_embedding(users), self.item_embedding(pos),
                             self.item_embedding(neg))
            terms["reg"] = self.reg_weight * (e_u.pow(2).sum() + e_p.pow(2).sum()
                                              + e_n.pow(2).sum()) / (2 * users.numel())
        return terms


__all__ = ["LightGCN"]
