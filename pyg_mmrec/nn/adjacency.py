r"""Conversion of every PyG adjacency format into the CSR layout of
:func:`pyg_mmrec.ops.masked_spmm`, with caching for static graphs.

PyG's message passing flows ``source = edge_index[0] -> target = edge_index[1]``
and sparse adjacencies are given *transposed* (``adj_t[target, source]``). The
op aggregates over the rows of a CSR matrix, so here **rows are targets and
columns are sources** whatever the input format:

=====================================  =====================================
input                                  rows / cols of the :class:`CSRAdjacency`
=====================================  =====================================
``edge_index`` ``[2, E]``              ``edge_index[1]`` / ``edge_index[0]``
:class:`torch_geometric.EdgeIndex`     ``edge_index[1]`` / ``edge_index[0]``
``torch.sparse`` COO / CSR / CSC       ``adj_t`` rows / ``adj_t`` cols
``torch_sparse.SparseTensor``          ``adj_t`` rows / ``adj_t`` cols
=====================================  =====================================
"""
from __future__ import annotations

import inspect
from typing import Any, Dict, Optional, Tuple, Union

import torch
from torch import Tensor

from torch_geometric import EdgeIndex
from torch_geometric.typing import SparseTensor

from pyg_mmrec.ops import masked_spmm

try:  # the compiled transpose of the op package, when it provides one
    from pyg_mmrec.ops import csr_transpose as _op_csr_transpose
except ImportError:  # pragma: no cover - older op package
    _op_csr_transpose = None

__all__ = ["CSRAdjacency", "to_csr", "AdjacencyCache", "csr_spmm", "is_compiling"]

_INDEX_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def is_compiling() -> bool:
    """Whether we are being traced by ``torch.compile`` (no caching, no data checks)."""
    return torch.compiler.is_compiling()


def _ptr_from_sorted(index: Tensor, num: int) -> Tensor:
    # ``index`` sorted ascending -> compressed pointer of length num + 1 (static shape).
    if index.numel() == 0:
        return torch.zeros(num + 1, dtype=torch.long, device=index.device)
    return torch._convert_indices_from_coo_to_csr(index, num, out_int32=False)


class CSRAdjacency:
    r"""A graph in the compressed-sparse-row layout of
    :func:`pyg_mmrec.ops.masked_spmm` (rows = targets, cols = sources).

    Built by :func:`to_csr`; models keep one per static graph so that the
    conversion (a sort over the edges) runs once. The transposed (CSC) layout
    that the op's backward pass needs (``colptr, row_t, perm``) is built lazily
    on the first :meth:`csc` call and cached; copies made by :meth:`with_value`
    share it.

    Args:
        rowptr (Tensor): row pointer :math:`[N_{dst} + 1]`, ``int64``.
        col (Tensor): source index of every edge :math:`[E]`, ``int64``.
        value (Tensor, optional): edge weights :math:`[E]` in CSR order.
        shape ((int, int)): ``(N_dst, N_src)``.
        edge_perm (Tensor, optional): CSR position ``k`` holds input edge
            ``edge_perm[k]`` (``None`` when the input was already in CSR order);
            used to gather per-edge weights given in the input order.
        validated (bool): ``rowptr`` / ``col`` are known to form a valid graph
            of this ``shape`` (set by :func:`to_csr` after checking the indices;
            kept by :meth:`with_value`, :meth:`t` and :meth:`to`). The op then
            skips its data checks (``masked_spmm(..., trusted=True)``), which
            synchronise the device on every call. Leave it ``False`` for
            graphs built by hand.
    """

    def __init__(self, rowptr: Tensor, col: Tensor, value: Optional[Tensor] = None,
                 shape: Optional[Tuple[int, int]] = None, edge_perm: Optional[Tensor] = None,
                 _shared: Optional[Dict[str, Any]] = None, validated: bool = False) -> None:
        self.rowptr = rowptr
        self.col = col
        self.value = value
        if shape is None:
            if col.numel() > 0 and is_compiling():
                raise ValueError("CSRAdjacency: `shape` is required under torch.compile")
            n_src = int(col.max()) + 1 if col.numel() > 0 else 0
            shape = (rowptr.numel() - 1, n_src)
        self.shape = (int(shape[0]), int(shape[1]))
        self.edge_perm = edge_perm
        self.validated = bool(validated)
        # Structure-derived caches (transpose, COO rows), shared by `with_value` copies.
        self._shared: Dict[str, Any] = {} if _shared is None else _shared

    # ---------------------------------------------------------------- basics
    @property
    def num_dst(self) -> int:
        return self.shape[0]

    @property
    def num_src(self) -> int:
        return self.shape[1]

    @property
    def num_edges(self) -> int:
        return self.col.numel()

    @property
    def device(self) -> torch.device:
        return self.col.device

    def __repr__(self) -> str:
        return (f"CSRAdjacency(shape={self.shape}, num_edges={self.num_edges}, "
                f"weighted={self.value is not None}, device={self.device})")

    def with_value(self, value: Optional[Tensor]) -> "CSRAdjacency":
        """The same structure with other edge weights (already in CSR order).
        Shares the cached transposed layout."""
        if value is not None and value.shape != self.col.shape:
            raise ValueError(f"value: expected shape [{self.num_edges}], got {list(value.shape)}")
        return CSRAdjacency(self.rowptr, self.col, value, self.shape, self.edge_perm, self._shared,
                            validated=self.validated)

    def gather(self, edge_attr: Tensor) -> Tensor:
        """Reorders a per-edge tensor given in the *input* edge order into CSR order."""
        _check_edge_weight(edge_attr, self.num_edges)
        return edge_attr if self.edge_perm is None else edge_attr[self.edge_perm]

    def row(self) -> Tensor:
        """Target (row) index of every edge, in CSR order (cached)."""
        row = self._shared.get("row")
        if row is None or is_compiling():
            counts = self.rowptr[1:] - self.rowptr[:-1]
            row = torch.repeat_interleave(torch.arange(self.num_dst, device=self.device),
                                          counts, output_size=self.num_edges)
            if not is_compiling():
                self._shared["row"] = row
        return row

    def csc(self) -> Tuple[Tensor, Tensor, Tensor]:
        r"""The transposed layout ``(colptr [N_src+1], row_t [E], perm [E])``:
        the edges leaving source ``j`` are ``k in [colptr[j], colptr[j+1])``,
        with target ``row_t[k]`` and CSR position ``perm[k]`` (cached)."""
        out = self._shared.get("csc")
        if out is None or is_compiling():
            if _op_csr_transpose is not None:
                out = tuple(_op_csr_transpose(self.rowptr, self.col, self.num_src))
            else:
                perm = torch.argsort(self.col, stable=True)
                colptr = _ptr_from_sorted(self.col[perm], self.num_src)
                out = (colptr, self.row()[perm], perm)
            if not is_compiling():
                self._shared["csc"] = out
        return out

    def has_csc(self) -> bool:
        return "csc" in self._shared

    def to_edge_index(self) -> Tuple[Tensor, Optional[Tensor]]:
        """``(edge_index [2, E], value)`` in PyG convention (source, target), CSR order."""
        return torch.stack([self.col, self.row()], dim=0), self.value

    def t(self) -> "CSRAdjacency":
        """The transposed graph (messages flow target -> source)."""
        colptr, row_t, perm = self.csc()
        value = None if self.value is None else self.value[perm]
        return CSRAdjacency(colptr, row_t, value, (self.num_src, self.num_dst), None,
                            validated=self.validated)

    def to(self, device: Union[str, torch.device]) -> "CSRAdjacency":
        device = torch.device(device)

        def mv(t: Optional[Tensor]) -> Optional[Tensor]:
            return None if t is None else t.to(device)

        out = CSRAdjacency(mv(self.rowptr), mv(self.col), mv(self.value), self.shape,
                           mv(self.edge_perm), validated=self.validated)
        for key, val in self._shared.items():
            out._shared[key] = tuple(mv(v) for v in val) if isinstance(val, tuple) else mv(val)
        return out


# ----------------------------------------------------------------- to_csr
def _check_size(size: Any) -> Optional[Tuple[Optional[int], Optional[int]]]:
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    if isinstance(size, (tuple, list, torch.Size)) and len(size) == 2:
        return (None if size[0] is None else int(size[0]),
                None if size[1] is None else int(size[1]))
    raise ValueError(f"size: expected None, an int or a pair (num_src, num_dst), got {size!r}")


def _check_edge_weight(edge_weight: Optional[Tensor], num_edges: int) -> None:
    if edge_weight is None:
        return
    if not isinstance(edge_weight, Tensor):
        raise ValueError(f"edge_weight: expected a Tensor, got {type(edge_weight).__name__}")
    if edge_weight.dim() != 1 or edge_weight.numel() != num_edges:
        raise ValueError(f"edge_weight: expected shape [{num_edges}] (one weight per edge), "
                         f"got {list(edge_weight.shape)}")
    if not edge_weight.is_floating_point():
        raise ValueError(f"edge_weight: expected a floating point tensor, got {edge_weight.dtype}")


def _check_range(index: Tensor, bound: int, what: str) -> None:
    # One device sync per conversion; skipped under torch.compile.
    if index.numel() == 0 or is_compiling():
        return
    lo, hi = torch.aminmax(index)
    lo, hi = int(lo), int(hi)
    if lo < 0 or hi >= bound:
        raise ValueError(f"edge_index: {what} indices must lie in [0, {bound}), "
                         f"got values in [{lo}, {hi}]")


def _from_edge_index(edge_index: Tensor, size, edge_weight: Optional[Tensor]) -> CSRAdjacency:
    if edge_index.dtype not in _INDEX_DTYPES:
        raise ValueError(f"edge_index: expected an integer tensor, got {edge_index.dtype}")
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"edge_index: expected shape [2, E], got {list(edge_index.shape)}")
    num_edges = edge_index.size(1)
    _check_edge_weight(edge_weight, num_edges)
    src, dst = edge_index[0].long(), edge_index[1].long()
    n_src, n_dst = size if size is not None else (None, None)
    if n_src is None or n_dst is None:
        if is_compiling():
            raise ValueError("to_csr: `size` (num_src, num_dst) is required under torch.compile")
        n = int(edge_index.max()) + 1 if num_edges > 0 else 0
        n_src = n if n_src is None else n_src
        n_dst = n if n_dst is None else n_dst
    _check_range(src, n_src, "source (edge_index[0])")
    _check_range(dst, n_dst, "target (edge_index[1])")
    # Stable sort by target keeps the input order within a row (determinism).
    dst_sorted, perm = torch.sort(dst, stable=True)
    rowptr = _ptr_from_sorted(dst_sorted, n_dst)
    value = None if edge_weight is None else edge_weight[perm]
    # The ranges were checked above (not under torch.compile, where the op checks instead),
    # and a pointer built from in-range sorted targets is valid by construction.
    return CSRAdjacency(rowptr, src[perm], value, (n_dst, n_src), perm,
                        validated=not is_compiling())


def _from_edge_index_obj(ei: EdgeIndex, size, edge_weight: Optional[Tensor]) -> CSRAdjacency:
    n_src, n_dst = ei.sparse_size()
    if size is not None:
        n_src = size[0] if n_src is None else n_src
        n_dst = size[1] if n_dst is None else n_dst
        if (size[0] is not None and size[0] != n_src) or (size[1] is not None and size[1] != n_dst):
            raise ValueError(f"size: {tuple(size)} disagrees with EdgeIndex.sparse_size() "
                             f"{ei.sparse_size()}")
    if not ei.is_sorted or n_src is None or n_dst is None:
        return _from_edge_index(ei.as_tensor(), (n_src, n_dst), edge_weight)
    _check_edge_weight(edge_weight, ei.size(1))
    # EdgeIndex caches its CSC layout: columns (= targets) compressed, i.e. our CSR.
    (colptr, row), perm = ei.get_csc()
    value = None
    if edge_weight is not None:
        value = edge_weight if perm is None else edge_weight[perm]
    perm = None if perm is None else perm.long()
    return CSRAdjacency(colptr.long(), row.long(), value, (n_dst, n_src), perm)


def _from_torch_sparse(adj_t: Tensor, edge_weight: Optional[Tensor]) -> CSRAdjacency:
    if adj_t.dim() != 2:
        raise ValueError(f"adj_t: expected a 2-D sparse matrix, got shape {list(adj_t.shape)}")
    if edge_weight is not None:
        raise ValueError("edge_weight: must be None when the adjacency is a sparse tensor "
                         "(its values are the edge weights)")
    n_dst, n_src = adj_t.shape
    if adj_t.layout == torch.sparse_csc:
        adj_t = adj_t.to_sparse_csr()
    if adj_t.layout == torch.sparse_coo:
        adj_t = adj_t.coalesce()  # sorted by (row, col); sums duplicates
        row, col = adj_t.indices()
        rowptr = _ptr_from_sorted(row, n_dst)
    else:  # sparse_csr
        rowptr, col = adj_t.crow_indices(), adj_t.col_indices()
    value = adj_t.values()
    if value.dim() != 1:
        raise ValueError(f"adj_t: expected scalar edge values, got values of shape "
                         f"{list(value.shape)}")
    if not value.is_floating_point():
        value = value.to(torch.get_default_dtype())  # e.g. a boolean pattern matrix
    return CSRAdjacency(rowptr.long(), col.long(), value, (n_dst, n_src), None)


def _from_sparse_tensor(adj_t: Any, edge_weight: Optional[Tensor]) -> CSRAdjacency:
    if edge_weight is not None:
        raise ValueError("edge_weight: must be None when the adjacency is a SparseTensor "
                         "(its values are the edge weights)")
    rowptr, col, value = adj_t.csr()
    n_dst, n_src = adj_t.sparse_sizes()
    if value is not None and value.dim() != 1:
        raise ValueError(f"adj_t: expected scalar edge values, got {list(value.shape)}")
    return CSRAdjacency(rowptr.long(), col.long(), value, (n_dst, n_src), None)


def to_csr(adj: Any, size: Optional[Union[int, Tuple[Optional[int], Optional[int]]]] = None,
           edge_weight: Optional[Tensor] = None) -> CSRAdjacency:
    r"""Converts any PyG adjacency into a :class:`CSRAdjacency` whose rows are
    the message *targets* and columns the *sources*.

    Args:
        adj: ``edge_index`` (integer :math:`[2, E]`, ``edge_index[0]`` =
            source), a :class:`torch_geometric.EdgeIndex`, a ``torch.sparse``
            COO/CSR/CSC matrix or a ``torch_sparse.SparseTensor`` in PyG's
            transposed convention ``adj_t[target, source]``, or a
            :class:`CSRAdjacency` (returned unchanged).
        size (int or (int, int), optional): ``(num_src, num_dst)`` as in
            :meth:`MessagePassing.propagate`; only used for ``edge_index``
            inputs (inferred as ``max + 1`` when omitted; required under
            ``torch.compile``). For sparse inputs it must agree with the
            matrix shape if given.
        edge_weight (Tensor, optional): per-edge weights :math:`[E]` in the
            order of ``edge_index``; not allowed with sparse tensors, whose
            values already are the weights.
    """
    size = _check_size(size)
    if isinstance(adj, CSRAdjacency):
        out = adj
        if edge_weight is not None:
            out = adj.with_value(adj.gather(edge_weight))
    elif isinstance(adj, EdgeIndex):
        out = _from_edge_index_obj(adj, size, edge_weight)
    elif isinstance(adj, Tensor) and adj.layout in (torch.sparse_coo, torch.sparse_csr,
                                                    torch.sparse_csc):
        out = _from_torch_sparse(adj, edge_weight)
    elif isinstance(adj, Tensor):
        if adj.layout != torch.strided:
            raise ValueError(f"adj: unsupported sparse layout {adj.layout}")
        out = _from_edge_index(adj, size, edge_weight)
    elif isinstance(adj, SparseTensor):  # a placeholder class without torch_sparse
        out = _from_sparse_tensor(adj, edge_weight)
    else:
        raise ValueError(f"adj: expected an edge_index Tensor [2, E], an EdgeIndex, a torch.sparse "
                         f"tensor, a torch_sparse.SparseTensor or a CSRAdjacency, got "
                         f"{type(adj).__name__}")
    if size is not None and not isinstance(adj, (EdgeIndex,)) and \
            not (isinstance(adj, Tensor) and adj.layout == torch.strided):
        n_src, n_dst = size
        if (n_src is not None and n_src != out.num_src) or \
                (n_dst is not None and n_dst != out.num_dst):
            raise ValueError(f"size: (num_src, num_dst) = {tuple(size)} disagrees with the "
                             f"adjacency's shape (num_dst, num_src) = {out.shape}")
    return out


# ------------------------------------------------------------------ cache
def _version(t: Optional[Tensor]) -> int:
    return -1 if t is None or not isinstance(t, Tensor) else t._version


class AdjacencyCache:
    r"""Remembers the last converted adjacency so that a static graph passed
    again in every forward call is converted only once.

    A hit requires the *same* objects (``is``) with unchanged tensor versions
    (no in-place modification since); references are kept, so an ``id`` can
    never be recycled. Edge weights that require gradients are re-gathered on
    every call (cheap: one index-select), only the structure is reused.
    Under ``torch.compile`` nothing is cached (convert the graph outside the
    compiled region and pass the :class:`CSRAdjacency` for the fastest path).
    """

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self._key: Optional[tuple] = None
        self._structure: Optional[CSRAdjacency] = None
        self._weighted: Optional[CSRAdjacency] = None

    def __call__(self, adj: Any, size=None, edge_weight: Optional[Tensor] = None,
                 transform=None) -> CSRAdjacency:
        """``to_csr(adj, size, edge_weight)`` followed by the optional
        ``transform(CSRAdjacency) -> CSRAdjacency`` (e.g. a normalisation of the
        weights), both cached."""
        if isinstance(adj, CSRAdjacency) and edge_weight is None and transform is None:
            return adj
        if is_compiling():
            out = to_csr(adj, size, edge_weight)
            return out if transform is None else transform(out)

        sparse_grad = isinstance(adj, Tensor) and adj.layout != torch.strided and \
            adj.requires_grad
        key = (adj, _version(adj), _check_size(size))
        if sparse_grad:  # values are part of an autograd graph: never cache
            out = to_csr(adj, size, edge_weight)
            return out if transform is None else transform(out)
        if self._key is None or self._key[0] is not adj or self._key[1:3] != key[1:]:
            self._structure = to_csr(adj, size)
            self._weighted = None
            self._key = key + (None, -1)
        structure = self._structure
        assert structure is not None

        w_key = (edge_weight, _version(edge_weight))
        if edge_weight is not None and edge_weight.requires_grad:
            out = structure.with_value(structure.gather(edge_weight))
            return out if transform is None else transform(out)
        if self._weighted is None or self._key[3] is not edge_weight or self._key[4] != w_key[1]:
            out = structure if edge_weight is None else \
                structure.with_value(structure.gather(edge_weight))
            self._weighted = out if transform is None else transform(out)
            self._key = self._key[:3] + w_key
        return self._weighted


# ------------------------------------------------------------------- op call
def _op_accepts_csc() -> bool:
    try:
        return "csc" in inspect.signature(masked_spmm).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without signature
        return False


# Decided once at import (inspect is not traceable by torch.compile).
_OP_ACCEPTS_CSC: bool = _op_accepts_csc()


def csr_spmm(adj: CSRAdjacency, x: Tensor, mask: Optional[Tensor] = None,
             reduce: str = "sum", value: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    r"""Calls :func:`pyg_mmrec.ops.masked_spmm` on a :class:`CSRAdjacency`,
    handing over its cached transposed layout when a backward pass will need
    it. Returns ``(out [N_dst, F], weight_sum [N_dst])``.

    ``value`` overrides ``adj.value`` (already in CSR order); weights are cast
    to ``x.dtype`` (edge weights follow the feature precision).
    """
    w = adj.value if value is None else value
    if w is not None and w.dtype != x.dtype:
        w = w.to(x.dtype)
    # A graph checked by to_csr is not checked again on every call (device syncs), as long
    # as its sources are the rows of x.
    trusted = adj.validated and x.size(0) == adj.num_src
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or
                                              (w is not None and w.requires_grad))
    # Under torch.compile only an already-built layout is passed (building it
    # inside the graph would redo the transpose at every call).
    if _OP_ACCEPTS_CSC and needs_grad and (adj.has_csc() or not is_compiling()):
        return masked_spmm(adj.rowptr, adj.col, x, mask=mask, value=w, reduce=reduce,
                           csc=adj.csc(), trusted=trusted)
    return masked_spmm(adj.rowptr, adj.col, x, mask=mask, value=w, reduce=reduce,
                       trusted=trusted)
