r"""FREEDOM: frozen item–item graphs plus degree-sensitive edge pruning."""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional

import torch
from torch import Tensor

from ..data.knn import check_knn_method, mask_key, normalize_edge_weight
from ..nn.edge_pruning import resample_pruned_conv
from ..nn.item_item_conv import ItemItemConv
from ..nn.lightgcn_conv import LightGCNConv
from ._sampled import UserItemSample, cached_neighbourhood
from .base import Recommender, RecOutput, bpr_loss


def modality_weights(modalities, given: Optional[Mapping[str, float]], what: str) -> Dict[str, float]:
    r"""Per-modality mixing weights :math:`\beta_m` summing to one.

    ``given=None`` means uniform. Modalities absent from ``given`` receive the
    mean of the listed weights (so MMRec's ``{image: 0.1, text: 0.9}`` default
    still works when a dataset adds a third modality). Negative weights or keys
    that are not modalities of the data raise.
    """
    mods = list(modalities)
    if not mods:
        return {}
    if given is None:
        return {m: 1.0 / len(mods) for m in mods}
    if not isinstance(given, Mapping):
        raise ValueError(f"{what}: expected a mapping modality -> weight or null, got {given!r}")
    given = {str(k): float(v) for k, v in given.items()}
    if any(v < 0 for v in given.values()):
        raise ValueError(f"{what}: weights must be >= 0, got {given}")
    listed = [given[m] for m in mods if m in given]
    fill = sum(listed) / len(listed) if listed else 1.0
    raw = {m: given.get(m, fill) for m in mods}
    total = sum(raw.values())
    if total <= 0:
        raise ValueError(f"{what}: weights of modalities {mods} sum to zero")
    return {m: v / total for m, v in raw.items()}


class FREEDOM(Recommender):
    r"""FREEDOM from `Zhou and Shen: A Tale of Two Graphs: Freezing and
    Denoising Graph Structures for Multimodal Recommendation
    <https://arxiv.org/abs/2211.06924>`_ (ACM MM 2023).

    * **Frozen item–item graph**: per modality a top-:math:`k` cosine kNN graph of
      the raw features with indicator weights, symmetrically normalised
      (:math:`S^m`), mixed as :math:`S = \sum_m \beta_m S^m` and never updated.
      Items whose modality :math:`m` is missing have no edges in :math:`S^m`;
      each row of :math:`S` is renormalised over the modalities present for
      that item, :math:`S_{i\cdot} = \sum_m \beta_m m_{im} S^m_{i\cdot} /
      \sum_m \beta_m m_{im}`.
    * **Denoised user–item graph**: every epoch, keep a fraction
      :math:`1-\rho` (``dropout`` = :math:`\rho`) of the interactions, sampled
      without replacement with probability :math:`\propto 1/\sqrt{d_u d_i}`,
      and re-normalise; evaluation uses the full graph.

    .. math::
        \tilde{h}_i = (S^{L_m} E_I)_i, \qquad
        (e_u, e_i) = \mathrm{LightGCN}_{L}(E_U, E_I), \qquad
        z_u = e_u,\; z_i = e_i + \tilde{h}_i,

    .. math::
        \mathcal{L} = \mathrm{BPR}(z) + \lambda \sum_m \mathrm{BPR}\big(z_u, W_m f^m\big),

    where the modality BPR terms skip triples whose positive or negative item
    misses modality :math:`m`.

    **Per-modality representations** ``item_modal[m]`` = :math:`h^m = W_m f^m`
    (``[I, feat_embed_dim]``), the projected features scored against users.

    **Masks**: scores depend on features only through :math:`S`, which
    excludes missing items, so a masked feature cannot influence the scores.
    With no modality, :math:`S = 0` and FREEDOM is LightGCN with edge pruning.

    **New items** (:meth:`add_items`): a new item's row of every present
    :math:`S^m` links it to its :math:`k` nearest *old* items (it is nobody's
    neighbour, so old items keep their rows of :math:`S` and their scores).
    Its ID embedding is zero and it has no interaction, so :math:`e_i = 0`
    and :math:`z_i = \tilde{h}_i = (S^{L_m} E_I)_i` (one item layer: the
    :math:`\beta`-weighted mean of its content neighbours' ID embeddings over
    its present modalities); a missing modality gives it no edge there.

    **Sampled training** (``fanout``): a step computes :math:`z` only for the
    batch's users and items (:meth:`sampled_output`). *Sampled*: the
    LightGCN part, over a layer-wise neighbour sample of the batch in this
    epoch's pruned graph (unbiased; exact when every fan-out is at least the
    maximum degree). *Exact*: the frozen item–item part
    :math:`(S^{L_m} E_I)_i`, propagated over the batch items' exact
    :math:`L_m`-hop neighbourhood in :math:`S` (rows hold at most :math:`k`
    neighbours per modality), and :math:`W_m f^m` of the batch items. ID
    embeddings get sparse gradients (:class:`~pyg_mmrec.train.optim.LazyAdam`);
    evaluation propagates the full graph.

    Args:
        embedding_size (int): :math:`d` (64).
        feat_embed_dim (int): output size of :math:`W_m` (must equal :math:`d`).
        n_mm_layers (int): :math:`L_m` (1).
        n_ui_layers (int): :math:`L` (2).
        knn_k (int): :math:`k` (10).
        knn_method (str): neighbour search of the kNN graphs: ``"exact"``
            (default, :math:`O(I^2 F)`) or ``"faiss"`` (approximate, an
            inverted-file index, :math:`O(I^{1.5} F)`; needs ``pip install
            faiss-cpu``); see :func:`~pyg_mmrec.data.knn.knn_graph`.
        modal_weights (dict, optional): :math:`\beta_m` (MMRec: image 0.1,
            text 0.9); see :func:`modality_weights`.
        dropout (float): :math:`\rho`, fraction of interactions pruned (0.8/0.9).
        reg_weight (float): :math:`\lambda`, weight of the modality BPR terms.
        fanout (list of int, optional): neighbours sampled per node at each
            user–item hop (``fanout[0]``: next to the batch), one per
            ``n_ui_layers``; ``None``: full-graph propagation at every step.
    """

    def __init__(self, num_users: int, num_items: int, train_edge_index: Tensor,
                 features: Optional[Dict[str, Tensor]] = None,
                 masks: Optional[Dict[str, Tensor]] = None, *,
                 embedding_size: int = 64, feat_embed_dim: int = 64,
                 n_mm_layers: int = 1, n_ui_layers: int = 2, knn_k: int = 10,
                 modal_weights: Optional[Mapping[str, float]] = None,
                 dropout: float = 0.8, reg_weight: float = 1e-3,
                 fanout: Optional[List[int]] = None, knn_method: str = "exact") -> None:
        super().__init__(num_users, num_items, train_edge_index, features, masks)
        if feat_embed_dim != embedding_size:
            raise ValueError(f"feat_embed_dim: must equal embedding_size ({embedding_size}) "
                             f"because W_m f^m is scored against user embeddings, got "
                             f"{feat_embed_dim}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: expected a fraction in [0, 1), got {dropout}")
        if knn_k < 1:
            raise ValueError(f"knn_k: expected >= 1, got {knn_k}")
        self.embedding_size, self.n_mm_layers = int(embedding_size), int(n_mm_layers)
        self.n_ui_layers, self.knn_k = int(n_ui_layers), int(knn_k)
        self.knn_method = check_knn_method(knn_method)
        self.dropout, self.reg_weight = float(dropout), float(reg_weight)
        self.beta = modality_weights(self.modalities, modal_weights, "modal_weights")

        d = self.embedding_size
        sparse = self._init_sampler(fanout, self.n_ui_layers)
        self._init_id_embeddings(d, sparse=sparse)
        self.projections = torch.nn.ModuleDict({
            m: torch.nn.Linear(self._features[m].size(1), feat_embed_dim)
            for m in self.modalities})
        self.conv = LightGCNConv(num_users, num_items, train_edge_index, num_layers=n_ui_layers)
        self._hoods: dict = {}  # exact item-item neighbourhoods of sampled steps
        # the pruned graph of the current epoch (None: evaluate / no pruning yet)
        self.pruned_conv: Optional[LightGCNConv] = None
        self.mm_conv = ItemItemConv(normalize="none")  # S is normalised when built
        self._knn_cache: Dict[tuple, tuple] = {}
        self.mm_graph: Optional[tuple] = None  # (edge_index, weight) of S
        self._finish_init()

    def reset_parameters(self) -> None:
        self._reset_id_embeddings()
        for lin in self.projections.values():
            lin.reset_parameters()

    # --------------------------------------------------------------- graphs
    def _modality_graph(self, m: str):
        """Cached sym-normalised indicator kNN graph of modality ``m``."""
        key = (m, self.knn_k, mask_key(self.mask(m)))
        if key not in self._knn_cache:
            ei, _ = self.item_knn_graph(self.feature(m), self.knn_k, self.mask(m))
            w = normalize_edge_weight(ei, None, self.num_items, "sym")
            self._knn_cache[key] = (ei, w)
        return self._knn_cache[key]

    def on_inputs_changed(self) -> None:
        if not self._ready:
            return
        dev = self.train_edge_index.device
        if not self.modalities:
            self.mm_graph = None
            return
        # denominator of the per-item renormalisation over present modalities
        present = sum(self.beta[m] * self.mask(m).float() for m in self.modalities)
        scale = torch.where(present > 0, 1.0 / present.clamp_min(1e-12),
                            torch.zeros_like(present))
        edges, weights = [], []
        for m in self.modalities:
            ei, w = self._modality_graph(m)
            edges.append(ei)
            weights.append(self.beta[m] * w * scale[ei[1]])
        self.mm_graph = (torch.cat(edges, 1).to(dev), torch.cat(weights).to(dev))

    def on_epoch_start(self, epoch: int) -> None:
        """Sample the degree-sensitive pruned user–item graph for this epoch."""
        if self.dropout <= 0:
            self.pruned_conv = None
            return
        self.pruned_conv = resample_pruned_conv(self.conv, self.train_edge_index,
                                                self.dropout, reuse=self.pruned_conv)

    # -------------------------------------------------------------- forward
    def forward(self) -> RecOutput:
        conv = self._train_conv()
        e_u, e_i = conv.propagate_layers((self.user_embedding.weight, self.item_embedding.weight),
                                         combine="mean")
        if self.mm_graph is not None:
            ei, w = self.mm_graph
            if ei.device != e_i.device:  # the model moved: move the cached graph once
                self.mm_graph = ei, w = ei.to(e_i.device), w.to(e_i.device)
            h = self.item_embedding.weight
            for _ in range(self.n_mm_layers):
                h = self.mm_conv(h, ei, edge_weight=w)
            e_i = e_i + h
        item_modal = {m: self.projections[m](self.feature(m)) for m in self.modalities}
        return RecOutput(user=e_u, item=e_i, item_modal=item_modal)

    def _train_conv(self) -> LightGCNConv:
        return self.pruned_conv if (self.training and self.pruned_conv is not None) else self.conv

    def sampled_output(self, users: Tensor, items: Tensor) -> RecOutput:
        r"""The partial output of a sampled step (see "Sampled training"):
        rows ``user_ids`` / ``item_ids`` (sorted unique ``users`` / ``items``)."""
        if self.sampler is None:
            raise RuntimeError("sampled_output: the model was built with fanout=None")
        s = UserItemSample(self.sampler, self._train_conv(), users, items)
        x = s.gather(self.user_embedding, self.item_embedding)
        e_u, e_i = s.propagate(x, combine="mean")
        if self.mm_graph is not None:
            ei, w = self.mm_graph
            if ei.device != e_i.device:
                self.mm_graph = ei, w = ei.to(e_i.device), w.to(e_i.device)
            adj = self.mm_conv._adjacency(ei, w, self.num_items, None)
            hood = cached_neighbourhood(self._hoods, "mm", adj, self.n_mm_layers)
            e_i = e_i + hood.rows(s.item_ids, self.item_embedding)
        item_modal = {m: self.projections[m](self.feature(m)[s.item_ids])
                      for m in self.modalities}
        return RecOutput(user=e_u, item=e_i, item_modal=item_modal, user_ids=s.user_ids,
                         item_ids=s.item_ids)

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor,
             out: Optional[RecOutput] = None) -> Dict[str, Tensor]:
        out = self.training_output(users, pos, neg) if out is None else out
        u = out.user[out.user_rows(users)]
        rp, rn = out.item_rows(pos), out.item_rows(neg)
        terms = {"bpr": bpr_loss(u, out.item[rp], out.item[rn])}
        if self.reg_weight and self.modalities:
            modal = u.new_zeros(())
            for m in self.modalities:
                # BPR over the triples whose two items have the modality: a masked
                # mean (no boolean indexing, whose size would be read on the host)
                ok = self.mask(m)[pos] & self.mask(m)[neg]
                h = out.item_modal[m]
                diff = (u * h[rp]).sum(-1) - (u * h[rn]).sum(-1)
                risk = torch.where(ok, -torch.nn.functional.logsigmoid(diff),
                                   torch.zeros_like(diff))
                count = ok.sum()
                modal = modal + torch.where(count > 0, risk.sum() / count.clamp(min=1),
                                            torch.zeros_like(modal))
            terms["modal_bpr"] = self.reg_weight * modal
        return terms

    # ------------------------------------------------------------- new items
    supports_new_items = True  # see "New items" in the class docstring


__all__ = ["FREEDOM", "modality_weights"]
