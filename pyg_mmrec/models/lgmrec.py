r"""LGMRec: local (graph) and global (hypergraph) multimodal embeddings."""
from __future__ import annotations

from itertools import combinations
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..nn.lightgcn_conv import LightGCNConv
from ..nn.missing_aware_conv import MissingAwareConv
from ..nn.neighbor_sampling import sorted_unique
from ._sampled import UserItemSample
from ._static_linear import StaticInputCache, static_linear
from .base import Recommender, RecOutput, bpr_loss


def _triple_ssl(z1_all: Tensor, z2_all: Tensor, index: Tensor, count: Tensor,
                tau: float) -> Tensor:
    r"""Contrast :math:`z_1[b]` with :math:`z_2[b]` against all rows of :math:`z_2`,
    summed over the batch rows :math:`b` (as in the paper); the batch is given as
    its distinct rows ``index`` with their multiplicities ``count``."""
    z2_all = F.normalize(z2_all, dim=-1)
    z1, z2 = F.normalize(z1_all[index], dim=-1), z2_all[index]
    logits = z1 @ z2_all.t() / tau
    per_row = torch.logsumexp(logits, dim=1) - (z1 * z2).sum(-1) / tau
    return (per_row * count.to(per_row.dtype)).sum()


class LGMRec(Recommender):
    r"""LGMRec from `Guo et al.: LGMRec: Local and Global Graph Learning for
    Multimodal Recommendation <https://arxiv.org/abs/2312.16400>`_ (AAAI 2024),
    for any number of modalities.

    * **Collaborative graph embedding** :math:`E^{c} = \mathrm{LightGCN}(E_U, E_I)`.
    * **Modality graph embedding**: items :math:`X^m = f^m W_m`, users the mean
      over their items, then :math:`E^m = \hat{A}^{L_m} [X^m_U; X^m]`.
      Local embeddings :math:`E^{l} = E^{c} + \sum_m \mathrm{norm}(E^m)`.
    * **Global hypergraph embedding**: :math:`K` learnable hyperedges per
      modality; item–hyperedge assignments :math:`H^m_I = \mathrm{softmax}
      ((f^m V_m + g)/\tau)` (Gumbel noise :math:`g` in training, none at
      evaluation), users :math:`H^m_U = \mathrm{softmax}((R f^m V_m + g)/\tau)`;
      with dropout on :math:`H`, :math:`\Lambda^m = H_I^{m\top} E^c_I`,
      :math:`G^m = [H^m_U \Lambda^m; H^m_I \Lambda^m]` (repeated ``n_hyper_layer``
      times on the item side). :math:`z = E^{l} + \alpha\, \mathrm{norm}(\sum_m G^m)`.

    Loss: BPR + ``cl_weight`` · hypergraph contrast between every pair of
    modalities (users of the batch, positive items) + ``reg_weight`` · the L2
    norm of the batch representations.

    **Per-modality representations** ``item_modal[m]`` / ``user_modal[m]`` =
    the modality graph embedding :math:`E^m` (item / user rows, ``[·, d]``).

    **Masks**: an item missing modality :math:`m` contributes zero
    :math:`X^m_i`, is left out of its users' means and sends nothing in the
    first propagation layer; it joins no hyperedge of :math:`m` (its assignment
    row is zero, users' hyperedge logits sum over present items only); item
    contrast pairs need both modalities. A masked feature therefore cannot
    influence the scores. With no modality LGMRec is LightGCN.

    **New items** (:meth:`add_items`): a new item has no edge and a zero ID
    embedding, so its collaborative and modality graph embeddings are zero
    (the modality graphs keep their last layer; with ``n_mm_layers = 0``
    :math:`E^m_i = X^m_i` adds its content there too) and it is represented
    by the global part alone, :math:`z_i = \alpha\,\mathrm{norm}(\sum_m G^m_i)`: its
    hyperedge assignments from its own features read the hyperedge
    embeddings :math:`\Lambda^m`. Those are summed over the items the model
    was built with only, so new items never change them and old items and
    users keep their scores. A missing modality joins no hyperedge, as in
    training.

    **Implementation**: :math:`f^m [W_m, V_m]` is one product (through
    :func:`~pyg_mmrec.models._static_linear.static_linear`); the user mean of
    :math:`X^m` and the user sum of the logits come from one masked sum; the
    collaborative and the unmasked modality layers share one sparse product per
    depth; the contrast evaluates each distinct batch row once, weighted by its
    multiplicity (the same sum).

    **Sampled training** (``fanout``, one entry per collaborative layer,
    :math:`L`): a step computes :math:`z` for the batch's users and items
    (:meth:`sampled_output`) from one layer-wise neighbour sample of them.
    *Sampled* (unbiased; exact when every fan-out is at least the maximum
    degree): :math:`E^c`, and the hyperedge embeddings :math:`\Lambda^m`,
    estimated from ``hyper_sample`` anchor items drawn uniformly with
    replacement (weight :math:`I/n`; all anchors, exactly, when
    ``hyper_sample`` is ``None`` or at least their number) whose :math:`E^c`
    rows join the sample. *Exact*: the modality graph embeddings
    :math:`E^m`, which are linear in :math:`W_m` (:math:`E^m = P^m W_m` with
    :math:`P^m = \hat{A}^{L_m} [F^m_U; F^m_I]` the graph applied to the raw
    features, built once per mask: :math:`O((U + I) F)` memory, :math:`L_m`
    sparse products of width :math:`F`), so the normalisation
    :math:`\mathrm{norm}(E^m)` sees exact rows rather than noisy estimates;
    and the hyperedge assignments of all users and items, so the Gumbel
    noise, the dropout and the contrast (which ranks against all users /
    items) are those of the full model: a step costs :math:`O((U + I) K d +
    (U + I) F K)` for this part (:math:`K` = ``hyper_num``), no propagation
    over the graph. ID embeddings get sparse gradients; evaluation
    propagates the full graph.

    Args:
        embedding_size (int): :math:`d` (64).
        feat_embed_dim (int): width of :math:`W_m` (must equal :math:`d`).
        n_ui_layers (int): LightGCN layers (2).
        n_mm_layers (int): :math:`L_m` (2).
        n_hyper_layer (int): hypergraph layers (1).
        hyper_num (int): :math:`K` hyperedges per modality (4).
        keep_rate (float): 1 − dropout on the assignments (0.5).
        alpha (float): weight of the global embedding (0.3).
        cl_weight (float): contrast weight (1e-4).
        reg_weight (float): L2 weight (1e-6).
        tau (float): temperature of the assignments and contrast (0.2).
        fanout (list of int, optional): neighbours sampled per node at each
            collaborative hop, ``n_ui_layers`` entries; ``None``: full graph.
        hyper_sample (int, optional): sampled training: anchor items drawn per
            step to estimate :math:`\Lambda^m` (1024); ``None``: all (exact).
    """

    def __init__(self, num_users: int, num_items: int, train_edge_index: Tensor,
                 features: Optional[Dict[str, Tensor]] = None,
                 masks: Optional[Dict[str, Tensor]] = None, *,
                 embedding_size: int = 64, feat_embed_dim: int = 64, n_ui_layers: int = 2,
                 n_mm_layers: int = 2, n_hyper_layer: int = 1, hyper_num: int = 4,
                 keep_rate: float = 0.5, alpha: float = 0.3, cl_weight: float = 1e-4,
                 reg_weight: float = 1e-6, tau: float = 0.2,
                 fanout: Optional[List[int]] = None, hyper_sample: Optional[int] = 1024) -> None:
        super().__init__(num_users, num_items, train_edge_index, features, masks)
        if feat_embed_dim != embedding_size:
            raise ValueError(f"feat_embed_dim: must equal embedding_size ({embedding_size}), "
                             f"got {feat_embed_dim}")
        if not 0.0 < keep_rate <= 1.0:
            raise ValueError(f"keep_rate: expected a value in (0, 1], got {keep_rate}")
        if hyper_num < 1:
            raise ValueError(f"hyper_num: expected >= 1, got {hyper_num}")
        if tau <= 0:
            raise ValueError(f"tau: expected > 0, got {tau}")
        if hyper_sample is not None and (isinstance(hyper_sample, bool)
                                         or not isinstance(hyper_sample, int) or hyper_sample < 1):
            raise ValueError(f"hyper_sample: expected a positive int or null, got {hyper_sample!r}")
        self.hyper_sample = hyper_sample
        self.embedding_size = int(embedding_size)
        self.n_ui_layers, self.n_mm_layers = int(n_ui_layers), int(n_mm_layers)
        self.n_hyper_layer, self.hyper_num = int(n_hyper_layer), int(hyper_num)
        self.keep_rate, self.alpha, self.tau = float(keep_rate), float(alpha), float(tau)
        self.cl_weight, self.reg_weight = float(cl_weight), float(reg_weight)

        d = self.embedding_size
        self._init_id_embeddings(d, sparse=self._init_sampler(fanout, self.n_ui_layers))
        self._user_sums: Dict[str, tuple] = {}  # m -> (mask key, feature sums, counts, f)
        self._propagated: Dict[str, tuple] = {}  # m -> (mask key, f, A^L_m [F_U; F_I])
        self.item_trs = torch.nn.ParameterDict({
            m: torch.nn.Parameter(torch.empty(self._features[m].size(1), d))
            for m in self.modalities})
        self.hyper = torch.nn.ParameterDict({
            m: torch.nn.Parameter(torch.empty(self._features[m].size(1), hyper_num))
            for m in self.modalities})
        self.conv = LightGCNConv(num_users, num_items, train_edge_index)
        self.user_mean = MissingAwareConv(aggr="mean")  # items -> users, present only
        self.user_sum = MissingAwareConv(aggr="sum")
        ei = torch.unique(train_edge_index.long(), dim=1)
        self.register_buffer("item_to_user", ei.flip(0), persistent=False)
        self.dropout = torch.nn.Dropout(1.0 - keep_rate)
        self._feature_cache = StaticInputCache()  # scaled constant features
        self._finish_init()

    def reset_parameters(self) -> None:
        self._reset_id_embeddings()
        for p in (*self.item_trs.values(), *self.hyper.values()):
            torch.nn.init.xavier_uniform_(p)

    def _assign(self, logits: Tensor) -> Tensor:
        if self.training:
            return F.gumbel_softmax(logits, tau=self.tau, dim=1, hard=False)
        return torch.softmax(logits / self.tau, dim=1)

    def _propagate(self, ego: Tensor, mm_inputs: Dict[str, Tensor]) -> tuple:
        r"""The collaborative LightGCN (``n_ui_layers``, mean of the layers) and
        the modality graphs (``n_mm_layers``, last layer; the first layer masked)
        on the joint ``[U + I]`` node set, in lock step: at every depth, all
        *unmasked* products share :math:`\hat{A}` and run as one product over
        their concatenated channels (the columns do not interact)."""
        h, total = ego, ego
        xs = dict(mm_inputs)
        d = ego.size(1)
        for layer in range(max(self.n_ui_layers, self.n_mm_layers)):
            joint = []  # (key, tensor) propagated together without a mask
            if layer < self.n_ui_layers:
                joint.append(("", h))
            if layer < self.n_mm_layers:
                for m in self.modalities:
                    if layer == 0:  # missing items send nothing in the first layer
                        xs[m] = self.conv(xs[m], item_mask=self.mask(m))
                    else:
                        joint.append((m, xs[m]))
            if not joint:
                continue
            x = joint[0][1] if len(joint) == 1 else torch.cat([t for _, t in joint], dim=1)
            for (key, _), o in zip(joint, self.conv(x).split(d, dim=1)):
                if key == "":
                    h = o
                    total = total + h
                else:
                    xs[key] = o
        return total / (self.n_ui_layers + 1), xs

    def forward(self) -> RecOutput:
        U, I, d = self.num_users, self.num_items, self.embedding_size
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        if not self.modalities:
            e = self._propagate(ego, {})[0]
            return RecOutput(user=e[:U], item=e[U:])
        size = (I, U)
        mm_inputs, logits = {}, {}
        for m in self.modalities:
            f, mk = self.feature(m), self.mask(m)
            keep = mk.unsqueeze(-1).to(f.dtype)
            # one product for X^m = f W_m and the hyperedge logits f V_m
            proj = static_linear(f, torch.cat([self.item_trs[m], self.hyper[m]], dim=1),
                                 cache=self._feature_cache, key=m)
            x_i, logit_i = proj[:, :d] * keep, proj[:, d:]
            # users: mean of X^m and sum of the logits over their present items,
            # from one masked sum (and its present count)
            agg, count = self.user_sum((torch.cat([x_i, logit_i], dim=1), None),
                                       self.item_to_user, mk, size=size,
                                       return_weight_sum=True)
            count = count.detach()  # a constant of the graph and the mask
            count = torch.where(count > 0, count, torch.ones_like(count)).unsqueeze(-1)
            mm_inputs[m] = torch.cat([agg[:, :d] / count, x_i])
            logits[m] = (logit_i, agg[:, d:])
        e, mm = self._propagate(ego, mm_inputs)
        e_i = e[U:]  # the hypergraph reads the items only
        local = e
        glob_u, glob_i = 0.0, 0.0
        item_modal, user_modal, hyper_u, hyper_i = {}, {}, {}, {}
        for m in self.modalities:
            x = mm[m]
            item_modal[m], user_modal[m] = x[U:], x[:U]
            local = local + F.normalize(x, dim=-1)
            # hypergraph embedding (the random draws keep the per-modality order)
            logit_i, logit_u = logits[m]
            keep = self.mask(m).unsqueeze(-1).to(logit_i.dtype)
            h_i = self._assign(logit_i) * keep
            h_u = self._assign(logit_u)
            h_i, h_u = self.dropout(h_i), self.dropout(h_u)
            g_i = e_i
            # hyperedges summarise the items the model was built with (items
            # appended by add_items read them but do not change them)
            h_src = h_i if self.num_anchor_items == I else h_i[:self.num_anchor_items]
            for _ in range(self.n_hyper_layer):
                lat = h_src.t() @ g_i[:h_src.size(0)]  # [K, d] hyperedge embeddings
                g_i, g_u = h_i @ lat, h_u @ lat
            hyper_u[m], hyper_i[m] = g_u, g_i
            glob_u, glob_i = glob_u + g_u, glob_i + g_i
        glob = F.normalize(torch.cat([glob_u, glob_i]), dim=-1)
        z = local + self.alpha * glob
        extras = {f"hyper_user/{m}": t for m, t in hyper_u.items()}
        extras.update({f"hyper_item/{m}": t for m, t in hyper_i.items()})
        return RecOutput(user=z[:U], item=z[U:], item_modal=item_modal, user_modal=user_modal,
                         extras=extras)

    # ----------------------------------------------------------- sampled steps
    @torch.no_grad()
    def _user_feature_sums(self, m: str) -> Tuple[Tensor, Tensor]:
        r"""Per user, the sum of the raw features of its present items
        ``[U, F]`` and their number ``[U, 1]`` (1 where none): constants of
        the graph and the mask, so :math:`X^m_U` and the user logits of any
        user are exact row products."""
        f, mk = self.feature(m), self.mask(m)
        # the stored mask object, not its content: hashing the content reads it
        # on the host at every step (new inputs are new tensors)
        key = self._masks[m]
        hit = self._user_sums.get(m)
        if hit is None or hit[0] is not key or hit[1].device != f.device or hit[3] is not f:
            total, count = self.user_sum((f, None), self.item_to_user, mk,
                                         size=(self.num_items, self.num_users),
                                         return_weight_sum=True)
            count = torch.where(count > 0, count, torch.ones_like(count)).unsqueeze(-1)
            hit = self._user_sums[m] = (key, total, count, f)
        return hit[1], hit[2]

    @torch.no_grad()
    def _propagated_features(self, m: str) -> Tensor:
        r"""The modality graph applied to the raw features, ``[U + I, F]``:
        :math:`P^m = \hat{A}^{L_m} [F^m_U; F^m_I]` (users: mean of their present
        items' features; first layer masked, as :meth:`forward`). Every step
        of the modality graph is linear and :math:`W_m` comes first, so
        :math:`E^m = P^m W_m` exactly: a constant of the graph and the mask,
        built once per mask (:math:`L_m` sparse products of width :math:`F`)."""
        f, mk = self.feature(m), self.mask(m)
        key = self._masks[m]  # the stored mask object (see _user_feature_sums)
        hit = self._propagated.get(m)
        if hit is None or hit[0] is not key or hit[1] is not f or hit[2].device != f.device:
            f_u, count = self._user_feature_sums(m)
            x = torch.cat([f_u / count, torch.where(mk.unsqueeze(-1), f, torch.zeros_like(f))])
            for layer in range(self.n_mm_layers):
                x = self.conv(x, item_mask=mk) if layer == 0 else self.conv(x)
            hit = self._propagated[m] = (key, f, x)
        return hit[2]

    def sampled_output(self, users: Tensor, items: Tensor) -> RecOutput:
        r"""The partial output of a sampled step (see "Sampled training"):
        rows ``user_ids`` / ``item_ids`` (sorted unique ``users`` / ``items``,
        plus the anchor items drawn for :math:`\Lambda^m`); the hypergraph
        extras cover all users / items, as in :meth:`forward`."""
        if self.sampler is None:
            raise RuntimeError("sampled_output: the model was built with fanout=None")
        # 1) hyperedge assignments of every user and item, drawn in forward()'s order
        assign = {}
        for m in self.modalities:
            f, mk = self.feature(m), self.mask(m)
            f_u, _ = self._user_feature_sums(m)
            logit_i = static_linear(f, self.hyper[m], cache=self._feature_cache, key=m)
            logit_u = static_linear(f_u, self.hyper[m], cache=self._feature_cache,
                                    key=("users", m))
            h_i = self._assign(logit_i) * mk.unsqueeze(-1).to(logit_i.dtype)
            h_u = self._assign(logit_u)
            assign[m] = (self.dropout(h_i), self.dropout(h_u))
        # 2) the anchor items that estimate the hyperedge embeddings
        A = self.num_anchor_items
        dev = users.device
        if not self.modalities:
            lam_items, lam_w = users.new_empty(0), 1.0
        elif self.hyper_sample is None or self.hyper_sample >= A:
            lam_items, lam_w = torch.arange(A, device=dev), 1.0
        else:
            lam_items = torch.randint(0, A, (self.hyper_sample,), device=dev)
            lam_w = A / self.hyper_sample
        s = UserItemSample(self.sampler, self.conv, users,
                           torch.cat([items.reshape(-1), lam_items]))
        n_u = s.num_seed_users
        ego = s.gather(self.user_embedding, self.item_embedding)
        e = s.sub.propagate(ego)  # E^c at the seeds: the mean of the n_ui_layers sampled layers
        ids = dict(user_ids=s.user_ids, item_ids=s.item_ids)
        if not self.modalities:
            return RecOutput(user=e[:n_u], item=e[n_u:], **ids)
        local = e
        item_modal, user_modal, hyper_u, hyper_i = {}, {}, {}, {}
        glob = 0.0
        e_lam = e[n_u + torch.searchsorted(s.item_ids, lam_items)]
        rows = torch.cat([s.user_ids, s.item_ids + self.num_users])
        for m in self.modalities:
            # exact: E^m = P^m W_m read at the seeds' rows (no sampling)
            x = static_linear(self._propagated_features(m), self.item_trs[m],
                              cache=self._feature_cache, key=("propagated", m), rows=rows)
            item_modal[m], user_modal[m] = x[n_u:], x[:n_u]
            local = local + F.normalize(x, dim=-1)
            h_i, h_u = assign[m]
            g_src, h_src, w = e_lam, h_i[lam_items], lam_w
            for _ in range(self.n_hyper_layer):
                lat = (h_src.t() @ g_src) * w  # [K, d] hyperedge embeddings
                g_i, g_u = h_i @ lat, h_u @ lat
                # deeper layers read g_i of all anchors, known exactly from here on
                g_src, h_src, w = g_i[:A], h_i[:A], 1.0
            hyper_u[m], hyper_i[m] = g_u, g_i
            glob = glob + torch.cat([g_u[s.user_ids], g_i[s.item_ids]])
        z = local + self.alpha * F.normalize(glob, dim=-1)
        extras = {f"hyper_user/{m}": t for m, t in hyper_u.items()}
        extras.update({f"hyper_item/{m}": t for m, t in hyper_i.items()})
        return RecOutput(user=z[:n_u], item=z[n_u:], item_modal=item_modal,
                         user_modal=user_modal, extras=extras, **ids)

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor,
             out: Optional[RecOutput] = None) -> Dict[str, Tensor]:
        out = self.training_output(users, pos, neg) if out is None else out
        u = out.user[out.user_rows(users)]
        p, n = out.item[out.item_rows(pos)], out.item[out.item_rows(neg)]
        terms = {"bpr": bpr_loss(u, p, n)}
        if self.reg_weight:
            terms["reg"] = self.reg_weight * (u.norm() + p.norm() + n.norm()) / users.numel()
        if self.cl_weight and len(self.modalities) > 1:
            cl = u.new_zeros(())
            # a row repeated in the batch adds the same term again: evaluate each
            # distinct row once, weighted by its multiplicity (same sum); static
            # shapes: padding rows and items without both modalities count 0
            uu, _, u_inv = sorted_unique(users)
            u_cnt = torch.zeros(uu.numel(), device=uu.device).scatter_add_(
                0, u_inv.reshape(-1), torch.ones(u_inv.numel(), device=uu.device))
            pi, _, p_inv = sorted_unique(pos)
            for a, b in combinations(self.modalities, 2):
                hu_a, hu_b = out.extras[f"hyper_user/{a}"], out.extras[f"hyper_user/{b}"]
                hi_a, hi_b = out.extras[f"hyper_item/{a}"], out.extras[f"hyper_item/{b}"]
                cl = cl + _triple_ssl(hu_a, hu_b, uu, u_cnt, self.tau)
                both = (self.mask(a)[pos] & self.mask(b)[pos]).reshape(-1)
                p_cnt = torch.zeros(pi.numel(), device=pi.device).scatter_add_(
                    0, p_inv.reshape(-1), both.float())
                cl = cl + _triple_ssl(hi_a, hi_b, pi, p_cnt, self.tau)
            terms["cl"] = self.cl_weight * cl
        return terms

    # ------------------------------------------------------------- new items
    supports_new_items = True  # see "New items" in the class docstring


__all__ = ["LGMRec"]
