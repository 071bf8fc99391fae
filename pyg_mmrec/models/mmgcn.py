r"""MMGCN: one graph convolution network per modality over the user–item graph."""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..nn.lightgcn_conv import LightGCNConv
from .base import Recommender, RecOutput, bpr_loss


class _ModalityGCN(torch.nn.Module):
    r"""The GCN of one modality: user preferences :math:`p_u^m`, item features
    :math:`\mathrm{MLP}_m(f_i^m)`, and :math:`L` layers of

    .. math::
        h_n^{(l)} = \mathrm{LReLU}\big(W_l (\hat{A} x^{(l-1)})_n\big), \quad
        \hat{x}_n^{(l)} = \mathrm{LReLU}(W'_l x_n^{(l-1)}) + e_n, \quad
        x_n^{(l)} = \mathrm{LReLU}(G_l h_n^{(l)} + \hat{x}_n^{(l)}).
    """

    def __init__(self, num_users: int, in_dim: int, dim_latent: int, dim: int,
                 n_layers: int) -> None:
        super().__init__()
        self.preference = torch.nn.Parameter(torch.empty(num_users, dim_latent))
        self.mlp = torch.nn.Linear(in_dim, dim_latent)
        dims = [dim_latent] + [dim] * (n_layers - 1)
        self.conv = torch.nn.ModuleList([torch.nn.Linear(i, dim, bias=False) for i in dims])
        self.linear = torch.nn.ModuleList([torch.nn.Linear(i, dim) for i in dims])
        self.gate = torch.nn.ModuleList([torch.nn.Linear(dim, dim) for _ in dims])
        self.reset_parameters()

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_normal_(self.preference)
        for mod in (self.mlp, *self.conv, *self.linear, *self.gate):
            mod.reset_parameters()

    def forward(self, conv: LightGCNConv, feat: Tensor, mask: Tensor,
                id_user: Tensor, id_item: Tensor) -> tuple[Tensor, Tensor]:
        # missing items start from zero and send nothing in the first layer
        x_i = self.mlp(feat) * mask.unsqueeze(-1).to(feat.dtype)
        x_u = self.preference
        x = F.normalize(torch.cat([x_u, x_i]), dim=-1)
        x_u, x_i = x[:conv.num_users], x[conv.num_users:]
        for layer, (w, lin, gate) in enumerate(zip(self.conv, self.linear, self.gate)):
            agg_u, agg_i = conv((x_u, x_i), item_mask=mask if layer == 0 else None)
            h_u, h_i = F.leaky_relu(w(agg_u)), F.leaky_relu(w(agg_i))
            xh_u = F.leaky_relu(lin(x_u)) + id_user
            xh_i = F.leaky_relu(lin(x_i)) + id_item
            x_u = F.leaky_relu(gate(h_u) + xh_u)
            x_i = F.leaky_relu(gate(h_i) + xh_i)
        return x_u, x_i


class MMGCN(Recommender):
    r"""MMGCN from `Wei et al.: MMGCN: Multi-modal Graph Convolution Network for
    Personalized Recommendation of Micro-video <https://arxiv.org/abs/1908.06066>`_
    (ACM MM 2019), for any number of modalities (at least one).

    Every modality :math:`m` runs its own GCN (:class:`_ModalityGCN`) over the
    user–item graph, with modality-specific user preferences :math:`p_u^m` and
    shared ID embeddings :math:`e_n` added at every layer; the final
    representations average the modalities,

    .. math::
        z_n = \frac{1}{M} \sum_m x_n^{m,(L)}, \qquad \hat{y}_{ui} = z_u^\top z_i,

    trained with BPR + ``reg_weight`` · mean squared ID embeddings and
    preferences of the batch.

    **Per-modality representations** ``item_modal[m]`` / ``user_modal[m]`` =
    :math:`x^{m,(L)}` (``[I, d]`` / ``[U, d]``).

    **Masks**: an item missing modality :math:`m` starts that GCN from zero
    (instead of its filled feature) and sends nothing to its users in the first
    layer; later layers carry only ID and preference information, so a masked
    feature cannot influence the scores.

    Args:
        embedding_size (int): :math:`d` (64).
        dim_latent (int): width of :math:`\mathrm{MLP}_m` and :math:`p_u^m` (256).
        n_layers (int): :math:`L` (2).
        reg_weight (float): weight of the squared-embedding penalty.
    """

    def __init__(self, num_users: int, num_items: int, train_edge_index: Tensor,
                 features: Optional[Dict[str, Tensor]] = None,
                 masks: Optional[Dict[str, Tensor]] = None, *,
                 embedding_size: int = 64, dim_latent: int = 256, n_layers: int = 2,
                 reg_weight: float = 1e-4) -> None:
        super().__init__(num_users, num_items, train_edge_index, features, masks)
        if not self.modalities:
            raise ValueError("features: MMGCN needs at least one modality (it has no "
                             "ID-only branch); use LightGCN without features")
        if n_layers < 1:
            raise ValueError(f"n_layers: expected >= 1, got {n_layers}")
        self.embedding_size, self.n_layers = int(embedding_size), int(n_layers)
        self.reg_weight = float(reg_weight)
        d = self.embedding_size
        self.user_embedding = torch.nn.Embedding(num_users, d)
        self.item_embedding = torch.nn.Embedding(num_items, d)
        self.gcns = torch.nn.ModuleDict({
            m: _ModalityGCN(num_users, self._features[m].size(1), dim_latent, d, n_layers)
            for m in self.modalities})
        self.ui_conv = LightGCNConv(num_users, num_items, train_edge_index)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_normal_(self.user_embedding.weight)
        torch.nn.init.xavier_normal_(self.item_embedding.weight)
        for g in self.gcns.values():
            g.reset_parameters()

    def forward(self) -> RecOutput:
        user_modal, item_modal = {}, {}
        for m in self.modalities:
            user_modal[m], item_modal[m] = self.gcns[m](
                self.ui_conv, self.feature(m), self.mask(m),
                self.user_embedding.weight, self.item_embedding.weight)
        user = torch.stack(list(user_modal.values())).mean(0)
        item = torch.stack(list(item_modal.values())).mean(0)
        return RecOutput(user=user, item=item, item_modal=item_modal, user_modal=user_modal)

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor,
             out: Optional[RecOutput] = None) -> Dict[str, Tensor]:
        out = self.forward() if out is None else out
        terms = {"bpr": bpr_loss(out.user[users], out.item[pos], out.item[neg])}
        if self.reg_weight:
            reg = (self.user_embedding(users).pow(2).mean() + self.item_embedding(pos).pow(2).mean()
                   + self.item_embedding(neg).pow(2).mean())
            for g in self.gcns.values():
                reg = reg + g.preference[users].pow(2).mean()
            terms["reg"] = self.reg_weight * reg
        return terms


__all__ = ["MMGCN"]
