r"""Seeded, savable missing-modality protocols and feature fills.

A protocol turns a dataset into item :math:`\times` modality presence masks
:math:`M^{train}` and :math:`M^{eval}` (``True`` = present). The simulated
masks are always AND-ed with the dataset's natural masks, drawn from a
generator seeded by ``(seed, protocol, stream)`` and can be saved to / loaded
from ``.npy`` files, so that two runs and two models see exactly the same
missing entries. :math:`M^{eval}` is used for *both* validation and test, so
model selection sees the same conditions as the final test.

Protocols (``spec`` strings, parsed by :func:`parse_missing_spec`):

``"natural"``
    the masks shipped with the data (e.g. ``image_mask.npy``) at train and eval.

``"i3mrec:<mode>:<rate>[:key=value...]"``
    the protocol of I3-MRec (`Chen et al., "I3-MRec: Invariant Learning with
    Information Bottleneck for Incomplete Modality Recommendation"
    <https://arxiv.org/abs/2508.04247>`_): a share ``rate`` of the *training
    items* (items with a training interaction) and a share ``test_share``
    (default 0.5) of the *evaluation items* each lose exactly ``drop``
    (default 1) uniformly chosen modalities. ``mode`` is ``ff`` (full train,
    full eval), ``fm`` (full train, missing eval) or ``mm`` (missing train,
    missing eval). Evaluation items are, by default, the items that occur in
    the validation or test split (``eval_items=valid+test``; use
    ``eval_items=test`` for the paper's literal "test items", or ``all``):
    the paper masks test items, and including validation items makes model
    selection face the same distribution of missing entries as the test. The
    eval mask is drawn from its own random stream, so ``fm`` and ``mm`` with
    the same seed share the identical eval mask and differ only in training.

``"dgmrec[:<share>]"``
    the protocol of DGMRec ("Disentangling and Generating Modalities for
    Recommendation in Missing Modality Scenarios", SIGIR 2025): a share of all items (default 2/3)
    is missing; among them 1/4 lose text, 1/4 lose image and 1/2 lose both,
    so 1/3 of items have 0, 1 and 2 modalities missing. For :math:`|\mathcal M|`
    modalities this generalises as: the number of lost modalities is spread
    evenly over :math:`1..|\mathcal M|`; with one lost modality, the modality
    cycles evenly over :math:`\mathcal M`; otherwise the lost subset is uniform.
    For two modalities this is exactly the paper's split. Same mask at train
    and eval.

``"entry:<rate>"``
    MoDiCF style (modality-diffused counterfactual framework, WWW 2025): a
    share ``rate`` of *all* :math:`I\times|\mathcal M|` (item, modality)
    entries is dropped, never the item's one *protected* modality (chosen
    uniformly among its naturally present ones), so ``rate`` is at most
    :math:`(|\mathcal M|-1)/|\mathcal M|`. Same mask at train and eval.

Extra ``key=value`` fields override protocol parameters (``test_share``,
``drop``, ``eval_items``), e.g. ``"i3mrec:mm:0.3:test_share=0.3"``.

``"i3mrec:<mode>:<rate>:fixed"`` draws the masks as the I3-MRec reference code
does: the same masks in every run (drawn with seed 0, whatever the run's
seed), and each item has one lost set of ``drop`` modalities, drawn once, that
it loses both at training time (if among the ``rate`` share of training items)
and at evaluation time (if among the ``test_share`` of evaluation items); the
two item selections are independent. Without ``fixed`` every run's seed draws
its own masks and the lost modalities of training and evaluation are drawn
independently.
"""
from __future__ import annotations

import json
import os
import os.path as osp
import tempfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from .missing_spec import (EVAL_ITEMS, I3MREC_MODES, PROTOCOLS, MissingSpec,  # noqa: F401
                           parse_missing_spec)
from .sampler import epoch_generator

EDGE_TYPE = ("user", "rates", "item")
_STREAM = {"train": 1, "eval": 2, "same": 3}
_PROTO_ID = {p: j for j, p in enumerate(PROTOCOLS)}


@dataclass
class MaskSet:
    r"""Train-time and evaluation-time presence masks :math:`M` per modality.

    Attributes:
        train: ``{modality: bool [I]}`` used while training.
        eval: ``{modality: bool [I]}`` used for validation *and* test.
        spec: the protocol string that produced the masks.
        seed: the seed used.
    """

    train: Dict[str, Tensor]
    eval: Dict[str, Tensor]
    spec: str = "natural"
    seed: int = 0
    meta: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if set(self.train) != set(self.eval):
            raise ValueError(f"MaskSet: train modalities {sorted(self.train)} differ from eval "
                             f"modalities {sorted(self.eval)}")
        sizes = {t.shape for t in list(self.train.values()) + list(self.eval.values())}
        if len(sizes) > 1:
            raise ValueError(f"MaskSet: masks have different shapes {sorted(sizes)}")
        for which in ("train", "eval"):
            for m, t in getattr(self, which).items():
                if t.dtype != torch.bool or t.dim() != 1:
                    raise ValueError(f"MaskSet.{which}['{m}']: expected a 1-D bool tensor, got "
                                     f"{t.dtype} {list(t.shape)}")

    @property
    def modalities(self) -> List[str]:
        return sorted(self.train)

    def missing_counts(self) -> Dict[str, Dict[str, int]]:
        """``{'train': {m: #missing}, 'eval': {m: #missing}}``."""
        return {w: {m: int((~t).sum()) for m, t in getattr(self, w).items()}
                for w in ("train", "eval")}

    def save(self, folder: str) -> None:
        r"""Writes ``train_<m>.npy``, ``eval_<m>.npy`` and ``masks.json`` into
        ``folder`` (each file atomically: temp file + rename)."""
        os.makedirs(folder, exist_ok=True)
        for which in ("train", "eval"):
            for m, t in getattr(self, which).items():
                _atomic_save_npy(osp.join(folder, f"{which}_{m}.npy"), t.cpu().numpy())
        meta = {"spec": self.spec, "seed": self.seed, "modalities": self.modalities,
                "num_items": int(next(iter(self.train.values())).numel()) if self.train else 0,
                **{k: v for k, v in self.meta.items() if _jsonable(v)}}
        _atomic_write(osp.join(folder, "masks.json"), json.dumps(meta, indent=1).encode())

    @classmethod
    def load(cls, folder: str) -> "MaskSet":
        r"""Reads a folder written by :meth:`save` (validating shapes and dtypes)."""
        mpath = osp.join(folder, "masks.json")
        if not osp.isfile(mpath):
            raise FileNotFoundError(f"MaskSet.load: '{mpath}' not found (not a saved MaskSet)")
        with open(mpath) as f:
            meta = json.load(f)
        out: Dict[str, Dict[str, Tensor]] = {"train": {}, "eval": {}}
        for which in out:
            for m in meta["modalities"]:
                p = osp.join(folder, f"{which}_{m}.npy")
                if not osp.isfile(p):
                    raise FileNotFoundError(f"MaskSet.load: '{p}' not found")
                a = np.load(p, allow_pickle=False)
                if a.dtype != np.bool_ or a.shape != (meta["num_items"],):
                    raise ValueError(f"MaskSet.load: '{p}' must be bool of shape "
                                     f"({meta['num_items']},), got {a.dtype} {a.shape}")
                out[which][m] = torch.from_numpy(a.copy())
        extra = {k: v for k, v in meta.items()
                 if k not in ("spec", "seed", "modalities", "num_items")}
        return cls(out["train"], out["eval"], meta["spec"], int(meta["seed"]), extra)

    def __repr__(self) -> str:
        c = self.missing_counts()
        return (f"MaskSet(spec={self.spec!r}, seed={self.seed}, missing train={c['train']}, "
                f"eval={c['eval']})")


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except TypeError:
        return False


def _atomic_write(path: str, payload: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", dir=osp.dirname(path) or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


def _atomic_save_npy(path: str, arr: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".npy", dir=osp.dirname(path) or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, arr, allow_pickle=False)
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


# ---------------------------------------------------------------- protocols
def _unpack(data: Any) -> Tuple[int, List[str], Dict[str, Tensor], Any]:
    if hasattr(data, "__getitem__") and hasattr(data, "len") and not hasattr(data, "node_types"):
        data = data[0]  # an MMRecDataset
    if not hasattr(data, "node_types") or "item" not in data.node_types:
        raise ValueError("make_masks: 'data' must be an MMRecDataset or its HeteroData "
                         "(with an 'item' node type)")
    num_items = int(data["item"].num_nodes)
    modalities = list(getattr(data, "modalities", []))
    natural = {}
    for m in modalities:
        mk = data["item"].get(f"{m}_mask")
        natural[m] = (mk.bool().cpu() if mk is not None
                      else torch.ones(num_items, dtype=torch.bool))
    return num_items, modalities, natural, data


def _drop_k(items: Tensor, num_mod: int, k: int, g: torch.Generator) -> Tensor:
    r"""``bool [len(items), num_mod]``: True where item loses that modality;
    each row loses exactly ``k`` uniformly chosen modalities."""
    if k > num_mod:
        raise ValueError(f"cannot drop {k} modalities per item with only {num_mod} modalities")
    r = torch.rand(items.numel(), num_mod, generator=g)
    idx = r.argsort(dim=1)[:, :k]
    lost = torch.zeros(items.numel(), num_mod, dtype=torch.bool)
    lost.scatter_(1, idx, True)
    return lost


def _choose(candidates: Tensor, share: float, g: torch.Generator) -> Tensor:
    n = int(round(share * candidates.numel()))
    return candidates[torch.randperm(candidates.numel(), generator=g)[:n]]


def _items_of(data: Any, which: str, num_items: int) -> Tensor:
    st = data[EDGE_TYPE]
    seen = torch.zeros(num_items, dtype=torch.bool)
    names = {"train": ["edge_index"], "test": ["test_edge_index"],
             "valid+test": ["valid_edge_index", "test_edge_index"]}[which]
    for n in names:
        ei = st.get(n)
        if ei is None:
            raise ValueError(f"make_masks: data[{EDGE_TYPE}] has no '{n}'")
        seen[ei[1].cpu()] = True
    return seen.nonzero().view(-1)


def _one_modality_loss(items: Tensor, share: float, drop: int, num_items: int,
                       modalities: List[str], g: torch.Generator) -> Dict[str, Tensor]:
    chosen = _choose(items, share, g)
    lost = _drop_k(chosen, len(modalities), drop, g)
    out = {}
    for j, m in enumerate(modalities):
        keep = torch.ones(num_items, dtype=torch.bool)
        keep[chosen[lost[:, j]]] = False
        out[m] = keep
    return out


def _fixed_loss(items: Tensor, share: float, lost_by_item: Tensor, num_items: int,
                modalities: List[str], g: torch.Generator) -> Dict[str, Tensor]:
    r"""A share of ``items`` loses, each, its row of ``lost_by_item`` (``[I, M]``
    bool: the modalities an item loses whenever it is chosen)."""
    chosen = _choose(items, share, g)
    out = {}
    for j, m in enumerate(modalities):
        keep = torch.ones(num_items, dtype=torch.bool)
        keep[chosen[lost_by_item[chosen, j]]] = False
        out[m] = keep
    return out


def _dgmrec(share: float, num_items: int, modalities: List[str], g: torch.Generator
            ) -> Dict[str, Tensor]:
    M = len(modalities)
    missing = _choose(torch.arange(num_items), share, g)
    # split the (shuffled) missing items into M near-equal groups by the number
    # of lost modalities n = 1..M (for M=2: 1/2 lose one, 1/2 lose both)
    bounds = [round(missing.numel() * j / M) for j in range(M + 1)]
    lost = torch.zeros(missing.numel(), M, dtype=torch.bool)
    for n in range(1, M + 1):
        lo, hi = bounds[n - 1], bounds[n]
        if hi <= lo:
            continue
        if n == 1:  # cycle over modalities: exactly even (1/4 text, 1/4 image)
            lost[torch.arange(lo, hi), torch.arange(hi - lo) % M] = True
        else:
            lost[lo:hi] = _drop_k(missing[lo:hi], M, n, g)
    out = {}
    for j, m in enumerate(modalities):
        keep = torch.ones(num_items, dtype=torch.bool)
        keep[missing[lost[:, j]]] = False
        out[m] = keep
    return out


def _entry(rate: float, num_items: int, modalities: List[str], natural: Dict[str, Tensor],
           g: torch.Generator) -> Dict[str, Tensor]:
    M = len(modalities)
    hi = (M - 1) / M
    if rate > hi + 1e-12:
        raise ValueError(f"entry protocol: rate {rate:g} exceeds {hi:g} = (M-1)/M: with one "
                         f"protected modality per item at most that share can be dropped")
    nat = torch.stack([natural[m] for m in modalities], 1)  # [I, M]
    # protected modality: uniform among naturally present ones (any if none)
    w = torch.rand(num_items, M, generator=g) + nat.float()  # present ones rank first
    protected = w.argmax(1)
    cand = torch.ones(num_items, M, dtype=torch.bool)
    cand[torch.arange(num_items), protected] = False
    flat = cand.view(-1).nonzero().view(-1)
    n = int(round(rate * num_items * M))
    drop = flat[torch.randperm(flat.numel(), generator=g)[:n]]
    keep = torch.ones(num_items * M, dtype=torch.bool)
    keep[drop] = False
    keep = keep.view(num_items, M)
    return {m: keep[:, j].clone() for j, m in enumerate(modalities)}


def make_masks(spec: "str | MissingSpec", data: Any, seed: int = 0) -> MaskSet:
    r"""Builds the train/eval presence masks of a missing-modality protocol.

    Args:
        spec (str): protocol, e.g. ``"natural"``, ``"i3mrec:fm:0.3"``,
            ``"dgmrec:0.667"``, ``"entry:0.3"`` (see the module docstring).
        data: an :class:`~pyg_mmrec.data.MMRecDataset` or its ``HeteroData``.
        seed (int): random seed; the same seed gives the same masks.

    Returns:
        :class:`MaskSet` with ``train`` and ``eval`` masks, each AND-ed with
        the natural masks of ``data``.
    """
    sp = parse_missing_spec(spec)
    num_items, modalities, natural, data = _unpack(data)
    full = {m: torch.ones(num_items, dtype=torch.bool) for m in modalities}

    # fixed: the reference code's masks do not depend on the run's seed
    draw_seed = 0 if sp.fixed else seed

    def gen(stream: str) -> torch.Generator:
        return epoch_generator(draw_seed, _PROTO_ID[sp.protocol], _STREAM[stream])

    if not modalities or sp.protocol == "natural":
        train, eval_ = full, full
    elif sp.protocol == "i3mrec" and sp.fixed:
        # one lost set per item, shared by training and evaluation
        lost_by_item = _drop_k(torch.arange(num_items), len(modalities), sp.drop, gen("same"))
        eval_ = train = full
        if sp.mode in ("fm", "mm"):
            items = (torch.arange(num_items) if sp.eval_items == "all"
                     else _items_of(data, sp.eval_items, num_items))
            eval_ = _fixed_loss(items, sp.test_share, lost_by_item, num_items, modalities,
                                gen("eval"))
        if sp.mode == "mm":
            train = _fixed_loss(_items_of(data, "train", num_items), sp.rate, lost_by_item,
                                num_items, modalities, gen("train"))
    elif sp.protocol == "i3mrec":
        eval_ = full
        if sp.mode in ("fm", "mm"):
            items = (torch.arange(num_items) if sp.eval_items == "all"
                     else _items_of(data, sp.eval_items, num_items))
            eval_ = _one_modality_loss(items, sp.test_share, sp.drop, num_items, modalities,
                                       gen("eval"))
        train = full
        if sp.mode == "mm":
            train = _one_modality_loss(_items_of(data, "train", num_items), sp.rate, sp.drop,
                                       num_items, modalities, gen("train"))
    elif sp.protocol == "dgmrec":
        train = eval_ = _dgmrec(sp.rate, num_items, modalities, gen("same"))
    else:
        train = eval_ = _entry(sp.rate, num_items, modalities, natural, gen("same"))
    train = {m: train[m] & natural[m] for m in modalities}
    eval_ = {m: eval_[m] & natural[m] for m in modalities}
    meta = {"drawn_with_seed": draw_seed} if sp.fixed else {}
    return MaskSet(train, eval_, str(sp), int(seed), meta)


# ------------------------------------------------------------------- fills
FILL_STRATEGIES = ("zero", "mean", "propagate")


def _present_mean(x: Tensor, mask: Tensor) -> Tensor:
    n = int(mask.sum())
    if n == 0:
        return x.new_zeros(x.size(1))
    return x[mask].mean(0)


def _csr(dst: Tensor, src: Tensor, num_dst: int) -> Tuple[Tensor, Tensor]:
    perm = dst.argsort(stable=True)
    rowptr = torch.zeros(num_dst + 1, dtype=torch.long, device=dst.device)
    rowptr[1:] = torch.bincount(dst, minlength=num_dst).cumsum(0)
    return rowptr, src[perm]


def fill_features(features: Dict[str, Tensor], masks: Dict[str, Tensor],
                  strategy: str = "zero", edge_index: Optional[Tensor] = None,
                  num_users: Optional[int] = None) -> Dict[str, Tensor]:
    r"""Replaces the rows of missing entries (``mask == False``) so that a
    model never sees their true features. Returns *new* tensors.

    * ``"zero"``: :math:`\tilde x_i = 0`.
    * ``"mean"``: :math:`\tilde x_i = \frac{1}{|\{j: M_j\}|}\sum_{j: M_j} x_j`.
    * ``"propagate"``: renormalised mean of *present* neighbours, with
      :func:`pyg_mmrec.ops.masked_spmm`. With ``num_users`` given,
      ``edge_index`` is the ``[2, E]`` (user, item) training graph and the fill
      is two hops item :math:`\to` user :math:`\to` item:

      .. math::
          h_u = \frac{\sum_{j\in\mathcal N(u)} M_j x_j}{\sum_{j\in\mathcal N(u)} M_j},
          \qquad
          \tilde x_i = \frac{\sum_{u\in\mathcal N(i)} [\sum_{j\in\mathcal N(u)} M_j>0]\,h_u}
                            {\sum_{u\in\mathcal N(i)} [\sum_{j\in\mathcal N(u)} M_j>0]};

      without ``num_users``, ``edge_index`` is an item–item graph (messages
      flow ``edge_index[0] -> edge_index[1]``) and the fill is one hop. Items
      without any present neighbour fall back to the mean of present items.

    Args:
        features: ``{m: [I, F_m]}``.
        masks: ``{m: bool [I]}`` (``True`` = present).
        strategy (str): ``"zero"``, ``"mean"`` or ``"propagate"``.
        edge_index (LongTensor, optional): graph for ``"propagate"``.
        num_users (int, optional): number of users if ``edge_index`` is user–item.
    """
    if strategy not in FILL_STRATEGIES:
        raise ValueError(f"fill_features: unknown strategy {strategy!r}; expected one of "
                         f"{list(FILL_STRATEGIES)}")
    if set(features) != set(masks):
        raise ValueError(f"fill_features: features have modalities {sorted(features)} but "
                         f"masks have {sorted(masks)}")
    if strategy == "propagate" and edge_index is None:
        raise ValueError("fill_features: strategy 'propagate' needs edge_index (user-item "
                         "training graph with num_users, or an item-item graph)")
    out: Dict[str, Tensor] = {}
    for m, x in features.items():
        mk = masks[m].to(x.device)
        if x.dim() != 2 or mk.dtype != torch.bool or mk.shape != (x.size(0),):
            raise ValueError(f"fill_features: features['{m}'] must be [I, F] and masks['{m}'] "
                             f"bool [I], got {list(x.shape)} and {mk.dtype} {list(mk.shape)}")
        present = mk.unsqueeze(1)
        x_safe = torch.where(present, x, torch.zeros((), dtype=x.dtype, device=x.device))
        if strategy == "zero" or bool(mk.all()):
            out[m] = x_safe  # torch.where already returned a new tensor
            continue
        mean = _present_mean(x_safe, mk)
        if strategy == "mean":
            out[m] = torch.where(present, x_safe, mean.unsqueeze(0))
            continue
        filled, ok = _propagate(x_safe, mk, edge_index.to(x.device), num_users)
        fallback = torch.where(ok.unsqueeze(1), filled, mean.unsqueeze(0))
        out[m] = torch.where(present, x_safe, fallback)
    return out


def _propagate(x: Tensor, mask: Tensor, edge_index: Tensor, num_users: Optional[int]
               ) -> Tuple[Tensor, Tensor]:
    from ..ops import masked_spmm  # lazy: the op may load a compiled extension

    num_items = x.size(0)
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"fill_features: edge_index must be [2, E], got {list(edge_index.shape)}")
    ei = edge_index.long()
    if num_users is None:  # item-item graph, one hop
        if ei.numel() and int(ei.max()) >= num_items:
            raise ValueError(f"fill_features: item-item edge_index has ids >= {num_items}")
        rowptr, col = _csr(ei[1], ei[0], num_items)
        out, wsum = masked_spmm(rowptr, col, x, mask=mask, reduce="mean")
        return out, wsum > 0
    user, item = ei[0], ei[1]
    if ei.numel() and (int(user.max()) >= num_users or int(item.max()) >= num_items):
        raise ValueError(f"fill_features: user-item edge_index has ids outside "
                         f"[0, {num_users}) x [0, {num_items})")
    rp_u, col_u = _csr(user, item, num_users)        # user <- items
    h_u, w_u = masked_spmm(rp_u, col_u, x, mask=mask, reduce="mean")
    rp_i, col_i = _csr(item, user, num_items)        # item <- users
    out, wsum = masked_spmm(rp_i, col_i, h_u, mask=w_u > 0, reduce="mean")
    return out, wsum > 0


def masked_inputs(data: Any, masks: MaskSet, which: str = "train", strategy: str = "zero"
                  ) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
    r"""``(filled features, masks)`` for ``which`` in ``{"train", "eval"}``,
    ready for ``Recommender(..., features, masks)`` /
    ``model.set_modality_inputs``. ``"propagate"`` uses the training graph."""
    if which not in ("train", "eval"):
        raise ValueError(f"masked_inputs: which must be 'train' or 'eval', got {which!r}")
    num_items, modalities, _, data = _unpack(data)
    mk = getattr(masks, which)
    if sorted(mk) != sorted(modalities):
        raise ValueError(f"masked_inputs: masks cover {sorted(mk)}, data has {modalities}")
    feats = {m: data["item"][f"{m}_feat"] for m in modalities}
    ei = data[EDGE_TYPE].edge_index
    filled = fill_features(feats, mk, strategy, edge_index=ei,
                           num_users=int(data["user"].num_nodes))
    return filled, {m: mk[m].clone() for m in modalities}


__all__ = ["MissingSpec", "MaskSet", "parse_missing_spec", "make_masks", "fill_features",
           "masked_inputs", "PROTOCOLS", "FILL_STRATEGIES"]
