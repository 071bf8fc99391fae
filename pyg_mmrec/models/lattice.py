r"""LATTICE: latent item–item structure learned from multimodal features."""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.knn import check_knn_method, mask_key, normalize_edge_weight
from ..nn.item_item_conv import ItemItemConv
from ..nn.lightgcn_conv import LightGCNConv
from ._sampled import UserItemSample, cached_neighbourhood
from .base import Recommender, RecOutput


class LATTICE(Recommender):
    r"""LATTICE from `Zhang et al.: Mining Latent Structures for Multimedia
    Recommendation <https://arxiv.org/abs/2104.09036>`_ (ACM MM 2021).

    Per modality :math:`m`, a kNN graph of the *raw* features :math:`\tilde{S}^m`
    (fixed) and one of the *transformed* features :math:`W_m f^m` (learned), both
    with cosine weights and symmetric normalisation, are interpolated:

    .. math::
        A^m = (1-\lambda)\, S^m(W_m f^m) + \lambda\, \tilde{S}^m, \qquad
        h^m = (A^m)^{L_i} E_I, \qquad
        h_i = \frac{\sum_m \alpha_m m_{im} h^m_i}{\sum_m \alpha_m m_{im}},

    with :math:`\alpha = \mathrm{softmax}(w)` learned modality weights and
    :math:`m_{im}` the presence mask (an item is represented by the modalities
    it has). User/item embeddings come from LightGCN on the interaction graph
    and :math:`z_i = e_i + h_i / \lVert h_i\rVert`. As in the paper the learned
    graphs are rebuilt (with gradients) on the first batch of every epoch and
    reused, detached, for the rest of it; evaluation rebuilds them from the
    current parameters, so a reloaded checkpoint scores as when it was validated.

    For :math:`L_i = 1` (default) this equals propagating over the mixed graph
    :math:`\sum_m \alpha_m A^m`; for deeper item layers each modality is
    propagated separately and mixed afterwards.

    **Per-modality representations** ``item_modal[m]`` = :math:`h^m` (``[I, d]``):
    item ID embeddings smoothed over modality :math:`m`'s graph (zero rows for
    items missing :math:`m`).

    **Masks**: missing items are excluded from both kNN graphs of that modality,
    so a masked feature cannot influence the scores. Without modalities LATTICE
    is LightGCN.

    **New items** (:meth:`add_items`): in both graphs of every present
    modality a new item gets its :math:`k` nearest *old* items (cosine of the
    raw, respectively transformed features) and is nobody's neighbour, so the
    old items' graphs, :math:`h` and scores are unchanged. Its ID embedding
    is zero and it has no interaction, so :math:`e_i = 0` and
    :math:`z_i = h_i / \lVert h_i \rVert`: the normalised mix of its content
    neighbours' ID embeddings. A missing modality gives it no edge in that
    modality and is left out of the mix, as in training.

    **Sampled training** (``fanout``): a step computes :math:`z` only for the
    batch's users and items (:meth:`sampled_output`). *Sampled*: the
    LightGCN part, over a layer-wise neighbour sample of the batch (unbiased;
    exact when every fan-out is at least the maximum degree). *Exact*: the
    graphs :math:`A^m` themselves (the learned kNN graph is still rebuilt from
    all items once per epoch, :math:`O(I^2 d)`, on the epoch's first batch with
    gradients into :math:`W_m` through the sampled edges' weights) and
    :math:`h^m`, propagated over the batch items' exact :math:`L_i`-hop
    neighbourhood in :math:`A^m` (rows hold at most :math:`2k` neighbours).
    ID embeddings get sparse gradients; evaluation propagates the full graph.

    Args:
        embedding_size (int): :math:`d` (64).
        feat_embed_dim (int): output size of :math:`W_m` (64).
        n_layers (int): :math:`L_i`, item–item layers (1).
        n_ui_layers (int): LightGCN layers (2).
        knn_k (int): :math:`k` (10).
        knn_method (str): neighbour search of the kNN graphs (the raw-feature
            and the learned ones): ``"exact"`` (default, :math:`O(I^2 F)`) or
            ``"faiss"`` (approximate, an inverted-file index,
            :math:`O(I^{1.5} F)`; needs ``pip install faiss-cpu``); see
            :func:`~pyg_mmrec.data.knn.knn_graph`.
        lambda_coeff (float): :math:`\lambda`, weight of the raw-feature graph (0.9).
        reg_weight (float): L2 weight on the batch representations.
        fanout (list of int, optional): neighbours sampled per node at each
            user–item hop, one per ``n_ui_layers``; ``None``: full graph.
    """

    def __init__(self, num_users: int, num_items: int, train_edge_index: Tensor,
                 features: Optional[Dict[str, Tensor]] = None,
                 masks: Optional[Dict[str, Tensor]] = None, *,
                 embedding_size: int = 64, feat_embed_dim: int = 64, n_layers: int = 1,
                 n_ui_layers: int = 2, knn_k: int = 10, lambda_coeff: float = 0.9,
                 reg_weight: float = 1e-4, fanout: Optional[List[int]] = None,
                 knn_method: str = "exact") -> None:
        super().__init__(num_users, num_items, train_edge_index, features, masks)
        if not 0.0 <= lambda_coeff <= 1.0:
            raise ValueError(f"lambda_coeff: expected a value in [0, 1], got {lambda_coeff}")
        if knn_k < 1:
            raise ValueError(f"knn_k: expected >= 1, got {knn_k}")
        self.embedding_size, self.n_layers = int(embedding_size), int(n_layers)
        self.n_ui_layers, self.knn_k = int(n_ui_layers), int(knn_k)
        self.knn_method = check_knn_method(knn_method)
        self.lambda_coeff, self.reg_weight = float(lambda_coeff), float(reg_weight)

        d = self.embedding_size
        self._init_id_embeddings(d, sparse=self._init_sampler(fanout, self.n_ui_layers))
        self._hoods: dict = {}  # exact item-item neighbourhoods of sampled steps
        self.projections = torch.nn.ModuleDict({
            m: torch.nn.Linear(self._features[m].size(1), feat_embed_dim)
            for m in self.modalities})
        self.modal_weight = torch.nn.Parameter(torch.zeros(len(self.modalities)))
        self.conv = LightGCNConv(num_users, num_items, train_edge_index, num_layers=n_ui_layers)
        # one conv per modality: each caches the CSR layout of its own graph A^m
        self.item_convs = torch.nn.ModuleDict({m: ItemItemConv(normalize="none")
                                               for m in self.modalities})
        self._orig_cache: Dict[tuple, tuple] = {}
        self.item_graphs: Dict[str, tuple] = {}  # m -> (edge_index, weight) of A^m
        self._rebuild_pending = False
        self._finish_init()

    def reset_parameters(self) -> None:
        self._reset_id_embeddings()
        for lin in self.projections.values():
            lin.reset_parameters()
        torch.nn.init.zeros_(self.modal_weight)  # uniform softmax, as MMRec's [0.5, 0.5]

    # --------------------------------------------------------------- graphs
    def _original_graph(self, m: str):
        key = (m, self.knn_k, mask_key(self.mask(m)))
        if key not in self._orig_cache:
            ei, w = self.item_knn_graph(self.feature(m), self.knn_k, self.mask(m))
            self._orig_cache[key] = (ei, normalize_edge_weight(ei, w, self.num_items, "sym"))
        return self._orig_cache[key]

    def _build_graphs(self, with_grad: bool) -> None:
        """Rebuild :math:`A^m` for every modality (learned part from :math:`W_m f^m`)."""
        dev = self.train_edge_index.device
        lam = self.lambda_coeff
        for m in self.modalities:
            ei_o, w_o = self._original_graph(m)
            with torch.set_grad_enabled(with_grad):
                z = self.projections[m](self.feature(m))
                ei_l, w_l = self.item_knn_graph(z, self.knn_k, self.mask(m))
                w_l = normalize_edge_weight(ei_l, w_l, self.num_items, "sym")
                ei = torch.cat([ei_l, ei_o.to(dev)], 1)
                w = torch.cat([(1 - lam) * w_l, lam * w_o.to(dev)])
            self.item_graphs[m] = (ei, w)

    def _param_key(self) -> tuple:
        # changes with every optimiser step or load_state_dict (in-place updates)
        return tuple((p.data_ptr(), p._version) for p in self.projections.parameters())

    def on_inputs_changed(self) -> None:
        if self._ready:
            self._build_graphs(with_grad=False)
            self._graph_key = self._param_key()

    def on_epoch_start(self, epoch: int) -> None:
        self._rebuild_pending = True

    # -------------------------------------------------------------- forward
    def _graphs(self) -> Dict[str, tuple]:
        """The graphs :math:`A^m` of this step (rebuilt with gradients on the
        first training batch of an epoch, from the current parameters in
        evaluation)."""
        if self.training and self._rebuild_pending:
            self._build_graphs(with_grad=True)
            self._rebuild_pending = False
            self._graph_key = None
            graphs = self.item_graphs
            # later batches of the epoch reuse the graph without its gradient
            self.item_graphs = {m: (ei, w.detach()) for m, (ei, w) in graphs.items()}
        else:
            if not self.training and self._graph_key != self._param_key():
                # evaluation uses the graph of the current parameters, so a reloaded
                # checkpoint scores exactly as it did when it was validated
                with torch.no_grad():
                    self._build_graphs(with_grad=False)
                self._graph_key = self._param_key()
            graphs = self.item_graphs
        dev = self.item_embedding.weight.device
        for m, (ei, w) in list(graphs.items()):
            if ei.device != dev:  # the model moved: move the cached graph once
                graphs[m] = self.item_graphs[m] = ei.to(dev), w.to(dev)
        return graphs

    def _mix(self, e_i: Tensor, item_modal: Dict[str, Tensor],
             items: Optional[Tensor] = None) -> Tensor:
        r""":math:`z_i = e_i + h_i / \lVert h_i \rVert` (rows ``items``, or all)."""
        alpha = torch.softmax(self.modal_weight, 0)
        num, den = 0.0, 0.0
        for k, m in enumerate(self.modalities):
            h = item_modal[m]
            mk = self.mask(m) if items is None else self.mask(m)[items]
            a = alpha[k] * mk.to(h.dtype)
            num = num + a.unsqueeze(-1) * h
            den = den + a
        h = num / den.clamp_min(1e-12).unsqueeze(-1)
        return e_i + F.normalize(h, dim=-1)

    def forward(self) -> RecOutput:
        graphs = self._graphs() if self.modalities else {}
        e_u, e_i = self.conv.propagate_layers((self.user_embedding.weight,
                                               self.item_embedding.weight), combine="mean")
        if not self.modalities:
            return RecOutput(user=e_u, item=e_i)
        item_modal = {}
        for m in self.modalities:
            ei, w = graphs[m]
            h = self.item_embedding.weight
            for _ in range(self.n_layers):
                h = self.item_convs[m](h, ei, edge_weight=w)
            item_modal[m] = h
        return RecOutput(user=e_u, item=self._mix(e_i, item_modal), item_modal=item_modal)

    def sampled_output(self, users: Tensor, items: Tensor) -> RecOutput:
        r"""The partial output of a sampled step (see "Sampled training"):
        rows ``user_ids`` / ``item_ids`` (sorted unique ``users`` / ``items``)."""
        if self.sampler is None:
            raise RuntimeError("sampled_output: the model was built with fanout=None")
        graphs = self._graphs() if self.modalities else {}
        s = UserItemSample(self.sampler, self.conv, users, items)
        x = s.gather(self.user_embedding, self.item_embedding)
        e_u, e_i = s.propagate(x, combine="mean")
        if not self.modalities:
            return RecOutput(user=e_u, item=e_i, user_ids=s.user_ids, item_ids=s.item_ids)
        item_modal = {}
        for m in self.modalities:
            ei, w = graphs[m]
            adj = self.item_convs[m]._adjacency(ei, w, self.num_items, None)
            hood = cached_neighbourhood(self._hoods, m, adj, self.n_layers)
            grad = adj.value if adj.value is not None and adj.value.requires_grad else None
            item_modal[m] = hood.rows(s.item_ids, self.item_embedding, edge_value=grad)
        return RecOutput(user=e_u, item=self._mix(e_i, item_modal, s.item_ids),
                         item_modal=item_modal, user_ids=s.user_ids, item_ids=s.item_ids)

    # ------------------------------------------------------------- new items
    supports_new_items = True  # see "New items" in the class docstring


__all__ = ["LATTICE"]
