r"""The InfoNCE contrastive loss between aligned views, with a correctly
averaged multi-view variant."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor


#: the fused pair needs exp(S - max S) not to underflow over a row: with cosine
#: similarities S spans at most 2 / tau, so tau >= 1/40 keeps it above e^-80
_FUSED_MIN_TEMPERATURE = 1.0 / 40.0


class _PairLoss(torch.autograd.Function):
    r"""``(L(a, b), L(b, a))`` of :meth:`InfoNCE._both_ways` (``a`` already
    divided by the temperature) from one exponential of the similarity matrix:
    :math:`P = \exp(S - c)` with one shift :math:`c = \max S` serves the
    row-wise and the column-wise log-sum-exp (their sums), and its rows and
    columns give the gradient, :math:`\partial S = P \odot (u \mathbf{1}^\top +
    \mathbf{1} v^\top) - \operatorname{diag}(d)`, without the four
    exponentials and the shifts that two autograd ``logsumexp`` recompute.
    For bounded similarities only (cosine, see ``_FUSED_MIN_TEMPERATURE``)."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, keep: Optional[Tensor]):
        s = a @ b.t()
        pos = s.diagonal()
        c = s.amax()
        p = torch.exp(s - c)
        del s
        if keep is not None:  # left-out rows are neither anchors nor negatives
            p.mul_(keep.unsqueeze(0)).mul_(keep.unsqueeze(1))
            count = keep.sum().clamp(min=1)
        else:
            count = torch.full((), float(a.size(0)), dtype=a.dtype, device=a.device)
        tiny = torch.finfo(p.dtype).tiny  # a left-out row sums to 0: finite, weighted 0
        row, col = p.sum(1).clamp_(min=tiny), p.sum(0).clamp_(min=tiny)
        by_row = torch.log(row) + c - pos
        by_col = torch.log(col) + c - pos
        if keep is not None:
            by_row, by_col = by_row * keep, by_col * keep
        ctx.save_for_backward(a, b, p, row, col, count, keep)
        return by_row.sum() / count, by_col.sum() / count

    @staticmethod
    def backward(ctx, g_row: Tensor, g_col: Tensor):
        a, b, p, row, col, count, keep = ctx.saved_tensors
        u = g_row / (count * row)
        v = g_col / (count * col)
        d = (g_row + g_col) / count
        if keep is not None:
            u, v, d = u * keep, v * keep, d * keep
        ds = p * (u.unsqueeze(1) + v.unsqueeze(0))
        ds.diagonal().sub_(d)
        grad_a = ds @ b if ctx.needs_input_grad[0] else None
        grad_b = ds.t() @ a if ctx.needs_input_grad[1] else None
        return grad_a, grad_b, None


class InfoNCE(torch.nn.Module):
    r"""The InfoNCE loss from the `"Representation Learning with Contrastive
    Predictive Coding" <https://arxiv.org/abs/1807.03748>`_ paper, used by
    `I3-MRec <https://arxiv.org/abs/2508.04247>`_ to maximise the mutual
    information between the full fusion :math:`Z` and the masked fusion
    :math:`Z^{\mathcal{M}}` of the same items.

    Row :math:`i` of view :math:`a` is the anchor, row :math:`i` of view
    :math:`b` its positive and the other rows of :math:`b` its negatives:

    .. math::
        \mathcal{L}(a, b) = -\frac{1}{N}\sum_{i=1}^N \log
            \frac{\exp(s(a_i, b_i)/\tau)}{\sum_{j=1}^N \exp(s(a_i, b_j)/\tau)},

    with :math:`s` the cosine similarity (or the dot product). With :math:`V`
    views, :meth:`multi_view` averages over the :math:`V(V-1)` ordered pairs,
    so the loss scale does not depend on the number of views (or, to reproduce
    the I3-MRec reference code, weights their sum by :math:`7/6`);
    :math:`-\mathcal{L} + \log N` lower-bounds :math:`I(a; b)`.

    Args:
        temperature (float, optional): :math:`\tau`. (default: :obj:`0.2`)
        normalize (bool, optional): use cosine similarity (L2-normalise the
            rows first); otherwise the plain dot product. (default: :obj:`True`)
        symmetric (bool, optional): in :meth:`forward`, average
            :math:`\mathcal{L}(a, b)` and :math:`\mathcal{L}(b, a)`.
            (default: :obj:`False`)

    Shapes:
        - **input:** views :math:`(N, d)` each
        - **output:** scalar
    """

    def __init__(self, temperature: float = 0.2, normalize: bool = True,
                 symmetric: bool = False) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"InfoNCE: temperature must be positive, got {temperature}")
        self.temperature = float(temperature)
        self.normalize = bool(normalize)
        self.symmetric = bool(symmetric)

    def reset_parameters(self) -> None:  # no parameters; kept for the PyG convention
        pass

    def _prepare(self, view: Tensor, name: str) -> Tensor:
        if view.dim() != 2:
            raise ValueError(f"InfoNCE: expected {name} of shape [N, d], got {list(view.shape)}")
        return F.normalize(view, dim=-1) if self.normalize else view

    def _both_ways(self, a: Tensor, b: Tensor, weight: Optional[Tensor] = None
                   ) -> tuple[Tensor, Tensor]:
        r"""``(L(a, b), L(b, a))`` from one similarity matrix: the row-wise and
        the column-wise log-sum-exp of :math:`S = a b^\top / \tau`; ``weight``
        (bool ``[N]``): rows taking part, the others are neither anchors nor
        negatives (the loss of the kept rows alone, with static shapes)."""
        if self.normalize and self.temperature >= _FUSED_MIN_TEMPERATURE:
            keep = None if weight is None else weight.to(torch.bool).to(a.dtype)
            return _PairLoss.apply(a / self.temperature, b, keep)
        return self._both_ways_autograd(a, b, weight)

    def _both_ways_autograd(self, a: Tensor, b: Tensor, weight: Optional[Tensor] = None
                            ) -> tuple[Tensor, Tensor]:
        """:meth:`_both_ways` in plain autograd (two ``logsumexp``): for
        unbounded similarities (``normalize=False``) and as the reference of
        the fused pair."""
        s = (a / self.temperature) @ b.t()
        pos = s.diagonal()
        if weight is None:
            return ((torch.logsumexp(s, dim=1) - pos).mean(),
                    (torch.logsumexp(s, dim=0) - pos).mean())
        keep = weight.to(torch.bool)
        w = keep.to(s.dtype)
        count = w.sum().clamp(min=1)
        by_row = torch.logsumexp(s.masked_fill(~keep.unsqueeze(0), float("-inf")), dim=1)
        by_col = torch.logsumexp(s.masked_fill(~keep.unsqueeze(1), float("-inf")), dim=0)
        # (a left-out row's log-sum-exp is finite as long as one row is kept)
        return (((by_row - pos) * w).sum() / count, ((by_col - pos) * w).sum() / count)

    def forward(self, anchor: Tensor, positive: Tensor) -> Tensor:
        a, b = self._prepare(anchor, "anchor"), self._prepare(positive, "positive")
        if a.shape != b.shape:
            raise ValueError(f"InfoNCE: views must have the same shape, got "
                             f"{list(a.shape)} and {list(b.shape)}")
        ab, ba = self._both_ways(a, b)
        return 0.5 * (ab + ba) if self.symmetric else ab

    def multi_view(self, views: Union[Sequence[Tensor], Tensor],
                   scaling: str = "mean", weight: Optional[Tensor] = None) -> Tensor:
        r""":math:`\mathcal{L}(v_a, v_b)` over all ordered pairs :math:`a \neq b`
        of ``views`` (a sequence of, or a stacked ``[V, N, d]`` tensor of,
        :math:`V \geq 2` aligned views). Each unordered pair costs one
        similarity matrix.

        Args:
            views: the aligned views.
            scaling (str, optional): ``"mean"``: the mean over the
                :math:`V(V-1)` ordered pairs (independent of :math:`V`);
                ``"sum_plus_sixth"``: :math:`\tfrac{7}{6}\sum_{a \neq b}`, the
                weighting of the I3-MRec reference code (which adds a sixth of
                the sum to the sum; :math:`7\times` the mean for 3 views,
                :math:`49\times` for 7). (default: :obj:`"mean"`)
            weight (Tensor, optional): bool ``[N]``, the rows that take part
                (e.g. the first occurrence of every item): the loss of those
                rows alone, without a data-dependent shape. (default: all)
        """
        if scaling not in ("mean", "sum_plus_sixth"):
            raise ValueError(f"InfoNCE.multi_view: scaling must be 'mean' or 'sum_plus_sixth', "
                             f"got {scaling!r}")
        views = list(views.unbind(0)) if isinstance(views, Tensor) else list(views)
        if len(views) < 2:
            raise ValueError(f"InfoNCE.multi_view: need at least 2 views, got {len(views)}")
        vs = [self._prepare(v, f"views[{k}]") for k, v in enumerate(views)]
        if any(v.shape != vs[0].shape for v in vs):
            raise ValueError(f"InfoNCE.multi_view: views must share one shape, got "
                             f"{[list(v.shape) for v in vs]}")
        total = vs[0].new_zeros(())
        for i in range(len(vs)):
            for j in range(i + 1, len(vs)):
                ab, ba = self._both_ways(vs[i], vs[j], weight)
                total = total + ab + ba
        if scaling == "sum_plus_sixth":
            return total * (7.0 / 6.0)
        return total / (len(vs) * (len(vs) - 1))

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(temperature={self.temperature}, "
                f"normalize={self.normalize}, symmetric={self.symmetric})")


__all__ = ["InfoNCE"]
