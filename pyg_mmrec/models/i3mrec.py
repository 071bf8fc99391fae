r"""I3-MRec: invariant learning with an information bottleneck for incomplete
modality recommendation."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.knn import check_knn_method, mask_key, normalize_edge_weight
from ..nn.edge_pruning import resample_pruned_conv
from ..nn.infonce import InfoNCE
from ..nn.invariance import IRMPenalty, VRExPenalty, bpr_risk
from ..nn.item_item_conv import ItemItemConv
from ..nn.lightgcn_conv import LightGCNConv
from ..nn.mi_estimators import CLUB, SigmoidCLUBSample
from ..nn.missing_aware_fusion import MissingAwareFusion
from ..nn.neighbor_sampling import LayerwiseSampler, present_weight_sum, sorted_unique
from ..nn.variational_bottleneck import VariationalBottleneck
from ._sampled import UserItemSample, cached_neighbourhood
from .base import Recommender, RecOutput, batch_l2, bpr_loss
from .i3mrec_options import I3MRecOptions, flat_defaults


@dataclass
class _Propagation:
    r"""One way of propagating the modality environments, read by
    :meth:`I3MRec._environments`: the full graph (every user and item) or one
    neighbour sample of a batch (sampled training).

    Attributes:
        user_base: what every :math:`E_U^m` adds (:math:`E_u` or :math:`C_U`),
            one row per output user.
        item_base: what every :math:`E_I^m` adds (``None``, :math:`E_i` or
            :math:`C_I`), one row per output item.
        propagate: ``(m, H0, present) -> (users, items)``: propagates the item
            inputs ``H0`` of modality ``m`` (rows: ``input_items``) with their
            presence mask, and returns :math:`\bar{E}_U^m` and
            :math:`\bar{E}_I^m` on the output rows.
        input_items: global ids of the items whose inputs are propagated
            (``None``: all items, in order).
        user_ids, item_ids: global ids of the output rows (``None``: all, in
            order).
    """

    user_base: Tensor
    item_base: Optional[Tensor]
    propagate: Callable[[str, Tensor, Tensor], Tuple[Tensor, Tensor]]
    input_items: Optional[Tensor] = None
    user_ids: Optional[Tensor] = None
    item_ids: Optional[Tensor] = None


class _EstimatorFit(torch.nn.Module):
    r"""The estimators' own optimiser of ``club_fit="per_epoch"`` (Adam and a
    reduce-on-plateau schedule of its learning rate), a module so that its
    state goes into the model's ``state_dict`` and a resumed run continues
    exactly.

    Args:
        params: the estimators' parameters.
        lr (float): the initial learning rate.
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float) -> None:
        super().__init__()
        self.optimizer = torch.optim.Adam(list(params), lr=lr)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, "min")

    def get_extra_state(self) -> Dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict()}

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        if not isinstance(state, dict) or set(state) != {"optimizer", "scheduler"}:
            raise ValueError("I3MRec: the checkpoint's estimator optimiser state is not a "
                             "{'optimizer', 'scheduler'} mapping")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


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

    where the InfoNCE is averaged over all ordered pairs of views (the
    paper's formula; the reference code weights their sum by 7/6, see below) and each
    modality's CLUB estimator :math:`q_m(Z \mid X^m)` is fitted on that
    modality's present items only, in alternation
    (:meth:`auxiliary_loss`). Items with no present modality fall back to the
    mean of their (collaborative) :math:`E_I^m`.

    **Differences from the reference code** (``github.com/cky332/7``). Each is
    a switch; ``--config reference`` (``configs/i3mrec_reference.yaml``) sets
    them all to the reference's side. Our defaults differ on purpose:

    ==================  ==========================  ==========================
    what                reference code              ours (default), why
    ==================  ==========================  ==========================
    InfoNCE weight      sum over ordered view       mean over pairs (the
    (infonce_scaling)   pairs + a sixth of it:      paper's formula): the
                        7x the mean (2 mod.),       weight does not depend on
                        49x (3 mod.)                :math:`M`
    views               every non-empty modality    :math:`Z` + one random mask
    (infonce_views)     subset, :math:`2^M-1`       :math:`\mathcal{M}` per
                                                    batch: cost linear in views
    InfoNCE/CLUB rows   every batch positive,       unique positives: no item
    (ib_items)          duplicates included         is its own negative
    missing input       zero feature row; its       masked: a missing modality
    (missing_input)     projection's bias is        sends nothing, is not
                        propagated and pooled       pooled (no fake content)
    CLUB estimator      sigmoid inputs, 32 hidden,  exact all-pairs vCLUB,
    (club_estimator)    log-var in (-1, 1), one     log-var in (-5, 5): lower
                        sampled negative            variance
    CLUB fit            10 steps/epoch, own Adam    one step per batch on the
    (club_fit,          1e-4 + plateau, on          pair it bounds,
    club_fit_pairs,     :math:`(X, W_mX)`; the      :math:`(X, Z)`; frozen in
    club_main_update)   main optimiser also steps   the main loss (a valid
                        it (to a smaller bound)     bound needs a fitted q)
    schedule            eval every 10 epochs, stop  train.yaml: eval every
    (train section)     after >20 epochs w/o gain,  epoch, patience 50,
                        ≤200 epochs, NDCG@10        Recall@20 on validation
                        selected *on test*          (never on test)
    test ranking        leaves out training items   also validation items
    (test_excludes_     only                        (not a hit once known)
    valid)
    masks (--missing)   seed 0 in every run; an     per-seed masks, train and
                        item loses one fixed        eval drawn independently
                        modality at train and test  (``:fixed`` reproduces it)
    ==================  ==========================  ==========================

    The rest is the same: V-REx as the unbiased variance of the per-modality
    BPR risks (weight 300 at Baby), their sum as :math:`\sum_m\mathcal{L}^m`,
    the L2 term on the batch's final :math:`E_U, Z` rows, the fusion
    (bias-free identity-initialised map, dropout 0.5, tanh) on detached
    :math:`E_I^m`, :math:`E_U = E_u + \frac{1}{M}\sum_m \bar{E}_U^m`. Ours
    fits every modality's estimator; the reference's own optimiser leaves out
    the third (TikTok's audio), which only the main optimiser moves.
    ``docs/i3mrec.md`` has the full table, the paper's side and the
    side-by-side reproduction recipe.

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
        options (I3MRecOptions, optional): every hyper-parameter, by group
            (:mod:`pyg_mmrec.models.i3mrec_options`); default: the defaults.
        **hparams: flat keys (those of ``pyg_mmrec/configs/i3mrec.yaml``),
            each replacing one field of ``options``:

        *propagation* (:class:`~pyg_mmrec.models.i3mrec_options.PropagationOptions`):

            embedding_size (int): :math:`d`. (reference: 64)
            n_layers (int): :math:`L` propagation layers per modality graph. (3)
            renormalize (bool): rescale each user's messages in modality
                :math:`m`'s graph to its full degree weight when some of its items
                miss :math:`m` (see :class:`~pyg_mmrec.nn.LightGCNConv`), so a
                user's magnitude does not depend on how many items are missing.
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

        *risks* (:class:`~pyg_mmrec.models.i3mrec_options.RiskOptions`):

            penalty (str): ``"vrex"`` or ``"irm"`` (IRMv1).
            penalty_coeff (float): :math:`\lambda_p`. (reference on Baby: 300)
            use_irm (bool): ablation switch: no invariance penalty.
            modal_bpr_coeff (float): weight of :math:`\sum_m \mathcal{L}^m`. (1)
            reg_coeff (float): :math:`\lambda_{reg}`, L2 on the batch's final
                user and item representations. (1e-3)

        *information bottleneck* (:class:`~pyg_mmrec.models.i3mrec_options.BottleneckOptions`):

            use_ib (bool): ablation switch: no InfoNCE and no CLUB (or KL).
            max_info_coeff (float): :math:`\lambda_{\max}` (InfoNCE). (1e-3)
            temperature (float): InfoNCE :math:`\tau`. (reference: 0.4)
            min_info (str): the bound of :math:`I(Z; X)`: ``"club"`` (CLUB,
                estimators trained in alternation) or ``"kl"`` (a variational
                alternative: :math:`Z` becomes a Gaussian code
                :math:`\mathcal{N}(\mu, \sigma^2)` of the fusion, sampled in
                training, and :math:`\mathrm{KL}(q(Z \mid X) \| \mathcal{N}(0, I))
                \geq I(Z; X)` is minimised; :math:`\mu` at inference).
            min_info_coeff (float): :math:`\lambda_{\min}` (CLUB). (1e-5)
            club_hidden (int): hidden width of the CLUB estimators.
            club_estimator, club_fit, club_fit_pairs, club_fit_steps, club_lr,
            club_main_update, infonce_scaling, infonce_views, ib_items: the
                reference code's choices as switches (see the differences above
                and :class:`~pyg_mmrec.models.i3mrec_options.BottleneckOptions`).
            club_batch (int): at most this many (present) items per modality,
                drawn uniformly from the batch's, feed each estimator per step
                (the estimators' cost is linear in it).

        *fusion and masked views* (:class:`~pyg_mmrec.models.i3mrec_options.FusionOptions`):

            fusion_mode (str): ``"mean"`` or ``"attention"``.
            fusion_transform (str): the fusion's map after pooling: ``"tanh"``
                (:math:`\tanh(W\bar{h})`, as the reference), ``"linear"``
                (:math:`W\bar{h}`: keeps the norms that carry popularity in
                LightGCN-like scores) or ``"none"``.
            fusion_dropout (float): dropout inside the fusion transform.
            detach_modal (bool): fuse ``E_I^m.detach()`` so that the fusion-level
                objectives train the fusion and :math:`E_u` only, and the modality
                branches are shaped by the environment risks alone (as in the
                reference code).
            use_masked_fusion (bool): ablation switch: no masked fusion
                :math:`Z^{\mathcal{M}}`, hence no InfoNCE.
            mask_prob (float): probability of dropping a present modality in
                :math:`\mathcal{M}`.
            num_masked_views (int): number of sampled masked fusions per batch.
            missing_input (str): ``"mask"`` or ``"zero_fill"`` (the reference:
                a missing modality is a zero feature row, pooled as a zero vector
                in the mean over all :math:`M`).

        *beyond the paper* (:class:`~pyg_mmrec.models.i3mrec_options.CollaborativeOptions`):

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
            knn_method (str): the neighbour search of those graphs: ``"exact"``
                or ``"faiss"`` (approximate, for large catalogues; see
                :func:`~pyg_mmrec.data.knn.knn_graph`).
            item_graph_layers (int): :math:`L_S \geq 1`. (FREEDOM: 1)
            edge_dropout (float): beyond the reference, FREEDOM's denoising: at
                every epoch, training propagates (the ID branch and every
                environment) over a fresh subgraph keeping a fraction :math:`1 -
                \rho` of the interactions, drawn with probability :math:`\propto
                1/\sqrt{d_u d_i}` (:func:`~pyg_mmrec.nn.edge_pruning
                .degree_sensitive_prune`) and renormalised; evaluation uses the
                full graph. ``0`` (the paper): no pruning.
    """

    #: where the configuration reads the flat keys without importing this module
    #: (its constructor takes them as ``**hparams``); must equal :meth:`hparam_defaults`
    hparams_from = "pyg_mmrec.models.i3mrec_options:flat_defaults"

    def __init__(self, num_users: int, num_items: int, train_edge_index: Tensor,
                 features: Optional[Dict[str, Tensor]] = None,
                 masks: Optional[Dict[str, Tensor]] = None, *,
                 options: Optional[I3MRecOptions] = None, **hparams: Any) -> None:
        super().__init__(num_users, num_items, train_edge_index, features, masks)
        if not self.modalities:
            raise ValueError("features: I3MRec needs at least one modality, got none")
        if options is not None and not isinstance(options, I3MRecOptions):
            raise ValueError(f"options: expected an I3MRecOptions, got {type(options).__name__}")
        self.options = opts = I3MRecOptions.from_flat(hparams, base=options)
        prop, risk, ib = opts.propagation, opts.risk, opts.bottleneck
        fusion, collab = opts.fusion, opts.collaborative
        self.knn_method = check_knn_method(collab.knn_method)  # faiss installed?
        d, n_layers = prop.embedding_size, prop.n_layers
        self.embedding_size, self.n_layers = d, n_layers  # as every model names them

        self.sampler = (None if prop.fanout is None
                        else LayerwiseSampler(prop.fanout, n_layers))
        # sampled steps touch only the sampled rows: sparse gradients (fanout)
        sparse = self.sampler is not None
        self.user_embedding = torch.nn.Embedding(num_users, d, sparse=sparse)  # E_u
        # optional item ID embeddings E_i, shared by every environment (see id_branch)
        self.item_embedding = (torch.nn.Embedding(num_items, d, sparse=sparse)
                               if collab.id_branch != "none" else None)
        self.projections = torch.nn.ModuleDict({  # W_m
            m: torch.nn.Linear(self._features[m].size(1), d) for m in self.modalities})
        # one parameter-free missing-aware propagation; the graph is shared by all m,
        # only the item inputs and presence masks differ
        self.conv = LightGCNConv(num_users, num_items, train_edge_index, num_layers=n_layers,
                                 renormalize=prop.renormalize)
        # this epoch's pruned training graph (edge_dropout > 0; None before the first epoch)
        self.pruned_conv: Optional[LightGCNConv] = None
        # S^m, one parameter-free layer per modality (each caches its own CSR)
        self.item_convs = torch.nn.ModuleDict({
            m: ItemItemConv(normalize="none") for m in self.modalities}
            if collab.item_graph == "knn" else {})
        self._knn_cache: Dict[tuple, tuple] = {}
        self._hoods: Dict[str, object] = {}  # m -> exact neighbourhood of S^m (sampled steps)
        self.fusion = MissingAwareFusion(d, mode=fusion.fusion_mode,
                                         transform=fusion.fusion_transform,
                                         dropout=fusion.fusion_dropout)
        self.invariance = IRMPenalty(risk=bpr_risk) if risk.penalty == "irm" else VRExPenalty()
        self.infonce = InfoNCE(temperature=ib.temperature)
        estimator = CLUB if ib.club_estimator == "vclub" else SigmoidCLUBSample
        self.club = torch.nn.ModuleDict({  # q_m(Z | X^m)
            m: estimator(self._features[m].size(1), d, hidden_dim=ib.club_hidden)
            for m in self.modalities} if ib.min_info == "club" else {})
        # club_fit="per_epoch": the estimators' own optimiser, stepped at epoch start
        self.club_fit = (_EstimatorFit(self.club.parameters(), ib.club_lr)
                         if len(self.club) and ib.club_fit == "per_epoch" else None)
        # variational alternative: a stochastic Z ~ N(mu, sigma^2) and its KL to N(0, I)
        self.vib = VariationalBottleneck(d, d) if ib.min_info == "kl" else None
        # Z of the last training step, for the estimators' step (saves a forward
        # pass per batch); a persistent buffer so that a resumed run is exact
        self.register_buffer("z_cache", torch.zeros(num_items, d))
        self.register_buffer("z_cache_ready", torch.zeros((), dtype=torch.bool))
        self._finish_init()

    @classmethod
    def hparam_defaults(cls) -> Dict[str, Any]:
        """Every flat hyper-parameter key with its default (the configuration
        checks ``--set`` values against these)."""
        return flat_defaults()

    @property
    def penalty_coeff(self) -> float:
        r""":math:`\lambda_p` (``options.risk.penalty_coeff``)."""
        return self.options.risk.penalty_coeff

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
        self._z_ready: Optional[bool] = False  # host copy of z_cache_ready

    def on_inputs_changed(self) -> None:
        # features/masks swapped (train vs test masks): drop what depends on them
        # (the kNN graphs stay in `_knn_cache`, keyed by mask content)
        self._x_norm: Dict[str, Tensor] = {}
        self._present_sum: Dict[str, Tensor] = {}
        self._item_graph_now: Dict[str, Tuple[Tensor, Tensor, Tensor]] = {}

    def on_epoch_start(self, epoch: int) -> None:
        """Draw this epoch's pruned training graph (``edge_dropout > 0``) and,
        with ``club_fit="per_epoch"``, fit the estimators (:meth:`fit_estimators`)."""
        rho = self.options.collaborative.edge_dropout
        if rho > 0:
            self.pruned_conv = resample_pruned_conv(self.conv, self.train_edge_index, rho,
                                                    reuse=self.pruned_conv)
            self._present_sum = {}  # renormalisation denominators of the old graph
        ib = self.options.bottleneck
        if self.club_fit is not None and ib.use_ib and ib.min_info_coeff:
            self.fit_estimators()

    def _club_targets(self, items: Optional[Tensor] = None) -> Dict[str, Tensor]:
        r"""What each estimator is fitted to predict (no gradient), on the
        rows ``items`` (``None``: all items): :math:`Z` (``club_fit_pairs="z"``;
        a fresh forward pass) or the modality's projection :math:`W_m X^m`."""
        with torch.no_grad():
            if self.options.bottleneck.club_fit_pairs == "projection":
                return {m: self.projections[m](self._x(m) if items is None
                                               else self._x(m)[items])
                        for m in self.modalities}
            z = self.forward().item
            z = z if items is None else z[items]
            return {m: z for m in self.modalities}

    def fit_estimators(self) -> float:
        r"""``club_fit="per_epoch"``: ``club_fit_steps`` steps of the
        estimators' own Adam; each step draws ``club_batch`` items uniformly
        (shared by the modalities; each estimator sees those of them whose
        modality is present) and minimises the sum of the estimators'
        :meth:`learning_loss`; then the plateau schedule sees the summed loss,
        which is returned."""
        if self.club_fit is None:
            raise RuntimeError("fit_estimators: the model was built without club_fit='per_epoch' "
                               "(or without CLUB estimators)")
        ib = self.options.bottleneck
        targets = self._club_targets()
        present = self._real_mask()
        total = 0.0
        for _ in range(ib.club_fit_steps):
            items = torch.randperm(self.num_items, device=present.device)[:ib.club_batch]
            terms = []
            for k, m in enumerate(self.modalities):
                sel = items[present[k, items]]
                if sel.numel() >= 2:
                    terms.append(self.club[m].learning_loss(self._x(m)[sel], targets[m][sel]))
            if not terms:
                continue
            loss = torch.stack(terms).sum()
            self.club_fit.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.club_fit.optimizer.step()
            total += float(loss.detach())
        self.club_fit.scheduler.step(total)
        return total

    def _active_conv(self) -> LightGCNConv:
        """The graph propagated now: this epoch's pruned graph in training, else the full one."""
        if self.training and self.pruned_conv is not None:
            return self.pruned_conv
        return self.conv

    def auxiliary_parameters(self) -> Iterable[torch.nn.Parameter]:
        # club_main_update: the main optimiser steps the estimators too
        if self.options.bottleneck.club_main_update:
            return []
        return self.club.parameters()

    def _x(self, m: str) -> Tensor:
        """:math:`\\hat{X}^m`, row-normalised features (cached per input set);
        with ``missing_input="zero_fill"`` the rows of missing entries are zero."""
        x = self.feature(m)
        cached = self._x_norm.get(m)
        if cached is None or cached.device != x.device:
            cached = F.normalize(x.float(), dim=-1)
            if self.options.fusion.missing_input == "zero_fill":
                cached = torch.where(self.mask(m).unsqueeze(-1), cached,
                                     torch.zeros((), dtype=cached.dtype, device=cached.device))
            self._x_norm[m] = cached
        return cached

    def _present(self, m: str) -> Tensor:
        """Which items take part in modality ``m`` (the propagation, the fusion,
        the estimators): the mask in use, or every item with
        ``missing_input="zero_fill"`` (a missing one then sends its zero
        feature's projection)."""
        mask = self.mask(m)
        if self.options.fusion.missing_input == "zero_fill":
            return torch.ones_like(mask)
        return mask

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
            ei, _ = self.item_knn_graph(x, self.options.collaborative.knn_k, mask)
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
        for _ in range(self.options.collaborative.item_graph_layers):
            h = self.item_convs[m](h, ei, edge_weight=w)
        return h

    def _smoothed_items_at(self, m: str, items: Tensor) -> Tensor:
        """Rows ``items`` (any order, duplicates allowed) of
        :math:`(S^m)^{L_S} E_i`, exactly, from their :math:`L_S`-hop
        neighbourhood only (embedding look-ups, so sampled steps keep sparse
        gradients; static shapes, see :class:`ItemNeighbourhood`)."""
        ei, w, _ = self._item_graph(m)
        adj = self.item_convs[m]._adjacency(ei, w, self.num_items, None)
        hood = cached_neighbourhood(self._hoods, m, adj,
                                    self.options.collaborative.item_graph_layers)
        return hood.rows(items, self.item_embedding)

    def _real_mask(self, index: Optional[Tensor] = None) -> Tensor:
        """:math:`\\mathcal{M}^{real}` as ``[M, I]`` bool (columns ``index`` only;
        all ``True`` with ``missing_input="zero_fill"``, see :meth:`_present`)."""
        return torch.stack([self._present(m) if index is None else self._present(m)[index]
                            for m in self.modalities], 0)

    def _node_present_sum(self, m: str) -> Tensor:
        """Exact present weight of every node in modality ``m``'s graph: the
        renormalisation denominators of sampled steps (O(E) once per mask)."""
        mask = self._present(m)
        cached = self._present_sum.get(m)
        if cached is None or cached.device != mask.device:
            users = torch.ones(self.num_users, dtype=torch.bool, device=mask.device)
            cached = present_weight_sum(self._active_conv().adj, torch.cat([users, mask]))
            self._present_sum[m] = cached
        return cached

    # --------------------------------------------------------------- forward
    def forward(self) -> RecOutput:
        return self._environments(self._full_graph())

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
        graph = self._sampled_graph(users, items)
        return self._environments(graph), graph.user_ids, graph.item_ids

    def _environments(self, graph: "_Propagation") -> RecOutput:
        r"""The modality environments and their fusion over ``graph`` (the
        full graph or one neighbour sample): for every modality :math:`m`,
        :math:`H^{(0)}` from :math:`W_m X^m` of the present items, propagated
        to :math:`\bar{E}_U^m, \bar{E}_I^m`; then :math:`E_U^m, E_I^m`, the
        user mean :math:`E_U` and the missing-aware fusion :math:`Z`."""
        user_base, item_base, rows = graph.user_base, graph.item_base, graph.input_items
        user_modal: Dict[str, Tensor] = {}
        item_modal: Dict[str, Tensor] = {}
        user_sum = torch.zeros_like(user_base)
        for m in self.modalities:
            present, x = self._present(m), self._x(m)
            if rows is not None:
                present, x = present[rows], x[rows]
            h0 = F.normalize(self.projections[m](x), dim=-1)
            h0 = torch.where(present.unsqueeze(-1), h0, torch.zeros_like(h0))
            eu_m, ei_m = graph.propagate(m, h0, present)
            user_modal[m] = user_base + eu_m
            item_modal[m] = ei_m if item_base is None else item_base + ei_m
            if self.item_convs:
                item_modal[m] = item_modal[m] + (
                    self._smoothed_items(m) if graph.item_ids is None
                    else self._smoothed_items_at(m, graph.item_ids))
            user_sum = user_sum + eu_m
        user = user_base + user_sum / len(self.modalities)
        item, extras = self._fuse(item_modal, self._real_mask(graph.item_ids)), {}
        if self.vib is not None:
            item, extras["z_mu"], extras["z_logvar"] = self.vib(item)
        return RecOutput(user=user, item=item, item_modal=item_modal, user_modal=user_modal,
                         extras=extras)

    def _full_graph(self) -> "_Propagation":
        """Every user and item, over this epoch's (pruned) training graph or,
        in evaluation, the full one."""
        e_u = self.user_embedding.weight
        e_u_hat = F.normalize(e_u, dim=-1)
        conv = self._active_conv()
        user_base, item_base = e_u, None  # the parts every environment adds (id_branch)
        if self.item_embedding is not None:
            e_i = self.item_embedding.weight
            if self.options.collaborative.id_branch == "embedding":
                item_base = e_i
            else:  # lightgcn: the IDs are never missing, so no mask
                user_base, item_base = conv.propagate_layers((e_u, e_i))

        def propagate(m: str, h0: Tensor, present: Tensor) -> Tuple[Tensor, Tensor]:
            return conv.propagate_layers((e_u_hat, h0), item_mask=present)

        return _Propagation(user_base, item_base, propagate)

    def _sampled_graph(self, users: Tensor, items: Tensor) -> "_Propagation":
        """The batch's ``users`` and ``items`` over one layer-wise neighbour
        sample of them (exact renormalisation per modality mask); static
        shapes, so nothing here waits for the device: every sampled node gets
        an input row (:class:`UserItemSample`), the modality inputs are read
        for every node and kept on the item rows."""
        conv = self._active_conv()
        s = UserItemSample(self.sampler, conv, users, items)
        n_su = s.num_seed_users
        user_ids, item_ids = s.user_ids, s.item_ids
        e_u = self.user_embedding(user_ids)
        e_u_hat = F.normalize(self.user_embedding(s.user_index), dim=-1)
        renorm = conv.renormalize
        is_user = s.is_user.unsqueeze(-1)
        user_base, item_base = e_u, None  # the parts every environment adds (id_branch)
        if self.options.collaborative.id_branch == "embedding":
            item_base = self.item_embedding(item_ids)
        elif self.options.collaborative.id_branch == "lightgcn":
            h = s.sub.propagate(s.gather(self.user_embedding, self.item_embedding))
            user_base, item_base = h[:n_su], h[n_su:]

        def propagate(m: str, h0: Tensor, present: Tensor) -> Tuple[Tensor, Tensor]:
            # h0, present: one row per sampled node (input_items), kept on the items
            x = torch.where(is_user, e_u_hat, h0.to(e_u_hat.dtype))
            h = s.sub.propagate(x, s.is_user | present,
                                row_sum=conv.row_sum if renorm else None,
                                present_sum=self._node_present_sum(m) if renorm else None)
            return h[:n_su], h[n_su:]

        return _Propagation(user_base, item_base, propagate, input_items=s.item_index,
                            user_ids=user_ids, item_ids=item_ids)

    def _stack(self, item_modal: Dict[str, Tensor], index: Optional[Tensor] = None) -> Tensor:
        h = torch.stack([item_modal[m] if index is None else item_modal[m][index]
                         for m in self.modalities], 0)
        return h.detach() if self.options.fusion.detach_modal else h

    def _fuse(self, item_modal: Dict[str, Tensor], mask: Tensor,
              index: Optional[Tensor] = None) -> Tensor:
        h = self._stack(item_modal, index)
        # an item with no present modality keeps its collaborative read-out
        return self.fusion(h, mask, fallback=h.mean(0))

    def sample_missing_indicator(self, real: Tensor) -> Tensor:
        r"""A random :math:`\mathcal{M} \wedge \mathcal{M}^{real}` (``[M, N]``
        bool): each present modality is kept with probability ``1 - mask_prob``;
        an item that had at least one present modality keeps at least one."""
        keep = real & (torch.rand(real.shape, device=real.device) >= self.options.fusion.mask_prob)
        lost = real.any(0) & ~keep.any(0)
        # revive one present modality, uniformly at random, where all were dropped
        # (drawn for every item: a branch on `lost.any()` would wait for the device)
        score = torch.rand(real.shape, device=real.device).masked_fill(~real, -1.0)
        pick = score.argmax(0)
        revive = torch.arange(real.size(0), device=real.device).unsqueeze(-1) == pick
        return keep | (revive & lost)

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
            self._z_ready = True
        u, p, n = out.user[users], out.item[pos], out.item[neg]
        terms: Dict[str, Tensor] = {"bpr_fused": bpr_loss(u, p, n)}
        terms.update(self._environment_terms(out, users, pos, neg))
        if self.options.bottleneck.use_ib:
            terms.update(self._bottleneck_terms(out, pos, item_ids))
        reg_coeff = self.options.risk.reg_coeff
        if reg_coeff:
            terms["reg"] = batch_l2(reg_coeff, u, p, n)
        return terms

    def _environment_terms(self, out: RecOutput, users: Tensor, pos: Tensor,
                           neg: Tensor) -> Dict[str, Tensor]:
        r"""Every modality is an environment with its own BPR risk
        :math:`\mathcal{L}^m`: ``bpr_modal`` (their weighted sum) and the
        invariance penalty across them (``vrex`` or ``irm``)."""
        opts = self.options.risk
        diffs: List[Tensor] = []  # per environment: score(pos) - score(neg)
        for m in self.modalities:
            um, im = out.user_modal[m][users], out.item_modal[m]
            diffs.append((um * im[pos]).sum(-1) - (um * im[neg]).sum(-1))
        risks = torch.stack([bpr_risk(x) for x in diffs])
        terms: Dict[str, Tensor] = {}
        if opts.modal_bpr_coeff:
            terms["bpr_modal"] = opts.modal_bpr_coeff * risks.sum()
        if opts.use_irm and opts.penalty_coeff and len(self.modalities) > 1:
            pen = self.invariance(diffs) if opts.penalty == "irm" else self.invariance(risks)
            terms[opts.penalty] = opts.penalty_coeff * pen
        return terms

    def _bottleneck_terms(self, out: RecOutput, pos: Tensor,
                          item_ids: Optional[Tensor]) -> Dict[str, Tensor]:
        r"""The information bottleneck on the batch's positive items:
        ``infonce`` (:math:`\max I`, between :math:`Z` and its masked views)
        and ``club`` or ``kl`` (:math:`\min I(Z; X)`). ``item_ids``: global id
        of each row of ``out`` when it holds a sampled batch's rows only."""
        opts = self.options.bottleneck
        # rows of `out`: every batch positive once, or all of them (the reference);
        # "once" with static shapes: the sorted rows, duplicates kept with weight 0
        if opts.ib_items == "unique":
            items, keep, _ = sorted_unique(pos)
        else:
            items, keep = pos.reshape(-1), None
        items_g = items if item_ids is None else item_ids[items]
        real = self._real_mask(items_g)
        terms: Dict[str, Tensor] = {}
        # (a single distinct row gives an InfoNCE of exactly 0)
        if self.options.fusion.use_masked_fusion and opts.max_info_coeff and items.numel() > 1:
            terms["infonce"] = opts.max_info_coeff * self.infonce.multi_view(
                self._masked_views(out, items, real), scaling=opts.infonce_scaling, weight=keep)
        if opts.min_info_coeff and self.vib is not None:
            kl = self.vib.kl_divergence(out.extras["z_mu"][items], out.extras["z_logvar"][items],
                                        mask=keep)
            terms["kl"] = opts.min_info_coeff * kl
        elif opts.min_info_coeff:
            club = self._club_terms(out.item, items_g, real, upper_bound=True, rows=items,
                                    keep=keep)
            if club is not None:
                terms["club"] = opts.min_info_coeff * club
        return terms

    def _masked_views(self, out: RecOutput, items: Tensor, real: Tensor) -> List[Tensor]:
        r"""The InfoNCE's views of the rows ``items`` (``real``: the items' real
        presence, ``[M, N]``): with ``infonce_views="sampled"``, :math:`Z` and
        ``num_masked_views`` fusions :math:`Z^{\mathcal{M}}` under sampled
        missing indicators; with ``"all_subsets"``, one fusion per non-empty
        subset of the modalities (:meth:`modality_subsets`), each AND-ed with
        ``real``."""
        if self.options.bottleneck.infonce_views == "all_subsets":
            keeps = [subset.unsqueeze(-1) & real for subset in self.modality_subsets(real.device)]
            views = []
        else:
            keeps = [self.sample_missing_indicator(real)
                     for _ in range(self.options.fusion.num_masked_views)]
            views = [out.item[items]]
        for keep in keeps:
            zm = self._pool(out.item_modal, keep, items)
            views.append(zm if self.vib is None else self.vib(zm)[0])
        return views

    def modality_subsets(self, device: Optional[torch.device] = None) -> Tensor:
        r"""Every non-empty subset of the :math:`M` modalities as a ``[2^M - 1,
        M]`` bool tensor, row :math:`s` holding the binary digits of
        :math:`s + 1` (bit :math:`k` = modality ``self.modalities[k]``); the
        last row is the full set."""
        M = len(self.modalities)
        codes = torch.arange(1, 2 ** M, device=device)
        return (codes.unsqueeze(-1) >> torch.arange(M, device=device)) & 1 == 1

    def _pool(self, item_modal: Dict[str, Tensor], keep: Tensor, index: Tensor) -> Tensor:
        r"""The fusion of the rows ``index`` keeping the modalities ``keep``
        (``[M, N]`` bool): the missing-aware fusion, or with
        ``missing_input="zero_fill"`` the fusion's map of
        :math:`\frac{1}{M}\sum_m \text{keep}_m E_I^m` (a dropped modality is a
        zero vector in the mean over all :math:`M`, as in the reference)."""
        if self.options.fusion.missing_input != "zero_fill":
            return self._fuse(item_modal, keep, index)
        h = self._stack(item_modal, index)
        pooled = (h * keep.unsqueeze(-1).to(h.dtype)).sum(0) / len(self.modalities)
        return self.fusion.project(pooled)

    def _club_terms(self, z: "Tensor | Dict[str, Tensor]", items: Tensor, real: Tensor,
                    upper_bound: bool, rows: Optional[Tensor] = None,
                    keep: Optional[Tensor] = None) -> Optional[Tensor]:
        """Mean over modalities of the CLUB bound (or the estimators' loss) on
        the items of ``items`` whose modality is really present (``rows``: their
        rows in ``z`` when ``z`` does not cover all items; ``z`` may be one
        target per modality; ``keep``: bool, the rows that count, e.g. first
        occurrences). Static shapes: the rows that do not count stay in with
        weight 0, and a modality with fewer than two counted rows adds nothing
        to the mean (0 when none has two)."""
        rows = items if rows is None else rows
        club_batch = self.options.bottleneck.club_batch
        vals, counted = [], []
        for k, m in enumerate(self.modalities):
            w = real[k] if keep is None else real[k] & keep
            n = w.numel()
            if n < 2:  # nothing to contrast here (a host number)
                continue
            sel = None
            if n > club_batch:  # a uniform subset of the counted rows, not the lowest ids
                score = torch.rand(n, device=w.device).masked_fill(~w, -1.0)
                sel = score.topk(club_batch).indices
                w = w[sel]
            x = self._x(m)[items if sel is None else items[sel]]
            zm = (z[m] if isinstance(z, dict) else z)[rows if sel is None else rows[sel]]
            est = self.club[m]
            if upper_bound:
                vals.append(est.mi_upper_bound(
                    x, zm, through_estimator=self.options.bottleneck.club_main_update, weight=w))
            else:
                vals.append(est.learning_loss(x, zm, weight=w))
            counted.append(w.sum() >= 2)
        if not vals:
            return None
        ok = torch.stack(counted)
        v = torch.stack(vals)
        v = torch.where(ok, v, torch.zeros_like(v))
        return v.sum() / ok.sum().clamp(min=1).to(v.dtype)

    def auxiliary_loss(self, users: Tensor, pos: Tensor, neg: Tensor) -> Optional[Tensor]:
        r"""Negative log-likelihood of every modality's :math:`q_m(Z \mid X^m)`
        on the batch items, with the (detached) :math:`Z` of the previous
        training step (a gradient-free forward before the first one)."""
        ib = self.options.bottleneck
        if not (ib.use_ib and ib.min_info_coeff and len(self.club)) or self.club_fit is not None:
            return None  # nothing to fit, or fitted at epoch start (club_fit="per_epoch")
        # every batch positive once (static shapes: duplicates kept with weight 0)
        items, keep, _ = sorted_unique(pos)
        arange = torch.arange(items.numel(), device=items.device)
        if ib.club_fit_pairs == "projection":
            # the estimators predict W_m X^m: no representation of Z is needed
            return self._club_terms(self._club_targets(items), items, self._real_mask(items),
                                    upper_bound=False, rows=arange, keep=keep)
        if self.sampler is not None and self.training:
            # sampled training keeps no Z of all items: a fresh sampled Z of the batch items
            # (its rows: the sorted unique items, padded as `items`)
            with torch.no_grad():
                z = self.sampled_forward(pos.new_empty(0), items)[0].item
            return self._club_terms(z, items, self._real_mask(items), upper_bound=False,
                                    rows=arange, keep=keep)
        if self._z_cache_ready():
            z = self.z_cache
        else:
            with torch.no_grad():
                z = self.forward().item
        return self._club_terms(z, items, self._real_mask(items), upper_bound=False, keep=keep)

    def _z_cache_ready(self) -> bool:
        """Whether :attr:`z_cache` holds a training step's :math:`Z`: the buffer
        (checkpointed) read once after construction or loading, then followed
        on the host (a read per step would wait for the device)."""
        if self._z_ready is None:
            self._z_ready = bool(self.z_cache_ready)
        return self._z_ready

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._z_ready = None  # the loaded buffer is read at the next use

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
        self._z_ready = False


__all__ = ["I3MRec", "I3MRecOptions"]
