r"""The hyper-parameters of :class:`~pyg_mmrec.models.i3mrec.I3MRec`, in five
option groups, each validated where it is defined.

* :class:`PropagationOptions`: :math:`d`, :math:`L`, the missing-aware
  renormalisation, sampled (``fanout``) or full-graph training;
* :class:`RiskOptions`: the ranking risks (the per-environment BPR weight, the
  invariance penalty across environments, the L2 term);
* :class:`BottleneckOptions`: the information bottleneck, InfoNCE
  (:math:`\max I`) and CLUB or KL (:math:`\min I(Z; X)`);
* :class:`FusionOptions`: the missing-aware fusion and the sampled masks
  :math:`\mathcal{M}` of the masked views;
* :class:`CollaborativeOptions`: beyond the paper, the item ID branch, the kNN
  item graphs and FREEDOM's edge pruning.

A configuration file and ``--set key=value`` use the *flat* field names
(``penalty_coeff``, ``edge_dropout``…), which are unique across the groups:
:meth:`I3MRecOptions.from_flat` sorts them into their groups and
:meth:`I3MRecOptions.to_flat` gives them back. A new switch is one field with
its check in the group it belongs to, plus its line in
``pyg_mmrec/configs/i3mrec.yaml``; the model and the configuration pick it up
from the dataclass.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ..nn.fanout import check_fanout

ID_BRANCHES = ("none", "embedding", "lightgcn")
ITEM_GRAPHS = ("none", "knn")
# pyg_mmrec.data.knn.KNN_METHODS, repeated so that reading the options imports no torch
# (the model checks at construction that faiss is installed)
KNN_METHODS = ("exact", "faiss")
PENALTIES = ("vrex", "irm")
MIN_INFO_BOUNDS = ("club", "kl")
INFONCE_SCALINGS = ("mean", "sum_plus_sixth")
INFONCE_VIEWS = ("sampled", "all_subsets")
IB_ITEMS = ("unique", "batch")
CLUB_ESTIMATORS = ("vclub", "reference")
CLUB_FITS = ("alternating", "per_epoch")
CLUB_FIT_PAIRS = ("z", "projection")
MISSING_INPUTS = ("mask", "zero_fill")
FUSION_MODES = ("mean", "attention")
FUSION_TRANSFORMS = ("tanh", "linear", "none")


# ----------------------------------------------------------------- checks
def _number(name: str, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: expected a number, got {value!r} ({type(value).__name__})")
    return value


def _choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {tuple(choices)}, got {value!r}")
    return value


def _non_negative(name: str, value: Any) -> float:
    if not _number(name, value) >= 0:
        raise ValueError(f"{name}: expected >= 0, got {value}")
    return float(value)


def _integer(name: str, value: Any, minimum: int) -> int:
    _number(name, value)
    if not (math.isfinite(value) and value == int(value) and value >= minimum):
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def _fraction(name: str, value: Any, what: str = "a fraction") -> float:
    if not 0.0 <= _number(name, value) < 1.0:
        raise ValueError(f"{name}: expected {what} in [0, 1), got {value}")
    return float(value)


class _Group:
    """Shared by the groups: frozen fields set once, after their checks."""

    def _set(self, **values: Any) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)


# ----------------------------------------------------------------- groups
@dataclass(frozen=True)
class PropagationOptions(_Group):
    r"""Representations and their propagation.

    Args:
        embedding_size (int): :math:`d`. (reference: 64)
        n_layers (int): :math:`L` propagation layers per modality graph. (3)
        renormalize (bool): rescale each user's messages in modality
            :math:`m`'s graph to its full degree weight when some of its items
            miss :math:`m`, so a user's magnitude does not depend on how many
            items are missing.
        fanout (list of int, optional): sampled training, one fan-out per
            layer (``fanout[0]`` next to the batch); ``None``: full-graph
            propagation at every step.
    """

    embedding_size: int = 64
    n_layers: int = 3
    renormalize: bool = True
    fanout: Optional[List[int]] = None

    def __post_init__(self) -> None:
        embedding_size = _integer("embedding_size", self.embedding_size, 1)
        n_layers = _integer("n_layers", self.n_layers, 0)
        fanout = None if self.fanout is None else check_fanout(self.fanout, n_layers)
        self._set(embedding_size=embedding_size, n_layers=n_layers,
                  renormalize=bool(self.renormalize), fanout=fanout)


@dataclass(frozen=True)
class RiskOptions(_Group):
    r"""The ranking risks: every modality is an environment with its own BPR
    risk :math:`\mathcal{L}^m`, and a penalty makes them agree.

    Args:
        penalty (str): ``"vrex"`` (:math:`\operatorname{Var}_m \mathcal{L}^m`)
            or ``"irm"`` (IRMv1).
        penalty_coeff (float): :math:`\lambda_p`. (reference on Baby: 300)
        use_irm (bool): ablation switch: ``False`` = no invariance penalty.
        modal_bpr_coeff (float): weight of :math:`\sum_m \mathcal{L}^m`. (1)
        reg_coeff (float): :math:`\lambda_{reg}`, L2 on the batch's final user
            and item representations. (1e-3)
    """

    penalty: str = "vrex"
    penalty_coeff: float = 300.0
    use_irm: bool = True
    modal_bpr_coeff: float = 1.0
    reg_coeff: float = 1e-3

    def __post_init__(self) -> None:
        self._set(penalty=_choice("penalty", self.penalty, PENALTIES),
                  penalty_coeff=_non_negative("penalty_coeff", self.penalty_coeff),
                  use_irm=bool(self.use_irm),
                  modal_bpr_coeff=_non_negative("modal_bpr_coeff", self.modal_bpr_coeff),
                  reg_coeff=_non_negative("reg_coeff", self.reg_coeff))


@dataclass(frozen=True)
class BottleneckOptions(_Group):
    r"""The information bottleneck: maximise :math:`I(Z, Z^{\mathcal{M}}; R)`
    with an InfoNCE between the full and the masked fusions, minimise
    :math:`I(Z; X)` with CLUB estimators (or a variational KL).

    Args:
        use_ib (bool): ablation switch: ``False`` = no InfoNCE and no CLUB/KL.
        max_info_coeff (float): :math:`\lambda_{\max}` (InfoNCE). (1e-3)
        temperature (float): InfoNCE :math:`\tau`. (reference: 0.4)
        min_info (str): the bound of :math:`I(Z; X)`: ``"club"`` (one CLUB
            estimator :math:`q_m(Z \mid X^m)` per modality, trained in
            alternation) or ``"kl"`` (:math:`Z` becomes a Gaussian code whose
            KL to :math:`\mathcal{N}(0, I)` is minimised).
        min_info_coeff (float): :math:`\lambda_{\min}`. (1e-5)
        club_hidden (int): hidden width of the CLUB estimators.
        club_batch (int): at most this many (present) batch items per modality
            feed each estimator per step.
        infonce_scaling (str): ``"mean"`` (the paper's formula: the mean of
            the InfoNCE over the ordered view pairs) or ``"sum_plus_sixth"``
            (the reference code: the sum over the ordered pairs plus a sixth
            of that sum, i.e. :math:`\tfrac{7}{6}\sum`; 7 times the mean with
            2 modalities, 49 times with 3).
        infonce_views (str): ``"sampled"`` (:math:`Z` and ``num_masked_views``
            fusions under random masks :math:`\mathcal{M}`) or
            ``"all_subsets"`` (the reference: one view per non-empty subset of
            the modalities, :math:`2^M - 1` views, the full set included).
        ib_items (str): rows of the InfoNCE and CLUB terms: ``"unique"`` (each
            positive item of the batch once) or ``"batch"`` (every positive of
            the batch, duplicates included, as the reference; a repeated item
            is then among its own negatives).
        club_estimator (str): ``"vclub"`` (exact all-pairs vCLUB, log-variance
            softly bounded to :math:`(-5, 5)`) or ``"reference"``
            (:class:`~pyg_mmrec.nn.mi_estimators.SigmoidCLUBSample`: sigmoid on
            both inputs, log-variance :math:`\tanh`-squashed to :math:`(-1, 1)`,
            one sampled negative per row).
        club_fit (str): when the estimators are fitted: ``"alternating"`` (one
            step of the trainer's auxiliary optimiser per batch) or
            ``"per_epoch"`` (the reference: ``club_fit_steps`` steps at the
            start of every epoch on random items, with the model's own Adam at
            ``club_lr`` and a reduce-on-plateau schedule on the epoch's
            summed estimator loss).
        club_fit_pairs (str): the pairs the estimators are fitted on: ``"z"``
            (:math:`(X^m, Z)`, the pair whose MI is bounded) or
            ``"projection"`` (:math:`(X^m, W_m X^m)`, as the reference).
        club_fit_steps (int): estimator steps per epoch (``club_fit="per_epoch"``).
        club_lr (float): learning rate of the per-epoch estimator fit.
        club_main_update (bool): the bound in the main loss also trains the
            estimators (their parameters are then stepped by the main
            optimiser too, towards a *smaller* bound, as in the reference);
            ``False``: the estimators are constants there. Needs
            ``club_fit="per_epoch"``.
    """

    use_ib: bool = True
    max_info_coeff: float = 1e-3
    temperature: float = 0.4
    min_info: str = "club"
    min_info_coeff: float = 1e-5
    club_hidden: int = 64
    club_batch: int = 2048
    infonce_scaling: str = "mean"
    infonce_views: str = "sampled"
    ib_items: str = "unique"
    club_estimator: str = "vclub"
    club_fit: str = "alternating"
    club_fit_pairs: str = "z"
    club_fit_steps: int = 10
    club_lr: float = 1e-4
    club_main_update: bool = False

    def __post_init__(self) -> None:
        if not _number("temperature", self.temperature) > 0:
            raise ValueError(f"temperature: expected > 0, got {self.temperature}")
        if not _number("club_lr", self.club_lr) > 0:
            raise ValueError(f"club_lr: expected > 0, got {self.club_lr}")
        club_fit = _choice("club_fit", self.club_fit, CLUB_FITS)
        if self.club_main_update and club_fit != "per_epoch":
            raise ValueError("club_main_update: the main optimiser can also step the estimators "
                             "only when the trainer's auxiliary optimiser does not, i.e. with "
                             f"club_fit 'per_epoch', got club_fit {club_fit!r}")
        self._set(use_ib=bool(self.use_ib),
                  max_info_coeff=_non_negative("max_info_coeff", self.max_info_coeff),
                  temperature=float(self.temperature),
                  min_info=_choice("min_info", self.min_info, MIN_INFO_BOUNDS),
                  min_info_coeff=_non_negative("min_info_coeff", self.min_info_coeff),
                  club_hidden=_integer("club_hidden", self.club_hidden, 1),
                  club_batch=_integer("club_batch", self.club_batch, 2),
                  infonce_scaling=_choice("infonce_scaling", self.infonce_scaling,
                                          INFONCE_SCALINGS),
                  infonce_views=_choice("infonce_views", self.infonce_views, INFONCE_VIEWS),
                  ib_items=_choice("ib_items", self.ib_items, IB_ITEMS),
                  club_estimator=_choice("club_estimator", self.club_estimator,
                                         CLUB_ESTIMATORS),
                  club_fit=club_fit,
                  club_fit_pairs=_choice("club_fit_pairs", self.club_fit_pairs, CLUB_FIT_PAIRS),
                  club_fit_steps=_integer("club_fit_steps", self.club_fit_steps, 1),
                  club_lr=float(self.club_lr),
                  club_main_update=bool(self.club_main_update))


@dataclass(frozen=True)
class FusionOptions(_Group):
    r"""The missing-aware fusion :math:`Z` of the present modalities and the
    sampled missing indicators :math:`\mathcal{M}` of its masked views
    :math:`Z^{\mathcal{M}}`.

    Args:
        fusion_mode (str): ``"mean"`` or ``"attention"`` over the present
            modalities.
        fusion_transform (str): the map after pooling: ``"tanh"`` (as the
            reference), ``"linear"`` (keeps the norms that carry popularity)
            or ``"none"``.
        fusion_dropout (float): dropout inside the fusion transform.
        detach_modal (bool): fuse :math:`E_I^m` detached, so the fusion-level
            objectives do not train the modality branches (as the reference).
        use_masked_fusion (bool): ablation switch: ``False`` = no masked view,
            hence no InfoNCE.
        mask_prob (float): probability of dropping a present modality in
            :math:`\mathcal{M}`.
        num_masked_views (int): sampled masked fusions per batch.
        missing_input (str): how a missing modality enters the model:
            ``"mask"`` (it sends nothing in its modality graph and is left out
            of the fusion and the estimators) or ``"zero_fill"`` (the
            reference: its feature row is zero, so the projection sends its
            bias; every modality is pooled, a dropped one as a zero vector in
            the mean over all :math:`M`, for :math:`Z` and the masked views
            alike).
    """

    fusion_mode: str = "mean"
    fusion_transform: str = "tanh"
    fusion_dropout: float = 0.5
    detach_modal: bool = True
    use_masked_fusion: bool = True
    mask_prob: float = 0.5
    num_masked_views: int = 1
    missing_input: str = "mask"

    def __post_init__(self) -> None:
        if self.missing_input == "zero_fill" and self.fusion_mode != "mean":
            raise ValueError("missing_input: 'zero_fill' pools a zero vector for a dropped "
                             "modality in a plain mean, so it needs fusion_mode 'mean', got "
                             f"{self.fusion_mode!r}")
        self._set(missing_input=_choice("missing_input", self.missing_input, MISSING_INPUTS),
                  fusion_mode=_choice("fusion_mode", self.fusion_mode, FUSION_MODES),
                  fusion_transform=_choice("fusion_transform", self.fusion_transform,
                                           FUSION_TRANSFORMS),
                  fusion_dropout=_fraction("fusion_dropout", self.fusion_dropout),
                  detach_modal=bool(self.detach_modal),
                  use_masked_fusion=bool(self.use_masked_fusion),
                  mask_prob=_fraction("mask_prob", self.mask_prob, "a probability"),
                  num_masked_views=_integer("num_masked_views", self.num_masked_views, 1))


@dataclass(frozen=True)
class CollaborativeOptions(_Group):
    r"""Beyond the paper: collaborative signal that a feature projection
    cannot carry (see :class:`~pyg_mmrec.models.i3mrec.I3MRec` for the maths).

    Args:
        id_branch (str): ``"none"`` (the paper), ``"embedding"`` (item ID
            embeddings added to every environment) or ``"lightgcn"`` (ID
            embeddings propagated over the never-masked user–item graph).
        item_graph (str): ``"none"`` (the paper) or ``"knn"``: each
            environment adds its modality's frozen kNN item–item smoothing of
            the item IDs (needs an ``id_branch``).
        knn_k (int): :math:`k` of ``item_graph="knn"``. (FREEDOM: 10)
        knn_method (str): neighbour search of those graphs, ``"exact"`` or
            ``"faiss"`` (approximate; see :func:`~pyg_mmrec.data.knn.knn_graph`).
        item_graph_layers (int): :math:`L_S \geq 1`. (FREEDOM: 1)
        edge_dropout (float): FREEDOM's degree-sensitive pruning: fraction of
            the training interactions removed at every epoch (0 = none).
    """

    id_branch: str = "none"
    item_graph: str = "none"
    knn_k: int = 10
    knn_method: str = "exact"
    item_graph_layers: int = 1
    edge_dropout: float = 0.0

    def __post_init__(self) -> None:
        id_branch = _choice("id_branch", self.id_branch, ID_BRANCHES)
        item_graph = _choice("item_graph", self.item_graph, ITEM_GRAPHS)
        if item_graph != "none" and id_branch == "none":
            raise ValueError("item_graph: 'knn' smooths item ID embeddings, so it needs "
                             "id_branch 'embedding' or 'lightgcn', got id_branch 'none'")
        self._set(id_branch=id_branch, item_graph=item_graph,
                  knn_k=_integer("knn_k", self.knn_k, 1),
                  knn_method=_choice("knn_method", self.knn_method, KNN_METHODS),
                  item_graph_layers=_integer("item_graph_layers", self.item_graph_layers, 1),
                  edge_dropout=_fraction("edge_dropout", self.edge_dropout))


# -------------------------------------------------------------- container
@dataclass(frozen=True)
class I3MRecOptions:
    r"""Every hyper-parameter of :class:`~pyg_mmrec.models.i3mrec.I3MRec`, by
    group. Build it from flat keys with :meth:`from_flat`.

    Args:
        propagation (PropagationOptions): :math:`d`, :math:`L`, sampling.
        risk (RiskOptions): environment risks and invariance penalty.
        bottleneck (BottleneckOptions): InfoNCE and CLUB / KL.
        fusion (FusionOptions): fusion and masked views.
        collaborative (CollaborativeOptions): ID branch, kNN item graphs,
            edge pruning.
    """

    propagation: PropagationOptions = field(default_factory=PropagationOptions)
    risk: RiskOptions = field(default_factory=RiskOptions)
    bottleneck: BottleneckOptions = field(default_factory=BottleneckOptions)
    fusion: FusionOptions = field(default_factory=FusionOptions)
    collaborative: CollaborativeOptions = field(default_factory=CollaborativeOptions)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, _GROUPS[f.name]):
                raise ValueError(f"{f.name}: expected a {_GROUPS[f.name].__name__}, "
                                 f"got {type(value).__name__}")

    @classmethod
    def from_flat(cls, hparams: Mapping[str, Any],
                  base: Optional["I3MRecOptions"] = None) -> "I3MRecOptions":
        """The options of ``base`` (default: all defaults) with the flat keys of
        ``hparams`` (e.g. ``{"penalty_coeff": 10, "fanout": [5, 5, 5]}``)
        replaced; each touched group is validated again."""
        base = cls() if base is None else base
        unknown = sorted(set(hparams) - set(_GROUP_OF))
        if unknown:
            raise ValueError(f"I3MRec: unknown hyper-parameter(s) {unknown}; expected some of "
                             f"{sorted(_GROUP_OF)}")
        changes: Dict[str, Dict[str, Any]] = {}
        for key, value in hparams.items():
            changes.setdefault(_GROUP_OF[key], {})[key] = value
        return dataclasses.replace(base, **{
            group: dataclasses.replace(getattr(base, group), **values)
            for group, values in changes.items()})

    def to_flat(self) -> Dict[str, Any]:
        """``{flat key: value}`` of every field (lists copied)."""
        out: Dict[str, Any] = {}
        for group in _GROUPS:
            for key, value in dataclasses.asdict(getattr(self, group)).items():
                out[key] = list(value) if isinstance(value, list) else value
        return out


#: group attribute of :class:`I3MRecOptions` -> its class
_GROUPS = {"propagation": PropagationOptions, "risk": RiskOptions,
           "bottleneck": BottleneckOptions, "fusion": FusionOptions,
           "collaborative": CollaborativeOptions}


def _flat_index() -> Dict[str, str]:
    index: Dict[str, str] = {}
    for group, group_cls in _GROUPS.items():
        for f in dataclasses.fields(group_cls):
            # a flat key must name exactly one field, or YAML keys would be ambiguous
            assert f.name not in index, f"{f.name} is a field of {index.get(f.name)} and {group}"
            index[f.name] = group
    return index


#: flat key -> the group that holds it
_GROUP_OF: Dict[str, str] = _flat_index()


def flat_defaults() -> Dict[str, Any]:
    """Every flat key with its default value (what the configuration checks
    ``--set`` values against)."""
    return I3MRecOptions().to_flat()


__all__ = ["check_flat", "I3MRecOptions", "PropagationOptions", "RiskOptions", "BottleneckOptions",
           "FusionOptions", "CollaborativeOptions", "flat_defaults"]


def check_flat(hparams: Mapping[str, Any]) -> None:
    """Validate flat keys as the constructor will (``ValueError`` naming the key)."""
    I3MRecOptions.from_flat(hparams)
