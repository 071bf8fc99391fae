r"""I3-MRec: invariant learning with an information bottleneck for incomplete
modality recommendation."""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.knn import mask_key, normalize_edge_weight
from ..nn.edge_pruning import resample_pruned_conv
from ..nn.infonce import InfoNCE
from ..nn.invariance import IRMPenalty, VRExPenalty, bpr_risk
from ..nn.item_item_conv import ItemItemConv
from ..nn.lightgcn_conv import LightGCNConv
from ..nn.mi_estimators import CLUB
from ..nn.missing_aware_fusion import MissingAwareFusion
from ..nn.neighbor_sampling import LayerwiseSampler, present_weight_sum
from ..nn.variational_bottleneck import VariationalBottleneck
from .base import Recommender, RecOutput, bpr_loss


_ID_BRANCHES = ("none", "embedding", "lightgcn")
_ITEM_GRAPHS = ("none", "knn")


class I3MRec(Recommender):
    r"""I3-MRec from `Chen et al.: "I3-MRec: Invariant Learning with Information
    Bottleneck for Incomplete Modality Recommendation"
    <https://arxiv.org/abs/2508.04247>`_, for any number :math:`M \geq 1` of
    modalities and with real (natural or simulated) missingness.

    **Modality environments.** Users share ID embeddings :math:`E_u`. For each
    modality :math:`m` the item inputs are a projection :math:`W_m X^m` of the
    (L2-normalised) features and the user–item graph :math:`\hat{A} = D^{-1/2}
    A D^{-1/2}` is propagated for :math:`L` layers with a missing-aware layer
    (:class:`~pyg_mmrec.nn.LightGCNConv` with an item mask): an item whose modality
    :math:`m` is missing (:math:`\mathcal{M}^{real}_{im} = 0`) sends nothing
    in modality :math:`m`'s graph (its filled feature is never read), but still
    receives its users' messages, so its :math:`E_I^m` row is a purely
    collaborative read-out:

    .. math::
        [\bar{E}_U^m; E_I^m] = \frac{1}{L+1}\sum_{l=0}^{L} H^{(l)}, \quad
        H^{(0)} = [\,\hat{E}_u;\ \mathcal{M}^{real}_m \odot \widehat{W_m X^m}\,],
        \quad E_U^m = E_u + \bar{E}_U^m,

    (hats: row-wise L2 normalisation; :class:`~pyg_mmrec.nn.LightGCNConv` with
    ``item_mask``, on the masked sparse op). Each modality is an environment with
    scores :math:`\hat{r}^m_{ui} = E_U^m[u]^\top E_I^m[i]` and BPR risk
    :math:`\mathcal{L}^m`; an invariance penalty (V-REx: :math:`\operatorname
    {Var}_m \mathcal{L}^m`; or IRMv1) makes the preference signal agree
    across modalities.

    **Missing-aware fusion (information bottleneck).** The item modality
    embeddings are fused over the *present* modalities only
    (:class:`~pyg_mmrec.nn.MissingAwareFusion`) into :math:`Z`, and the batch
    items are fused again under a sampled missing indicator :math:`\mathcal{M}`
    (each present modality kept with probability ``1 - mask_prob``, at least
    one kept per item; real missingness always applies) into
    :math:`Z^{\mathcal{M}}`. With :math:`E_U = E_u + \frac{1}{M}\sum_m
    \bar{E}_U^m` and :math:`\bar{r}_{ui} = E_U[u]^\top Z_i`,

    .. math::
        \mathcal{L} = \underbrace{\mathcal{L}_{BPR}(\bar{r})}_{\max I(R;Z)}
        + \sum_m \mathcal{L}^m + \lambda_{p}\, \mathcal{P}(\mathcal{L}^1, \dots,
        \mathcal{L}^M)
        + \lambda_{\max}\, \underbrace{\mathrm{InfoNCE}(Z, Z^{\mathcal{M}_1},
          \dots)}_{\max I(Z, Z^{\mathcal{M}}; R)}
        + \lambda_{\min} \underbrace{\frac{1}{M}\sum_m \hat{I}_{CLUB}(X^m; Z)}
          _{\min I(Z; X)} + \lambda_{reg} \|\Theta_B\|^2,

    where the InfoNCE is averaged over all ordered pairs of views and each
    modality's CLUB estimator :math:`q_m(Z \mid X^m)` is fitted on that
    modality's present items only, in alternation
    (:meth:`auxiliary_loss`). Items with no present modality fall back to the
    mean of their (collaborative) :math:`E_I^m`.

    **Differences from the reference code** (on purpose): the CLUB estimators
    are fitted on :math:`(X^m, Z)` — the pair whose MI is bounded — for every
    modality and only on items whose modality is present (the reference fits
    them on the feature projections and never trains its third estimator);
    the InfoNCE is the plain mean over view pairs (the reference adds a
    spurious 1/6 of it); missing entries are masked out of the propagation and
    the fusion instead of being zero-filled; model selection uses validation
    only (the trainer's job).

    **New items** (:meth:`add_items`): a new item has no edge, so in every
    environment it keeps the layer-0 term of the mean over layers,
    :math:`E_I^m[i] = \mathcal{M}_{im}\widehat{W_m X^m_i} / (L+1)`, plus its ID
    part, which is zero (zero ID embedding; with ``id_branch="lightgcn"`` its
    propagated :math:`C_I` row is zero too); with ``item_graph="knn"`` it
    links to its :math:`k` nearest *old* items in :math:`S^m` and adds their
    smoothed ID embeddings (it is nobody's neighbour). :math:`Z_i` is the
    missing-aware fusion of its present modalities, masked as in training.
    Old items and users are unchanged.

    **Representations** (:class:`RecOutput`): ``user`` = :math:`E_U`,
    ``item`` = :math:`Z`, ``item_modal[m]`` = :math:`E_I^m`,
    ``user_modal[m]`` = :math:`E_U^m`.

    Args:
        embedding_size (int): :math:`d`. (reference: 64)
        n_layers (int): :math:`L` propagation layers per modality graph. (3)
        penalty (str): ``"vrex"`` or ``"irm"`` (IRMv1).
        penalty_coeff (float): :math:`\lambda_p`. (reference on Baby: 300)
        max_info_coeff (float): :math:`\lambda_{\max}` (InfoNCE). (1e-3)
        min_info_coeff (float): :math:`\lambda_{\min}` (CLUB). (1e-5)
        reg_coeff (float): :math:`\lambda_{reg}`, L2 on the batch's final
            user and item representations. (1e-3)
        modal_bpr_coeff (float): weight of :math:`\sum_m \mathcal{L}^m`. (1)
        temperature (float): InfoNCE :math:`\tau`. (reference: 0.4)
        mask_prob (float): probability of dropping a present modality in
            :math:`\mathcal{M}`.
        num_masked_views (int): number of sampled masked fusions per batch.
        fusion_mode (str): ``"mean"`` or ``"attention"``.
        fusion_dropout (float): dropout inside the fusion transform.
        fusion_transform (str): the fusion's map after pooling: ``"tanh"``
            (:math:`\tanh(W\bar{h})`, as the reference), ``"linear"``
            (:math:`W\bar{h}`: keeps the norms that carry popularity in
            LightGCN-like scores) or ``"none"``.
        detach_modal (bool): fuse ``E_I^m.detach()`` so that the fusion-level
            objectives train the fusion and :math:`E_u` only, and the modality
            branches are shaped by the environment risks alone (as in the
            reference code).
        renormalize (bool): rescale each user's messages in modality
            :math:`m`'s graph to its full degree weight when some of its items
            miss :math:`m` (see :class:`~pyg_mmrec.nn.LightGCNConv`), so a
            user's magnitude does not depend on how many items are missing.
        min_info (str): the bound of :math:`I(Z; X)`: ``"club"`` (CLUB,
            estimators trained in alternation) or ``"kl"`` (a variational
            alternative: :math:`Z` becomes a Gaussian code
            :math:`\mathcal{N}(\mu, \sigma^2)` of the fusion, sampled in
            training, and :math:`\mathrm{KL}(q(Z \mid X) \| \mathcal{N}(0, I))
            \geq I(Z; X)` is minimised; :math:`\mu` at inference).
        club_hidden (int): hidden width of the CLUB estimators.
        club_batch (int): at most this many (present) items per modality,
            drawn uniformly from the batch's, feed each estimator per step
            (the estimators' cost is linear in it).
        use_irm, use_ib, use_masked_fusion (bool): ablation switches (no
            invariance penalty; no InfoNCE and CLUB; no masked fusion
            :math:`Z^{\mathcal{M}}`, hence no InfoNCE).
        id_branch (str): beyond the reference, a collaborative branch shared by
            every environment. ``"none"`` (the paper): items have no ID
            embedding, :math:`E_I^m` is the propagated projection only, users
            :math:`E_U^m = E_u + \bar{E}_U^m`. ``"embedding"``: items get ID
            embeddings :math:`E_i` added to every environment,
            :math:`E_I^m = E_i + \bar{E}_I^m`. ``"lightgcn"``: the ID
            embeddings :math:`[E_u; E_i]` are themselves propagated over the
            (never-masked) user–item graph, :math:`[C_U; C_I] =
            \frac{1}{L+1}\sum_l \hat{A}^l [E_u; E_i]`, and every environment
            adds them: :math:`E_U^m = C_U + \bar{E}_U^m`, :math:`E_I^m = C_I +
            \bar{E}_I^m` (so the fused score contains a LightGCN score). The
            modality inputs still come from :math:`W_m X^m` only, so a missing
            modality still sends nothing; the branch carries the collaborative
            signal a feature projection cannot (decisive on MovieLens, whose
            features are weak).
        item_graph (str): beyond the reference, a modality-specific item–item
            graph in each environment. ``"none"`` (the paper). ``"knn"``
            (needs an ``id_branch``): modality :math:`m`'s frozen top-:math:`k`
            cosine graph of the raw :math:`X^m` over the items where :math:`m`
            is present, with indicator weights, symmetrically normalised
            (:math:`S^m`, as FREEDOM's), smooths the item ID embeddings, and
            environment :math:`m` adds the result: :math:`E_I^m \mathrel{+}=
            (S^m)^{L_S} E_i`. An item missing :math:`m` has no edge in
            :math:`S^m` (neither sends nor receives), so its modality-:math:`m`
            term is zero and it keeps the collaborative read-out; the graph is
            rebuilt when the masks change (cached per mask).
        knn_k (int): :math:`k` of ``item_graph="knn"``. (FREEDOM: 10)
        item_graph_layers (int): :math:`L_S \geq 1`. (FREEDOM: 1)
        edge_dropout (float): beyond the reference, FREEDOM's denoising: at
            every epoch, training propagates (the ID branch and every
            environment) over a fresh subgraph keeping a fraction :math:`1 -
            \rho` of the interactions, drawn with probability :math:`\propto
            1/\sqrt{d_u d_i}` (:func:`~pyg_mmrec.nn.edge_pruning
            .degree_sensitive_prune`) and renormalised; evaluation uses the
            full graph. ``0`` (the paper): no pruning.
        fanout (list of int, optional): sampled training: each training step
            propagates the modality graphs over one layer-wise neighbour sample
            of the batch's users and items
            (:class:`~pyg_mmrec.nn.neighbor_sampling.LayerwiseSampler`, shared
            by the modalities, each with its item mask and exact
            renormalisation), so a step costs :math:`O(B \prod_l f_l)` instead
            of :math:`O(E)`; the ID embeddings get sparse gradients (the
            trainer then uses :class:`~pyg_mmrec.train.optim.LazyAdam`) and the
            CLUB estimators are fitted on a fresh sampled :math:`Z` of the
            batch items. ``fanout[0]`` is the hop next to the batch, one entry
            per layer. ``None`` (default): full-graph propagation at every
            step. Evaluation always propagates the full graph.
    """

    def __init__(self, num_users: int, num_items: int, train_edge_index: Tensor,
                 features: Optional[Dict[str, Tensor]] = None,
                 masks: Optional[Dict[str, Tensor]] = None, *,
                 embedding_size: int = 64, n_layers: int = 3, penalty: str = "vrex",
                 penalty_coeff: float = 300.0, max_info_coeff: float = 1e-3,
                 min_info_coeff: float = 1e-5, reg_coeff: float = 1e-3,
                 modal_bpr_coeff: float = 1.0, temperature: float = 0.4,
                 mask_prob: float = 0.5, num_masked_views: int = 1,
                 fusion_mode: str = "mean", fusion_dropout: float = 0.5,
                 fusion_transform: str = "tanh",
                 detach_modal: bool = True, renormalize: bool = True,
                 min_info: str = "club", club_hidden: int = 64, club_batch: int = 2048,
                 use_irm: bool = True, use_ib: bool = True,
                 use_masked_fusion: bool = True, id_branch: str = "none",
                 item_graph: str = "none", knn_k: int = 10, item_graph_layers: int = 1,
                 edge_dropout: float = 0.0,
                 fanout: Optional[List[int]] = None) -> None:
        super().__init__(num_users, num_items, train_edge_index, features, masks)
        if not self.modalities:
            raise ValueError("features: I3MRec needs at least one modality, got none")
        if penalty not in ("vrex", "irm"):
            raise ValueError(f"penalty: expected 'vrex' or 'irm', got {penalty!r}")
        if n_layers < 0:
            raise ValueError(f"n_layers: expected >= 0, got {n_layers}")
        if embedding_size <= 0:
            raise ValueError(f"embedding_size: expected > 0, got {embedding_size}")
        if not 0.0 <= mask_prob < 1.0:
            raise ValueError(f"mask_prob: expected a probability in [0, 1), got {mask_prob}")
        if num_masked_views < 1:
            raise ValueError(f"num_masked_views: expected >= 1, got {num_masked_views}")
        if min_info not in ("club", "kl"):
            raise ValueError(f"min_info: expected 'club' or 'kl', got {min_info!r}")
        if id_branch not in _ID_BRANCHES:
            raise ValueError(f"id_branch: expected one of {_ID_BRANCHES}, got {id_branch!r}")
        if item_graph not in _ITEM_GRAPHS:
            raise ValueError(f"item_graph: expected one of {_ITEM_GRAPHS}, got {item_graph!r}")
        if item_graph != "none" and id_branch == "none":
            raise ValueError("item_graph: 'knn' smooths item ID embeddings, so it needs "
                             "id_branch 'embedding' or 'lightgcn', got id_branch 'none'")
        if int(knn_k) != knn_k or knn_k < 1:
            raise ValueError(f"knn_k: expected a positive integer, got {knn_k!r}")
        if int(item_graph_layers) != item_graph_layers or item_graph_layers < 1:
            raise ValueError(f"item_graph_layers: expected a positive integer, got "
                             f"{item_graph_layers!r}")
        if not 0.0 <= edge_dropout < 1.0:
            raise ValueError(f"edge_dropout: expected a fraction in [0, 1), got {edge_dropout}")
        if club_batch < 2:
            raise ValueError(f"club_batch: expected >= 2, got {club_batch}")
        for name, val in (("penalty_coeff", penalty_coeff), ("max_info_coeff", max_info_coeff),
                          ("min_info_coeff", min_info_coeff), ("reg_coeff", reg_coeff),
                          ("modal_bpr_coeff", modal_bpr_coeff)):
            if val < 0:
                raise ValueError(f"{name}: expected >= 0, got {val}")
        self.embedding_size, self.n_layers = int(embedding_size), int(n_layers)
        self.penalty_name, self.penalty_coeff = penalty, float(penalty_coeff)
        self.max_info_coeff, self.min_info_coeff = float(max_info_coeff), float(min_info_coeff)
        self.reg_coeff, self.modal_bpr_coeff = float(reg_coeff), float(modal_bpr_coeff)
        self.mask_prob, self.num_masked_views = float(mask_prob), int(num_masked_views)
        self.detach_modal = bool(detach_modal)
        self.club_batch, self.min_info = int(club_batch), min_info
        self.use_irm, self.use_ib = bool(use_irm), bool(use_ib)
        self.use_masked_fusion = bool(use_masked_fusion)
        self.id_branch = id_branch
        self.knn_k = int(knn_k)
        self.item_graph_layers = int(item_graph_layers)
        self.edge_dropout = float(edge_dropout)

        self.sampler = None if fanout is None else LayerwiseSampler(fanout, self.n_layers)

        d = self.embedding_size
        # sampled steps touch only the sampled rows: sparse gradients (fanout)
        sparse = self.sampler is not None
        self.user_embedding = torch.nn.Embedding(num_users, d, sparse=sparse)  # E_u
        # optional item ID embeddings E_i, shared by every environment (see id_branch)
        self.item_embedding = (torch.nn.Embedding(num_items, d, sparse=sparse)
                               if id_branch != "none" else None)
        self.projections = torch.nn.ModuleDict({  # W_m
            m: torch.nn.Linear(self._features[m].size(1), d) for m in self.modalities})
        # one parameter-free missing-aware propagation; the graph is shared by all m,
        # only the item inputs and presence masks differ
        self.conv = LightGCNConv(num_users, num_items, train_edge_index, num_layers=n_layers,
                                 renormalize=renormalize)
        # this epoch's pruned training graph (edge_dropout > 0; None before the first epoch)
        self.pruned_conv: Optional[LightGCNConv] = None
        # S^m, one parameter-free layer per modality (each caches its own CSR)
        self.item_convs = torch.nn.ModuleDict({
            m: ItemItemConv(normalize="none") for m in self.modalities}
            if item_graph == "knn" else {})
        self._knn_cache: Dict[tuple, tuple] = {}
        self.fusion = MissingAwareFusion(d, mode=fusion_mode, transform=fusion_transform,
                                         dropout=fusion_dropout)
        self.invariance = IRMPenalty(risk=bpr_risk) if penalty == "irm" else VRExPenalty()
        self.infonce = InfoNCE(temperature=temperature)
        self.club = torch.nn.ModuleDict({  # q_m(Z | X^m)
            m: CLUB(self._features[m].size(1), d, hidden_dim=club_hidden)
            for m in self.modalities} if min_info == "club" else {})
        # variational alternative: a stochastic Z ~ N(mu, sigma^2) and its KL to N(0, I)
        self.vib = VariationalBottleneck(d, d) if min_info == "kl" else None
        # Z of the last training step, for the estimators' step (saves a forward
        # pass per batch); a persistent buffer so that a resumed run is exact
        self.register_buffer("z_cache", torch.zeros(num_items, d))
        self.register_buffer("z_cache_ready", torch.zeros((), dtype=torch.bool))
        self.reset_parameters()

    # ----------------------------------------------------------------- set-up
    def reset_parameters(self) -> None:
        torch.nn.init.normal_(self.user_embedding.weight, std=0.1)
        if self.item_embedding is not None:
            torch.nn.init.normal_(self.item_embedding.weight, std=0.1)
        for lin in self.projections.values():
            lin.reset_parameters()
        self.fusion.reset_parameters()
        for est in self.club.values():
            est.reset_parameters()
        if self.vib is not None:
            self.vib.reset_parameters()
            with torch.no_grad():  # start as the deterministic fusion (mu = Z)
                self.vib.lin_mu.weight.copy_(torch.eye(self.embedding_size))
                self.vib.lin_mu.bias.zero_()
        self.z_cache.zero_()
        self.z_cache_ready.fill_(False)

    def on_inputs_changed(self) -> None:
        # features/masks swapped (train vs test masks): drop what depends on them
        # (the kNN graphs stay in `_knn_cache`, keyed by mask content)
        self._x_norm: Dict[str, Tensor] = {}
        self._present_sum: Dict[str, Tensor] = {}
        self._item_graph_now: Dict[str, Tuple[Tensor, Tensor, Tensor]] = {}

    def on_epoch_start(self, epoch: int) -> None:
        """Draw this epoch's pruned training graph (``edge_dropout > 0``)."""
        if self.edge_dropout <= 0:
            return
        self.pruned_conv = resample_pruned_conv(self.conv, self.train_edge_index,
                                                self.edge_dropout, reuse=self.pruned_conv)
        self._present_sum = {}  # renormalisation denominators of the old graph

    def _active_conv(self) -> LightGCNConv:
        """The graph propagated now: this epoch's pruned graph in training, else the full one."""
        if self.training and self.pruned_conv is not None:
            return self.pruned_conv
        return self.conv

    def auxiliary_parameters(self) -> Iterable[torch.nn.Parameter]:
        return self.club.parameters()

    def _x(self, m: str) -> Tensor:
        """:math:`\\hat{X}^m`, row-normalised features (cached per input set)."""
        x = self.feature(m)
        cached = self._x_norm.get(m)
        if cached is None or cached.device != x.device:
            cached = F.normalize(x.float(), dim=-1)
            self._x_norm[m] = cached
        return cached

    def _item_graph(self, m: str) -> Tuple[Tensor, Tensor, Tensor]:
        """``(edge_index, weight, rowptr)`` of :math:`S^m` (edges sorted by
        target, ``rowptr`` over targets) for the current inputs, cached per
        feature tensor and mask content: the trainer swaps train and
        evaluation masks, and a kNN search costs :math:`O(I^2 F)`. Resolved
        once per input set, so a forward pass never hashes the mask."""
        x, mask = self.feature(m), self.mask(m)
        now = self._item_graph_now.get(m)
        if now is not None and now[0].device == mask.device:
            return now
        key = (m, id(x), mask_key(mask))
        graph = self._knn_cache.get(key)
        if graph is None or graph[0].device != mask.device:
            ei, _ = self.item_knn_graph(x, self.knn_k, mask)
            rowptr = torch.zeros(self.num_items + 1, dtype=torch.long, device=ei.device)
            rowptr[1:] = torch.bincount(ei[1], minlength=self.num_items).cumsum(0)
            graph = (ei, normalize_edge_weight(ei, None, self.num_items, "sym"), rowptr)
            while len(self._knn_cache) >= 4 * len(self.modalities):  # oldest first
                self._knn_cache.pop(next(iter(self._knn_cache)))
            # the value holds `x` so that its id cannot be reused while cached
            self._knn_cache[key] = graph + (x,)
        self._item_graph_now[m] = graph[:3]
        return graph[:3]

    def _smoothed_items(self, m: str) -> Tensor:
        """:math:`(S^m)^{L_S} E_i` for every item."""
        ei, w, _ = self._item_graph(m)
        h = self.item_embedding.weight
        for _ in range(self.item_graph_layers):
            h = self.item_convs[m](h, ei, edge_weight=w)
        return h

    def _smoothed_items_at(self, m: str, items: Tensor) -> Tensor:
        """Rows ``items`` (sorted unique) of :math:`(S^m)^{L_S} E_i`, exactly,
        from their :math:`L_S`-hop neighbourhood only (embedding look-ups, so
        sampled steps keep sparse gradients)."""
        ei, w, rowptr = self._item_graph(m)
        src = ei[0]
        hops = [items]
        edges = []
        for _ in range(self.item_graph_layers):
            t = hops[-1]
            start, count = rowptr[t], rowptr[t + 1] - rowptr[t]
            row = torch.repeat_interleave(torch.arange(t.numel(), device=t.device), count)
            pos = torch.arange(row.numel(), device=t.device) - (count.cumsum(0) - count)[row]
            e = start[row] + pos
            nxt = torch.unique(src[e])
            edges.append((row, torch.searchsorted(nxt, src[e]), w[e]))
            hops.append(nxt)
        h = self.item_embedding(hops[-1])
        for (row, col, val), t in zip(reversed(edges), reversed(hops[:-1])):
            h = h.new_zeros(t.numel(), h.size(1)).index_add_(0, row, h[col] * val.unsqueeze(-1))
        return h

    def _real_mask(self, index: Optional[Tensor] = None) -> Tensor:
        """:math:`\\mathcal{M}^{real}` as ``[M, I]`` bool (columns ``index`` only)."""
        return torch.stack([self.mask(m) if index is None else self.mask(m)[index]
                            for m in self.modalities], 0)

    def _node_present_sum(self, m: str) -> Tensor:
        """Exact present weight of every node in modality ``m``'s graph: the
        renormalisation denominators of sampled steps (O(E) once per mask)."""
        mask = self.mask(m)
        cached = self._present_sum.get(m)
        if cached is None or cached.device != mask.device:
            users = torch.ones(self.num_users, dtype=torch.bool, device=mask.device)
            cached = present_weight_sum(self._active_conv().adj, torch.cat([users, mask]))
            self._present_sum[m] = cached
        return cached

    # --------------------------------------------------------------- forward
    def forward(self) -> RecOutput:
        e_u = self.user_embedding.weight
        e_u_hat = F.normalize(e_u, dim=-1)
        user_modal: Dict[str, Tensor] = {}
        item_modal: Dict[str, Tensor] = {}
        conv = self._active_conv()
        user_base, item_base = self._id_branch_full(e_u, conv)
        user_sum = torch.zeros_like(e_u)
        for m in self.modalities:
            mask = self.mask(m)
            h0 = F.normalize(self.projections[m](self._x(m)), dim=-1)
            h0 = torch.where(mask.unsqueeze(-1), h0, torch.zeros_like(h0))
            eu_m, ei_m = conv.propagate_layers((e_u_hat, h0), item_mask=mask)
            user_modal[m] = user_base + eu_m
            item_modal[m] = ei_m if item_base is None else item_base + ei_m
            if self.item_convs:
                item_modal[m] = item_modal[m] + self._smoothed_items(m)
            user_sum = user_sum + eu_m
        user = user_base + user_sum / len(self.modalities)
        item, extras = self._fuse(item_modal, self._real_mask()), {}
        if self.vib is not None:
            item, extras["z_mu"], extras["z_logvar"] = self.vib(item)
        return RecOutput(user=user, item=item, item_modal=item_modal, user_modal=user_modal,
                         extras=extras)

    def _id_branch_full(self, e_u: Tensor, conv: LightGCNConv) -> Tuple[Tensor, Optional[Tensor]]:
        """User and item parts every environment adds (see ``id_branch``)."""
        if self.item_embedding is None:
            return e_u, None
        e_i = self.item_embedding.weight
        if self.id_branch == "embedding":
            return e_u, e_i
        return conv.propagate_layers((e_u, e_i))  # IDs are never missing: no mask

    def sampled_forward(self, users: Tensor, items: Tensor) -> Tuple[RecOutput, Tensor, Tensor]:
        r""":meth:`forward` restricted to ``users`` and ``items`` (global ids,
        duplicates allowed), estimated from one neighbour sample of them
        (shared by the modality graphs); exact when every fan-out is at least
        the maximum degree. Needs ``fanout``.

        Returns:
            ``(out, user_ids, item_ids)``: the rows of ``out.user`` /
            ``out.user_modal`` are the sorted unique ``user_ids``, those of
            ``out.item`` / ``out.item_modal`` the sorted unique ``item_ids``.
        """
        if self.sampler is None:
            raise RuntimeError("sampled_forward: the model was built with fanout=None")
        U, d = self.num_users, self.embedding_size
        seeds = torch.cat([users.reshape(-1), items.reshape(-1) + U])
        conv = self._active_conv()
        sub = self.sampler.sample(conv.adj, seeds)
        is_user = sub.n_id < U
        uid, iid = is_user.nonzero().view(-1), (~is_user).nonzero().view(-1)
        g_user, g_item = sub.n_id[uid], sub.n_id[iid] - U
        d0 = sub.seeds  # sorted: the users, then the items
        n_su = int((d0 < U).sum())
        user_ids, item_ids = d0[:n_su], d0[n_su:] - U
        e_u = self.user_embedding(user_ids)
        e_u_hat = F.normalize(self.user_embedding(g_user), dim=-1)
        renorm = conv.renormalize
        user_modal: Dict[str, Tensor] = {}
        item_modal: Dict[str, Tensor] = {}
        user_base, item_base = e_u, None
        if self.id_branch == "embedding":
            item_base = self.item_embedding(item_ids)
        elif self.id_branch == "lightgcn":
            x = e_u.new_empty(sub.n_id.numel(), d)
            x.index_put_((uid,), self.user_embedding(g_user))
            x.index_put_((iid,), self.item_embedding(g_item))
            h = sub.propagate(x)
            user_base, item_base = h[:n_su], h[n_su:]
        user_sum = torch.zeros_like(e_u)
        for m in self.modalities:
            present = self.mask(m)[g_item]
            h0 = F.normalize(self.projections[m](self._x(m)[g_item]), dim=-1)
            h0 = torch.where(present.unsqueeze(-1), h0, torch.zeros_like(h0))
            x = e_u_hat.new_empty(sub.n_id.numel(), d)  # every row is written below
            x.index_put_((uid,), e_u_hat)
            x.index_put_((iid,), h0)
            node_mask = torch.ones(sub.n_id.numel(), dtype=torch.bool, device=x.device)
            node_mask[iid] = present
            h = sub.propagate(x, node_mask, row_sum=conv.row_sum if renorm else None,
                              present_sum=self._node_present_sum(m) if renorm else None)
            eu_m, ei_m = h[:n_su], h[n_su:]
            user_modal[m] = user_base + eu_m
            item_modal[m] = ei_m if item_base is None else item_base + ei_m
            if self.item_convs:
                item_modal[m] = item_modal[m] + self._smoothed_items_at(m, item_ids)
            user_sum = user_sum + eu_m
        user = user_base + user_sum / len(self.modalities)
        item, extras = self._fuse(item_modal, self._real_mask(item_ids)), {}
        if self.vib is not None:
            item, extras["z_mu"], extras["z_logvar"] = self.vib(item)
        out = RecOutput(user=user, item=item, item_modal=item_modal, user_modal=user_modal,
                        extras=extras)
        return out, user_ids, item_ids

    def _stack(self, item_modal: Dict[str, Tensor], index: Optional[Tensor] = None) -> Tensor:
        h = torch.stack([item_modal[m] if index is None else item_modal[m][index]
                         for m in self.modalities], 0)
        return h.detach() if self.detach_modal else h

    def _fuse(self, item_modal: Dict[str, Tensor], mask: Tensor,
              index: Optional[Tensor] = None) -> Tensor:
        h = self._stack(item_modal, index)
        # an item with no present modality keeps its collaborative read-out
        return self.fusion(h, mask, fallback=h.mean(0))

    def sample_missing_indicator(self, real: Tensor) -> Tensor:
        r"""A random :math:`\mathcal{M} \wedge \mathcal{M}^{real}` (``[M, N]``
        bool): each present modality is kept with probability ``1 - mask_prob``;
        an item that had at least one present modality keeps at least one."""
        keep = real & (torch.rand(real.shape, device=real.device) >= self.mask_prob)
        lost = real.any(0) & ~keep.any(0)
        if bool(lost.any()):
            # revive one present modality, uniformly at random
            score = torch.rand(real.shape, device=real.device).masked_fill(~real, -1.0)
            pick = score.argmax(0)
            cols = lost.nonzero().squeeze(-1)
            keep[pick[cols], cols] = True
        return keep

    # ------------------------------------------------------------------ loss
    def loss(self, users: Tensor, pos: Tensor, neg: Tensor,
             out: Optional[RecOutput] = None) -> Dict[str, Tensor]:
        item_ids: Optional[Tensor] = None  # row -> item id when `out` has batch rows only
        if out is None and self.sampler is not None and self.training:
            # sampled step: `out` holds the batch's (sorted unique) users and items
            out, user_ids, item_ids = self.sampled_forward(
                users, torch.cat([pos.reshape(-1), neg.reshape(-1)]))
            users = torch.searchsorted(user_ids, users)
            pos, neg = torch.searchsorted(item_ids, pos), torch.searchsorted(item_ids, neg)
        else:
            out = self.forward() if out is None else out
            with torch.no_grad():
                self.z_cache.copy_(out.item)
                self.z_cache_ready.fill_(True)
        u, p, n = out.user[users], out.item[pos], out.item[neg]
        terms: Dict[str, Tensor] = {"bpr_fused": bpr_loss(u, p, n)}

        # environments: one BPR risk per modality
        diffs: List[Tensor] = []
        for m in self.modalities:
            um, im = out.user_modal[m][users], out.item_modal[m]
            diffs.append((um * im[pos]).sum(-1) - (um * im[neg]).sum(-1))
        risks = torch.stack([bpr_risk(x) for x in diffs])
        if self.modal_bpr_coeff:
            terms["bpr_modal"] = self.modal_bpr_coeff * risks.sum()
        if self.use_irm and self.penalty_coeff and len(self.modalities) > 1:
            pen = self.invariance(diffs) if self.penalty_name == "irm" else self.invariance(risks)
            terms[self.penalty_name] = self.penalty_coeff * pen

        if self.use_ib:
            items = torch.unique(pos)
            items_g = items if item_ids is None else item_ids[items]
            real = self._real_mask(items_g)
            if self.use_masked_fusion and self.max_info_coeff and items.numel() > 1:
                views = [out.item[items]]
                for _ in range(self.num_masked_views):
                    zm = self._fuse(out.item_modal, self.sample_missing_indicator(real), items)
                    views.append(zm if self.vib is None else self.vib(zm)[0])
                terms["infonce"] = self.max_info_coeff * self.infonce.multi_view(views)
            if self.min_info_coeff and self.vib is not None:
                kl = self.vib.kl_divergence(out.extras["z_mu"][items],
                                            out.extras["z_logvar"][items])
                terms["kl"] = self.min_info_coeff * kl
            elif self.min_info_coeff:
                club = self._club_terms(out.item, items_g, real, upper_bound=True, rows=items)
                if club is not None:
                    terms["club"] = self.min_info_coeff * club

        if self.reg_coeff:
            terms["reg"] = self.reg_coeff * (u.pow(2).sum() + p.pow(2).sum()
                                             + n.pow(2).sum()) / (2 * users.numel())
        return terms

    def _club_terms(self, z: Tensor, items: Tensor, real: Tensor, upper_bound: bool,
                    rows: Optional[Tensor] = None) -> Optional[Tensor]:
        """Mean over modalities of the CLUB bound (or the estimators' loss) on
        the items of ``items`` whose modality is really present (``rows``: their
        rows in ``z`` when ``z`` does not cover all items)."""
        rows = items if rows is None else rows
        vals = []
        for k, m in enumerate(self.modalities):
            sel = real[k].nonzero().view(-1)
            if sel.numel() > self.club_batch:  # a uniform subset, not the lowest item ids
                sel = sel[torch.randperm(sel.numel(), device=sel.device)[: self.club_batch]]
            if sel.numel() < 2:  # nothing to contrast for this modality here
                continue
            x, zm = self._x(m)[items[sel]], z[rows[sel]]
            est = self.club[m]
            vals.append(est.mi_upper_bound(x, zm) if upper_bound else est.learning_loss(x, zm))
        return torch.stack(vals).mean() if vals else None

    def auxiliary_loss(self, users: Tensor, pos: Tensor, neg: Tensor) -> Optional[Tensor]:
        r"""Negative log-likelihood of every modality's :math:`q_m(Z \mid X^m)`
        on the batch items, with the (detached) :math:`Z` of the previous
        training step (a gradient-free forward before the first one)."""
        if not (self.use_ib and self.min_info_coeff and len(self.club)):
            return None
        items = torch.unique(pos)
        if self.sampler is not None and self.training:
            # sampled training keeps no Z of all items: a fresh sampled Z of the batch items
            with torch.no_grad():
                z = self.sampled_forward(pos.new_empty(0), items)[0].item
            return self._club_terms(z, items, self._real_mask(items), upper_bound=False,
                                    rows=torch.arange(items.numel(), device=items.device))
        if bool(self.z_cache_ready):
            z = self.z_cache
        else:
            with torch.no_grad():
                z = self.forward().item
        return self._club_terms(z, items, self._real_mask(items), upper_bound=False)

    @torch.no_grad()
    def embeddings_for_eval(self) -> Tuple[Tensor, Tensor]:
        out = self.forward()
        return out.user, out.item

    # ------------------------------------------------------------- new items
    supports_new_items = True  # see "New items" in the class docstring
    item_indexed = ("item_embedding", "z_cache")

    def on_items_added(self, old_num_items: int, n: int) -> None:
        # z_cache holds Z of the last training step; the grown rows were never
        # computed, so the estimators' next step takes a fresh forward pass
        self.z_cache_ready.fill_(False)


__all__ = ["I3MRec"]
