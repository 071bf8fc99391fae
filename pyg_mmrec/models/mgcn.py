r"""MGCN: multi-view graph convolution with behaviour-guided purification."""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.knn import check_knn_method, mask_key
from ..nn.adjacency import CSRAdjacency, csr_spmm
from ..nn.item_item_conv import ItemItemConv
from ..nn.lightgcn_conv import LightGCNConv
from ..nn.neighbor_sampling import sorted_unique
from ._sampled import PresentWeights, UserItemSample, cached_neighbourhood
from ._static_linear import StaticInputCache, static_linear
from .base import Recommender, RecOutput, bpr_l2_terms


def info_nce(view1: Tensor, view2: Tensor, temperature: float,
             keep: Optional[Tensor] = None) -> Tensor:
    r"""InfoNCE with in-batch negatives on cosine similarity; ``keep`` (bool
    ``[N]``): the rows that take part (the others are neither anchors nor
    negatives), the loss of those rows alone with static shapes."""
    v1, v2 = F.normalize(view1, dim=-1), F.normalize(view2, dim=-1)
    logits = v1 @ v2.t() / temperature
    if keep is None:
        return (torch.logsumexp(logits, dim=1) - logits.diagonal()).mean()
    w = keep.to(logits.dtype)
    lse = torch.logsumexp(logits.masked_fill(~keep.unsqueeze(0), float("-inf")), dim=1)
    return ((lse - logits.diagonal()) * w).sum() / w.sum().clamp(min=1)


class MGCN(Recommender):
    r"""MGCN from `Yu et al.: Multi-View Graph Convolutional Network for
    Multimedia Recommendation <https://arxiv.org/abs/2308.03588>`_ (ACM MM 2023),
    for any number of modalities.

    * **Behaviour-guided purifier**: :math:`\tilde{e}_i^m = e_i \odot
      \sigma(W_g^m (W_m f_i^m) + b_g^m)` keeps the parts of the modality
      features that agree with the item's ID embedding.
    * **Item–item view**: :math:`\bar{h}^m = (S^m)^{L} \tilde{e}^m` on the frozen
      symmetric cosine kNN graph :math:`S^m`; users aggregate it through the
      normalised interaction matrix, :math:`\bar{h}^m_U = \hat{R}\, \bar{h}^m`.
      :math:`h^m = [\bar{h}^m_U; \bar{h}^m]`.
    * **User–item view**: :math:`e = \mathrm{LightGCN}(E_U, E_I)` (mean of layers).
    * **Behaviour-aware fuser**: attention
      :math:`\beta_m = \mathrm{softmax}_m(q^\top \tanh(W_q h^m))` over the
      modalities present for that node gives the common part
      :math:`c = \sum_m \beta_m h^m`; specific parts
      :math:`s^m = \sigma(W_p^m e) \odot (h^m - c)`;
      :math:`z = e + \frac{1}{M+1}\big(c + \sum_m m_{im} s^m\big)`.

    Loss: BPR + L2 on the batch (``reg_weight``) + ``cl_loss`` · (InfoNCE
    between side and ID views of the batch's distinct users and distinct
    positive items, temperature 0.2; MMRec keeps repeated rows, which then act
    as their own negatives).

    **Per-modality representations** ``item_modal[m]`` = :math:`\bar{h}^m`
    (``[I, d]``) and ``user_modal[m]`` = :math:`\bar{h}^m_U` (``[U, d]``).

    **Masks**: items missing :math:`m` are excluded from :math:`S^m` (they get
    zero :math:`\bar{h}^m` rows for :math:`L \ge 1`), send nothing through
    :math:`\hat{R}`, and are left out of the attention, so a masked feature
    cannot influence the scores when ``n_layers >= 1``. Without modalities MGCN
    is LightGCN.

    **New items** (:meth:`add_items`): in every present :math:`S^m` a new item
    links to its :math:`k` nearest *old* items and is nobody's neighbour, so
    old items and users are unchanged. Its ID embedding is zero, so its own
    purified embedding is zero and its collaborative part :math:`e_i = 0`;
    with ``n_layers >= 1`` it reads :math:`\bar{h}^m_i` from its content
    neighbours' purified embeddings and :math:`z_i` is the fuser's side part
    alone (with ``n_layers = 0`` it gets no representation: zero scores).

    **Implementation**: :math:`\hat{R}\bar{h}^m` runs on the user rows of
    :math:`\hat{A}` only (cached at construction), and :math:`W_m f^m` goes
    through :func:`~pyg_mmrec.models._static_linear.static_linear`.

    **Sampled training** (``fanout``): a step computes :math:`z` only for the
    batch's users and items (:meth:`sampled_output`), from one layer-wise
    neighbour sample of them in :math:`\hat{A}`. *Sampled* (unbiased; exact
    when every fan-out is at least the maximum degree): the LightGCN part
    and the users' aggregation :math:`\hat{R}\bar{h}^m`, which reads the
    sample's first hop (the users' sampled items, masked, with the exact
    renormalisation denominators). *Exact*: :math:`\bar{h}^m` of those items
    and of the batch items, over their exact :math:`L`-hop neighbourhood in
    :math:`S^m`, the purifier and the fuser (pointwise per node). ID
    embeddings get sparse gradients; evaluation propagates the full graph.

    Args:
        embedding_size (int): :math:`d` (64).
        n_ui_layers (int): LightGCN layers (2).
        n_layers (int): :math:`L`, item–item layers (1).
        knn_k (int): :math:`k` (10).
        knn_method (str): neighbour search of the kNN graphs: ``"exact"``
            (default, :math:`O(I^2 F)`) or ``"faiss"`` (approximate, an
            inverted-file index, :math:`O(I^{1.5} F)`; needs ``pip install
            faiss-cpu``); see :func:`~pyg_mmrec.data.knn.knn_graph`.
        reg_weight (float): L2 weight (1e-4).
        cl_loss (float): weight of the contrastive term (MMRec grid {1e-3, 1e-2, 1e-1};
            1e-3 by default: 1e-2 stalls the BPR term on ``ml100k_mm``).
        temperature (float): InfoNCE temperature (0.2).
        fanout (list of int, optional): neighbours sampled per node at each
            user–item hop, one per ``n_ui_layers``; ``None``: full graph.
    """

    def __init__(self, num_users: int, num_items: int, train_edge_index: Tensor,
                 features: Optional[Dict[str, Tensor]] = None,
                 masks: Optional[Dict[str, Tensor]] = None, *,
                 embedding_size: int = 64, n_ui_layers: int = 2, n_layers: int = 1,
                 knn_k: int = 10, reg_weight: float = 1e-4, cl_loss: float = 0.001,
                 temperature: float = 0.2, fanout: Optional[List[int]] = None,
                 knn_method: str = "exact") -> None:
        super().__init__(num_users, num_items, train_edge_index, features, masks)
        if knn_k < 1:
            raise ValueError(f"knn_k: expected >= 1, got {knn_k}")
        if temperature <= 0:
            raise ValueError(f"temperature: expected > 0, got {temperature}")
        self.embedding_size, self.n_ui_layers = int(embedding_size), int(n_ui_layers)
        self.n_layers, self.knn_k = int(n_layers), int(knn_k)
        self.knn_method = check_knn_method(knn_method)
        self.reg_weight, self.cl_loss = float(reg_weight), float(cl_loss)
        self.temperature = float(temperature)

        d = self.embedding_size
        self._init_id_embeddings(d, sparse=self._init_sampler(fanout, self.n_ui_layers))
        self._hoods: dict = {}  # exact item-item neighbourhoods of sampled steps
        self._present = PresentWeights()  # exact denominators of sampled masked hops
        self.projections = torch.nn.ModuleDict({
            m: torch.nn.Linear(self._features[m].size(1), d) for m in self.modalities})
        self.purifier_gates = torch.nn.ModuleDict({m: torch.nn.Linear(d, d)
                                                   for m in self.modalities})
        self.prefer_gates = torch.nn.ModuleDict({m: torch.nn.Linear(d, d) for m in self.modalities})
        self.query_common = torch.nn.Sequential(torch.nn.Linear(d, d), torch.nn.Tanh(),
                                                torch.nn.Linear(d, 1, bias=False))
        self.conv = LightGCNConv(num_users, num_items, train_edge_index, num_layers=n_ui_layers)
        # S^m: symmetric normalisation of the cosine kNN weights inside the conv
        self.item_convs = torch.nn.ModuleDict({m: ItemItemConv(normalize="sym")
                                               for m in self.modalities})
        self._build_user_rows()
        self._feature_cache = StaticInputCache()  # scaled constant features
        self._knn_cache: Dict[tuple, tuple] = {}
        self.item_graphs: Dict[str, tuple] = {}  # m -> (edge_index, cosine weight)
        self._finish_init()

    def reset_parameters(self) -> None:
        self._reset_id_embeddings()
        for mod in (*self.projections.values(), *self.purifier_gates.values(),
                    *self.prefer_gates.values()):
            mod.reset_parameters()
        for mod in self.query_common:
            if isinstance(mod, torch.nn.Linear):
                mod.reset_parameters()

    @torch.no_grad()
    def _build_user_rows(self) -> None:
        # The user rows of the conv's \hat{A} (users are rows 0..U-1 of its CSR,
        # their sources the items U..U+I-1): R̂ as a [U, I] CSR, so that
        # \bar{h}^m_U = R̂ \bar{h}^m runs over the user-target edges only.
        conv, U = self.conv, self.num_users
        e_u = int(conv.rowptr[U])
        adj = CSRAdjacency(conv.rowptr[:U + 1].clone(), conv.col[:e_u] - U,
                           conv.value[:e_u].clone(), (U, self.num_items))
        colptr, row_t, perm = adj.csc()
        for name, t in (("_ru_rowptr", adj.rowptr), ("_ru_col", adj.col),
                        ("_ru_value", adj.value), ("_ru_colptr", colptr), ("_ru_row_t", row_t),
                        ("_ru_perm", perm), ("_ru_row_sum", conv.row_sum[:U].clone())):
            self.register_buffer(name, t, persistent=False)
        # what the rows were cut from: a new graph (set_graph) or a move / cast
        # of the conv replaces this tensor, and the rows are cut again
        self._ru_source = conv.value

    def _user_aggregate(self, h: Tensor, mask: Tensor) -> Tensor:
        r""":math:`\hat{R} h` with the masking and renormalisation of
        :class:`LightGCNConv` (user rows of ``conv((0, h), item_mask=mask)``)."""
        if self._ru_source is not self.conv.value:
            self._build_user_rows()
        # cut from the conv's validated CSR: valid by construction, so the op
        # skips its data checks (host reads of index values at every call)
        adj = CSRAdjacency(self._ru_rowptr, self._ru_col, self._ru_value,
                           (self.num_users, self.num_items), validated=True)
        adj._shared["csc"] = (self._ru_colptr, self._ru_row_t, self._ru_perm)
        out, weight_sum = csr_spmm(adj, h, mask, reduce="sum")
        if not self.conv.renormalize:
            return out
        weight_sum = weight_sum.detach()  # constant weights: no backward pass into it
        row_sum = self._ru_row_sum.to(h.dtype)
        scale = torch.where(weight_sum > 0, row_sum / weight_sum.clamp_min(1e-30),
                            torch.zeros_like(weight_sum))
        return out * scale.unsqueeze(-1)

    def on_inputs_changed(self) -> None:
        if not self._ready:
            return
        dev = self.train_edge_index.device
        for m in self.modalities:
            key = (m, self.knn_k, mask_key(self.mask(m)))
            if key not in self._knn_cache:
                self._knn_cache[key] = self.item_knn_graph(self.feature(m), self.knn_k,
                                                           self.mask(m))
            ei, w = self._knn_cache[key]
            self.item_graphs[m] = (ei.to(dev), w.to(dev))

    def forward(self) -> RecOutput:
        U = self.num_users
        # joint [U + I] input: the propagated result is already `content`
        content = self.conv.propagate_layers(torch.cat([self.user_embedding.weight,
                                                        self.item_embedding.weight]),
                                             combine="mean")
        e_u = content[:U]
        if not self.modalities:
            return RecOutput(user=e_u, item=content[U:], extras={
                "side": torch.zeros_like(content), "content": content})
        views, present, item_modal, user_modal = [], [], {}, {}
        ones_u = torch.ones(self.num_users, dtype=torch.bool, device=e_u.device)
        for m in self.modalities:
            mk = self.mask(m)
            h = self._purified(m)
            ei, w = self.item_graphs[m]
            if ei.device != h.device:  # the model moved: move the cached graph once
                ei, w = self.item_graphs[m] = ei.to(h.device), w.to(h.device)
            for _ in range(self.n_layers):
                h = self.item_convs[m](h, ei, mk, edge_weight=w)
            # users aggregate their present items (R̂ h)
            h_u = self._user_aggregate(h, mk)
            item_modal[m], user_modal[m] = h, h_u
            views.append(torch.cat([h_u, h]))
            present.append(torch.cat([ones_u, mk]))
        side = self._fuse(content, views, present)
        z = content + side
        return RecOutput(user=z[:self.num_users], item=z[self.num_users:],
                         item_modal=item_modal, user_modal=user_modal,
                         extras={"side": side, "content": content})

    def _purified(self, m: str, items: Optional[Tensor] = None) -> Tensor:
        r""":math:`\tilde{e}^m = e_i \odot \sigma(W_g^m (W_m f_i^m) + b_g^m)` of
        all items or of the rows ``items``."""
        proj = self.projections[m]
        gate = torch.sigmoid(self.purifier_gates[m](static_linear(
            self.feature(m), proj.weight.t(), proj.bias, self._feature_cache, m, rows=items)))
        e = self.item_embedding.weight if items is None else self.item_embedding(items)
        return e * gate

    def _fuse(self, content: Tensor, views: List[Tensor], present: List[Tensor]) -> Tensor:
        r"""The behaviour-aware fuser's side part of nodes with collaborative
        ``content`` ``[N, d]``, modality views ``[N, d]`` and presence ``[N]``."""
        H = torch.stack(views, 1)  # [N, M, d]
        P = torch.stack(present, 1)  # [N, M]
        score = self.query_common(H).squeeze(-1).masked_fill(~P, float("-inf"))
        beta = torch.softmax(score, dim=1)
        beta = torch.nan_to_num(beta, nan=0.0)  # nodes with no modality at all
        common = (beta.unsqueeze(-1) * H).sum(1)
        side = common
        for k, m in enumerate(self.modalities):
            s = torch.sigmoid(self.prefer_gates[m](content)) * (H[:, k] - common)
            side = side + P[:, k:k + 1].to(s.dtype) * s
        return side / (len(self.modalities) + 1)

    def sampled_output(self, users: Tensor, items: Tensor) -> RecOutput:
        r"""The partial output of a sampled step (see "Sampled training"):
        rows ``user_ids`` / ``item_ids`` (sorted unique ``users`` / ``items``)."""
        if self.sampler is None:
            raise RuntimeError("sampled_output: the model was built with fanout=None")
        s = UserItemSample(self.sampler, self.conv, users, items)
        x = s.gather(self.user_embedding, self.item_embedding)
        c_u, c_i = s.propagate(x, combine="mean")
        content = torch.cat([c_u, c_i])
        ids = dict(user_ids=s.user_ids, item_ids=s.item_ids)
        if not self.modalities:
            return RecOutput(user=c_u, item=c_i, extras={
                "side": torch.zeros_like(content), "content": content}, **ids)
        # items whose \bar{h}^m is read: the first hop's nodes D_1 (the batch
        # items among them); one row per node of D_1, static shapes (user and
        # padding rows read a batch item and are zeroed below)
        n1, n0 = s.sub.sizes[1], s.sub.sizes[0]
        need = s.item_index[:n1]
        hop_items = (~s.is_user[:n1] & s.sub.valid[:n1]).unsqueeze(-1)
        n_u = s.num_seed_users
        views, present, item_modal, user_modal = [], [], {}, {}
        ones_u = torch.ones(n_u, dtype=torch.bool, device=c_u.device)
        for m in self.modalities:
            mk = self.mask(m)
            ei, w = self.item_graphs[m]
            if ei.device != c_u.device:
                ei, w = self.item_graphs[m] = ei.to(c_u.device), w.to(c_u.device)
            adj = self.item_convs[m]._adjacency(ei, w, self.num_items, None)
            hood = cached_neighbourhood(self._hoods, m, adj, self.n_layers)
            h_need = hood.rows(need, lambda rows, m=m: self._purified(m, rows), item_mask=mk)
            # users aggregate their sampled present items (the sample's first hop)
            x1 = torch.where(hop_items, h_need, torch.zeros_like(h_need))
            h_u = s.hop(0, x1, item_mask=mk, present=self._present, key=m)[:n_u]
            h_i = h_need[n_u:n0]  # D_0's item segment: the rows of item_ids
            item_modal[m], user_modal[m] = h_i, h_u
            views.append(torch.cat([h_u, h_i]))
            present.append(torch.cat([ones_u, mk[s.item_ids]]))
        side = self._fuse(content, views, present)
        z = content + side
        return RecOutput(user=z[:n_u], item=z[n_u:], item_modal=item_modal,
                         user_modal=user_modal, extras={"side": side, "content": content},
                         **ids)

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor,
             out: Optional[RecOutput] = None) -> Dict[str, Tensor]:
        out = self.training_output(users, pos, neg) if out is None else out
        terms = bpr_l2_terms(out.user[out.user_rows(users)], out.item[out.item_rows(pos)],
                             out.item[out.item_rows(neg)], self.reg_weight)
        if self.cl_loss and self.modalities:
            # each user / positive item once: a repeated row would be its own negative;
            # side / content hold the output's user rows, then its item rows
            side, content, U = out.extras["side"], out.extras["content"], out.user.size(0)
            # (static shapes: the duplicates stay as rows of weight 0)
            uu, u_first, _ = sorted_unique(users)
            pu, p_first, _ = sorted_unique(pos)
            ub, ib = out.user_rows(uu), out.item_rows(pu) + U
            terms["cl"] = self.cl_loss * (
                info_nce(side[ib], content[ib], self.temperature, p_first)
                + info_nce(side[ub], content[ub], self.temperature, u_first))
        return terms

    # ------------------------------------------------------------- new items
    supports_new_items = True  # see "New items" in the class docstring


__all__ = ["MGCN"]
