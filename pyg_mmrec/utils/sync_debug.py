r"""Detection of host synchronisations in code that should stay on the device.

On a GPU, an operation that needs a value computed on the device (``.item()``,
``bool(t)``, ``int(t)``, ``.tolist()``, a copy to the CPU) or whose *output
size* depends on data (``nonzero``, ``unique``, ``masked_select``, boolean-mask
indexing, ``repeat_interleave`` without ``output_size``) makes the host wait for
the device queue to drain: the next kernels cannot be queued ahead and the GPU
idles between steps. :func:`torch.cuda.set_sync_debug_mode` reports such calls
only on a CUDA device; :class:`SyncMonitor` records them on **any** device,
including the CPU, so that a test without a GPU can check that a code path
(e.g. a training step) would not synchronise::

    from pyg_mmrec.utils import assert_no_sync

    with assert_no_sync():          # raises AssertionError listing the calls
        trainer.train_step(u, p, q, epoch=0, b=0)

    with SyncMonitor() as mon:      # or just count them
        ...
    print(mon.count, mon.events)

Calls are caught at two levels: the tensor methods that read values on the
host (a :class:`~torch.overrides.TorchFunctionMode`), and the ATen operators
that read values or have data-dependent output shapes (a
:class:`~torch.utils._python_dispatch.TorchDispatchMode`, which also sees the
operators run inside other operators and in the backward pass). The public
:func:`~pyg_mmrec.ops.masked_spmm` / ``csr_transpose`` ops of the extension
count as synchronising unless called with ``trusted=True`` (their data checks
read index values), and so does ``lazy_adam_rows_`` (a CPU kernel that groups
the indices on the host; on other devices :class:`~pyg_mmrec.train.optim.LazyAdam`
runs its static-shape reference). When CUDA is available and ``cuda=True``,
:func:`torch.cuda.set_sync_debug_mode` is also set (``"warn"``) inside the
block.
"""
from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Any, Callable, List, Optional

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["SyncEvent", "SyncMonitor", "assert_no_sync"]

_T = torch.Tensor
# tensor methods that read device values on the host
_HOST_READS = {_T.item: "item", _T.__bool__: "__bool__", _T.__int__: "__int__",
               _T.__float__: "__float__", _T.__index__: "__index__",
               _T.__complex__: "__complex__", _T.tolist: "tolist", _T.numpy: "numpy",
               _T.cpu: "cpu"}

_aten = torch.ops.aten
# operators that read a value on the host or whose output size depends on data
_SYNC_OPS = {
    _aten._local_scalar_dense.default, _aten.is_nonzero.default, _aten.equal.default,
    _aten.nonzero.default, _aten.argwhere.default, _aten.masked_select.default,
    _aten._unique.default, _aten._unique2.default, _aten.unique_dim.default,
    _aten.unique_consecutive.default, _aten.bincount.default, _aten.allclose.default,
}
_INDEX_OPS = {_aten.index.Tensor, _aten.index_put.default, _aten.index_put_.default,
              _aten._index_put_impl_.default}


@dataclass
class SyncEvent:
    """One synchronising call: its ``kind`` (method or operator name) and the
    innermost frame outside torch and this module that made it."""

    kind: str
    where: str

    def __str__(self) -> str:
        return f"{self.kind} at {self.where}"


def _caller() -> str:
    for frame in reversed(traceback.extract_stack()[:-2]):
        f = frame.filename
        if "/torch/" in f or f.endswith("sync_debug.py"):
            continue
        return f"{f}:{frame.lineno} ({frame.name})"
    return "<torch>"


def _is_cpu_target(args, kwargs) -> bool:
    dev = kwargs.get("device")
    for a in args:
        if isinstance(a, (str, torch.device)):
            dev = a
    if dev is None:
        return False
    try:
        return torch.device(dev).type == "cpu"
    except (RuntimeError, TypeError):
        return False


class _FunctionLevel(TorchFunctionMode):
    def __init__(self, monitor: "SyncMonitor") -> None:
        super().__init__()
        self.monitor = monitor

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = _HOST_READS.get(func)
        if kind is None and func is _T.to and _is_cpu_target(args[1:], kwargs):
            kind = "to(cpu)"
        if kind is None:
            return func(*args, **kwargs)
        self.monitor._record(kind)
        self.monitor._inside += 1  # the operators it runs are the same event
        try:
            return func(*args, **kwargs)
        finally:
            self.monitor._inside -= 1


def _has_bool_index(indices: Any) -> bool:
    return any(isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8)
               for t in (indices or ()))


class _DispatchLevel(TorchDispatchMode):
    def __init__(self, monitor: "SyncMonitor") -> None:
        super().__init__()
        self.monitor = monitor

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = None
        if func in _SYNC_OPS:
            kind = str(func.overloadpacket.__name__)
        elif func in _INDEX_OPS and _has_bool_index(args[1] if len(args) > 1 else None):
            kind = f"{func.overloadpacket.__name__} with a boolean mask"
        elif func is _aten.repeat_interleave.Tensor and kwargs.get("output_size") is None \
                and (len(args) < 2 or args[1] is None):
            kind = "repeat_interleave without output_size"
        elif func.namespace == "pyg_mmrec" and func.overloadpacket.__name__ in (
                "masked_spmm", "csr_transpose", "masked_spmm_backward_x",
                "masked_spmm_backward_value"):
            trusted = kwargs.get("trusted", args[9] if len(args) > 9 else False)
            if not trusted:
                kind = f"pyg_mmrec.{func.overloadpacket.__name__} (untrusted: data checks)"
        elif func.namespace == "pyg_mmrec" and func.overloadpacket.__name__ == "lazy_adam_rows_":
            kind = "pyg_mmrec.lazy_adam_rows_ (its CPU kernel reads the indices on the host)"
        if kind is not None and self.monitor._inside == 0:
            self.monitor._record(kind)
        return func(*args, **kwargs)


class SyncMonitor:
    r"""Context manager recording every call that would synchronise a CUDA
    device with the host (see the module documentation), on any device.

    Args:
        cuda (bool): also set :func:`torch.cuda.set_sync_debug_mode` to
            ``"warn"`` inside the block when CUDA is available.
        ignore (callable, optional): ``ignore(event) -> bool``, events to
            leave out (e.g. a known, documented once-per-epoch read).

    Attributes:
        events (list of SyncEvent): the calls, in order.
    """

    def __init__(self, cuda: bool = True,
                 ignore: Optional[Callable[[SyncEvent], bool]] = None) -> None:
        self.cuda, self.ignore = bool(cuda), ignore
        self.events: List[SyncEvent] = []
        self._inside = 0
        self._modes: List[Any] = []
        self._cuda_mode: Optional[int] = None

    @property
    def count(self) -> int:
        return len(self.events)

    def _record(self, kind: str) -> None:
        event = SyncEvent(kind, _caller())
        if self.ignore is None or not self.ignore(event):
            self.events.append(event)

    def __enter__(self) -> "SyncMonitor":
        self.events, self._inside = [], 0
        if self.cuda and torch.cuda.is_available() and hasattr(torch.cuda,
                                                                "set_sync_debug_mode"):
            self._cuda_mode = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode("warn")
        self._modes = [_DispatchLevel(self), _FunctionLevel(self)]
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
        self._modes = []
        if self._cuda_mode is not None:
            torch.cuda.set_sync_debug_mode(self._cuda_mode)
            self._cuda_mode = None

    def report(self) -> str:
        return "\n".join(f"  {e}" for e in self.events)


class assert_no_sync(SyncMonitor):
    r""":class:`SyncMonitor` that raises :class:`AssertionError` on exit
    (listing the calls and where they were made) if any was recorded."""

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        if exc[0] is None and self.events:
            raise AssertionError(f"{self.count} host synchronisation(s) in a block that "
                                 f"should stay on the device:\n{self.report()}")
