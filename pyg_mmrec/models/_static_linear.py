r"""Linear maps of constant feature matrices that avoid subnormal arithmetic.

Pre-extracted modality features may hold entries that are numerically zero
but not exactly zero (``ml100k_mm``'s text features have 3,364 entries of
magnitude ~1e-37). Multiplied by a weight or a gradient, such an entry gives a
*subnormal* float, and x86 CPUs process subnormals one to two orders of
magnitude slower than normal floats: the weight gradient of a text projection
then takes ~20x as long as its flop count implies.

:func:`static_linear` computes the same :math:`x W + b` (and the same
gradients of :math:`W`, :math:`b`) from a copy of the constant input scaled
by a power of two :math:`2^k`, undoing the scale after each product. Powers of
two scale floats exactly, so the results equal the plain product up to the
subnormal-range rounding it no longer suffers (absolute differences below
~1e-37); only the speed changes. The input must not require gradients.
"""
from __future__ import annotations

import math
from typing import Dict, Hashable, Optional, Tuple

import torch
from torch import Tensor

__all__ = ["StaticInputCache", "static_linear"]

# Largest scaled magnitude: products with weights / gradients and their sums
# over the rows must stay far from the float32 overflow (3.4e38).
_CAP = 2.0 ** 60
_MAX_EXP = 64


def input_scale(x: Tensor) -> float:
    r"""The power of two :math:`2^k`, :math:`0 \le k \le 64`, that lifts the
    magnitudes of ``x`` towards (but not above) :math:`2^{60}`."""
    amax = float(x.detach().abs().max()) if x.numel() else 0.0
    if amax == 0.0 or not math.isfinite(amax):
        return 1.0
    k = max(0, min(_MAX_EXP, math.floor(math.log2(_CAP / amax))))
    return 2.0 ** k


class StaticInputCache:
    r"""Scaled copies ``(x * 2^k, 2^-k)`` of constant inputs, rebuilt when a
    different tensor (or an in-place modified one) is passed under a key."""

    def __init__(self) -> None:
        self._entries: Dict[Hashable, tuple] = {}

    def clear(self) -> None:
        self._entries.clear()

    def get(self, key: Hashable, x: Tensor) -> Tuple[Tensor, float]:
        entry = self._entries.get(key)
        if entry is None or entry[0] is not x or entry[1] != x._version:
            scale = input_scale(x)
            scaled = x.detach() * scale if scale != 1.0 else x.detach()
            entry = (x, x._version, scaled, 1.0 / scale)
            self._entries[key] = entry
        return entry[2], entry[3]


class _ScaledMatmul(torch.autograd.Function):
    r""":math:`y = 2^{-k} (x_s W) + b` with :math:`x_s = 2^k x` constant;
    :math:`\partial W = 2^{-k} (x_s^\top \partial y)`."""

    @staticmethod
    def forward(ctx, x_scaled: Tensor, inv_scale: float, weight: Tensor,
                bias: Optional[Tensor]) -> Tensor:
        ctx.save_for_backward(x_scaled)
        ctx.inv_scale = inv_scale
        ctx.has_bias = bias is not None
        if bias is None:
            return torch.mm(x_scaled, weight).mul_(inv_scale)
        return torch.addmm(bias, x_scaled, weight, alpha=inv_scale)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (x_scaled,) = ctx.saved_tensors
        grad_w = grad_b = None
        if ctx.needs_input_grad[2]:
            grad_w = torch.mm(x_scaled.t(), grad_out).mul_(ctx.inv_scale)
        if ctx.has_bias and ctx.needs_input_grad[3]:
            grad_b = grad_out.sum(0)
        return None, None, grad_w, grad_b


def static_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                  cache: Optional[StaticInputCache] = None,
                  key: Hashable = None, rows: Optional[Tensor] = None) -> Tensor:
    r""":math:`x W + b` for a constant ``x`` :math:`[N, F]`, ``weight``
    :math:`[F, D]` (pass ``linear.weight.t()`` for a :class:`torch.nn.Linear`),
    ``bias`` :math:`[D]`. With a ``cache`` the scaled copy of ``x`` is built once
    per ``key``. ``rows``: only those rows of ``x`` (a sampled step), with the
    same scale, hence the same numbers as the rows of the full product. Falls
    back to the plain product when ``x`` requires gradients."""
    if x.requires_grad:
        x = x if rows is None else x[rows]
        return x @ weight if bias is None else torch.addmm(bias, x, weight)
    x_scaled, inv = (cache if cache is not None else StaticInputCache()).get(key, x)
    if rows is not None:
        x_scaled = x_scaled[rows]
    if x_scaled.dtype != weight.dtype:
        raise ValueError(f"x: expected dtype {weight.dtype} (the weight's), got {x_scaled.dtype}")
    return _ScaledMatmul.apply(x_scaled, inv, weight, bias)
