r"""The InfoNCE contrastive loss between aligned views, with a correctly
averaged multi-view variant."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor


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
