r"""Missing-aware fusion of per-modality item representations."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor


class MissingAwareFusion(torch.nn.Module):
    r"""The missing-aware fusion module of `"I3-MRec: Invariant Learning with
    Information Bottleneck for Incomplete Modality Recommendation"
    <https://arxiv.org/abs/2508.04247>`_.

    Item :math:`i` has representations :math:`h_i^m` for modalities
    :math:`m = 1, \dots, M` and a presence indicator :math:`\mathcal{M}_{im}
    \in \{0, 1\}` (real missingness, optionally AND-ed with a sampled mask).
    Only present modalities are pooled, then a shared transform is applied:

    .. math::
        \bar{h}_i = \sum_m \alpha_{im} h_i^m, \qquad
        \alpha_{im} = \frac{\mathcal{M}_{im}\, \exp(s_{im})}
                           {\sum_{m'} \mathcal{M}_{im'} \exp(s_{im'})}, \qquad
        z_i = \sigma\big(W \bar{h}_i\big),

    with :math:`s_{im} = 0` (``mode="mean"``: the mean of the present
    modalities) or :math:`s_{im} = q^\top \tanh(W_a h_i^m + b_a)`
    (``mode="attention"``). Unlike zero-filling, a missing modality neither
    shrinks nor shifts the fused vector. Items with no present modality take
    ``fallback`` as :math:`\bar{h}_i` (zeros if not given).

    Args:
        channels (int): size :math:`d` of each modality representation.
        mode (str, optional): ``"mean"`` or ``"attention"``. (default: :obj:`"mean"`)
        transform (str, optional): :math:`\sigma(W\cdot)`: ``"tanh"``
            (a bias-free linear map initialised to the identity, then
            :math:`\tanh`), ``"linear"`` (the map only) or ``"none"``.
            (default: :obj:`"tanh"`)
        dropout (float, optional): dropout on :math:`W\bar{h}_i` during
            training. (default: :obj:`0.0`)
        attention_channels (int, optional): hidden size of the attention
            scorer. (default: :obj:`channels`)

    Shapes:
        - **input:** :math:`h` :math:`(M, N, d)` (or a sequence of :math:`M`
          tensors :math:`(N, d)`), mask :math:`(M, N)` bool, fallback
          :math:`(N, d)` optional
        - **output:** :math:`(N, d)`
    """

    def __init__(self, channels: int, mode: str = "mean", transform: str = "tanh",
                 dropout: float = 0.0, attention_channels: Optional[int] = None) -> None:
        super().__init__()
        if channels <= 0:
            raise ValueError(f"MissingAwareFusion: channels must be positive, got {channels}")
        if mode not in ("mean", "attention"):
            raise ValueError(f"MissingAwareFusion: mode must be 'mean' or 'attention', got '{mode}'")
        if transform not in ("tanh", "linear", "none"):
            raise ValueError(f"MissingAwareFusion: transform must be 'tanh', 'linear' or "
                             f"'none', got '{transform}'")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MissingAwareFusion: dropout must be in [0, 1), got {dropout}")
        self.channels, self.mode, self.transform = int(channels), mode, transform
        self.dropout = float(dropout)
        if transform != "none":
            self.lin = torch.nn.Linear(channels, channels, bias=False)
        else:
            self.register_parameter("lin", None)
        if mode == "attention":
            hidden = int(attention_channels or channels)
            self.att = torch.nn.Sequential(torch.nn.Linear(channels, hidden), torch.nn.Tanh(),
                                           torch.nn.Linear(hidden, 1, bias=False))
        else:
            self.att = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.lin is not None:
            # identity start: the fusion begins as the plain masked mean
            torch.nn.init.eye_(self.lin.weight)
        if self.att is not None:
            for layer in self.att:
                if isinstance(layer, torch.nn.Linear):
                    layer.reset_parameters()

    def weights(self, h: Tensor, mask: Tensor) -> Tensor:
        r"""The pooling weights :math:`\alpha` of shape :math:`(M, N)`; columns
        of items with no present modality are all zero."""
        maskf = mask.to(h.dtype)
        if self.att is None:
            return maskf / maskf.sum(0, keepdim=True).clamp_min(1.0)
        s = self.att(h).squeeze(-1)  # [M, N]
        s = s.masked_fill(~mask, float("-inf"))
        # an all-missing column would give softmax(-inf, ..., -inf) = NaN
        s = torch.where(mask.any(0, keepdim=True), s, torch.zeros_like(s))
        return torch.softmax(s, dim=0) * maskf

    def forward(self, h: Union[Tensor, Sequence[Tensor]], mask: Tensor,
                fallback: Optional[Tensor] = None) -> Tensor:
        if not isinstance(h, Tensor):
            if len(h) == 0:
                raise ValueError("MissingAwareFusion: expected at least one modality")
            h = torch.stack(list(h), 0)
        if h.dim() != 3 or h.size(-1) != self.channels:
            raise ValueError(f"MissingAwareFusion: expected h of shape [M, N, {self.channels}], "
                             f"got {list(h.shape)}")
        if mask.dtype != torch.bool or mask.shape != h.shape[:2]:
            raise ValueError(f"MissingAwareFusion: expected a bool mask of shape "
                             f"{list(h.shape[:2])}, got {mask.dtype} {list(mask.shape)}")
        alpha = self.weights(h, mask)
        pooled = (alpha.unsqueeze(-1) * h).sum(0)
        if fallback is not None:
            if fallback.shape != pooled.shape:
                raise ValueError(f"MissingAwareFusion: expected fallback of shape "
                                 f"{list(pooled.shape)}, got {list(fallback.shape)}")
            pooled = torch.where(mask.any(0).unsqueeze(-1), pooled, fallback)
        return self.project(pooled)

    def project(self, pooled: Tensor) -> Tensor:
        r""":math:`\sigma(W \bar{h})` of already pooled rows :math:`\bar{h}`
        (shape :math:`(N, d)`), with the training-time dropout."""
        if self.lin is None:
            return pooled
        out = self.lin(pooled)
        out = torch.nn.functional.dropout(out, self.dropout, self.training)
        return torch.tanh(out) if self.transform == "tanh" else out

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.channels}, mode={self.mode}, "
                f"transform={self.transform}, dropout={self.dropout})")


__all__ = ["MissingAwareFusion"]
