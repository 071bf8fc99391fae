r"""MRdIB: the Multimodal Representation-disentangled Information Bottleneck,
a plug-in that wraps any multimodal :class:`~pyg_mmrec.models.Recommender`."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Linear, Module, ModuleDict

from ..nn.variational_bottleneck import StackedVariationalBottleneck
from ..nn.neighbor_sampling import sorted_unique
from .base import Recommender, RecOutput


@dataclass
class MRdIBOutput(RecOutput):
    """A :class:`RecOutput` that also carries the wrapped backbone's own output,
    so :meth:`MRdIB.loss` can reuse one forward pass of the backbone."""

    backbone: Optional[RecOutput] = None


@dataclass
class _PairMargins:
    r"""Code score margins of a batch of (user, positive, negative) triples,
    shared by :meth:`MRdIB._unique_term` and :meth:`MRdIB._synergy_term`.

    Attributes:
        modal: :math:`\Delta_m`, each modality code's margin over :math:`\tau`,
            ``[B, n, M]``.
        joint: :math:`d_J`, the joint code's margin ``[B, n]`` (``None`` when
            the synergy term is off).
        valid: whether modality :math:`m` is present on both items ``[B, n, M]``.
        tau: the temperature the margins were divided by (1 for dot scores).
    """

    modal: Tensor
    joint: Optional[Tensor]
    valid: Tensor
    tau: float


class MRdIB(Recommender):
    r"""The Multimodal Representation-disentangled Information Bottleneck of
    `"Multimodal Representation-disentangled Information Bottleneck for
    Multimodal Recommendation" <https://arxiv.org/abs/2509.20225>`_ (Wang et
    al., 2025), as a plug-in over any backbone whose :meth:`forward` exposes
    per-modality item representations :math:`h_m` (``RecOutput.item_modal``).

    **Multimodal Information Bottleneck (MIB).** For every modality :math:`m`
    a variational encoder (:class:`~pyg_mmrec.nn.VariationalBottleneck`; all
    modalities at once in one
    :class:`~pyg_mmrec.nn.variational_bottleneck.StackedVariationalBottleneck`)
    maps :math:`h_m` to
    :math:`q(z_m \mid h_m) = \mathcal{N}(\mu_m, \sigma_m^2)`; :math:`z_m` is
    reparameterised in training and equals :math:`\mu_m` at inference, and

    .. math::
        \mathcal{L}_{\mathrm{MIB}} = \frac{1}{k|M|}\sum_m
        \mathbb{E}_{i:\,m \in P_i}\,\mathrm{KL}\big(q(z_m \mid h_{m,i})
        \,\|\, \mathcal{N}(0, I)\big)

    compresses away task-irrelevant content (:math:`P_i` = modalities present
    for item :math:`i`; divided by the code size :math:`k` so that
    :math:`\beta` does not scale with it).

    **Code scores.** A code scores a user–item pair by the cosine
    :math:`\cos(c, z)/\tau` with a user code :math:`c`, temperature
    :math:`\tau` (``temperature``). Cosines are scale-free: a code cannot win
    a ranking term by growing its norm, so the KL alone sets its
    noise-to-signal ratio. (``score="dot"``: plain dot products :math:`c^\top z`
    instead, :math:`\tau = 1`; ``normalize_input=True``: the encoders read
    :math:`h_m / \lVert h_m \rVert`, so the plug-in never pulls on the norms of
    the backbone's representations.)

    **Unique information.** Each code alone must rank the user's items. With a
    per-modality user code :math:`c_m(u) = U_m e_u^{(m)}` (:math:`e_u^{(m)}` =
    ``user_modal[m]`` if the backbone has it, else :math:`e_u`) and the pair
    margin :math:`\Delta_m = (\cos(c_m, z_{m,i^+}) - \cos(c_m, z_{m,i^-}))/\tau`:

    .. math::
        \mathcal{L}_{\mathrm{uni}} = \frac{1}{|M|}\sum_m
        \mathbb{E}_{(u,i^+,i^-):\, m \in P_{i^+} \cap P_{i^-}}
        \big[-\log\sigma(\Delta_m)\big].

    **Redundant information.** The overlap between modality codes is
    minimised through an upper bound of their mutual information, by default
    CLUB (`Cheng et al., 2020 <https://arxiv.org/abs/2006.12013>`_; MINE's
    estimate with ``mi_estimator="mine"``), over every pair of modalities and
    the batch items that have both:
    :math:`\mathcal{L}_{\mathrm{red}} = \frac{1}{k}\binom{|M|}{2}^{-1} \sum_{m<n}
    \max(0, \hat I_{\mathrm{CLUB}}(z_m; z_n))` (per code dimension, like
    :math:`\mathcal{L}_{\mathrm{MIB}}`: the bound grows with :math:`k`; clamped
    at 0, since a negative estimate only means the estimator lags the codes,
    and rewarding it lets them run away from it). The
    estimators are trained in alternation by their own optimiser through
    :meth:`auxiliary_parameters` / :meth:`auxiliary_loss` on the detached codes
    of the previous plug-in step (none before the first one); the main loss
    never updates them.

    **Synergistic information.** The joint code fuses the present codes
    additively *and* multiplicatively,

    .. math::
        z_{J,i} = \frac{1}{|P_i|}\sum_{m \in P_i} z_{m,i}
        + W_s \frac{1}{\binom{|P_i|}{2}} \sum_{m<n \in P_i} z_{m,i} \odot z_{n,i},

    so that the interaction term can carry information that no single
    modality has (it vanishes for items with fewer than two modalities). With
    the joint user code :math:`c_J(u) = U_J e_u`, the **final score** is the
    backbone's plus the gated bottlenecked joint score,

    .. math::
        s(u, i) = e_u^\top e_i + \gamma \cos(c_J(u), z_{J,i}),

    :math:`\gamma` a learned scalar initialised at 0 (the wrapped model starts
    ranking exactly as its backbone). Evaluation embeddings are
    :math:`[e_u \| \gamma \hat c_J(u)]` and :math:`[e_i \| \hat\mu_{J,i}]`
    (hats: unit vectors; :math:`\mu` instead of samples). Emergent information
    is captured by two terms on the pair margins
    :math:`d_J = \cos(c_J, z_{J,i^+}) - \cos(c_J, z_{J,i^-})` and
    :math:`\Delta_B = e_u^\top(e_{i^+} - e_{i^-})`:

    .. math::
        \mathcal{L}_{\mathrm{syn}} = \mathbb{E}\big[-\log\sigma(\mathrm{sg}(\Delta_B)
        + \gamma d_J)\big] + \mathbb{E}_{\exists m \in P_{i^+}\cap P_{i^-}}
        \big[-\log\sigma(d_J/\tau - \max_{m} \mathrm{sg}(\Delta_m))\big],

    (:math:`\mathrm{sg}` = stop-gradient): (i) the final score is trained on
    top of what the backbone already ranks (this term alone sets
    :math:`\gamma`), and (ii) the joint code must rank each pair by a larger
    margin than the *best* unique code does — a "whole minus the best part"
    surrogate of synergy, :math:`I(z_J; y) - \max_m I(z_m; y)`, that moves
    only the joint path (the unique margins are stopped).

    The objective is :math:`\mathcal{L}_{\mathrm{backbone}} +
    \beta\mathcal{L}_{\mathrm{MIB}} + \lambda_u\mathcal{L}_{\mathrm{uni}} +
    \lambda_r\mathcal{L}_{\mathrm{red}} + \lambda_s\mathcal{L}_{\mathrm{syn}}`,
    the backbone's own terms computed on the same forward pass (one backbone
    forward per step). The plug-in's terms use the first ``sub_batch`` triples
    of each shuffled batch and encode only their items (all items when those
    cover most of the catalogue), which bounds its cost.

    **Cost.** On CPU the plug-in's price is per-op latency, not FLOPs (a
    step of a small backbone is a few hundred kernels; the four terms, the
    estimator step and their optimiser updates add about as many again). With
    ``every = n`` the terms and the estimator step run on one batch in
    :math:`n`, multiplied by :math:`n` (same objective in expectation); the
    other batches cost exactly the bare backbone's step (the plug-in's
    parameters get no gradient, so Adam skips them).
    ``backbone_grad`` scales the gradient of the plug-in's terms into the
    backbone's representations (0: the plug-in is a head on frozen
    representations and the backbone trains bit-for-bit as the bare one).

    **Missing modalities.** A modality absent for an item contributes no code:
    its KL, unique, redundancy and emergent terms skip that item (pair) and
    the joint code averages over the present codes only (an item with no
    modality has :math:`z_J = 0`). Masks are read live from the backbone, so
    train/test masks swapped via :meth:`set_modality_inputs` apply.

    **New items** (:meth:`add_items`): the backbone places them (see its
    "New items"); the plug-in has no item-indexed state, so a new item's codes
    come from its backbone representations :math:`h_m` through the same
    encoders, its missing modalities contribute no code, and its joint code
    (hence its final representation) follows. Supported when the backbone
    supports new items.

    **Sampled training.** Over a backbone built with ``fanout``, a training
    step reads the backbone's partial output of the batch
    (:meth:`Recommender.training_output`, its sampled rows only): the
    plug-in's terms encode those rows, so no step propagates the full graph.
    At a fan-out of at least the maximum degree the losses and gradients
    equal those over the full-graph backbone. (I3-MRec has its own sampled
    loss and no partial output; it is not wrapped in sampled training.)

    **Switched off.** With ``enabled=False`` or all four weights 0 the wrapper
    is the bare backbone: same losses, same scores, same RNG stream. Its own
    modules are built under a forked RNG (seeded by ``seed``) and its noise
    comes from a private generator, so the backbone's initialisation and
    dropout are untouched either way. With :math:`\lambda_s = 0` the joint code
    is not trained and scores are the backbone's (the regularisers still
    shape :math:`h_m`).

    Ablations: *w/o MIB* = ``kl_weight=0, stochastic=False``; *w/o unique* =
    ``unique_weight=0``; *w/o redundant* = ``redundant_weight=0``; *w/o
    synergy* = ``synergy_weight=0``.

    Args:
        backbone (Recommender): the wrapped model; must expose
            ``item_modal`` for at least one modality.
        enabled (bool): switch the plug-in on/off. (default: :obj:`True`)
        latent_dim (int): size :math:`k` of every code. (default: :obj:`64`)
        encoder_hidden (int, optional): hidden width of the encoders.
        kl_weight (float): :math:`\beta`. (default: :obj:`1e-3`)
        unique_weight (float): :math:`\lambda_u`. (default: :obj:`1e-2`)
        redundant_weight (float): :math:`\lambda_r`. (default: :obj:`1e-3`)
        synergy_weight (float): :math:`\lambda_s`. (default: :obj:`1e-2`)
        stochastic (bool): sample codes in training (reparameterisation).
        mi_estimator (str): ``"club"`` or ``"mine"``.
        mi_hidden (int): hidden width of the MI estimators.
        mi_batch (int): at most this many items per pair feed the estimator
            (CLUB/MINE costs grow with the batch). (default: :obj:`256`)
        temperature (float): :math:`\tau` of the code scores. (default: :obj:`0.2`)
        sub_batch (int, optional): the unique and synergy terms use the first
            ``sub_batch`` triples of each (shuffled) batch, an unbiased
            sub-sample that bounds the plug-in's cost; :obj:`None` = all.
            (default: :obj:`256`)
        backbone_grad (float): scale in :math:`[0, 1]` of the plug-in terms'
            gradient into the backbone. (default: :obj:`1.0`)
        normalize_input (bool): encode the unit-normalised :math:`h_m`.
            (default: :obj:`False`)
        score (str): ``"cos"`` or ``"dot"`` code scores. (default: :obj:`"cos"`)
        every (int): evaluate the plug-in's terms (scaled by ``every``) and
            step the estimator on every ``every``-th batch only; 1 = the exact
            per-batch objective. (default: :obj:`1`; the YAML uses 8)
        seed (int): seed of the plug-in's own initialisation and noise.
        in_channels (dict, optional): ``{m: d_m}``; inferred by one no-grad
            forward of the backbone (under a forked RNG) when omitted.
    """

    def __init__(self, backbone: Recommender, enabled: bool = True, latent_dim: int = 64,
                 encoder_hidden: Optional[int] = None, kl_weight: float = 1e-3,
                 unique_weight: float = 1e-2, redundant_weight: float = 1e-3,
                 synergy_weight: float = 1e-2, stochastic: bool = True,
                 mi_estimator: str = "club", mi_hidden: int = 64, mi_batch: int = 256,
                 sub_batch: Optional[int] = 256, temperature: float = 0.2,
                 backbone_grad: float = 1.0, every: int = 1, normalize_input: bool = False,
                 score: str = "cos", seed: int = 0,
                 in_channels: Optional[Dict[str, int]] = None) -> None:
        # Recommender.__init__ would re-run set_modality_inputs on the backbone
        # (rebuilding its caches); the wrapper holds no inputs of its own.
        Module.__init__(self)
        if not isinstance(backbone, Recommender):
            raise ValueError(f"backbone: expected a Recommender, got {type(backbone).__name__}")
        if (backbone.sampler is not None
                and type(backbone).sampled_output is Recommender.sampled_output):
            raise ValueError(f"backbone: {type(backbone).__name__} built with fanout has no "
                             f"partial sampled output, so MRdIB cannot wrap its sampled "
                             f"training; build it with fanout=null")
        self.backbone = backbone
        self.num_users = backbone.num_users
        self.num_items = backbone.num_items
        self.uses_features = backbone.uses_features
        weights = dict(kl_weight=kl_weight, unique_weight=unique_weight,
                       redundant_weight=redundant_weight, synergy_weight=synergy_weight)
        for k, w in weights.items():
            if not isinstance(w, (int, float)) or isinstance(w, bool) or w < 0:
                raise ValueError(f"{k}: expected a float >= 0, got {w!r}")
            setattr(self, k, float(w))
        if not isinstance(latent_dim, int) or latent_dim <= 0:
            raise ValueError(f"latent_dim: expected a positive int, got {latent_dim!r}")
        if mi_estimator not in ("club", "mine"):
            raise ValueError(f"mi_estimator: expected 'club' or 'mine', got {mi_estimator!r}")
        if not isinstance(mi_batch, int) or mi_batch < 2:
            raise ValueError(f"mi_batch: expected an int >= 2, got {mi_batch!r}")
        if sub_batch is not None and (not isinstance(sub_batch, int) or sub_batch < 1):
            raise ValueError(f"sub_batch: expected a positive int or None, got {sub_batch!r}")
        if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or temperature <= 0:
            raise ValueError(f"temperature: expected a float > 0, got {temperature!r}")
        if (not isinstance(backbone_grad, (int, float)) or isinstance(backbone_grad, bool)
                or not 0.0 <= backbone_grad <= 1.0):
            raise ValueError(f"backbone_grad: expected a float in [0, 1], got {backbone_grad!r}")
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"every: expected a positive int, got {every!r}")
        self.every = every
        self.normalize_input = bool(normalize_input)
        if score not in ("cos", "dot"):
            raise ValueError(f"score: expected 'cos' or 'dot', got {score!r}")
        self.score = score
        self.sub_batch = sub_batch
        self.temperature = float(temperature)
        self.backbone_grad = float(backbone_grad)
        self.enabled = bool(enabled)
        self.latent_dim = latent_dim
        self.stochastic = bool(stochastic)
        self.mi_estimator = mi_estimator
        self.mi_batch = mi_batch
        self.seed = int(seed)
        self._generators: Dict[str, torch.Generator] = {}
        self._mi_cache: List[Tuple[str, Tensor, Tensor, Optional[Tensor]]] = []
        self.code_modalities: List[str] = []
        if not self.enabled:
            return  # no modules at all: literally the bare backbone

        with torch.random.fork_rng(devices=[]):
            dims, user_dims, user_dim = self._infer_dims(in_channels)
            torch.manual_seed(self.seed)
            self.code_modalities = [m for m in backbone.modalities if m in dims]
            k, M = latent_dim, len(self.code_modalities)
            # All modality encoders in one batched op (one or two kernels and
            # optimiser updates instead of 4|M|: per-op latency dominates on CPU).
            self.encoder = StackedVariationalBottleneck([dims[m] for m in self.code_modalities], k,
                                                        encoder_hidden)
            # User codes c_m (from user_modal[m] when the backbone has it, else
            # e_u) and the joint c_J (from e_u), stacked: U[j, :d_j] maps code j.
            self.user_in = [user_dims.get(m, user_dim) for m in self.code_modalities] + [user_dim]
            self._user_modal = [m in user_dims for m in self.code_modalities]
            self.user_weight = torch.nn.Parameter(torch.zeros(M + 1, max(self.user_in), k))
            with torch.no_grad():
                for j, d in enumerate(self.user_in):  # Linear's default init per code
                    self.user_weight[j, :d].uniform_(-d ** -0.5, d ** -0.5)
            # W_s of the multiplicative (synergy) part of z_J; no bias so that
            # items with < 2 modalities get exactly the additive fusion.
            self.lin_synergy = Linear(k, k, bias=False) if M > 1 else None
            # gamma: weight of the joint score in the final score; 0 at start, so
            # the wrapped model first ranks exactly as its backbone.
            self.gate = torch.nn.Parameter(torch.zeros(()))
            self.estimators = ModuleDict({self._pair_key(m, n): self._make_estimator(k, mi_hidden)
                                          for m, n in self.pairs})
        self.register_buffer("_noise_step", torch.zeros((), dtype=torch.long))
        # host copy of _noise_step, which decides on the host whether a step is a
        # plug-in step: the buffer is read once after construction or loading
        self._noise_step_host: Optional[int] = 0

    # ---------------------------------------------------------------- set-up
    def _infer_dims(self, in_channels: Optional[Dict[str, int]]):
        bb = self.backbone
        was_training = bb.training
        bb.eval()
        try:
            with torch.no_grad():
                out = bb()
        finally:
            bb.train(was_training)
        item_modal = {m: h for m, h in out.item_modal.items() if m in bb.modalities}
        if not item_modal:
            raise ValueError(f"backbone: {type(bb).__name__}.forward() exposes no per-modality item "
                             f"representations (RecOutput.item_modal is empty); MRdIB needs at least one "
                             f"of the modalities {bb.modalities}")
        dims = {m: int(h.size(-1)) for m, h in item_modal.items()}
        if in_channels is not None:
            for m, d in in_channels.items():
                if m in dims and dims[m] != d:
                    raise ValueError(f"in_channels['{m}']: given {d}, but the backbone yields {dims[m]}")
        user_dims = {m: int(h.size(-1)) for m, h in out.user_modal.items() if m in dims}
        return dims, user_dims, int(out.user.size(-1))

    def _make_estimator(self, k: int, hidden: int) -> Module:
        from ..nn import mi_estimators  # written alongside I3-MRec; imported lazily
        cls = mi_estimators.CLUB if self.mi_estimator == "club" else mi_estimators.MINE
        return cls(k, k, hidden_dim=hidden)

    @staticmethod
    def _pair_key(m: str, n: str) -> str:
        return f"{m}__{n}"

    @property
    def pairs(self) -> List[Tuple[str, str]]:
        return list(itertools.combinations(self.code_modalities, 2))

    @property
    def active(self) -> bool:
        """Whether the plug-in changes anything (enabled and some weight > 0)."""
        return self.enabled and any(w > 0 for w in (self.kl_weight, self.unique_weight,
                                                     self.redundant_weight, self.synergy_weight))

    @property
    def uses_joint(self) -> bool:
        """Whether scores include the bottlenecked joint code."""
        return self.active and self.synergy_weight > 0

    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device)
        return self._generators[key]

    def _next_step(self, device: torch.device) -> bool:
        """Advance the step counter; on a plug-in step (every ``every``-th)
        re-seed the private noise stream from (seed, step) and return True.
        The counter is a buffer, so a resumed checkpoint replays the same
        steps and noise."""
        step = self._host_step()
        self._noise_step += 1
        self._noise_step_host = step + 1
        if step % self.every:
            return False
        self._generator(device).manual_seed(self.seed * 1_000_003 + step + 7919)
        return True

    def _is_plugin_step(self) -> bool:
        """Whether the next :meth:`loss` call evaluates the plug-in's terms."""
        return self._host_step() % self.every == 0

    def _host_step(self) -> int:
        if self._noise_step_host is None:
            self._noise_step_host = int(self._noise_step)
        return self._noise_step_host

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._noise_step_host = None  # the loaded counter is read at the next use

    def _from_backbone(self, x: Tensor) -> Tensor:
        """A backbone representation as the plug-in's terms see it: its
        gradient into the backbone is scaled by ``backbone_grad``."""
        s = self.backbone_grad
        if s == 1.0 or not x.requires_grad:
            return x
        if s == 0.0:
            return x.detach()
        return s * x + (1.0 - s) * x.detach()

    # --------------------------------------------------- delegated interface
    @property
    def modalities(self) -> List[str]:  # type: ignore[override]
        return self.backbone.modalities

    @property
    def train_edge_index(self) -> Tensor:  # type: ignore[override]
        return self.backbone.train_edge_index

    def set_modality_inputs(self, features: Dict[str, Tensor],
                            masks: Optional[Dict[str, Tensor]] = None) -> None:
        self.backbone.set_modality_inputs(features, masks)

    def feature(self, modality: str) -> Tensor:
        return self.backbone.feature(modality)

    def mask(self, modality: str) -> Tensor:
        return self.backbone.mask(modality)

    def on_epoch_start(self, epoch: int) -> None:
        self.backbone.on_epoch_start(epoch)

    # ------------------------------------------------------------------ codes
    def _codes(self, out: RecOutput, items: Optional[Tensor], sample: bool
               ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Stacked codes of ``items`` (global ids; all items if ``None``): ``z,
        mu, logvar`` of shape ``[N, M, k]`` and the presence ``[N, M]`` (bool)."""
        mods = self.code_modalities
        P = torch.stack([self.mask(m) for m in mods], 1)
        hs = [out.item_modal[m] for m in mods]
        if items is not None:  # encode only the rows the terms read
            rows = out.item_rows(items)
            hs, P = [h.index_select(0, rows) for h in hs], P.index_select(0, items)
        hs = [self._from_backbone(h) for h in hs]
        if self.normalize_input:
            hs = [F.normalize(h, dim=-1) for h in hs]
        gen = self._generator(hs[0].device) if sample else None
        z, mu, logvar = self.encoder(hs, sample=sample, generator=gen)
        return z, mu, logvar, P

    def _joint(self, Z: Tensor, P: Tensor) -> Tensor:
        r"""Masked additive + pairwise-multiplicative fusion :math:`z_J` of the
        stacked codes ``Z [N, M, k]`` with presence ``P [N, M]``."""
        Pf = P.to(Z.dtype)
        Z = Z * Pf.unsqueeze(-1)  # a missing code contributes nothing (not a zero *code*)
        cnt = Pf.sum(1, keepdim=True)
        S = Z.sum(1)
        z_joint = S / cnt.clamp(min=1)
        if self.lin_synergy is not None:
            # sum_{m<n} z_m * z_n = ((sum z)^2 - sum z^2) / 2, over present codes
            pair_sum = 0.5 * (S.pow(2) - Z.pow(2).sum(1))
            n_pairs = (cnt * (cnt - 1) / 2).clamp(min=1)
            z_joint = z_joint + self.lin_synergy(pair_sum / n_pairs)
        return z_joint

    def _user_codes(self, out: RecOutput, users: Tensor, e_u: Tensor, joint: bool) -> Tensor:
        """Per-modality user codes, then the joint one if ``joint``:
        ``[B, M(+1), k]`` (``e_u = out.user[users]``), one matmul."""
        n = len(self.code_modalities) + int(joint)
        W = self.user_weight[:n]                                          # [n, d, k]
        if not any(self._user_modal):  # every code reads e_u
            d = self.user_in[-1]
            W = W[:, :d].transpose(0, 1).reshape(d, -1)                   # [d, n k]
            return (e_u @ W).view(e_u.size(0), n, -1)
        d = W.size(1)
        xs = [self._from_backbone(out.user_modal[m][users]) if um else e_u
              for m, um in zip(self.code_modalities, self._user_modal)] + [e_u]
        X = torch.stack([x if x.size(-1) == d else F.pad(x, (0, d - x.size(-1))) for x in xs[:n]], 0)
        return torch.bmm(X, W).transpose(0, 1)                             # [B, n, k]

    def _unit(self, x: Tensor) -> Tensor:
        """Codes as scored: unit vectors (``score="cos"``) or as they are."""
        return F.normalize(x, dim=-1) if self.score == "cos" else x

    def _joint_user(self, e_u: Tensor) -> Tensor:
        r""":math:`c_J = U_J e_u` for the rows of ``e_u``."""
        return e_u @ self.user_weight[-1, : e_u.size(-1)]

    # -------------------------------------------------------------- interface
    def forward(self) -> MRdIBOutput:
        out = self.backbone()
        if not self.uses_joint:
            return MRdIBOutput(out.user, out.item, out.item_modal, out.user_modal, out.extras,
                               backbone=out)
        Z, MU, _, P = self._codes(out, None, sample=self.training and self.stochastic)
        user = torch.cat([out.user, self.gate * self._unit(self._joint_user(out.user))], -1)
        item = torch.cat([out.item, self._unit(self._joint(Z, P))], -1)
        return MRdIBOutput(user, item, out.item_modal, out.user_modal, out.extras, backbone=out)

    @torch.no_grad()
    def embeddings_for_eval(self) -> Tuple[Tensor, Tensor]:
        if not self.uses_joint:
            return self.backbone.embeddings_for_eval()
        out = self.backbone()
        if type(self.backbone).embeddings_for_eval is not Recommender.embeddings_for_eval:
            eu, ei = self.backbone.embeddings_for_eval()
        else:
            eu, ei = out.user, out.item
        _, MU, _, P = self._codes(out, None, sample=False)
        cj = self.gate * self._unit(self._joint_user(out.user))
        return torch.cat([eu, cj], -1), torch.cat([ei, self._unit(self._joint(MU, P))], -1)

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor,
             out: Optional[RecOutput] = None) -> Dict[str, Tensor]:
        if isinstance(out, MRdIBOutput) and out.backbone is not None:
            out = out.backbone
        elif out is None:
            # sampled training: the backbone's partial output of the batch (no
            # full-graph pass); else its full forward
            out = self.backbone.training_output(users, pos, neg)
        terms = dict(self.backbone.loss(users, pos, neg, out=out))
        if not self.active:
            return terms
        clash = {"mrdib_kl", "mrdib_unique", "mrdib_redundant", "mrdib_synergy"} & set(terms)
        if clash:
            raise RuntimeError(f"backbone loss terms {sorted(clash)} clash with MRdIB's names")

        if not self._next_step(users.device):
            return terms  # amortised: the plug-in's terms skip this batch
        if self.sub_batch is not None and users.numel() > self.sub_batch:
            # the sampler shuffles the triples: a prefix is an unbiased sub-sample
            users, pos, neg = users[: self.sub_batch], pos[: self.sub_batch], neg[: self.sub_batch]
        neg2 = neg.view(users.numel(), -1)                                    # [B, n]
        items, ip, ineg, first = self._batch_items(pos, neg2, partial=out.item_ids is not None)
        Z, MU, LV, P = self._codes(out, items, sample=self.training and self.stochastic)
        if first is not None:  # padding rows of `items` (repeated ids) count nowhere
            P = P & first.unsqueeze(1)
        # The terms in this order (the trainer sums them in it). Each is scaled
        # by its weight times `every`, so that the amortised objective keeps
        # its expectation.
        if self.kl_weight > 0:
            terms["mrdib_kl"] = self._kl_term(MU, LV, P, self.every * self.kl_weight)
        if self.redundant_weight > 0 and self.pairs:
            red = self._redundant_term(Z, P, self.every * self.redundant_weight)
            if red is not None:
                terms["mrdib_redundant"] = red
        if self.unique_weight == 0 and self.synergy_weight == 0:
            return terms
        syn = self.synergy_weight > 0
        # rows of `out` (a sampled step's partial output holds the batch's rows only)
        urows = out.user_rows(users)
        margins = self._pair_margins(out, urows, ip, ineg, Z, P, joint=syn)
        if self.unique_weight > 0:
            terms["mrdib_unique"] = self._unique_term(margins, self.every * self.unique_weight)
        if syn:
            terms["mrdib_synergy"] = self._synergy_term(
                out, urows, out.item_rows(pos), out.item_rows(neg2), margins,
                self.every * self.synergy_weight)
        return terms

    def _batch_items(self, pos: Tensor, neg2: Tensor, partial: bool = False
                     ) -> Tuple[Optional[Tensor], Tensor, Tensor, Optional[Tensor]]:
        """``(items, pos_rows, neg_rows, first)``: the items to encode
        (``None``: all; never for a ``partial`` output, which holds the
        batch's rows only), the rows of each triple's positive ``[B]`` and
        negatives ``[B, n]`` among them, and which rows of ``items`` are real
        (static shapes: ``items`` is the sorted distinct ids padded with
        repeats of the last, see
        :func:`~pyg_mmrec.nn.neighbor_sampling.sorted_unique`)."""
        B = pos.numel()
        if not partial and 2 * neg2.numel() + 2 * B >= self.num_items:
            # the batch touches most items: encoding all rows is cheaper than
            # gathering h_m (whose backward scatters into [I, d_m] anyway)
            return None, pos, neg2, None
        items, first, inv = sorted_unique(torch.cat([pos, neg2.reshape(-1)]))
        return items, inv[:B], inv[B:].view_as(neg2), first

    # ------------------------------------------------------------ the terms
    # Each returns its term times `scale` (weight x every). The scale multiplies
    # before any division by k: (scale * x) / k and scale * (x / k) round
    # differently, and fixed-seed runs reproduce the former.
    def _kl_term(self, MU: Tensor, LV: Tensor, P: Tensor, scale: float) -> Tensor:
        r""":math:`\mathcal{L}_{\mathrm{MIB}}`: the KL of every present code to
        :math:`\mathcal{N}(0, I)`, averaged per modality, then over modalities,
        per code dimension (so that :math:`\beta` does not scale with
        :math:`k`). ``MU``, ``LV``: ``[N, M, k]``; ``P``: presence ``[N, M]``."""
        kl = 0.5 * (MU.pow(2) + LV.exp() - LV - 1.0).sum(-1)                  # [N, M]
        Pf = P.to(kl.dtype)
        per_m = (kl * Pf).sum(0) / Pf.sum(0).clamp(min=1)                    # [M]
        return scale * per_m.mean() / MU.size(-1)

    def _redundant_term(self, Z: Tensor, P: Tensor, scale: float) -> Optional[Tensor]:
        r""":math:`\mathcal{L}_{\mathrm{red}}`: the mean MI bound over modality
        pairs (:meth:`_redundancy`) per code dimension, like the KL (an MI
        bound of :math:`k`-dim codes grows with :math:`k`; unnormalised it
        swamps the BPR at :math:`\lambda_r \sim 10^{-2}`); ``None`` when no
        pair has two items. Clamped at 0: MI >= 0, and a negative estimate only
        means the estimator lags the codes; rewarding it lets the codes run
        away from the estimator (observed: KL and CLUB's NLL diverging)."""
        red = self._redundancy(Z, P)
        return None if red is None else scale * red.clamp(min=0) / Z.size(-1)

    def _pair_margins(self, out: RecOutput, users: Tensor, ip: Tensor, ineg: Tensor,
                      Z: Tensor, P: Tensor, joint: bool) -> "_PairMargins":
        r"""The code score margins of every (user, positive, negative) triple,
        shared by the unique and synergy terms: per modality
        :math:`\Delta_m` (over :math:`\tau`) and, with ``joint``, the joint
        code's :math:`d_J`. ``ip [B]`` / ``ineg [B, n]``: rows of ``Z``."""
        N, M, k = Z.shape
        B = users.numel()
        # One normalisation and one gather for all codes of both sides
        # (per-op latency, not FLOPs, dominates this block on CPU).
        table = torch.cat([Z, self._joint(Z, P).unsqueeze(1)], 1) if joint else Z  # [N, M(+1), k]
        idx = torch.cat([ip.unsqueeze(1), ineg], 1).reshape(-1)                    # per triple: i+, i-...
        rows = self._unit(table)[idx].view(B, -1, table.size(1), k)                # [B, 1+n, M(+1), k]
        Pr = P[idx].view(B, -1, M)
        valid = Pr[:, :1] & Pr[:, 1:]                                             # [B, n, M]
        e_u = self._from_backbone(out.user[users])
        # Code scores are cosines (scale-free: a code cannot win a ranking term
        # by growing, and the KL alone sets the noise-to-signal ratio).
        Cu = self._unit(self._user_codes(out, users, e_u, joint))                # [B, M(+1), k]
        s = (rows * Cu.unsqueeze(1)).sum(-1)                                      # [B, 1+n, M(+1)]
        cos = s[:, :1] - s[:, 1:]                                                 # [B, n, M(+1)]
        tau = self.temperature if self.score == "cos" else 1.0
        return _PairMargins(modal=cos[..., :M] / tau,                             # Delta_m [B, n, M]
                            joint=cos[..., M] if joint else None, valid=valid, tau=tau)

    def _unique_term(self, margins: "_PairMargins", scale: float) -> Tensor:
        r""":math:`\mathcal{L}_{\mathrm{uni}}`: each modality code alone ranks
        the triples where both items have it; the mean over the modalities
        that have such a triple (a missing one adds 0)."""
        vf = margins.valid.to(margins.modal.dtype)
        cnt = vf.sum((0, 1))                                                      # [M]
        per_m = (F.softplus(-margins.modal) * vf).sum((0, 1)) / cnt.clamp(min=1)
        return scale * (per_m.sum() / (cnt > 0).sum().clamp(min=1))

    def _synergy_term(self, out: RecOutput, users: Tensor, pos: Tensor, neg2: Tensor,
                      margins: "_PairMargins", scale: float) -> Tensor:
        r""":math:`\mathcal{L}_{\mathrm{syn}}`: the final score (backbone margin,
        stopped, plus :math:`\gamma d_J`) ranks every triple, and the joint
        code beats the best unique code's margin (stopped) where some modality
        is present on both sides."""
        d_joint = margins.joint                                                   # [B, n]
        with torch.no_grad():
            e_u0 = out.user[users]
            d_bb = ((e_u0 * out.item[pos]).sum(-1, keepdim=True)
                    - (e_u0.unsqueeze(1) * out.item[neg2]).sum(-1))
            best = margins.modal.masked_fill(~margins.valid, float("-inf")).max(-1).values
            has = torch.isfinite(best)                                            # [B, n]
            best = best.masked_fill(~has, 0.0)
            hf = has.to(d_joint.dtype)
        loss_syn = F.softplus(-(d_bb + self.gate * d_joint)).mean()
        emergent = F.softplus(best - d_joint / margins.tau)
        loss_syn = loss_syn + (emergent * hf).sum() / hf.sum().clamp(min=1)
        return scale * loss_syn

    # ----------------------------------------------------------- redundancy
    def _redundancy(self, Z: Tensor, P: Tensor) -> Optional[Tensor]:
        r"""Mean MI estimate over modality pairs (rows with both codes, at most
        ``mi_batch`` of them) of the stacked codes ``Z [N, M, k]``; caches the
        detached inputs for the estimator's own step."""
        # static shapes: the rows without both codes stay in with weight 0 (a
        # pair with fewer than two counted rows adds nothing to the mean)
        vals, counted, cache = [], [], []
        idx = {m: j for j, m in enumerate(self.code_modalities)}
        N = Z.size(0)
        for m, n in self.pairs:
            a, b = idx[m], idx[n]
            w = P[:, a] & P[:, b]
            if N < 2:
                continue
            rows = torch.arange(N, device=Z.device)
            if N > self.mi_batch:  # a uniform subset of the counted rows
                score = torch.rand(N, generator=self._generator(Z.device), device=Z.device)
                rows = score.masked_fill(~w, -1.0).topk(self.mi_batch).indices
                w = w[rows]
            x, y = Z[rows, a], Z[rows, b]
            key = self._pair_key(m, n)
            vals.append(self.mi_estimate(key, x, y, w))
            counted.append(w.sum() >= 2)
            cache.append((key, x.detach(), y.detach(), w))
        self._mi_cache = cache
        if not vals:
            return None
        ok, v = torch.stack(counted), torch.stack(vals)
        v = torch.where(ok, v, torch.zeros_like(v))
        return v.sum() / ok.sum().clamp(min=1).to(v.dtype)

    # The estimator's inputs wait in _mi_cache from one plug-in step to the next:
    # checkpoint them, or a resumed run would skip one estimator step.
    def get_extra_state(self) -> Dict[str, Any]:
        return {"mi_cache": [tuple(entry) for entry in self._mi_cache]}

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        if not isinstance(state, dict) or not isinstance(state.get("mi_cache"), list):
            raise ValueError("MRdIB: checkpoint has no valid '_extra_state' (mi_cache)")
        # (key, x, y, weight); entries without a weight count every row
        self._mi_cache = [(str(e[0]), e[1], e[2], e[3] if len(e) > 3 else None)
                          for e in state["mi_cache"]]

    def mi_estimate(self, key: str, x: Tensor, y: Tensor,
                    weight: Optional[Tensor] = None) -> Tensor:
        """The estimate minimised by the main loss for one modality pair (on
        the rows where ``weight``, bool, is set; default all). By the
        estimators' contract (:mod:`pyg_mmrec.nn.mi_estimators`) it is
        differentiable in ``x`` and ``y`` only: the estimator's parameters are
        constants here and are trained by :meth:`auxiliary_loss` alone."""
        est = self.estimators[key]
        fn = getattr(est, "mi_upper_bound", None) or getattr(est, "mi_estimate")
        return fn(x, y, weight=weight)

    def auxiliary_parameters(self) -> Iterable[torch.nn.Parameter]:
        params = list(self.backbone.auxiliary_parameters())
        if self.active and self.redundant_weight > 0 and self.pairs:
            params += list(self.estimators.parameters())
        return params

    def auxiliary_loss(self, users: Tensor, pos: Tensor, neg: Tensor) -> Optional[Tensor]:
        total = self.backbone.auxiliary_loss(users, pos, neg)
        if not (self.active and self.redundant_weight > 0 and self.pairs and self._is_plugin_step()):
            return total  # (amortised like the main terms: only before a plug-in step)
        # The estimator learns on the (detached) codes of the previous plug-in
        # step; before the first one there are none, and running the backbone
        # here would consume its RNG (dropout): the first step is skipped.
        losses = [self.estimators[key].learning_loss(x, y, w) for key, x, y, w in self._mi_cache]
        if not losses:
            return total
        own = torch.stack(losses).mean()
        return own if total is None else total + own

    # -------------------------------------------------------------- new items
    @property
    def supports_new_items(self) -> bool:  # type: ignore[override]
        return self.backbone.supports_new_items

    @property
    def num_anchor_items(self) -> int:
        return self.backbone.num_anchor_items

    def check_new_items(self, features, masks=None):
        if not self.backbone.supports_new_items or not self.backbone.modalities:
            err = self.backbone._no_content_path()
            raise ValueError(f"MRdIB over {err}")
        return self.backbone.check_new_items(features, masks)

    @torch.no_grad()
    def add_items(self, features: Dict[str, Tensor],
                  masks: Optional[Dict[str, Tensor]] = None) -> Tensor:
        """Grows the backbone (:meth:`Recommender.add_items`); the plug-in's
        encoders read the new items' backbone representations as any other."""
        self.check_new_items(features, masks)
        ids = self.backbone.add_items(features, masks)
        self.num_items = self.backbone.num_items
        return ids

    def extra_repr(self) -> str:
        return (f"enabled={self.enabled}, modalities={self.code_modalities}, latent_dim={self.latent_dim}, "
                f"kl={self.kl_weight}, unique={self.unique_weight}, redundant={self.redundant_weight}, "
                f"synergy={self.synergy_weight}, mi={self.mi_estimator}, every={self.every}")
