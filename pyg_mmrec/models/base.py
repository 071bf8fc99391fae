"""The interface every recommender in :mod:`pyg_mmrec.models` implements.

The trainer, the evaluator and the MRdIB plug-in rely only on what is defined
here, so a new model needs nothing else to be trained, evaluated, or wrapped.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Tuple

import torch
from torch import Tensor


@dataclass
class RecOutput:
    r"""Representations produced by one full-graph forward pass.

    Attributes:
        user: final user representations :math:`E_U`, shape ``[num_users, d]``.
        item: final item representations :math:`E_I` (or the fused :math:`Z`),
            shape ``[num_items, d]``. Scores are always ``user @ item.T``.
        item_modal: per-modality item representations :math:`h_m`
            (``{modality: [num_items, d_m]}``); rows of items whose modality is
            missing are undefined and must be ignored via the presence mask.
        user_modal: per-modality user representations, when the model has them.
        extras: anything else a model's own loss needs from the forward pass.
        user_ids: ``None`` for a full output; for a *partial* one (a sampled
            training step, :meth:`Recommender.sampled_output`) the sorted
            unique global ids of the rows of ``user`` / ``user_modal``.
        item_ids: likewise for ``item`` / ``item_modal``.
    """

    user: Tensor
    item: Tensor
    item_modal: Dict[str, Tensor] = field(default_factory=dict)
    user_modal: Dict[str, Tensor] = field(default_factory=dict)
    extras: Dict[str, Tensor] = field(default_factory=dict)
    user_ids: Optional[Tensor] = None
    item_ids: Optional[Tensor] = None

    def user_rows(self, users: Tensor) -> Tensor:
        """Rows of :attr:`user` holding the global user ids ``users``."""
        return users if self.user_ids is None else torch.searchsorted(self.user_ids, users)

    def item_rows(self, items: Tensor) -> Tensor:
        """Rows of :attr:`item` holding the global item ids ``items``."""
        return items if self.item_ids is None else torch.searchsorted(self.item_ids, items)


def bpr_loss(user: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
    r"""Bayesian personalised ranking loss :math:`-\log\sigma(u^\top i^+ - u^\top i^-)`.

    ``neg`` may be ``[B, d]`` or ``[B, n_neg, d]`` (several negatives per positive).
    """
    pos_score = (user * pos).sum(-1)
    if neg.dim() == 3:
        neg_score = (user.unsqueeze(1) * neg).sum(-1)
        return -torch.nn.functional.logsigmoid(pos_score.unsqueeze(1) - neg_score).mean()
    neg_score = (user * neg).sum(-1)
    return -torch.nn.functional.logsigmoid(pos_score - neg_score).mean()


def batch_l2(weight: float, *rows: Tensor) -> Tensor:
    r"""The L2 term of a BPR batch, :math:`\frac{\lambda}{2B}\sum_x \lVert x \rVert^2`
    over the given row tensors (e.g. the batch's user, positive and negative
    representations); :math:`B` is the number of rows of the first one."""
    total = rows[0].pow(2).sum()
    for x in rows[1:]:
        total = total + x.pow(2).sum()
    return weight * total / (2 * rows[0].size(0))


def bpr_l2_terms(user: Tensor, pos: Tensor, neg: Tensor, reg_weight: float,
                 name: str = "bpr") -> Dict[str, Tensor]:
    r"""``{name: BPR, "reg": L2}`` of one batch's representations (the L2 term
    only when ``reg_weight`` is non-zero; see :func:`bpr_loss`, :func:`batch_l2`)."""
    terms = {name: bpr_loss(user, pos, neg)}
    if reg_weight:
        terms["reg"] = batch_l2(reg_weight, user, pos, neg)
    return terms


class Recommender(torch.nn.Module):
    r"""Base class of all recommenders.

    Constructor convention (every subclass)::

        Model(num_users, num_items, train_edge_index, features, masks, **hparams)

    * ``train_edge_index``: ``LongTensor [2, E]`` of (user, item) training pairs.
    * ``features``: ``{modality: FloatTensor [num_items, F_m]}`` (may be empty).
      Rows of missing entries are already *filled* (zeros by default) by the
      data layer: a model never sees the true feature of a missing entry.
    * ``masks``: ``{modality: BoolTensor [num_items]}``; ``False`` = missing.
    * ``hparams``: the keys of the model's YAML in ``pyg_mmrec/configs``.

    A subclass implements :meth:`forward` and usually :meth:`loss`; one that
    can represent an item from its content alone sets
    :attr:`supports_new_items` and documents what :meth:`add_items` gives a
    new item.
    """

    #: whether the model reads modality features (False for BPR/LightGCN)
    uses_features: bool = True

    #: the neighbour sampler of sampled training (``fanout``); ``None``: full graph
    sampler = None

    #: whether :meth:`add_items` can place items with no interactions from
    #: their content (False for ID-only models)
    supports_new_items: bool = False

    #: attributes indexed by item (an ``nn.Embedding``, a parameter or a buffer
    #: whose first dimension is the item): :meth:`add_items` appends zero rows
    item_indexed: Tuple[str, ...] = ("item_embedding",)

    def __init__(self, num_users: int, num_items: int, train_edge_index: Tensor,
                 features: Optional[Dict[str, Tensor]] = None,
                 masks: Optional[Dict[str, Tensor]] = None) -> None:
        super().__init__()
        self.num_users = int(num_users)
        self.num_items = int(num_items)
        # items that take part in item-item structures (kNN neighbours); items
        # appended by add_items read these structures but never enter them
        self.num_anchor_items = self.num_items
        self.register_buffer("train_edge_index", train_edge_index.long(), persistent=False)
        features = dict(features or {})
        self.modalities = list(features.keys())
        self._features: Dict[str, Tensor] = {}
        self._masks: Dict[str, Tensor] = {}
        self.set_modality_inputs(features, masks)

    # ------------------------------------------------------ shared construction
    #: set by :meth:`_finish_init`. :meth:`on_inputs_changed` also runs inside
    #: ``Recommender.__init__``, before a subclass has built anything: a hook
    #: that needs the subclass's modules returns early while this is False.
    _ready: bool = False

    def _init_id_embeddings(self, dim: int, user_dim: Optional[int] = None,
                            sparse: bool = False) -> None:
        r"""The ID embeddings :math:`E_U` (``user_embedding``, ``[num_users,
        user_dim or dim]``) and :math:`E_I` (``item_embedding``, ``[num_items,
        dim]``); ``sparse``: sparse gradients (sampled training)."""
        self.user_embedding = torch.nn.Embedding(self.num_users, user_dim or dim, sparse=sparse)
        self.item_embedding = torch.nn.Embedding(self.num_items, dim, sparse=sparse)

    def _init_sampler(self, fanout, num_layers: Optional[int]) -> bool:
        r"""Sets :attr:`sampler` from the ``fanout`` hyper-parameter (one
        positive int per user–item layer, any number when ``num_layers`` is
        ``None``, or ``None``); returns whether training is sampled (then ID
        embeddings should be sparse)."""
        from ..nn.neighbor_sampling import LayerwiseSampler, check_fanout
        if fanout is not None and num_layers is None:  # any length: one layer names the error
            check_fanout(fanout, len(fanout) if isinstance(fanout, (list, tuple)) else 1)
        self.sampler = None if fanout is None else LayerwiseSampler(fanout, num_layers)
        return self.sampler is not None

    def _reset_id_embeddings(self, init: Callable[[Tensor], Any] = torch.nn.init.xavier_uniform_
                             ) -> None:
        """Re-draw both ID embeddings with ``init`` (Xavier-uniform by default)."""
        init(self.user_embedding.weight)
        init(self.item_embedding.weight)

    def _finish_init(self) -> None:
        """The last line of a subclass constructor: draw the parameters
        (``reset_parameters``), then build what depends on the inputs
        (:meth:`on_inputs_changed`, now with every module in place)."""
        self.reset_parameters()
        self._ready = True
        self.on_inputs_changed()

    # ------------------------------------------------------------------ inputs
    def set_modality_inputs(self, features: Dict[str, Tensor],
                            masks: Optional[Dict[str, Tensor]] = None) -> None:
        """Swap the (filled) features and presence masks, e.g. train-time vs
        test-time masks in the ``fm`` protocol. Subclasses that cache derived
        structures (kNN graphs) override :meth:`on_inputs_changed`."""
        if set(features) != set(self.modalities):
            raise ValueError(f"features: expected modalities {self.modalities}, "
                             f"got {sorted(features)}")
        masks = dict(masks or {})
        for m, x in features.items():
            if x.dim() != 2 or x.size(0) != self.num_items:
                raise ValueError(f"features['{m}']: expected shape [{self.num_items}, F], "
                                 f"got {list(x.shape)}")
            finite = torch.isfinite(x).all(1)
            if not bool(finite.all()):  # 0 * NaN is NaN: a masked row would still leak
                rows = (~finite).nonzero().flatten()
                raise ValueError(f"features['{m}']: {rows.numel()} rows contain NaN or inf "
                                 f"(first rows: {rows[:5].tolist()}); store any finite "
                                 "placeholder for missing items and set their mask to False")
            mk = masks.get(m)
            if mk is None:
                mk = torch.ones(self.num_items, dtype=torch.bool, device=x.device)
            if mk.dtype != torch.bool or mk.shape != (self.num_items,):
                raise ValueError(f"masks['{m}']: expected a bool tensor of shape "
                                 f"[{self.num_items}], got {mk.dtype} {list(mk.shape)}")
            masks[m] = mk
        self._features = {m: features[m] for m in self.modalities}
        self._masks = {m: masks[m] for m in self.modalities}
        self.on_inputs_changed()

    def on_inputs_changed(self) -> None:  # pragma: no cover - hook
        """Called after :meth:`set_modality_inputs`; rebuild caches here."""

    def feature(self, modality: str) -> Tensor:
        x = self._features[modality]
        dev = self.train_edge_index.device
        return x if x.device == dev else x.to(dev)

    def mask(self, modality: str) -> Tensor:
        mk = self._masks[modality]
        dev = self.train_edge_index.device
        return mk if mk.device == dev else mk.to(dev)

    #: neighbour search of :meth:`item_knn_graph` (``"exact"`` or ``"faiss"``,
    #: see :func:`~pyg_mmrec.data.knn.knn_graph`); kNN models take it as the
    #: hyper-parameter ``knn_method``
    knn_method: str = "exact"

    def item_knn_graph(self, x: Tensor, k: int, mask: Optional[Tensor] = None,
                       ) -> Tuple[Tensor, Tensor]:
        r"""The top-:math:`k` cosine item–item graph of ``x`` (see
        :func:`~pyg_mmrec.data.knn.knn_graph`) in which neighbours are drawn
        from the anchor items only (the first :attr:`num_anchor_items`): the
        graph of the anchors is exactly the one built before any
        :meth:`add_items`, and appended items get their :math:`k` nearest
        anchors without entering any anchor's neighbour list. The search is
        :attr:`knn_method`."""
        from ..data.knn import knn_graph_anchored  # keeps `import models` light
        return knn_graph_anchored(x, k, mask, self.num_anchor_items,
                                  method=self.knn_method)

    # -------------------------------------------------------------- new items
    def _no_content_path(self) -> ValueError:
        name = type(self).__name__
        why = ("it reads no modality features" if not self.uses_features or not self.modalities
               else "it does not define how content alone represents an item")
        return ValueError(f"{name} has no content path: an item with no interactions has no "
                          f"representation ({why}, so its score would come from an untrained ID "
                          f"embedding); use a model that reads modality features")

    def check_new_items(self, features: Mapping[str, Tensor],
                        masks: Optional[Mapping[str, Tensor]] = None
                        ) -> Tuple[Dict[str, Tensor], Dict[str, Tensor], int]:
        r"""Validates the inputs of :meth:`add_items` without changing the
        model; returns ``(features, masks, n)`` with a mask for every modality
        (an omitted one means all present). Raises :class:`ValueError` naming
        the argument and what was expected."""
        if not self.supports_new_items or not self.modalities:
            raise self._no_content_path()
        if not isinstance(features, Mapping):
            raise ValueError(f"features: expected a dict modality -> tensor [n, F], got "
                             f"{type(features).__name__}")
        if set(features) != set(self.modalities):
            raise ValueError(f"features: expected exactly the modalities "
                             f"{sorted(self.modalities)}, got {sorted(features)}")
        n = None
        for m in self.modalities:
            x, old = features[m], self._features[m]
            if not isinstance(x, Tensor):
                raise ValueError(f"features['{m}']: expected a torch.Tensor [n, {old.size(1)}], "
                                 f"got {type(x).__name__}")
            if x.dim() != 2 or x.size(1) != old.size(1):
                raise ValueError(f"features['{m}']: expected shape [n, {old.size(1)}] (the width "
                                 f"the model was trained with), got {list(x.shape)}")
            if x.dtype != old.dtype:
                raise ValueError(f"features['{m}']: expected dtype {old.dtype} (as in training), "
                                 f"got {x.dtype}")
            if n is None:
                n = x.size(0)
            elif x.size(0) != n:
                raise ValueError(f"features['{m}']: expected {n} rows like "
                                 f"features['{self.modalities[0]}'], got {x.size(0)}")
            if not bool(torch.isfinite(x).all()):
                raise ValueError(f"features['{m}']: expected finite values (fill missing rows as "
                                 f"in training and set their mask to False), got NaN or inf")
        masks = {} if masks is None else masks
        if not isinstance(masks, Mapping):
            raise ValueError(f"masks: expected a dict modality -> bool tensor [n] or None, got "
                             f"{type(masks).__name__}")
        unknown = set(masks) - set(self.modalities)
        if unknown:
            raise ValueError(f"masks: unknown modalities {sorted(unknown)}; expected a subset of "
                             f"{sorted(self.modalities)}")
        out_masks = {}
        for m in self.modalities:
            mk = masks.get(m)
            if mk is None:
                mk = torch.ones(n, dtype=torch.bool)
            if not isinstance(mk, Tensor) or mk.dtype != torch.bool or mk.shape != (n,):
                got = (f"{mk.dtype} {list(mk.shape)}" if isinstance(mk, Tensor)
                       else type(mk).__name__)
                raise ValueError(f"masks['{m}']: expected a bool tensor of shape [{n}] "
                                 f"(True = present), got {got}")
            out_masks[m] = mk
        return {m: features[m] for m in self.modalities}, out_masks, int(n)

    @torch.no_grad()
    def add_items(self, features: Mapping[str, Tensor],
                  masks: Optional[Mapping[str, Tensor]] = None) -> Tensor:
        r"""Grows the model in place by :math:`n` items that have no
        interactions, placed by their content; returns their indices
        ``num_items_before + arange(n)``.

        The rows are given as in training: ``features[m]`` holds the filled
        features of modality :math:`m` (every modality of the model, same width
        and dtype), ``masks[m]`` says which are present (``False`` = missing,
        masked exactly as in training; an omitted modality is present for every
        new item). Afterwards :meth:`forward` and :meth:`embeddings_for_eval`
        cover the old and the new items; the training graph is unchanged.

        What it does for every model: the item-indexed tables
        (:attr:`item_indexed`, e.g. ID embeddings) get **zero rows** for the new
        items; every user–item :class:`~pyg_mmrec.nn.LightGCNConv` gains the
        new items as isolated nodes (old nodes keep their edges and weights);
        the features and masks are appended and :meth:`on_inputs_changed`
        rebuilds what depends on them, where item–item kNN graphs
        (:meth:`item_knn_graph`) give the new items neighbours among the anchor
        items only. Old items' representations therefore stay unchanged unless
        a model documents otherwise (its class docstring, "New items").
        Cost: models with kNN item graphs rebuild them over the grown
        catalogue, as at construction (:math:`O(I^2 F)`, or about
        :math:`O(I^{1.5} F)` with ``knn_method="faiss"``; the anchors' part
        comes out identical); the others only append rows.

        Args:
            features (dict): ``{modality: Tensor [n, F_m]}``.
            masks (dict, optional): ``{modality: BoolTensor [n]}``.

        Shapes:
            - **output:** :math:`(n)` ``LongTensor`` of new item indices.

        Raises:
            ValueError: for a model without a content path (ID-only models) and
                for inputs of the wrong modalities, width, dtype or mask, or
                with NaN / inf.
        """
        features, masks, n = self.check_new_items(features, masks)
        dev = self.train_edge_index.device
        old = self.num_items
        if n == 0:
            return torch.empty(0, dtype=torch.long, device=dev)
        grow_item_rows(self, self.item_indexed, n)
        for conv in list(self.modules()):
            if _is_user_item_conv(conv) and conv.num_items == old:
                grow_user_item_conv(conv, n)
        self.num_items = old + n
        self.on_items_added(old, n)
        feats = {m: torch.cat([self._features[m], features[m].to(self._features[m].device)])
                 for m in self.modalities}
        new_masks = {m: torch.cat([self._masks[m], masks[m].to(self._masks[m].device)])
                     for m in self.modalities}
        self.set_modality_inputs(feats, new_masks)
        return torch.arange(old, old + n, device=dev)

    def on_items_added(self, old_num_items: int, n: int) -> None:  # pragma: no cover - hook
        """Called by :meth:`add_items` after the generic growth and before the
        new inputs are set; grow or drop model-specific item-indexed state here."""

    # ------------------------------------------------------------- interface
    def forward(self) -> RecOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def sampled_output(self, users: Tensor, items: Tensor) -> RecOutput:  # pragma: no cover
        r"""The partial :class:`RecOutput` of a sampled training step: the rows
        of the sorted unique ``users`` and ``items`` (global ids, any shape,
        duplicates allowed), estimated from one neighbour sample of them
        (unbiased, exact when every fan-out is at least the maximum degree);
        ``user_ids`` / ``item_ids`` name the rows. Models with ``fanout``
        implement it."""
        raise NotImplementedError(f"{type(self).__name__} has no partial sampled output (its "
                                  f"sampled training, if any, lives in its own loss)")

    def _batch_rows_output(self, users: Tensor, items: Tensor) -> RecOutput:
        r"""The partial output of a graph-free model: :meth:`forward`'s
        rows of the sorted unique ``users`` and ``items`` (padded to the
        batch's sizes, see :func:`~pyg_mmrec.nn.neighbor_sampling.sorted_unique`),
        read directly (ID embeddings by look-up, so their gradients stay
        sparse)."""
        from ..nn.neighbor_sampling import sorted_unique  # keeps `import models` light
        # static shapes (no host read): the sorted distinct ids, then padding rows
        # repeating the largest, which `user_rows` / `item_rows` never return
        user_ids, item_ids = sorted_unique(users)[0], sorted_unique(items)[0]
        item, item_modal = self.item_rows_of(item_ids)
        return RecOutput(user=self.user_embedding(user_ids), item=item, item_modal=item_modal,
                         user_ids=user_ids, item_ids=item_ids)

    def training_output(self, users: Tensor, pos: Tensor, neg: Tensor) -> RecOutput:
        r"""What :meth:`loss` reads when no ``out`` is given: the sampled
        output of the batch in sampled training (``fanout`` set, training
        mode), else :meth:`forward`."""
        if self.sampler is not None and self.training:
            return self.sampled_output(users, torch.cat([pos.reshape(-1), neg.reshape(-1)]))
        return self.forward()

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor,
             out: Optional[RecOutput] = None) -> Dict[str, Tensor]:
        """Named, already-weighted loss terms for one BPR batch (global ids);
        the trainer sums them. ``out`` (full or partial) lets a wrapper
        (MRdIB) share one forward pass.
        Default: BPR on :attr:`RecOutput.user`/``item`` + L2 on the batch."""
        out = self.training_output(users, pos, neg) if out is None else out
        u, p, n = out.user[out.user_rows(users)], out.item[out.item_rows(pos)], \
            out.item[out.item_rows(neg)]
        return bpr_l2_terms(u, p, n, getattr(self, "reg_weight", 0.0))

    @torch.no_grad()
    def embeddings_for_eval(self) -> tuple[Tensor, Tensor]:
        """``(user [U, d], item [I, d])`` used for full ranking (scores = dot)."""
        out = self.forward()
        return out.user, out.item

    def auxiliary_parameters(self) -> Iterable[torch.nn.Parameter]:
        """Parameters of side estimators (e.g. CLUB) trained by their own optimiser."""
        return []

    def auxiliary_loss(self, users: Tensor, pos: Tensor, neg: Tensor) -> Optional[Tensor]:
        """Loss of the side estimators, minimised in alternation with :meth:`loss`."""
        return None

    def on_epoch_start(self, epoch: int) -> None:  # pragma: no cover - hook
        """Called by the trainer at the start of every epoch."""


def _is_user_item_conv(module: torch.nn.Module) -> bool:
    from ..nn.lightgcn_conv import LightGCNConv
    return isinstance(module, LightGCNConv)


@torch.no_grad()
def grow_user_item_conv(conv: torch.nn.Module, n: int) -> None:
    r"""Appends ``n`` isolated item nodes to a
    :class:`~pyg_mmrec.nn.LightGCNConv` (a full or a pruned graph): the
    ``(user, item)`` pairs are read back from its CSR and the graph rebuilt
    with the larger item count, so old nodes keep their edges and weights
    (items are numbered after users, so no node is renumbered)."""
    U = conv.num_users
    e_u = int(conv.rowptr[U])  # the user rows: targets 0..U-1, sources U..U+I-1
    users = torch.repeat_interleave(torch.arange(U, device=conv.rowptr.device),
                                    conv.rowptr[1:U + 1] - conv.rowptr[:U])
    pairs = torch.stack([users, conv.col[:e_u] - U])
    conv.num_items = conv.num_items + int(n)
    conv.set_graph(pairs)


@torch.no_grad()
def grow_item_rows(module: torch.nn.Module, names: Iterable[str], n: int) -> None:
    r"""Appends ``n`` zero rows to the item-indexed attributes ``names`` of
    ``module`` (``nn.Embedding``, parameter or buffer; ``None`` is skipped).
    Parameters keep their identity, so references to them stay valid (an
    optimiser's state must be grown with :func:`grow_optimizer_state`)."""
    for name in names:
        obj = getattr(module, name, None)
        if obj is None:
            continue
        if isinstance(obj, torch.nn.Embedding):
            w = obj.weight
            w.data = torch.cat([w.data, w.new_zeros(n, w.size(1))])
            obj.num_embeddings = obj.weight.size(0)
        elif isinstance(obj, Tensor):
            grown = torch.cat([obj.data, obj.new_zeros(n, *obj.shape[1:])])
            if isinstance(obj, torch.nn.Parameter):
                obj.data = grown
            else:
                setattr(module, name, grown)  # a registered buffer stays registered
        else:
            raise TypeError(f"item_indexed: {type(module).__name__}.{name} is a "
                            f"{type(obj).__name__}, expected an Embedding, a parameter or a buffer")


@torch.no_grad()
def grow_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    r"""After :meth:`Recommender.add_items`, appends zero rows to the
    per-parameter state (e.g. Adam's moments) of every parameter that grew,
    so training can continue with the same optimiser: the new rows start as
    if never updated."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p)
            if not state:
                continue
            for key, v in list(state.items()):
                if (isinstance(v, Tensor) and v.dim() == p.dim() and v.dim() >= 1
                        and v.shape[1:] == p.shape[1:] and v.size(0) < p.size(0)):
                    state[key] = torch.cat([v, v.new_zeros(p.size(0) - v.size(0), *v.shape[1:])])
