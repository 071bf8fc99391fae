r"""MMGCN: one graph convolution network per modality over the user–item graph."""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..nn.lightgcn_conv import LightGCNConv
from ._sampled import PresentWeights, UserItemSample
from ._static_linear import StaticInputCache, static_linear
from .base import Recommender, RecOutput, bpr_loss


class _L2Normalize(torch.autograd.Function):
    r""":math:`y = x / \max(\lVert x \rVert, \epsilon)` row-wise (``F.normalize``)
    with the closed-form backward :math:`\partial x = (\partial y - y\,\langle
    \partial y, y\rangle) / \lVert x \rVert` (rows at or above :math:`\epsilon`;
    below it the clamp makes the map linear): two passes over ``[N, F]``
    instead of autograd's chain of expanded elementwise products."""

    @staticmethod
    def forward(ctx, x: Tensor, eps: float) -> Tensor:
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        inv = norm.clamp_min(eps).reciprocal()
        y = x * inv
        ctx.save_for_backward(y, inv, norm >= eps)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        y, inv, on_sphere = ctx.saved_tensors
        dot = (grad * y).sum(-1, keepdim=True).masked_fill_(~on_sphere, 0.0)
        return torch.addcmul(grad, y, dot, value=-1.0).mul_(inv), None


def _l2_normalize(x: Tensor, eps: float = 1e-12) -> Tensor:
    return _L2Normalize.apply(x, eps)


class _ModalityGCN(torch.nn.Module):
    r"""The GCN of one modality: user preferences :math:`p_u^m`, item features
    :math:`\mathrm{MLP}_m(f_i^m)`, and :math:`L` layers of

    .. math::
        h_n^{(l)} = \mathrm{LReLU}\big(W_l (\hat{A} x^{(l-1)})_n\big), \quad
        \hat{x}_n^{(l)} = \mathrm{LReLU}(W'_l x_n^{(l-1)}) + e_n, \quad
        x_n^{(l)} = \mathrm{LReLU}(G_l h_n^{(l)} + \hat{x}_n^{(l)}).
    """

    def __init__(self, num_users: int, in_dim: int, dim_latent: int, dim: int,
                 n_layers: int) -> None:
        super().__init__()
        self.preference = torch.nn.Parameter(torch.empty(num_users, dim_latent))
        self.mlp = torch.nn.Linear(in_dim, dim_latent)
        dims = [dim_latent] + [dim] * (n_layers - 1)
        self.conv = torch.nn.ModuleList([torch.nn.Linear(i, dim, bias=False) for i in dims])
        self.linear = torch.nn.ModuleList([torch.nn.Linear(i, dim) for i in dims])
        self.gate = torch.nn.ModuleList([torch.nn.Linear(dim, dim) for _ in dims])
        self.reset_parameters()

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_normal_(self.preference)
        for mod in (self.mlp, *self.conv, *self.linear, *self.gate):
            mod.reset_parameters()

    def initial(self, feat: Tensor, mask: Tensor,
                cache: Optional[StaticInputCache] = None) -> Tensor:
        r""":math:`x^{(0)} = \mathrm{norm}([p^m_U; \mathrm{MLP}_m(f^m)])` over the joint
        user + item node set ``[U + I, dim_latent]``; missing items start from zero.
        ``cache`` keeps the scaled copy of the constant ``feat`` (see
        :func:`~pyg_mmrec.models._static_linear.static_linear`)."""
        x_i = static_linear(feat, self.mlp.weight.t(), self.mlp.bias, cache, "feat")
        x_i = x_i * mask.unsqueeze(-1).to(feat.dtype)
        return _l2_normalize(torch.cat([self.preference, x_i]))

    def initial_rows(self, feat: Tensor, mask: Tensor, cache: Optional[StaticInputCache],
                     sample: UserItemSample) -> Tensor:
        r""":meth:`initial` for the nodes of a sampled step only (rows in
        ``sample.sub.n_id`` order): the same numbers as those rows of the
        full :meth:`initial`."""
        def item_rows(rows: Tensor) -> Tensor:
            x_i = static_linear(feat, self.mlp.weight.t(), self.mlp.bias, cache, "feat",
                                rows=rows)
            return x_i * mask[rows].unsqueeze(-1).to(feat.dtype)

        return _l2_normalize(sample.gather(lambda rows: self.preference[rows], item_rows))

    def message(self, layer: int, x: Tensor) -> tuple[Tensor, Tensor]:
        r"""``(x W_l^T, x W'^T_l + b'_l)`` from one product (both read the same
        :math:`x^{(l-1)}`). :math:`W_l` is applied *before* propagating: it is
        linear and bias-free, so :math:`W_l(\hat{A}x) = \hat{A}(x W_l^\top)` (the
        masked renormalisation only rescales rows), and the propagation then
        runs on :math:`d` instead of ``dim_latent`` channels."""
        w, lin = self.conv[layer].weight, self.linear[layer]
        d = w.size(0)
        bias = torch.cat([lin.bias.new_zeros(d), lin.bias])
        out = torch.addmm(bias, x, torch.cat([w, lin.weight]).t())
        return out[:, :d], out[:, d:]

    def update(self, layer: int, lin: Tensor, agg: Tensor, id_emb: Tensor) -> Tensor:
        r"""One layer given the propagated messages ``agg`` :math:`= \hat{A}(xW_l^\top)`,
        ``lin`` :math:`= W'_l x + b'_l` and the ID embeddings ``id_emb``
        :math:`[U + I, d]`."""
        h = F.leaky_relu(agg)
        x_hat = F.leaky_relu(lin) + id_emb
        return F.leaky_relu(self.gate[layer](h) + x_hat)

    def forward(self, conv: LightGCNConv, feat: Tensor, mask: Tensor,
                id_user: Tensor, id_item: Tensor) -> tuple[Tensor, Tensor]:
        id_emb = torch.cat([id_user, id_item])
        x = self.initial(feat, mask)
        for layer in range(len(self.conv)):
            # missing items send nothing in the first layer
            msg, lin = self.message(layer, x)
            agg = conv(msg, item_mask=mask if layer == 0 else None)
            x = self.update(layer, lin, agg, id_emb)
        return x[:conv.num_users], x[conv.num_users:]


class MMGCN(Recommender):
    r"""MMGCN from `Wei et al.: MMGCN: Multi-modal Graph Convolution Network for
    Personalized Recommendation of Micro-video <https://arxiv.org/abs/1908.06066>`_
    (ACM MM 2019), for any number of modalities (at least one).

    Every modality :math:`m` runs its own GCN (:class:`_ModalityGCN`) over the
    user–item graph, with modality-specific user preferences :math:`p_u^m` and
    shared ID embeddings :math:`e_n` added at every layer; the final
    representations average the modalities,

    .. math::
        z_n = \frac{1}{M} \sum_m x_n^{m,(L)}, \qquad \hat{y}_{ui} = z_u^\top z_i,

    trained with BPR + ``reg_weight`` · mean squared ID embeddings and
    preferences of the batch.

    **Per-modality representations** ``item_modal[m]`` / ``user_modal[m]`` =
    :math:`x^{m,(L)}` (``[I, d]`` / ``[U, d]``).

    **Masks**: an item missing modality :math:`m` starts that GCN from zero
    (instead of its filled feature) and sends nothing to its users in the first
    layer; later layers carry only ID and preference information, so a masked
    feature cannot influence the scores.

    **New items** (:meth:`add_items`): a new item has no edge and a zero ID
    embedding, so in every modality GCN it starts from its own
    :math:`\mathrm{MLP}_m(f_i^m)` (zero when :math:`m` is missing) and each
    layer keeps only the self path,
    :math:`x_i^{(l)} = \mathrm{LReLU}(G_l\,\mathrm{LReLU}(0) + \mathrm{LReLU}(W'_l
    x_i^{(l-1)}))`: a representation from content alone, exactly what an old
    item without interactions and with a zero ID embedding gets. Old items
    and users are unchanged (new items send nothing).

    **Implementation**: :math:`W_l` is applied before the propagation (it is
    linear, so :math:`W_l \hat{A} x = \hat{A} x W_l^\top`, on :math:`d` instead of
    ``dim_latent`` channels), the modalities run in lock step on the joint
    user + item node set, and the unmasked layers of all modalities share one
    sparse product. The constant features go through
    :func:`~pyg_mmrec.models._static_linear.static_linear`.

    **Sampled training** (``fanout``, one entry per layer): a step computes
    :math:`z` only for the batch's users and items (:meth:`sampled_output`)
    from one layer-wise neighbour sample of them (shared by the modalities),
    as GraphSAGE: layer :math:`l` of a node reads its own
    :math:`x^{(l-1)}` exactly and the sampled estimate of
    :math:`\hat{A}(x^{(l-1)}W_l^\top)` (unbiased; the first layer masked with
    exact renormalisation denominators). The layers are non-linear, so the
    representations are exact when every fan-out is at least the maximum
    degree and otherwise approximate (each aggregation unbiased, not the
    whole stack). ID embeddings get sparse gradients; the preferences
    :math:`p^m` stay dense parameters (their gradient has :math:`U` rows).
    Evaluation propagates the full graph.

    Args:
        embedding_size (int): :math:`d` (64).
        dim_latent (int): width of :math:`\mathrm{MLP}_m` and :math:`p_u^m` (256).
        n_layers (int): :math:`L` (2).
        reg_weight (float): weight of the squared-embedding penalty.
        fanout (list of int, optional): neighbours sampled per node at each
            hop, one per layer; ``None``: full-graph propagation.
    """

    def __init__(self, num_users: int, num_items: int, train_edge_index: Tensor,
                 features: Optional[Dict[str, Tensor]] = None,
                 masks: Optional[Dict[str, Tensor]] = None, *,
                 embedding_size: int = 64, dim_latent: int = 256, n_layers: int = 2,
                 reg_weight: float = 1e-4, fanout: Optional[List[int]] = None) -> None:
        super().__init__(num_users, num_items, train_edge_index, features, masks)
        if not self.modalities:
            raise ValueError("features: MMGCN needs at least one modality (it has no "
                             "ID-only branch); use LightGCN without features")
        if n_layers < 1:
            raise ValueError(f"n_layers: expected >= 1, got {n_layers}")
        self.embedding_size, self.n_layers = int(embedding_size), int(n_layers)
        self.reg_weight = float(reg_weight)
        d = self.embedding_size
        self._init_id_embeddings(d, sparse=self._init_sampler(fanout, self.n_layers))
        self._present = PresentWeights()  # exact denominators of sampled masked hops
        self.gcns = torch.nn.ModuleDict({
            m: _ModalityGCN(num_users, self._features[m].size(1), dim_latent, d, n_layers)
            for m in self.modalities})
        self.ui_conv = LightGCNConv(num_users, num_items, train_edge_index)
        self._feature_caches: Dict[str, StaticInputCache] = {}  # scaled constant features
        self._finish_init()

    def reset_parameters(self) -> None:
        self._reset_id_embeddings(torch.nn.init.xavier_normal_)
        for g in self.gcns.values():
            g.reset_parameters()

    def forward(self) -> RecOutput:
        U, d = self.num_users, self.embedding_size
        gcns = [self.gcns[m] for m in self.modalities]
        masks = [self.mask(m) for m in self.modalities]
        id_emb = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        # All modalities run in lock step on the joint [U + I] node set (no
        # user/item split and re-concatenation per layer).
        caches = [self._feature_caches.setdefault(m, StaticInputCache()) for m in self.modalities]
        xs = [g.initial(self.feature(m), mk, c)
              for g, m, mk, c in zip(gcns, self.modalities, masks, caches)]
        for layer in range(self.n_layers):
            msgs, lins = zip(*[g.message(layer, x) for g, x in zip(gcns, xs)])
            if layer == 0:  # modality-specific masks: one product per modality
                aggs = [self.ui_conv(msg, item_mask=mk) for msg, mk in zip(msgs, masks)]
            elif len(msgs) == 1:
                aggs = [self.ui_conv(msgs[0])]
            else:  # unmasked layers share Â: one product over all modalities' channels
                aggs = list(self.ui_conv(torch.cat(msgs, dim=1)).split(d, dim=1))
            xs = [g.update(layer, lin, agg, id_emb) for g, lin, agg in zip(gcns, lins, aggs)]
        user_modal = {m: x[:U] for m, x in zip(self.modalities, xs)}
        item_modal = {m: x[U:] for m, x in zip(self.modalities, xs)}
        z = torch.stack(xs).mean(0)
        return RecOutput(user=z[:U], item=z[U:], item_modal=item_modal, user_modal=user_modal)

    def sampled_output(self, users: Tensor, items: Tensor) -> RecOutput:
        r"""The partial output of a sampled step (see "Sampled training"):
        rows ``user_ids`` / ``item_ids`` (sorted unique ``users`` / ``items``)."""
        if self.sampler is None:
            raise RuntimeError("sampled_output: the model was built with fanout=None")
        s = UserItemSample(self.sampler, self.ui_conv, users, items)
        sizes, L = s.sub.sizes, self.n_layers
        id_emb = s.gather(self.user_embedding, self.item_embedding)
        xs: List[Tensor] = []
        for m in self.modalities:
            g, mk = self.gcns[m], self.mask(m)
            x = g.initial_rows(self.feature(m), mk,
                               self._feature_caches.setdefault(m, StaticInputCache()), s)
            for layer in range(L):
                j = L - 1 - layer  # x holds D_{j+1}; this layer computes D_j
                msg, lin = g.message(layer, x)
                agg = s.hop(j, msg, item_mask=mk if layer == 0 else None,
                            present=self._present, key=m)
                x = g.update(layer, lin[:sizes[j]], agg, id_emb[:sizes[j]])
            xs.append(x)
        n_u = s.num_seed_users
        user_modal = {m: x[:n_u] for m, x in zip(self.modalities, xs)}
        item_modal = {m: x[n_u:] for m, x in zip(self.modalities, xs)}
        z = torch.stack(xs).mean(0)
        return RecOutput(user=z[:n_u], item=z[n_u:], item_modal=item_modal,
                         user_modal=user_modal, user_ids=s.user_ids, item_ids=s.item_ids)

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor,
             out: Optional[RecOutput] = None) -> Dict[str, Tensor]:
        out = self.training_output(users, pos, neg) if out is None else out
        terms = {"bpr": bpr_loss(out.user[out.user_rows(users)], out.item[out.item_rows(pos)],
                                 out.item[out.item_rows(neg)])}
        if self.reg_weight:
            reg = (self.user_embedding(users).pow(2).mean() + self.item_embedding(pos).pow(2).mean()
                   + self.item_embedding(neg).pow(2).mean())
            for g in self.gcns.values():
                reg = reg + g.preference[users].pow(2).mean()
            terms["reg"] = self.reg_weight * reg
        return terms

    # ------------------------------------------------------------- new items
    supports_new_items = True  # see "New items" in the class docstring


__all__ = ["MMGCN"]
