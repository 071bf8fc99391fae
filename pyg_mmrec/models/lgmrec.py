r"""LGMRec: local (graph) and global (hypergraph) multimodal embeddings."""
from __future__ import annotations

from itertools import combinations
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..nn.lightgcn_conv import LightGCNConv
from ..nn.missing_aware_conv import MissingAwareConv
from .base import Recommender, RecOutput, bpr_loss


def _triple_ssl(z1: Tensor, z2: Tensor, z2_all: Tensor, tau: float) -> Tensor:
    r"""Contrast :math:`z_1[b]` with :math:`z_2[b]` against all rows of :math:`z_2`
    (summed over the batch, as in the paper)."""
    z1, z2, z2_all = (F.normalize(t, dim=-1) for t in (z1, z2, z2_all))
    logits = z1 @ z2_all.t() / tau
    return (torch.logsumexp(logits, dim=1) - (z1 * z2).sum(-1) / tau).sum()


class LGMRec(Recommender):
    r"""LGMRec from `Guo et al.: LGMRec: Local and Global Graph Learning for
    Multimodal Recommendation <https://arxiv.org/abs/2312.16400>`_ (AAAI 2024),
    for any number of modalities.

    * **Collaborative graph embedding** :math:`E^{c} = \mathrm{LightGCN}(E_U, E_I)`.
    * **Modality graph embedding**: items :math:`X^m = f^m W_m`, users the mean
      over their items, then :math:`E^m = \hat{A}^{L_m} [X^m_U; X^m]`.
      Local embeddings :math:`E^{l} = E^{c} + \sum_m \mathrm{norm}(E^m)`.
    * **Global hypergraph embedding**: :math:`K` learnable hyperedges per
      modality; item–hyperedge assignments :math:`H^m_I = \mathrm{softmax}
      ((f^m V_m + g)/\tau)` (Gumbel noise :math:`g` in training, none at
      evaluation), users :math:`H^m_U = \mathrm{softmax}((R f^m V_m + g)/\tau)`;
      with dropout on :math:`H`, :math:`\Lambda^m = H_I^{m\top} E^c_I`,
      :math:`G^m = [H^m_U \Lambda^m; H^m_I \Lambda^m]` (repeated ``n_hyper_layer``
      times on the item side). :math:`z = E^{l} + \alpha\, \mathrm{norm}(\sum_m G^m)`.

    Loss: BPR + ``cl_weight`` · hypergraph contrast between every pair of
    modalities (users of the batch, positive items) + ``reg_weight`` · the L2
    norm of the batch representations.

    **Per-modality representations** ``item_modal[m]`` / ``user_modal[m]`` =
    the modality graph embedding :math:`E^m` (item / user rows, ``[·, d]``).

    **Masks**: an item missing modality :math:`m` contributes zero
    :math:`X^m_i`, is left out of its users' means and sends nothing in the
    first propagation layer; it joins no hyperedge of :math:`m` (its assignment
    row is zero, users' hyperedge logits sum over present items only); item
    contrast pairs need both modalities. A masked feature therefore cannot
    influence the scores. With no modality LGMRec is LightGCN.

    Args:
        embedding_size (int): :math:`d` (64).
        feat_embed_dim (int): width of :math:`W_m` (must equal :math:`d`).
        n_ui_layers (int): LightGCN layers (2).
        n_mm_layers (int): :math:`L_m` (2).
        n_hyper_layer (int): hypergraph layers (1).
        hyper_num (int): :math:`K` hyperedges per modality (4).
        keep_rate (float): 1 − dropout on the assignments (0.5).
        alpha (float): weight of the global embedding (0.3).
        cl_weight (float): contrast weight (1e-4).
        reg_weight (float): L2 weight (1e-6).
        tau (float): temperature of the assignments and contrast (0.2).
    """

    def __init__(self, num_users: int, num_items: int, train_edge_index: Tensor,
                 features: Optional[Dict[str, Tensor]] = None,
                 masks: Optional[Dict[str, Tensor]] = None, *,
                 embedding_size: int = 64, feat_embed_dim: int = 64, n_ui_layers: int = 2,
                 n_mm_layers: int = 2, n_hyper_layer: int = 1, hyper_num: int = 4,
                 keep_rate: float = 0.5, alpha: float = 0.3, cl_weight: float = 1e-4,
                 reg_weight: float = 1e-6, tau: float = 0.2) -> None:
        super().__init__(num_users, num_items, train_edge_index, features, masks)
        if feat_embed_dim != embedding_size:
            raise ValueError(f"feat_embed_dim: must equal embedding_size ({embedding_size}), "
                             f"got {feat_embed_dim}")
        if not 0.0 < keep_rate <= 1.0:
            raise ValueError(f"keep_rate: expected a value in (0, 1], got {keep_rate}")
        if hyper_num < 1:
            raise ValueError(f"hyper_num: expected >= 1, got {hyper_num}")
        if tau <= 0:
            raise ValueError(f"tau: expected > 0, got {tau}")
        self.embedding_size = int(embedding_size)
        self.n_ui_layers, self.n_mm_layers = int(n_ui_layers), int(n_mm_layers)
        self.n_hyper_layer, self.hyper_num = int(n_hyper_layer), int(hyper_num)
        self.keep_rate, self.alpha, self.tau = float(keep_rate), float(alpha), float(tau)
        self.cl_weight, self.reg_weight = float(cl_weight), float(reg_weight)

        d = self.embedding_size
        self.user_embedding = torch.nn.Embedding(num_users, d)
        self.item_embedding = torch.nn.Embedding(num_items, d)
        self.item_trs = torch.nn.ParameterDict({
            m: torch.nn.Parameter(torch.empty(self._features[m].size(1), d))
            for m in self.modalities})
        self.hyper = torch.nn.ParameterDict({
            m: torch.nn.Parameter(torch.empty(self._features[m].size(1), hyper_num))
            for m in self.modalities})
        self.conv = LightGCNConv(num_users, num_items, train_edge_index)
        self.user_mean = MissingAwareConv(aggr="mean")  # items -> users, present only
        self.user_sum = MissingAwareConv(aggr="sum")
        ei = torch.unique(train_edge_index.long(), dim=1)
        self.register_buffer("item_to_user", ei.flip(0), persistent=False)
        self.dropout = torch.nn.Dropout(1.0 - keep_rate)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_uniform_(self.user_embedding.weight)
        torch.nn.init.xavier_uniform_(self.item_embedding.weight)
        for p in (*self.item_trs.values(), *self.hyper.values()):
            torch.nn.init.xavier_uniform_(p)

    def _assign(self, logits: Tensor) -> Tensor:
        if self.training:
            return F.gumbel_softmax(logits, tau=self.tau, dim=1, hard=False)
        return torch.softmax(logits / self.tau, dim=1)

    def forward(self) -> RecOutput:
        U, I = self.num_users, self.num_items
        e_u, e_i = self.conv.propagate_layers(
            (self.user_embedding.weight, self.item_embedding.weight),
            num_layers=self.n_ui_layers, combine="mean")
        if not self.modalities:
            return RecOutput(user=e_u, item=e_i)
        size = (I, U)
        local_u, local_i, glob_u, glob_i = e_u, e_i, 0.0, 0.0
        item_modal, user_modal, hyper_u, hyper_i = {}, {}, {}, {}
        for m in self.modalities:
            f, mk = self.feature(m), self.mask(m)
            keep = mk.unsqueeze(-1).to(f.dtype)
            # modality graph embedding
            x_i = (f @ self.item_trs[m]) * keep
            x_u = self.user_mean((x_i, None), self.item_to_user, mk, size=size)
            for layer in range(self.n_mm_layers):
                x_u, x_i = self.conv((x_u, x_i), item_mask=mk if layer == 0 else None)
            item_modal[m], user_modal[m] = x_i, x_u
            local_u = local_u + F.normalize(x_u, dim=-1)
            local_i = local_i + F.normalize(x_i, dim=-1)
            # hypergraph embedding
            logit_i = f @ self.hyper[m]
            logit_u = self.user_sum((logit_i, None), self.item_to_user, mk, size=size)
            h_i = self._assign(logit_i) * keep
            h_u = self._assign(logit_u)
            h_i, h_u = self.dropout(h_i), self.dropout(h_u)
            g_i = e_i
            for _ in range(self.n_hyper_layer):
                lat = h_i.t() @ g_i  # [K, d] hyperedge embeddings
                g_i, g_u = h_i @ lat, h_u @ lat
            hyper_u[m], hyper_i[m] = g_u, g_i
            glob_u, glob_i = glob_u + g_u, glob_i + g_i
        glob = F.normalize(torch.cat([glob_u, glob_i]), dim=-1)
        z_u = local_u + self.alpha * glob[:U]
        z_i = local_i + self.alpha * glob[U:]
        extras = {f"hyper_user/{m}": t for m, t in hyper_u.items()}
        extras.update({f"hyper_item/{m}": t for m, t in hyper_i.items()})
        return RecOutput(user=z_u, item=z_i, item_modal=item_modal, user_modal=user_modal,
                         extras=extras)

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor,
             out: Optional[RecOutput] = None) -> Dict[str, Tensor]:
        out = self.forward() if out is None else out
        u, p, n = out.user[users], out.item[pos], out.item[neg]
        terms = {"bpr": bpr_loss(u, p, n)}
        if self.reg_weight:
            terms["reg"] = self.reg_weight * (u.norm() + p.norm() + n.norm()) / users.numel()
        if self.cl_weight and len(self.modalities) > 1:
            cl = u.new_zeros(())
            for a, b in combinations(self.modalities, 2):
                hu_a, hu_b = out.extras[f"hyper_user/{a}"], out.extras[f"hyper_user/{b}"]
                hi_a, hi_b = out.extras[f"hyper_item/{a}"], out.extras[f"hyper_item/{b}"]
                cl = cl + _triple_ssl(hu_a[users], hu_b[users], hu_b, self.tau)
                both = self.mask(a)[pos] & self.mask(b)[pos]
                if both.any():
                    cl = cl + _triple_ssl(hi_a[pos[both]], hi_b[pos[both]], hi_b, self.tau)
            terms["cl"] = self.cl_weight * cl
        return terms


__all__ = ["LGMRec"]
