r"""VBPR: visual Bayesian personalised ranking, for any number of modalities."""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import Tensor

from .base import Recommender, RecOutput


class VBPR(Recommender):
    r"""VBPR from `He and McAuley: VBPR: Visual Bayesian Personalized Ranking from
    Implicit Feedback <https://arxiv.org/abs/1510.01784>`_ (AAAI 2016),
    generalised from one visual feature to :math:`M` modalities as in MMRec.

    Each item has a latent factor :math:`\gamma_i` and a content factor built
    from its modality features through per-modality projections :math:`E_m`;
    each user has matching factors :math:`\gamma_u` and :math:`\theta_u`:

    .. math::
        h_i^m = E_m f_i^m, \qquad
        \hat{y}_{ui} = \gamma_u^\top \gamma_i + \theta_u^\top \sum_m h_i^m
        = [\gamma_u \Vert \theta_u]^\top [\gamma_i \Vert \textstyle\sum_m h_i^m].

    (Summing per-modality projections equals MMRec's single projection of the
    concatenated features.) Trained with BPR + L2 on the batch representations.

    **Per-modality representations** ``item_modal[m]`` = :math:`h^m = E_m f^m`
    (``[I, d]``), the content factor's modality-specific part.

    **Masks**: the model consumes the data layer's filled features (zero or
    mean fill) for missing entries; with ``drop_missing=True`` a missing
    modality's :math:`h_i^m` is zeroed instead, so masked features cannot
    influence the scores. With no modality VBPR reduces to BPR-MF.

    **New items** (:meth:`add_items`): a new item's latent factor
    :math:`\gamma_i` is zero, so it is represented by its content factor
    alone, :math:`[0 \Vert \sum_m h_i^m]`, and a user scores it
    :math:`\theta_u^\top \sum_m h_i^m`. A missing modality is handled as in
    training: with ``drop_missing=True`` its :math:`h_i^m` is zero; otherwise
    the given (filled) row is projected, so fill it as the data layer does.
    Old items are unchanged.

    Args:
        embedding_size (int): :math:`d` (MMRec: 64).
        reg_weight (float): L2 weight on the batch representations.
        drop_missing (bool): zero the content factor of missing modalities.
    """

    def __init__(self, num_users: int, num_items: int, train_edge_index: Tensor,
                 features: Optional[Dict[str, Tensor]] = None,
                 masks: Optional[Dict[str, Tensor]] = None, *,
                 embedding_size: int = 64, reg_weight: float = 1e-4,
                 drop_missing: bool = False) -> None:
        super().__init__(num_users, num_items, train_edge_index, features, masks)
        self.embedding_size, self.reg_weight = int(embedding_size), float(reg_weight)
        self.drop_missing = bool(drop_missing)
        d = self.embedding_size
        n_factor = 2 if self.modalities else 1
        self._init_id_embeddings(d, user_dim=n_factor * d)  # [gamma_u || theta_u], gamma_i
        self.projections = torch.nn.ModuleDict({
            m: torch.nn.Linear(self._features[m].size(1), d) for m in self.modalities})
        self._finish_init()

    def reset_parameters(self) -> None:
        self._reset_id_embeddings()
        for lin in self.projections.values():
            torch.nn.init.xavier_normal_(lin.weight)
            torch.nn.init.zeros_(lin.bias)

    def forward(self) -> RecOutput:
        h = {}
        for m in self.modalities:
            hm = self.projections[m](self.feature(m))
            if self.drop_missing:
                hm = hm * self.mask(m).unsqueeze(-1).to(hm.dtype)
            h[m] = hm
        item = self.item_embedding.weight
        if h:
            item = torch.cat([item, torch.stack(list(h.values())).sum(0)], dim=-1)
        return RecOutput(user=self.user_embedding.weight, item=item, item_modal=h)

    # ------------------------------------------------------------- new items
    supports_new_items = True  # see "New items" in the class docstring


__all__ = ["VBPR"]
