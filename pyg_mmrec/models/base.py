"""The interface every recommender in :mod:`pyg_mmrec.models` implements.

The trainer, the evaluator and the MRdIB plug-in rely only on what is defined
here, so a new model needs nothing else to be trained, evaluated, or wrapped.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Optional

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
    """

    user: Tensor
    item: Tensor
    item_modal: Dict[str, Tensor] = field(default_factory=dict)
    user_modal: Dict[str, Tensor] = field(default_factory=dict)
    extras: Dict[str, Tensor] = field(default_factory=dict)


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

    A subclass implements :meth:`forward` and usually :meth:`loss`.
    """

    #: whether the model reads modality features (False for BPR/LightGCN)
    uses_features: bool = True

    def __init__(self, num_users: int, num_items: int, train_edge_index: Tensor,
                 features: Optional[Dict[str, Tensor]] = None,
                 masks: Optional[Dict[str, Tensor]] = None) -> None:
        super().__init__()
        self.num_users = int(num_users)
        self.num_items = int(num_items)
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

    # ------------------------------------------------------------- interface
    def forward(self) -> RecOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor,
             out: Optional[RecOutput] = None) -> Dict[str, Tensor]:
        """Named, already-weighted loss terms for one BPR batch; the trainer
        sums them. ``out`` lets a wrapper (MRdIB) share one forward pass.
        Default: BPR on :attr:`RecOutput.user`/``item`` + L2 on the batch."""
        out = self.forward() if out is None else out
        u, p, n = out.user[users], out.item[pos], out.item[neg]
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
