r"""Masked sparse-dense matrix multiplication: the aggregation of all propagation layers.

The compiled kernels live in ``pyg_mmrec._C`` (``torch.ops.pyg_mmrec.*``, see
``csrc/masked_spmm.cpp``): public ops that validate their inputs once and dispatch to per-device
kernel ops (``torch.ops.pyg_mmrec._<name>_kernel``, which trust their inputs). This module
registers their fake (meta) implementations for :func:`torch.compile` and the autograd formula,
and falls back to a pure-PyTorch reference when the extension is not built, so that importing
it never fails.
"""
import os
import warnings
from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = [
    "WITH_EXT",
    "masked_spmm",
    "masked_spmm_reference",
    "csr_transpose",
]

CSC = Tuple[Tensor, Tensor, Tensor]


def _load_extension() -> bool:
    if os.environ.get("PYG_MMREC_DISABLE_EXT", "0") == "1":
        return False
    try:
        from pyg_mmrec import _C  # noqa: F401  (import registers torch.ops.pyg_mmrec.*)
    except ImportError as e:
        # Absent (pure-Python install) is expected; present but unloadable is worth a warning.
        if "No module named" not in str(e):
            warnings.warn(f"pyg_mmrec._C failed to load ({e}); using the PyTorch fallback of "
                          f"masked_spmm", stacklevel=2)
        return False
    if not hasattr(torch.ops.pyg_mmrec, "_masked_spmm_kernel"):
        # A build from older sources (public ops only, another schema): do not mix the two.
        warnings.warn("pyg_mmrec._C is out of date with the Python sources; rebuild it "
                      "(python setup.py build_ext --inplace). Using the PyTorch fallback of "
                      "masked_spmm", stacklevel=2)
        return False
    return True


#: Whether the compiled kernels of ``pyg_mmrec._C`` are active (else the reference runs).
WITH_EXT: bool = _load_extension()


def kernel_devices(kernel: str) -> frozenset:
    """Device types on which the loaded extension implements the kernel op
    ``torch.ops.pyg_mmrec.<kernel>`` (empty without the extension, or with a
    build that predates the op)."""
    if not WITH_EXT or not hasattr(torch.ops.pyg_mmrec, kernel):
        return frozenset()
    has_kernel = torch._C._dispatch_has_kernel_for_dispatch_key
    # The public ops run on any device; the per-device kernels decide where the op works.
    return frozenset(d for d in ("cpu", "cuda")
                     if has_kernel(f"pyg_mmrec::{kernel}", d.upper()))


#: Device types with a compiled kernel (``{"cpu"}``, plus ``"cuda"`` in CUDA builds).
EXT_DEVICES = kernel_devices("_masked_spmm_kernel")


def _cuda_fallback_message(cuda_available: bool, with_ext: bool, ext_devices) -> Optional[str]:
    """Why CUDA tensors would run the reference instead of a kernel (None when they do not)."""
    if not cuda_available or "cuda" in ext_devices:
        return None
    why = ("pyg_mmrec._C is not loaded" if not with_ext
           else "pyg_mmrec._C was built without its CUDA kernels")
    return (f"masked_spmm: a GPU is available but {why}, so CUDA tensors run the slow "
            f"pure-PyTorch reference; rebuild with a CUDA build of torch and CUDA_HOME set "
            f"(FORCE_CUDA=1 python setup.py build_ext --inplace)")


# Said once, at import, where the user can still act on it (not in every training step).
_CUDA_FALLBACK = _cuda_fallback_message(torch.cuda.is_available(), WITH_EXT, EXT_DEVICES)
if _CUDA_FALLBACK is not None and os.environ.get("PYG_MMREC_DISABLE_EXT", "0") != "1":
    warnings.warn(_CUDA_FALLBACK, RuntimeWarning, stacklevel=2)


# --------------------------------------------------------------------------------------------
# Validation (the C++ ops run the same checks; this covers the fallback and gives ValueErrors
# before anything is dispatched).


def _check_meta(rowptr: Tensor, col: Tensor, x: Tensor, mask: Optional[Tensor],
                value: Optional[Tensor], reduce: str, csc: Optional[CSC]) -> None:
    if reduce not in ("sum", "mean"):
        raise ValueError(f"masked_spmm: `reduce` must be 'sum' or 'mean' (got {reduce!r})")
    for name, t in (("rowptr", rowptr), ("col", col), ("x", x)):
        if not isinstance(t, Tensor):
            raise ValueError(f"masked_spmm: `{name}` must be a Tensor (got {type(t).__name__})")
    if x.dim() != 2:
        raise ValueError(f"masked_spmm: `x` must be 2-D [N, F] (got shape {tuple(x.shape)})")
    if not x.is_floating_point():
        raise ValueError(f"masked_spmm: `x` must be a floating-point tensor (got {x.dtype})")
    if rowptr.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"masked_spmm: `rowptr` must be int32 or int64 (got {rowptr.dtype})")
    if rowptr.dim() != 1 or rowptr.numel() < 1:
        raise ValueError(f"masked_spmm: `rowptr` must be a non-empty 1-D tensor "
                         f"(got shape {tuple(rowptr.shape)})")
    if col.dim() != 1:
        raise ValueError(f"masked_spmm: `col` must be 1-D (got shape {tuple(col.shape)})")
    if col.dtype != rowptr.dtype:
        raise ValueError(f"masked_spmm: `col` ({col.dtype}) must have the same dtype as "
                         f"`rowptr` ({rowptr.dtype})")
    others = [("col", col), ("x", x), ("mask", mask), ("value", value)]
    if csc is not None:
        if not (isinstance(csc, (tuple, list)) and len(csc) == 3):
            raise ValueError("masked_spmm: `csc` must be the tuple (colptr, row_t, perm) "
                             "returned by csr_transpose")
        others += list(zip(("colptr", "row_t", "perm"), csc))
    for name, t in others:
        if t is not None and t.device != rowptr.device:
            raise ValueError(f"masked_spmm: `{name}` is on {t.device} but `rowptr` is on "
                             f"{rowptr.device}; all inputs must be on the same device")
    if mask is not None:
        if mask.dtype != torch.bool:
            raise ValueError(f"masked_spmm: `mask` must be a bool tensor (got {mask.dtype})")
        if mask.dim() != 1 or mask.numel() != x.size(0):
            raise ValueError(f"masked_spmm: `mask` must be 1-D with one entry per source node "
                             f"({x.size(0)}), got shape {tuple(mask.shape)}")
    if value is not None:
        if value.dim() != 1 or value.numel() != col.numel():
            raise ValueError(f"masked_spmm: `value` must be 1-D with {col.numel()} entries "
                             f"(one per edge), got shape {tuple(value.shape)}")
        if value.dtype != x.dtype:
            raise ValueError(f"masked_spmm: `value` ({value.dtype}) must have the same dtype "
                             f"as `x` ({x.dtype})")
    if csc is not None:
        colptr, row_t, perm = csc
        for name, t in (("colptr", colptr), ("row_t", row_t), ("perm", perm)):
            if t.dim() != 1 or t.dtype != rowptr.dtype:
                raise ValueError(f"masked_spmm: `{name}` must be 1-D with the dtype of `rowptr` "
                                 f"({rowptr.dtype}), got shape {tuple(t.shape)} and {t.dtype}")
        if colptr.numel() != x.size(0) + 1:
            raise ValueError(f"masked_spmm: `colptr` must have {x.size(0) + 1} entries "
                             f"(x.size(0) + 1), got {colptr.numel()}")
        if row_t.numel() != col.numel() or perm.numel() != col.numel():
            raise ValueError(f"masked_spmm: `row_t` and `perm` must have one entry per edge "
                             f"({col.numel()})")


def _check_data(rowptr: Tensor, col: Tensor, num_src: int) -> None:
    # Data-dependent checks synchronise and cannot be traced; the compiled op checks in C++.
    if torch.compiler.is_compiling():
        return
    first, last = int(rowptr[0]), int(rowptr[-1])
    if first != 0:
        raise ValueError(f"masked_spmm: `rowptr` must start at 0 (got {first})")
    if last != col.numel():
        raise ValueError(f"masked_spmm: `rowptr` must end at the number of edges {col.numel()} "
                         f"(got {last})")
    if rowptr.numel() > 2 and bool((rowptr[1:] < rowptr[:-1]).any()):
        raise ValueError("masked_spmm: `rowptr` must be non-decreasing")
    if col.numel() > 0:
        lo, hi = int(col.min()), int(col.max())
        if lo < 0 or hi >= num_src:
            raise ValueError(f"masked_spmm: `col` must index the range [0, {num_src}) (the "
                             f"number of source rows x.size(0)), got values in [{lo}, {hi}]")


# --------------------------------------------------------------------------------------------
# Reference implementation (also the fallback).


def masked_spmm_reference(rowptr: Tensor, col: Tensor, x: Tensor, mask: Optional[Tensor] = None,
                          value: Optional[Tensor] = None,
                          reduce: str = "mean") -> Tuple[Tensor, Tensor]:
    r"""Pure-PyTorch :func:`masked_spmm` (gather, weight, ``index_add_``); differentiable by
    autograd. Materialises an ``[E, F]`` message tensor, so it is slow and memory hungry, but
    it is the definition the compiled kernels are tested against."""
    _check_meta(rowptr, col, x, mask, value, reduce, None)
    _check_data(rowptr, col, x.size(0))
    return _reference(rowptr, col, x, mask, value, reduce)


def _reference(rowptr: Tensor, col: Tensor, x: Tensor, mask: Optional[Tensor],
               value: Optional[Tensor], reduce: str) -> Tuple[Tensor, Tensor]:
    n_dst = rowptr.numel() - 1
    row = torch.repeat_interleave(torch.arange(n_dst, device=x.device, dtype=rowptr.dtype),
                                  rowptr.diff(), output_size=col.numel())
    w = value if value is not None else x.new_ones(col.numel())
    msg = x.index_select(0, col) * w[:, None]
    if mask is not None:
        # `where`, not a product with the mask: rows of missing modalities may hold NaN/inf
        # and must not leak into the output (the kernels never read them either).
        present = mask[col]
        w = torch.where(present, w, torch.zeros_like(w))
        msg = torch.where(present[:, None], msg, torch.zeros_like(msg))
    out = x.new_zeros(n_dst, x.size(1)).index_add(0, row, msg)
    weight_sum = x.new_zeros(n_dst).index_add(0, row, w)
    if reduce == "mean":
        nonzero = weight_sum != 0
        safe = torch.where(nonzero, weight_sum, torch.ones_like(weight_sum))
        out = torch.where(nonzero[:, None], out / safe[:, None], torch.zeros_like(out))
    return out, weight_sum


def _csr_transpose_reference(rowptr: Tensor, col: Tensor, num_src: int) -> CSC:
    n_dst = rowptr.numel() - 1
    row = torch.repeat_interleave(torch.arange(n_dst, device=col.device, dtype=rowptr.dtype),
                                  rowptr.diff(), output_size=col.numel())
    perm = torch.argsort(col, stable=True)
    colptr = torch.searchsorted(col[perm], torch.arange(num_src + 1, device=col.device,
                                                        dtype=col.dtype))
    return colptr.to(rowptr.dtype), row[perm], perm.to(rowptr.dtype)


def csr_transpose(rowptr: Tensor, col: Tensor, num_src: int) -> CSC:
    r"""Transposed (CSC) layout ``(colptr, row_t, perm)`` of a CSR graph with ``num_src``
    source nodes: the edges entering source ``j`` are ``k in [colptr[j], colptr[j+1])``, from
    destination ``row_t[k]``, stored at CSR position ``perm[k]``.

    Pass it as ``masked_spmm(..., csc=csr_transpose(rowptr, col, x.size(0)))`` so that the
    backward pass of a static graph does not transpose it again at every call.
    """
    if rowptr.dtype not in (torch.int32, torch.int64) or col.dtype != rowptr.dtype:
        raise ValueError(f"csr_transpose: `rowptr` and `col` must both be int32 or both int64 "
                         f"(got {rowptr.dtype} and {col.dtype})")
    if num_src < 0:
        raise ValueError(f"csr_transpose: `num_src` must be >= 0 (got {num_src})")
    if WITH_EXT and rowptr.device.type in EXT_DEVICES:
        return tuple(torch.ops.pyg_mmrec.csr_transpose(rowptr, col, num_src))
    _check_data(rowptr, col, num_src)
    return _csr_transpose_reference(rowptr, col, num_src)


# --------------------------------------------------------------------------------------------
# Public entry point.


def masked_spmm(rowptr: Tensor, col: Tensor, x: Tensor, mask: Optional[Tensor] = None,
                value: Optional[Tensor] = None, reduce: str = "mean", *,
                csc: Optional[CSC] = None, trusted: bool = False) -> Tuple[Tensor, Tensor]:
    r"""Neighbourhood aggregation that skips source nodes whose modality is missing (the
    missing-aware propagation of the I3-MRec / MRdIB models and the MMRec graph backbones):

    .. math::
        s_i = \sum_{j \in \mathcal{N}(i)} w_{ij} m_j, \qquad
        \mathbf{o}_i = \sum_{j \in \mathcal{N}(i)} w_{ij} m_j \mathbf{x}_j
        \quad(\texttt{sum}), \qquad
        \mathbf{o}_i = \frac{1}{s_i}\sum_{j \in \mathcal{N}(i)} w_{ij} m_j \mathbf{x}_j
        \quad(\texttt{mean}, \mathbf{0} \text{ if } s_i = 0).

    Runs the compiled kernel when :obj:`WITH_EXT` (CPU; CUDA in CUDA builds), else
    :func:`masked_spmm_reference`. Differentiable w.r.t. :obj:`x` and :obj:`value`; works under
    :func:`torch.compile` (``fullgraph=True``).

    Args:
        rowptr (torch.Tensor): CSR row pointer ``[N_dst + 1]`` (int32 or int64, starts at 0,
            non-decreasing, ends at ``E``).
        col (torch.Tensor): source index of every edge ``[E]``, same dtype as :obj:`rowptr`.
        x (torch.Tensor): source features ``[N_src, F]``.
        mask (torch.Tensor, optional): bool ``[N_src]``, :obj:`True` where the source node's
            modality is present. (default: :obj:`None` = all present)
        value (torch.Tensor, optional): edge weights ``[E]`` with the dtype of :obj:`x`.
            (default: :obj:`None` = all ones)
        reduce (str): ``"sum"`` or ``"mean"`` (normalise by the present weight :math:`s_i`).
        csc (tuple, optional): the graph's transposed layout from :func:`csr_transpose`, reused
            by the backward pass (graphs are static while masks change per batch).
        trusted (bool): the caller guarantees that :obj:`rowptr` / :obj:`col` (and
            :obj:`csc`) form a valid graph whose sources are the rows of :obj:`x`, as a
            :class:`~pyg_mmrec.nn.CSRAdjacency` built by :func:`~pyg_mmrec.nn.to_csr` does;
            the checks that read index values (start/end/monotonicity of :obj:`rowptr`, index
            ranges: a device synchronisation each, forward and backward) are skipped, the
            shape, dtype and device checks still run. Invalid data then reads out of bounds.
            (default: :obj:`False`)

    Returns:
        ``(out [N_dst, F], weight_sum [N_dst])``.

    Shapes:
        - **inputs:** rowptr :math:`(N_{dst} + 1)`, col :math:`(E)`, x :math:`(N_{src}, F)`,
          mask :math:`(N_{src})`, value :math:`(E)`
        - **outputs:** out :math:`(N_{dst}, F)`, weight_sum :math:`(N_{dst})`

    Rows of :obj:`x` whose :obj:`mask` is :obj:`False` are never read (they may hold NaN), and
    their gradient is 0. Bad input raises a :class:`ValueError` naming the argument. Only first
    derivatives are supported on the compiled path.
    """
    _check_meta(rowptr, col, x, mask, value, reduce, csc)
    if WITH_EXT and x.device.type in EXT_DEVICES:
        colptr, row_t, perm = csc if csc is not None else (None, None, None)
        out, weight_sum = torch.ops.pyg_mmrec.masked_spmm(rowptr, col, x, mask, value, reduce,
                                                          colptr, row_t, perm, bool(trusted))
        return out, weight_sum
    if not trusted:
        _check_data(rowptr, col, x.size(0))
    return _reference(rowptr, col, x, mask, value, reduce)


# --------------------------------------------------------------------------------------------
# Fake (meta) kernels and autograd of the compiled ops.

if WITH_EXT:

    @torch.library.register_fake("pyg_mmrec::masked_spmm")
    def _masked_spmm_fake(rowptr, col, x, mask=None, value=None, reduce="mean", colptr=None,
                          row_t=None, perm=None, trusted=False):
        n_dst = rowptr.shape[0] - 1
        return x.new_empty(n_dst, x.shape[1]), x.new_empty(n_dst)

    @torch.library.register_fake("pyg_mmrec::_masked_spmm_kernel")
    def _masked_spmm_kernel_fake(rowptr, col, x, mask, value, mean):
        n_dst = rowptr.shape[0] - 1
        return x.new_empty(n_dst, x.shape[1]), x.new_empty(n_dst)

    def _backward_x_fake(colptr, row_t, perm, grad_out, mask, value, weight_sum, mean):
        return grad_out.new_empty(colptr.shape[0] - 1, grad_out.shape[1])

    def _backward_value_fake(rowptr, col, x, grad_out, grad_weight_sum, mask, out, weight_sum,
                             mean):
        return x.new_empty(col.shape[0])

    def _csr_transpose_fake(rowptr, col, num_src):
        return (rowptr.new_empty(num_src + 1), rowptr.new_empty(col.shape[0]),
                rowptr.new_empty(col.shape[0]))

    # the public op and its kernel op have the same outputs
    for _name, _fake in (("masked_spmm_backward_x", _backward_x_fake),
                         ("masked_spmm_backward_value", _backward_value_fake),
                         ("csr_transpose", _csr_transpose_fake)):
        torch.library.register_fake(f"pyg_mmrec::{_name}")(_fake)
        torch.library.register_fake(f"pyg_mmrec::_{_name}_kernel")(_fake)

    def _setup_context(ctx, inputs, output):
        rowptr, col, x, mask, value, reduce, colptr, row_t, perm, trusted = inputs
        out, weight_sum = output
        ctx.mean = reduce == "mean"
        ctx.trusted = bool(trusted)
        # `out` is needed only for d/d value under "mean"; x only for d/d value.
        ctx.save_for_backward(rowptr, col, x, mask, value, colptr, row_t, perm, out, weight_sum)

    def _backward(ctx, grad_out, grad_weight_sum):
        rowptr, col, x, mask, value, colptr, row_t, perm, out, weight_sum = ctx.saved_tensors
        # The dispatcher drops trailing arguments left at their default (None), so
        # needs_input_grad may be shorter than the schema.
        needs = tuple(ctx.needs_input_grad) + (False,) * 10
        # A trusted graph was validated when it was built: call the kernels directly,
        # without the data checks (device syncs) of the public ops.
        ops = torch.ops.pyg_mmrec
        transpose = ops._csr_transpose_kernel if ctx.trusted else ops.csr_transpose
        backward_x = ops._masked_spmm_backward_x_kernel if ctx.trusted \
            else ops.masked_spmm_backward_x
        backward_value = ops._masked_spmm_backward_value_kernel if ctx.trusted \
            else ops.masked_spmm_backward_value
        grad_x = grad_value = None
        if grad_out is None:
            grad_out = torch.zeros_like(out)
        if needs[2]:
            if colptr is None:
                colptr, row_t, perm = transpose(rowptr, col, x.shape[0])
            grad_x = backward_x(colptr, row_t, perm, grad_out, mask, value,
                                weight_sum if ctx.mean else None, ctx.mean)
        if needs[4] and value is not None:
            grad_value = backward_value(rowptr, col, x, grad_out, grad_weight_sum, mask, out,
                                        weight_sum, ctx.mean)
        grads = (None, None, grad_x, None, grad_value, None, None, None, None, None)
        return grads[:len(ctx.needs_input_grad)]

    torch.library.register_autograd("pyg_mmrec::masked_spmm", _backward,
                                    setup_context=_setup_context)
