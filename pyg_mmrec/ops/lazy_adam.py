r"""The row update of lazy Adam (:class:`pyg_mmrec.train.optim.LazyAdam`) for an
uncoalesced sparse gradient: the optimiser step of sampled training.

A sampled step touches a few hundred thousand embedding rows; their update in
torch ops is a dozen whole-tensor passes (sum the repeated rows, gather the
rows of the parameter and both moments, update, scatter the three back). The
compiled CPU kernel (``torch.ops.pyg_mmrec.lazy_adam_rows_``, contract in
``csrc/lazy_adam.cpp``) does one pass per distinct row in place.
:func:`lazy_adam_rows_reference` is its definition in torch ops: static shapes
(no output size depends on the data, so no host read on a GPU), used on every
device without a compiled kernel.
"""
import torch
from torch import Tensor

from .masked_spmm import kernel_devices

__all__ = ["lazy_adam_rows_", "lazy_adam_rows_reference", "LAZY_ADAM_DEVICES"]

#: Device types on which :func:`lazy_adam_rows_` runs a compiled kernel.
LAZY_ADAM_DEVICES = kernel_devices("_lazy_adam_rows_kernel")


def lazy_adam_rows_reference(param: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor,
                             indices: Tensor, values: Tensor, *, step_size: float,
                             beta1: float, beta2: float, eps: float, weight_decay: float,
                             bc2_sqrt: float) -> None:
    """Pure-PyTorch :func:`lazy_adam_rows_` (same contract)."""
    n = indices.numel()
    if n == 0:
        return
    from pyg_mmrec.nn.neighbor_sampling import sorted_segments
    # The repeated rows are summed without ``coalesce()`` (its output size depends
    # on the data: a host read on a GPU): a sort, the first occurrence of every
    # index, segment sums into ``n`` slots. Slots past the number of distinct
    # indices repeat the last distinct row, so every write below is either unique
    # or writes the same numbers twice (the result does not depend on the order).
    order, segment, distinct, slot = sorted_segments(indices)
    sums = values.new_zeros(n, *values.shape[1:]).index_add_(0, segment, values[order])
    idx, val = distinct[slot], sums[slot]
    if weight_decay:
        val = val + weight_decay * param.index_select(0, idx)
    m_rows = exp_avg.index_select(0, idx).lerp_(val, 1 - beta1)
    v_rows = exp_avg_sq.index_select(0, idx).mul_(beta2).addcmul_(val, val, value=1 - beta2)
    exp_avg.index_copy_(0, idx, m_rows)
    exp_avg_sq.index_copy_(0, idx, v_rows)
    denom = (v_rows.sqrt() / bc2_sqrt).add_(eps)
    param.index_copy_(0, idx, param.index_select(0, idx).add_(m_rows / denom, alpha=-step_size))


def lazy_adam_rows_(param: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, indices: Tensor,
                    values: Tensor, *, step_size: float, beta1: float, beta2: float,
                    eps: float, weight_decay: float, bc2_sqrt: float) -> None:
    r"""Lazy Adam on the rows of ``param`` named by ``indices`` (repeats summed),
    in place; every other row and its moments stay untouched:

    .. math::
        g_r = \sum_{k: i_k = r} v_k + \lambda\theta_r,\quad
        m_r \leftarrow m_r + (1-\beta_1)(g_r - m_r),\quad
        s_r \leftarrow \beta_2 s_r + (1-\beta_2) g_r^2,\quad
        \theta_r \leftarrow \theta_r - \eta_t \frac{m_r}{\sqrt{s_r}/c_t + \epsilon}

    with :math:`\eta_t` = ``step_size`` (the bias-corrected learning rate) and
    :math:`c_t` = ``bc2_sqrt`` (:math:`\sqrt{1-\beta_2^t}`).

    Args:
        param, exp_avg, exp_avg_sq (Tensor): ``[N, F]`` tables of one dtype.
        indices (Tensor): ``[n]`` int64 rows, repeats allowed.
        values (Tensor): ``[n, F]`` gradient rows.
    """
    if param.device.type in LAZY_ADAM_DEVICES and all(
            t.is_contiguous() for t in (param, exp_avg, exp_avg_sq)):
        torch.ops.pyg_mmrec.lazy_adam_rows_(param, exp_avg, exp_avg_sq, indices, values,
                                            step_size, beta1, beta2, eps, weight_decay,
                                            bc2_sqrt)
        return
    lazy_adam_rows_reference(param, exp_avg, exp_avg_sq, indices, values, step_size=step_size,
                             beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                             bc2_sqrt=bc2_sqrt)


if LAZY_ADAM_DEVICES:
    def _lazy_adam_rows_fake(param, exp_avg, exp_avg_sq, indices, values, step_size, beta1,
                             beta2, eps, weight_decay, bc2_sqrt):
        return None

    torch.library.register_fake("pyg_mmrec::lazy_adam_rows_")(_lazy_adam_rows_fake)
    torch.library.register_fake("pyg_mmrec::_lazy_adam_rows_kernel")(_lazy_adam_rows_fake)
