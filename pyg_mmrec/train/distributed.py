r"""Distributed data-parallel training on :mod:`torch.distributed`.

Every rank holds the whole graph, the features and a replica of the model; the
epoch's BPR triples are split into disjoint shards; gradients are averaged over
ranks before every optimiser step; evaluation is sharded by users and the
metric *sums* are all-reduced; only rank 0 logs and writes files. Backends:
``gloo`` on CPU, ``nccl`` on CUDA (one GPU per rank, ``cuda:LOCAL_RANK``); the
process group is created with ``"cpu:gloo,cuda:nccl"`` so that CPU tensors
(metric sums, checks) and CUDA tensors (gradients) both have a backend.

Launch with ``torchrun`` (one machine or several) or the local spawner::

    torchrun --standalone --nproc-per-node 2 -m pyg_mmrec train --model LightGCN ...
    python -m pyg_mmrec train --nproc 2 --model LightGCN ...

or programmatically: :func:`init_from_env` (reads ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` as set by ``torchrun``), then
:func:`pyg_mmrec.train.run` (which switches to :class:`DistributedTrainer` when
the process group has more than one rank); :func:`launch` runs any function on
``N`` local ranks.

**Gradient averaging: explicit bucketed all-reduce, not DDP hooks.** The
trainer steps *two* optimisers per batch (the auxiliary MI estimators first,
each with its own backward, then the main loss), and
:class:`~torch.nn.parallel.DistributedDataParallel` ties its reducer to one
forward/backward pair of one module. So :class:`DistributedTrainer`
implements :meth:`~pyg_mmrec.train.Trainer.reduce_gradients` as what DDP does
after backward: gradients are flattened into ~25 MB buckets per dtype and
``all_reduce``-d, and the parameters are broadcast from rank 0 at start. One
difference makes results independent of the number of ranks: the average is
*weighted by the local batch sizes*,

.. math::
    g = \frac{\sum_r n_r\, g_r}{\sum_r n_r},

which is exactly the gradient of the global-batch mean loss even when the
epoch's last batch does not split evenly (DDP would weight it equally). A
parameter without a gradient on some rank counts as zero there; one without a
gradient on every rank keeps ``grad = None`` everywhere, so Adam's state stays
identical on all ranks. Auxiliary-estimator gradients go through the same path.
(What is lost against DDP is the overlap of communication with backward; the
models' backward is dominated by a few large sparse products, so little.)

**Global batches, any number of ranks.** ``batch_size`` is the *global*
batch :math:`B` (it must be divisible by the world size :math:`W`). Every rank
draws the epoch's full seeded permutation and negatives (``BPRSampler.sample(epoch)``,
cheap and vectorised) and keeps the triples ``r, r+W, r+2W, ...``: local batch
:math:`b` of rank :math:`r` is the :math:`r`-th strided part of global batch
:math:`b`, so the union over ranks of a step's triples is exactly the
one-process batch. With gradient averaging this makes a :math:`W`-rank run follow
the one-process trajectory up to floating-point summation order, for models that
draw no random numbers from the global RNG while training (LightGCN, BPR, ...);
models with dropout or sampled masks (I3-MRec, ...) get a different, equally valid
random stream. Consequences: a checkpoint written with :math:`W` ranks resumes
with any other number of ranks, also from the middle of an epoch (the batch index
is a global one), and the checkpoint holds no per-rank state (the global RNG is
seeded identically on every rank and stays identical). When the epoch's last
global batch has fewer than :math:`W` triples they are dropped (every rank must
run the same number of steps).

**Sampled training** (``fanout``: sparse embedding gradients, stepped with
:class:`~pyg_mmrec.train.optim.LazyAdam`). Each rank samples the computation
graph of its own share of every global batch, on a random stream of its own:
the step runs under :func:`torch.random.fork_rng`, seeded on the host from the
run's seed, the step and the rank, so the samples of the ranks are independent
while the global RNG stays identical everywhere (per-epoch randomness such as FREEDOM's graph
pruning stays the same on every rank, and rank 0's RNG in the checkpoint is
everyone's). The embedding gradients are *not* densified (that would cost
:math:`O((U + I) d)` per step and make the lazy optimiser touch every row):
:func:`all_reduce_sparse_gradients` all-gathers each rank's rows and values
(padded to the longest, sizes first, as host values) and builds on every rank the
same sparse weighted sum (in the trainer uncoalesced, one row per lookup, so that no
output size depends on the data), so the lazy optimiser updates exactly those
rows, identically on every rank. A step then exchanges
:math:`O(W \max_r \text{nnz}_r\, d)` numbers.

**No device reads per step.** The loss terms are all-reduced on the device
(weighted by the triples) and summed there, read once per epoch; what the ranks
read on the host per step are host values only (:func:`_host_all_gather`: gradient
row counts, triples, stop requests, term names), in CPU tensors that never wait
for a GPU.

**Failures.** Every collective carries the process-group timeout
(``--dist-timeout``, default :data:`DEFAULT_TIMEOUT` s). A rank that raises or
dies closes its connections, so the others fail at their next collective with a
:class:`PeerFailureError` naming the operation; a rank that hangs makes the
others fail after the timeout. :func:`launch` (behind ``--nproc``) watches its
children: when one exits non-zero it stops the rest and raises
:class:`RankFailedError` with that rank's traceback (``torchrun`` does the same
for its workers). Checkpoints are written atomically by rank 0, so the last one
stays valid. Parameters are compared across ranks after every epoch
(:func:`check_consistency`), so silent divergence is an error too.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import multiprocessing
import multiprocessing.connection
import os
import socket
import sys
import tempfile
import threading
import time
import traceback
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from .trainer import Trainer

#: default timeout (seconds) of the process group: rendezvous and every collective
DEFAULT_TIMEOUT = 600.0
#: bucket size of the gradient all-reduce, as DDP's default
DEFAULT_BUCKET_MB = 25.0
#: fault injection for tests: ``"rank=1,epoch=0,batch=2[,mode=raise|exit|hang]"``
FAULT_ENV = "PYG_MMREC_FAULT"


class PeerFailureError(RuntimeError):
    """A collective failed: another rank exited, raised or did not answer in time."""


class RankFailedError(RuntimeError):
    """A rank started by :func:`launch` failed; the others were stopped.

    Attributes:
        rank: the failing rank (the root cause when several failed).
        exitcode: its exit code (negative: killed by that signal).
        error: its traceback or error message (``""`` if it left none).
    """

    def __init__(self, rank: int, exitcode: int, error: str, others: Sequence[int] = ()) -> None:
        how = (f"was killed by signal {-exitcode}" if exitcode < 0
               else f"exited with code {exitcode}")
        msg = f"rank {rank} {how}"
        if others:
            msg += f"; the other rank(s) {', '.join(map(str, others))} were stopped"
        msg += ":\n" + (error.rstrip() if error else "(no Python error recorded: the process "
                        "died without raising, e.g. killed or out of memory)")
        super().__init__(msg)
        self.rank, self.exitcode, self.error = rank, exitcode, error


# ----------------------------------------------------------------------------- process group
@dataclass
class DistContext:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_distributed() -> bool:
    """Whether a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (set by ``torchrun`` / :func:`launch`), else 1."""
    text = os.environ.get("WORLD_SIZE")
    if text is None:
        return 1
    try:
        ws = int(text)
    except ValueError:
        raise RuntimeError(f"WORLD_SIZE: expected an integer, got {text!r}") from None
    if ws < 1:
        raise RuntimeError(f"WORLD_SIZE: expected >= 1, got {ws}")
    return ws


def _env_int(name: str, default: Optional[int] = None) -> int:
    text = os.environ.get(name)
    if text is None:
        if default is None:
            raise RuntimeError(f"{name} is not set: launch with torchrun or `--nproc N` "
                               "(or set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT)")
        return default
    try:
        return int(text)
    except ValueError:
        raise RuntimeError(f"{name}: expected an integer, got {text!r}") from None


def init_from_env(device: str | torch.device = "cpu",
                  timeout: float = DEFAULT_TIMEOUT) -> DistContext:
    r"""Join the process group described by the environment (``torchrun``).

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (default: ``RANK``) and, for
    the rendezvous, ``MASTER_ADDR`` / ``MASTER_PORT``. With one rank (or no
    ``WORLD_SIZE``) nothing is initialised. Idempotent.

    Args:
        device: ``"cpu"`` (gloo) or ``"cuda"`` (nccl; rank uses ``cuda:LOCAL_RANK``).
        timeout: seconds for the rendezvous and for every collective; a rank
            waiting longer on a silent peer raises instead of hanging.

    Returns:
        :class:`DistContext` (with ``device`` resolved to this rank's device).
    """
    if timeout <= 0:
        raise ValueError(f"timeout: expected a positive number of seconds, got {timeout}")
    dev = torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device: expected 'cpu' or 'cuda', got {device!r}")
    world = env_world_size()
    if world == 1:
        return DistContext(0, 1, 0, dev, "none")
    rank = _env_int("RANK")
    local_rank = _env_int("LOCAL_RANK", rank)
    if not 0 <= rank < world:
        raise RuntimeError(f"RANK={rank} outside [0, WORLD_SIZE={world})")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but torch.cuda.is_available() is False")
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} "
                               "CUDA device(s): start at most one rank per GPU")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    if dist.is_initialized():
        if dist.get_world_size() != world or dist.get_rank() != rank:
            raise RuntimeError(f"a process group (rank {dist.get_rank()} of "
                               f"{dist.get_world_size()}) exists, but the environment says rank "
                               f"{rank} of {world}")
        return DistContext(rank, world, local_rank, dev, str(dist.get_backend()))
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise RuntimeError(f"{name} is not set: launch with torchrun or `--nproc N`")
    try:
        dist.init_process_group(backend=backend, init_method="env://", rank=rank,
                                world_size=world,
                                timeout=datetime.timedelta(seconds=float(timeout)))
    except Exception as e:  # noqa: BLE001 - rendezvous errors come in many types
        raise PeerFailureError(
            f"rank {rank}: could not join the process group of {world} ranks at "
            f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} within {timeout:g} s "
            f"(did every rank start?): {type(e).__name__}: {e}") from e
    return DistContext(rank, world, local_rank, dev, backend)


def destroy() -> None:
    """Leave the process group (no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _timeout_text() -> str:
    t = os.environ.get("PYG_MMREC_DIST_TIMEOUT")
    return f"{float(t):g} s" if t else "the process-group timeout"


def _collective(what: str, fn: Callable[[], Any]) -> Any:
    """Run a collective; turn backend errors into a :class:`PeerFailureError`
    that says which operation failed on which rank."""
    try:
        return fn()
    except PeerFailureError:
        raise
    except RuntimeError as e:  # DistBackendError, gloo/nccl errors, timeouts
        rank = dist.get_rank() if dist.is_initialized() else "?"
        raise PeerFailureError(
            f"rank {rank}: {what} failed: another rank exited or raised (see its error), "
            f"or did not answer within {_timeout_text()}: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}") from e


def barrier(what: str = "barrier") -> None:
    """All ranks meet here (no-op in one process). CPU tensor all-reduce rather
    than ``dist.barrier`` so that the group timeout applies on every backend."""
    if is_distributed():
        t = torch.zeros(1)
        _collective(what, lambda: dist.all_reduce(t))


@contextlib.contextmanager
def rank_zero_first(what: str = "rank 0 first") -> Iterator[None]:
    """Rank 0 runs the block first (e.g. processes and caches a dataset), then
    the other ranks (which then find the cache)."""
    rank, _ = get_rank_world()
    if rank != 0:
        barrier(what)
    yield
    if rank == 0:
        barrier(what)


def agree(flag: bool, what: str) -> bool:
    """All ranks must hold the same ``flag``; raises otherwise (names the ranks)."""
    if not is_distributed():
        return bool(flag)
    ws = dist.get_world_size()
    t = torch.zeros(ws, dtype=torch.float64)
    t[dist.get_rank()] = float(bool(flag))
    _collective(f"agreeing on {what}", lambda: dist.all_reduce(t))
    values = [bool(v) for v in t.tolist()]
    if len(set(values)) > 1:
        yes = [r for r, v in enumerate(values) if v]
        no = [r for r, v in enumerate(values) if not v]
        raise RuntimeError(f"ranks disagree on {what}: true on ranks {yes}, false on ranks {no}"
                           " (on several machines the output directory must be on a shared "
                           "file system, and every rank needs the same data)")
    return values[0]


# ----------------------------------------------------------------------------- gradients
def _buckets(params: Sequence[torch.nn.Parameter], cap_bytes: int
             ) -> List[List[torch.nn.Parameter]]:
    """Consecutive parameters of one device and dtype, up to ``cap_bytes`` each.
    Depends only on shapes, so it is identical on every rank."""
    groups: Dict[tuple, List[torch.nn.Parameter]] = {}
    for p in params:
        groups.setdefault((p.device, p.dtype), []).append(p)
    out = []
    for ps in groups.values():
        bucket, size = [], 0
        for p in ps:
            bucket.append(p)
            size += p.numel() * p.element_size()
            if size >= cap_bytes:
                out.append(bucket)
                bucket, size = [], 0
        if bucket:
            out.append(bucket)
    return out


def _host_all_gather(values: Sequence[float], what: str, group=None) -> List[List[float]]:
    r"""All-gather a few numbers that live on the host (flags, counts, weights:
    Python values, never read from a device) -> one list per rank.

    The message is a CPU tensor (``gloo``, also under ``"cpu:gloo,cuda:nccl"``),
    so reading the result never waits for a GPU: the ranks' hosts meet, the
    devices' queues keep running. This is the only place where a training step
    reads a collective's result on the host."""
    mine = torch.tensor([float(v) for v in values], dtype=torch.float64)
    parts = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    _collective(what, lambda: dist.all_gather(parts, mine, group=group))
    return torch.stack(parts).tolist()


def _gather_padded(parts: Sequence[Tensor], counts: Sequence[int], group=None,
                   scale: Optional[float] = None) -> List[Tensor]:
    """All-gather the first dimension of ``torch.cat(parts)`` when its length
    differs by rank (``counts[r]`` rows on rank ``r``, known to every rank),
    each rank's rows multiplied by ``scale`` first when given. The pieces are
    written straight into the send buffer (scaled in that copy; an unscaled
    piece on another device moves in it), never concatenated apart.

    Every rank's rows are padded to the longest. On gloo they travel as an
    ``all_reduce`` of a zero buffer ``[W, longest, ...]`` in which each rank
    fills its own slot: the sum is the gather exactly (other slots add zeros),
    and gloo's all-reduce moves it 2-3x faster than its all-gather (68 MB per
    rank on 2 ranks: 0.12 s against 0.30 s, ``benchmarks/bench_sampled_ranks.py``);
    elsewhere (NCCL) a plain ``all_gather``, which sends half the bytes."""
    first = parts[0]
    longest, row = max(counts), tuple(first.shape[1:])
    if longest == 0:  # nothing anywhere: every rank knows it, no message needed
        return [first.new_zeros((0,) + row) for _ in counts]
    slotted = dist.get_backend(group) == "gloo"
    buf = first.new_zeros(((len(counts), longest) if slotted else (longest,)) + row)
    mine = buf[dist.get_rank(group)] if slotted else buf
    start = 0
    for t in parts:
        seg = mine[start:start + t.size(0)]
        if scale is None:
            seg.copy_(t)
        else:  # (values: a group shares its device)
            torch.mul(t, scale, out=seg)
        start += t.size(0)
    if slotted:
        _collective("sparse gradient all-gather", lambda: dist.all_reduce(buf, group=group))
        return [buf[r, :c] for r, c in enumerate(counts)]
    gathered = [torch.empty_like(buf) for _ in counts]
    _collective("sparse gradient all-gather",
                lambda: dist.all_gather(gathered, buf, group=group))
    return [part[:c] for part, c in zip(gathered, counts, strict=True)]


def _on(t: Tensor, device: torch.device) -> Tensor:
    # (`.to` of a tensor already there is a no-op, but a sync monitor cannot tell)
    return t if t.device == device else t.to(device)


#: kinds of a gradient in the host exchange of :func:`all_reduce_gradients`
_NO_GRAD, _SPARSE_ROWS, _DENSE = 0, 1, 2


def _grad_kind(p: torch.nn.Parameter) -> int:
    g = p.grad
    if g is None:
        return _NO_GRAD
    return _SPARSE_ROWS if g.is_sparse and g.sparse_dim() == 1 else _DENSE


@torch.no_grad()
def all_reduce_sparse_gradients(params: Iterable[torch.nn.Parameter], weight: float = 1.0,
                                group=None, coalesce: bool = True
                                ) -> List[torch.nn.Parameter]:
    r"""Replace the *sparse* gradients of ``params`` (e.g. the rows of
    :class:`torch.nn.Embedding` ``(sparse=True)`` tables a batch looked up) by
    their weighted mean over ranks, :math:`g \leftarrow \sum_r w_r g_r /
    \sum_r w_r`, **kept sparse**: the result holds exactly the rows of the
    ranks' gradients, so a lazy optimiser
    (:class:`~pyg_mmrec.train.optim.LazyAdam`) updates those rows and no others.

    The ranks exchange their row counts, kinds and weights (host values, one
    small CPU all-gather), then their row indices and their values scaled by
    :math:`w_r`, padded to the longest (two all-gathers for all parameters,
    one more per extra value dtype/row shape). With ``coalesce=True`` each
    rank first coalesces its gradient and every rank adds the ranks' rows into
    the sorted union in rank order: a coalesced result. With
    ``coalesce=False`` (what :class:`DistributedTrainer` uses) the gradients
    are sent as they are (an embedding backward leaves one row per lookup,
    their number known on the host) and the result is the ranks' rows
    concatenated in rank order, uncoalesced: no output size depends on the
    data, so nothing waits for the device (``coalesce()`` does on a GPU), at
    the price of sending repeated rows; :class:`LazyAdam` sums them. Either
    way the result is the same on every rank, bit for bit, and the cost is
    :math:`O(W \cdot \max_r \text{nnz}_r \cdot d)` per step instead of the
    :math:`O((U + I) d)` of densifying. A missing gradient (``None``) counts
    as no rows, as does every row of a rank with :math:`w_r = 0`. All ranks
    must pass the same parameters, in the same order.

    Args:
        params: the parameters; only those with ``requires_grad`` are reduced.
        weight (float): this rank's :math:`w_r` (e.g. its number of triples).
        group: the process group (default: the global one).
        coalesce (bool): coalesce the result (see above).

    Returns:
        The parameters this function did *not* reduce because some rank has a
        dense gradient for them (or a sparse one with more than one sparse
        dimension): their local gradients are now dense, ready for
        :func:`all_reduce_gradients`. The list is the same on every rank.
    """
    params = [p for p in params if p.requires_grad]
    if not is_distributed() or not params:
        return []
    if weight < 0:
        raise ValueError(f"weight: expected >= 0, got {weight}")
    if coalesce:
        for p in params:
            if _grad_kind(p) == _SPARSE_ROWS:
                p.grad = p.grad.coalesce()
    table = _exchange_grad_meta(params, weight, group)
    return _reduce_sparse(params, weight, table, group, coalesce)


def _exchange_grad_meta(params: Sequence[torch.nn.Parameter], weight: float, group
                        ) -> List[List[float]]:
    """Every rank's ``[kind of each gradient..., its row count..., weight]``
    (host values: a sparse tensor's number of rows is metadata)."""
    kinds = [_grad_kind(p) for p in params]
    nnz = [p.grad._nnz() if k == _SPARSE_ROWS and weight > 0 else 0
           for p, k in zip(params, kinds, strict=True)]
    return _host_all_gather(kinds + nnz + [float(weight)], "gradient sizes", group)


def _reduce_sparse(params: Sequence[torch.nn.Parameter], weight: float,
                   table: List[List[float]], group, coalesce: bool
                   ) -> List[torch.nn.Parameter]:
    # `table`: every rank's [kinds..., row counts..., weight] (_exchange_grad_meta)
    P, ws = len(params), len(table)
    kinds = [[int(row[j]) for row in table] for j in range(P)]       # [P][W]
    counts = [[int(row[P + j]) for j in range(P)] for row in table]  # [W][P]
    total = sum(row[-1] for row in table)
    dense_somewhere = [j for j in range(P) if _DENSE in kinds[j]]
    for j in dense_somewhere:
        if params[j].grad is not None and params[j].grad.is_sparse:
            params[j].grad = params[j].grad.coalesce().to_dense()
    sparse_ids = [j for j in range(P)
                  if j not in dense_somewhere and _SPARSE_ROWS in kinds[j]]
    if not sparse_ids:
        return [params[j] for j in dense_somewhere]
    if total <= 0:
        raise RuntimeError("all_reduce_sparse_gradients: the weights of all ranks sum to 0")
    me = dist.get_rank(group)

    def local_rows(j: int) -> tuple[Tensor, Tensor]:
        g, p = params[j].grad, params[j]
        if counts[me][j] == 0:
            return (torch.empty(0, dtype=torch.long, device=p.device),
                    p.new_empty((0,) + tuple(p.shape[1:])))
        return g._indices()[0], g._values()

    mine = {j: local_rows(j) for j in sparse_ids}
    # one gather for the indices of every parameter ...
    per_rank = [sum(counts[r][j] for j in sparse_ids) for r in range(ws)]
    idx = _gather_padded([mine[j][0] for j in sparse_ids], per_rank, group)
    indices: Dict[int, List[Tensor]] = {}
    for r in range(ws):
        chunks = idx[r].split([counts[r][j] for j in sparse_ids])
        for j, chunk in zip(sparse_ids, chunks, strict=True):
            indices.setdefault(j, []).append(chunk)
    # ... and one for the values of every (device, dtype, row shape) group
    groups: Dict[tuple, List[int]] = {}
    for j in sparse_ids:
        p = params[j]
        groups.setdefault((p.device, p.dtype, tuple(p.shape[1:])), []).append(j)
    values: Dict[int, List[Tensor]] = {}
    for js in groups.values():
        # w_r / total applied in the copy into the send buffer (coalesced: w_r, and
        # the sum divided by total below, as the rows of one index meet there)
        vals = _gather_padded([mine[j][1] for j in js],
                              [sum(counts[r][j] for j in js) for r in range(ws)], group,
                              scale=weight if coalesce else weight / total)
        for r in range(ws):
            for j, chunk in zip(js, vals[r].split([counts[r][j] for j in js]), strict=True):
                values.setdefault(j, []).append(chunk)
    for j in sparse_ids:
        p = params[j]
        if coalesce:  # the sorted union, each rank's (unique) rows added in rank order
            union = torch.unique(_on(torch.cat(indices[j]), p.device))  # sorted
            out = p.new_zeros((union.numel(),) + tuple(p.shape[1:]))
            for r in range(ws):  # a rank's rows are unique: no two adds meet in one call
                if indices[j][r].numel():
                    out.index_add_(0, torch.searchsorted(union, _on(indices[j][r], p.device)),
                                   values[j][r])
            p.grad = torch.sparse_coo_tensor(union.unsqueeze(0), out.div_(total), p.shape,
                                             check_invariants=False, is_coalesced=True)
        else:  # the ranks' rows one after the other (sizes known on the host)
            rows = _on(torch.cat(indices[j]), p.device)
            vals = torch.cat(values[j])  # on p's device: its group's; already w_r / total
            p.grad = torch.sparse_coo_tensor(rows.unsqueeze(0), vals, p.shape,
                                             check_invariants=False, is_coalesced=False)
    return [params[j] for j in dense_somewhere]


@torch.no_grad()
def all_reduce_gradients(params: Iterable[torch.nn.Parameter], weight: float = 1.0,
                         bucket_cap_mb: float = DEFAULT_BUCKET_MB, group=None,
                         sparse_params: Iterable[torch.nn.Parameter] = (),
                         coalesce: bool = True) -> None:
    r"""Replace every gradient by the weighted mean over ranks,
    :math:`g \leftarrow \sum_r w_r g_r / \sum_r w_r` (``weight`` = this rank's
    :math:`w_r`, e.g. its batch size), in buckets of ``bucket_cap_mb``.

    A missing gradient (``None``) counts as zero; it stays ``None`` only when it
    is missing on every rank. The parameters of ``params`` that are also in
    ``sparse_params`` (the same set on every rank, e.g. the weights of sparse
    embedding tables) keep sparse gradients
    (:func:`all_reduce_sparse_gradients`, with ``coalesce``); any other sparse
    gradient is densified. The ranks first exchange which gradients they have,
    their row counts and their weights (one small all-gather of host values);
    after it nothing is read from the device. No-op without a multi-rank
    process group.
    """
    if not is_distributed():
        return
    if weight < 0:
        raise ValueError(f"weight: expected >= 0, got {weight}")
    params = [p for p in params if p.requires_grad]
    declared = {id(p) for p in sparse_params}
    for p in params:
        if p.grad is not None and p.grad.is_sparse:
            if id(p) not in declared:  # undeclared sparse gradient: densify
                p.grad = p.grad.coalesce().to_dense()
            elif coalesce and _grad_kind(p) == _SPARSE_ROWS:
                p.grad = p.grad.coalesce()
    if not params:
        return
    table = _exchange_grad_meta(params, weight, group)
    P = len(params)
    total = sum(row[-1] for row in table)
    # whether some rank has a gradient for the parameter (known from the exchange)
    present = {id(p): any(int(row[j]) != _NO_GRAD for row in table)
               for j, p in enumerate(params)}
    sparse = [j for j in range(P) if id(params[j]) in declared]
    if sparse:
        sub = [[row[j] for j in sparse] + [row[P + j] for j in sparse] + [row[-1]]
               for row in table]
        fallback = {id(p) for p in _reduce_sparse([params[j] for j in sparse], weight, sub,
                                                  group, coalesce)}
        params = [p for p in params if id(p) not in declared or id(p) in fallback]
    params = [p for p in params if present[id(p)]]  # none anywhere: stays None everywhere
    if params and total <= 0:
        raise RuntimeError("all_reduce_gradients: the weights of all ranks sum to 0")
    for bucket in _buckets(params, max(1, int(bucket_cap_mb * 2 ** 20))):
        dtype = bucket[0].dtype if bucket[0].dtype.is_floating_point else torch.float32
        flat = torch.zeros(sum(p.numel() for p in bucket), dtype=dtype,
                           device=bucket[0].device)
        off = 0
        for p in bucket:
            if p.grad is not None:
                flat[off:off + p.numel()].copy_(p.grad.reshape(-1)).mul_(weight)
            off += p.numel()
        _collective("gradient all-reduce", lambda: dist.all_reduce(flat, group=group))
        flat.div_(total)
        off = 0
        for p in bucket:
            g = flat[off:off + p.numel()].view_as(p)
            off += p.numel()
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)


@torch.no_grad()
def broadcast_parameters(tensors: Iterable[Tensor], src: int = 0,
                         bucket_cap_mb: float = DEFAULT_BUCKET_MB) -> None:
    """Copy ``tensors`` (parameters) from rank ``src`` to every rank, bucketed."""
    if not is_distributed():
        return
    tensors = list(tensors)
    for bucket in _buckets(tensors, max(1, int(bucket_cap_mb * 2 ** 20))):
        flat = torch.cat([t.detach().reshape(-1) for t in bucket])
        _collective("parameter broadcast", lambda: dist.broadcast(flat, src))
        off = 0
        for t in bucket:
            t.copy_(flat[off:off + t.numel()].view_as(t))
            off += t.numel()


@torch.no_grad()
def check_consistency(named: Iterable[tuple[str, Tensor]], rtol: float = 1e-5) -> None:
    r"""Raise if the tensors (e.g. ``model.named_parameters()``) differ across
    ranks: their sums and absolute sums are compared (two small all-reduces)."""
    if not is_distributed():
        return
    named = list(named)
    if not named:
        return
    stats = torch.stack([torch.stack([t.detach().double().sum(), t.detach().double().abs().sum()])
                         for _, t in named]).reshape(-1).cpu()
    hi, lo = stats.clone(), stats.clone()
    _collective("consistency check", lambda: dist.all_reduce(hi, op=dist.ReduceOp.MAX))
    _collective("consistency check", lambda: dist.all_reduce(lo, op=dist.ReduceOp.MIN))
    bad = ((hi - lo).abs() > rtol * (1.0 + hi.abs())).view(-1, 2).any(1)
    if bool(bad.any()):
        names = [named[i][0] for i in bad.nonzero().view(-1).tolist()]
        more = "..." if len(names) > 5 else ""
        raise RuntimeError(f"ranks diverged: parameters {names[:5]}{more}"
                           " differ between ranks (a rank-dependent computation, or gradients "
                           "that were not reduced)")


# ----------------------------------------------------------------------------- sampling
class GlobalBatchShards:
    r"""Wraps a :class:`~pyg_mmrec.data.BPRSampler` so that rank :math:`r` of
    :math:`W` gets the triples ``r::W`` of the *whole* epoch: with a local
    batch size of :math:`B/W`, its local batch :math:`b` is the :math:`r`-th
    strided part of global batch :math:`b` (see the module doc). A last global
    batch of fewer than :math:`W` triples is dropped.

    Args:
        sampler: the one-process sampler (``sample(epoch)`` -> whole epoch).
        global_batch_size (int): :math:`B`, divisible by every world size used.
    """

    def __init__(self, sampler: Any, global_batch_size: int) -> None:
        if global_batch_size < 1:
            raise ValueError(f"global_batch_size: expected >= 1, got {global_batch_size}")
        self.sampler, self.global_batch_size = sampler, int(global_batch_size)

    def __len__(self) -> int:
        return len(self.sampler)

    def sample(self, epoch: int, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if self.global_batch_size % world_size:
            raise ValueError(f"batch_size: the global batch size {self.global_batch_size} is "
                             f"not divisible by the {world_size} ranks")
        users, pos, neg = self.sampler.sample(epoch)  # identical on every rank
        n = users.numel()
        tail = n % self.global_batch_size
        if 0 < tail < world_size:
            n -= tail
        sl = slice(rank, n, world_size)
        # contiguous copies: the batches are slices of these, and strided views
        # slow down (and warn in) kernels such as searchsorted
        return users[sl].contiguous(), pos[sl].contiguous(), neg[sl].contiguous()

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.sampler!r}, B={self.global_batch_size})"


# ----------------------------------------------------------------------------- trainer
def _parse_fault(text: Optional[str]) -> Optional[Dict[str, Any]]:
    if not text:
        return None
    spec: Dict[str, Any] = {"mode": "raise"}
    try:
        for part in text.split(","):
            k, v = part.split("=")
            spec[k.strip()] = v.strip() if k.strip() == "mode" else int(v)
    except ValueError:
        raise ValueError(f"{FAULT_ENV}: expected 'rank=R,epoch=E,batch=B[,mode=raise|exit|hang]',"
                         f" got {text!r}") from None
    if spec["mode"] not in ("raise", "exit", "hang") or not {"rank", "epoch", "batch"} <= set(spec):
        raise ValueError(f"{FAULT_ENV}: expected 'rank=R,epoch=E,batch=B[,mode=raise|exit|hang]',"
                         f" got {text!r}")
    return spec


def _step_seed(base: int, epoch: int, batch: int, rank: int) -> int:
    """A seed for the sampling stream of ``rank`` at ``(epoch, batch)``: the
    splitmix64 finaliser of the four numbers, so nearby steps and ranks get
    unrelated streams."""
    mask = 2 ** 64 - 1
    x = base & mask
    for v in (epoch, batch, rank):
        x = (x ^ (v + 0x9E3779B97F4A7C15 + (x << 6) + (x >> 2))) & mask
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
        x ^= x >> 31
    return x % 2 ** 63


class DistributedTrainer(Trainer):
    r"""A :class:`~pyg_mmrec.train.Trainer` for one rank of a data-parallel job.

    Same arguments as :class:`~pyg_mmrec.train.Trainer`; ``rank`` and
    ``world_size`` default to the initialised process group's. ``batch_size``
    in ``train`` is the *global* batch (divisible by ``world_size``). What it
    adds (details in the module doc): global-batch sharding of the epoch
    (:class:`GlobalBatchShards`), the weighted bucketed gradient all-reduce for
    the main *and* the auxiliary parameters, parameters broadcast from rank 0,
    all-reduced loss values in the log, a stop request (``SIGINT``) honoured by
    all ranks at the same batch, a check that every rank loaded the same data
    and configuration, and a parameter consistency check after every epoch.
    With ``world_size == 1`` it behaves exactly like :class:`Trainer`. It is
    built from the public hooks of :class:`Trainer` alone
    (:meth:`~Trainer.reduce_gradients`, :meth:`~Trainer.auxiliary_loss`,
    :meth:`~Trainer.sync_batch`, :meth:`~Trainer.should_stop`,
    :meth:`~Trainer.on_batch_end`, :meth:`~Trainer.on_epoch_end`).

    Args:
        bucket_cap_mb (float): all-reduce bucket size.
    """

    def __init__(self, model: torch.nn.Module, data: Any, train: Mapping[str, Any],
                 seed: int = 0, out_dir: Optional[os.PathLike] = None,
                 device: str | torch.device = "cpu", quiet: bool = True,
                 config: Optional[Mapping[str, Any]] = None, rank: Optional[int] = None,
                 world_size: Optional[int] = None,
                 bucket_cap_mb: float = DEFAULT_BUCKET_MB) -> None:
        pg_rank, pg_world = get_rank_world()
        rank = pg_rank if rank is None else int(rank)
        world_size = pg_world if world_size is None else int(world_size)
        B = int(train["batch_size"])
        if B % world_size:
            raise ValueError(f"batch_size: the global batch size {B} must be divisible by the "
                             f"number of ranks {world_size}")
        if world_size > 1 and (pg_world != world_size or pg_rank != rank):
            raise RuntimeError(f"DistributedTrainer(rank={rank}, world_size={world_size}) needs "
                               "an initialised process group of that size (init_from_env), got "
                               f"rank {pg_rank} of {pg_world}")
        self._stop_agreed = False
        super().__init__(model, data, train, seed=seed, out_dir=out_dir, device=device,
                         quiet=quiet, config=config, rank=rank, world_size=world_size)
        self.global_batch_size = B
        self.bucket_cap_mb = float(bucket_cap_mb)
        self.train_cfg["batch_size"] = B // world_size  # local share of each global batch
        self.sampler = GlobalBatchShards(self.sampler, B)
        self._aux_weight = 0.0
        self._step_at = (0, 0)  # (epoch, batch) of the running step
        self._fault = _parse_fault(os.environ.get(FAULT_ENV))
        from .optim import sparse_parameters
        #: sampled training: the embedding tables whose gradients stay sparse across ranks
        self.sparse_params = sparse_parameters(self.model)
        if world_size > 1:
            self._check_same_setup()
            broadcast_parameters([p for p in self.model.parameters()])

    def should_stop(self) -> bool:
        # A stop request (SIGINT handler, request_stop) only becomes effective once
        # all ranks agree, at the next batch (sync_batch): every rank stops after
        # the same step.
        return self._stop_agreed if self.world_size > 1 else super().should_stop()

    def _check_same_setup(self) -> None:
        d = self.data
        ei = d.train_edge_index.detach().to("cpu", torch.long)
        numel = sum(p.numel() for p in self.model.parameters())
        mine = torch.tensor([d.num_users, d.num_items, ei.size(1),
                             int((ei[0] * 2654435761 + ei[1] * 40503 + 17).sum()),
                             len(list(self.model.parameters())), numel,
                             self.global_batch_size, self.seed], dtype=torch.long)
        every = [torch.empty_like(mine) for _ in range(self.world_size)]
        _collective("setup check", lambda: dist.all_gather(every, mine))
        names = ["num_users", "num_items", "training interactions", "training graph checksum",
                 "parameter tensors", "parameters", "batch_size", "seed"]
        for r, other in enumerate(every):
            diff = (other != every[0]).nonzero().view(-1).tolist()
            if diff:
                raise RuntimeError(f"rank {r} differs from rank 0 in "
                                   f"{', '.join(names[i] for i in diff)}: every rank must load "
                                   "the same data and configuration")

    def reduce_gradients(self, params: List[torch.nn.Parameter], num_triples: int) -> None:
        weight = self._aux_weight if params is self.aux_params else num_triples
        # uncoalesced sparse rows: no output size depends on the data (LazyAdam sums
        # repeated rows), so the reduction never waits for the device
        all_reduce_gradients(params, weight=float(weight), bucket_cap_mb=self.bucket_cap_mb,
                             sparse_params=self.sparse_params, coalesce=False)

    def train_step(self, u: Tensor, p: Tensor, q: Tensor, epoch: int, b: int) -> Dict[str, Any]:
        self._step_at = (epoch, b)  # where the global loss of sync_batch is noted
        if self.world_size == 1 or not self.sparse_params:
            return super().train_step(u, p, q, epoch, b)
        # Sampled training: each rank samples the computation graph of its own
        # triples, drawing a different number of random numbers. The step runs
        # on a stream of its own, seeded on the host from the run's seed, the
        # step and the rank (no draw to read back), so that (1) the ranks'
        # samples are independent and (2) the global RNG is left as it was, the
        # same on every rank: per-epoch randomness (e.g. FREEDOM's graph
        # pruning) stays the same on all ranks and the checkpoint's RNG state
        # (rank 0's) is every rank's.
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(_step_seed(torch.initial_seed(), epoch, b, self.rank))
            return super().train_step(u, p, q, epoch, b)

    def auxiliary_loss(self, u: Tensor, p: Tensor, q: Tensor) -> Optional[Tensor]:
        # A model may have no estimator loss for a small local batch (e.g. fewer
        # than two items with a modality): the ranks agree, so that either all
        # of them skip the estimator step (as one process would) or all take
        # part in its gradient all-reduce, those without a loss with weight 0.
        aux = super().auxiliary_loss(u, p, q)
        self._aux_weight = float(u.numel())
        if self.world_size == 1:
            return aux
        flags = _host_all_gather([0.0 if aux is None else 1.0], "auxiliary-loss agreement")
        if not any(row[0] for row in flags):
            return None
        if aux is None:
            self._aux_weight = 0.0
            zero = torch.zeros((), device=self.device)
            for t in self.aux_params:  # a zero loss that reaches every estimator parameter
                zero = zero + t.reshape(-1)[:1].sum() * 0.0
            return zero
        return aux

    def _note_finite(self, loss: Tensor, epoch: int, b: int) -> None:
        # with several ranks the *global* loss is noted (sync_batch): every rank
        # then holds the same record and raises at the same read
        if self.world_size == 1:
            super()._note_finite(loss, epoch, b)

    def sync_batch(self, out: Dict[str, Any], num_triples: int) -> Dict[str, Any]:
        if self.world_size == 1:
            return out
        # The global-batch loss values, kept on the device: one all-reduce of
        # the stacked values weighted by the ranks' triples, read by the loop
        # once per epoch / progress refresh. Before it, the ranks exchange host
        # values only: their numbers of triples, their stop requests (the
        # stop consensus) and a checksum of their term names (a model may skip
        # a term on a small local batch; then the names themselves are
        # exchanged, and a missing term counts as 0).
        keys = sorted(out)
        crc = zlib.crc32("\0".join(keys).encode())
        rows = _host_all_gather([num_triples, float(self._stop_requested), crc], "loss header")
        total = sum(row[0] for row in rows)
        self._stop_agreed = any(row[1] > 0 for row in rows)
        if any(row[2] != crc for row in rows):
            every: List[Any] = [None] * self.world_size
            _collective("loss term names", lambda: dist.all_gather_object(every, keys))
            keys = sorted(set().union(*every))
        some = next(iter(out.values()))
        device = some.device if isinstance(some, Tensor) else self.device
        zero = torch.zeros((), dtype=torch.float64, device=device)
        vec = torch.stack([torch.as_tensor(out[k], device=device).to(torch.float64).reshape(())
                           if k in out else zero for k in keys]).mul_(float(num_triples))
        _collective("loss all-reduce", lambda: dist.all_reduce(vec))
        vec = vec.div_(total)
        merged = dict(zip(keys, vec.unbind(), strict=True))
        if "loss" in merged:
            epoch, b = self._step_at
            Trainer._note_finite(self, merged["loss"], epoch, b)
        return merged

    def on_epoch_end(self, epoch: int) -> None:
        super().on_epoch_end(epoch)
        check_consistency(self.model.named_parameters())

    def on_batch_end(self, epoch: int, batch: int) -> None:
        super().on_batch_end(epoch, batch)
        f = self._fault
        if f and (f["rank"], f["epoch"], f["batch"]) == (self.rank, epoch, batch):
            if f["mode"] == "exit":
                os._exit(3)
            if f["mode"] == "hang":
                while True:
                    time.sleep(3600)
            raise RuntimeError(f"injected failure ({FAULT_ENV}) on rank {self.rank} at epoch "
                               f"{epoch}, batch {batch}")

    def fit(self, resume: bool = False, test: bool = True):
        if self.world_size > 1:
            agree(resume, f"resuming from a checkpoint in {self.out_dir}")
        return super().fit(resume=resume, test=test)


# ----------------------------------------------------------------------------- local launcher
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _watch_parent(parent: int) -> None:
    # A rank whose launcher died (kill -9) must not linger.
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(1)


def _entry(fn: Callable, rank: int, env: Dict[str, str], err_file: str, args: tuple,
           threads: Optional[int], parent: int) -> None:
    os.environ.update(env)
    if threads:
        torch.set_num_threads(threads)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    try:
        rc = fn(*args)
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - report everything, then fail
        tb = traceback.format_exc()
        record = {"rank": rank, "time": time.time(), "traceback": tb,
                  "secondary": isinstance(e, PeerFailureError),
                  "interrupted": isinstance(e, KeyboardInterrupt)}
        try:
            Path(err_file).write_text(json.dumps(record))
        except OSError:
            pass
        sys.stderr.write("".join(f"[rank {rank}] {line}\n" for line in tb.splitlines()))
        sys.stderr.flush()
        os._exit(130 if isinstance(e, KeyboardInterrupt) else 1)
    sys.stdout.flush()
    sys.stderr.flush()
    # the rank's work is done and flushed: leave without the interpreter's teardown, where
    # gloo's worker threads can abort the process ("terminate called without an active
    # exception", signal 6) after a clean run
    os._exit(int(rc) if isinstance(rc, int) else 0)


def _rank_env(rank: int, nproc: int, port: int, timeout: float, threads: int) -> Dict[str, str]:
    """The environment ``torchrun`` would give local rank ``rank`` of ``nproc``."""
    env = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc),
           "LOCAL_WORLD_SIZE": str(nproc), "GROUP_RANK": "0",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "PYG_MMREC_DIST_TIMEOUT": str(float(timeout)), "OMP_NUM_THREADS": str(threads)}
    if (sys.platform.startswith("linux") and "GLOO_SOCKET_IFNAME" not in os.environ
            and os.path.exists("/sys/class/net/lo")):
        env["GLOO_SOCKET_IFNAME"] = "lo"  # gloo on the loopback device, whatever the hostname
    return env


def _spawn_ranks(fn: Callable, nproc: int, args: tuple, timeout: float, threads: int,
                 err_dir: str) -> List[multiprocessing.process.BaseProcess]:
    """Start ``nproc`` fresh (``spawn``) processes running ``fn(*args)`` as the
    ranks of one job on 127.0.0.1; a rank that raises leaves its traceback in
    ``err_dir/rank<r>.json``."""
    ctx = multiprocessing.get_context("spawn")
    port = _free_port()
    procs = []
    for r in range(nproc):
        p = ctx.Process(target=_entry, name=f"pyg_mmrec-rank{r}",
                        args=(fn, r, _rank_env(r, nproc, port, timeout, threads),
                              os.path.join(err_dir, f"rank{r}.json"), tuple(args), threads,
                              os.getpid()))
        p.start()
        procs.append(p)
    return procs


@dataclass
class _WaitOutcome:
    first_failed: Optional[int]  # the first rank seen exiting non-zero
    interrupted: bool            # Ctrl-C reached the launcher (and the ranks)
    stopped: List[int]           # ranks still running at the end, terminated by the launcher


def _wait_for_ranks(procs: Sequence[multiprocessing.process.BaseProcess],
                    grace: float) -> _WaitOutcome:
    """Wait until every rank exited, or one failed (then give the others
    ``grace`` seconds to stop on their own). Ranks still running then are
    terminated (killed if they ignore it); on return every process is joined."""
    first_failed: Optional[int] = None
    interrupted = False
    stopped: List[int] = []
    try:
        while True:
            try:
                multiprocessing.connection.wait([p.sentinel for p in procs], timeout=1.0)
            except KeyboardInterrupt:
                if interrupted:  # second Ctrl-C: stop them now
                    break
                interrupted = True  # the ranks got SIGINT too: they checkpoint and exit
                continue
            failed = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0)]
            if failed and first_failed is None:
                first_failed = failed[0]
                deadline = time.monotonic() + grace
                while time.monotonic() < deadline and any(p.exitcode is None for p in procs):
                    time.sleep(0.05)
                break
            if all(p.exitcode is not None for p in procs):
                break
    finally:
        for r, p in enumerate(procs):
            if p.exitcode is None:
                stopped.append(r)
                p.terminate()
        for p in procs:
            p.join(5.0)
            if p.exitcode is None:
                p.kill()
                p.join()
    return _WaitOutcome(first_failed, interrupted, stopped)


def _collect_error_records(err_dir: str, nproc: int) -> Dict[int, Dict[str, Any]]:
    """The error records the ranks left in ``err_dir`` (by rank); removes the folder."""
    records = {}
    for r in range(nproc):
        path = os.path.join(err_dir, f"rank{r}.json")
        if os.path.exists(path):
            try:
                records[r] = json.loads(Path(path).read_text())
            except (OSError, ValueError):
                pass  # a rank killed while writing: treated as one that left no record
            os.unlink(path)
    os.rmdir(err_dir)
    return records


def _root_cause(codes: Sequence[Optional[int]], records: Mapping[int, Dict[str, Any]],
                waited: _WaitOutcome) -> RankFailedError:
    """The error to report for a failed job: the earliest error that is not a
    consequence of a peer's failure (a Python error of its own), else a rank
    that died without one, else the first rank seen failing."""
    primary = sorted((rec["time"], r) for r, rec in records.items() if not rec["secondary"])
    died = [r for r, c in enumerate(codes) if c not in (0, None) and r not in records
            and r not in waited.stopped]
    if primary:
        root = primary[0][1]
    elif died:
        root = died[0]
    elif waited.first_failed is not None:
        root = waited.first_failed
    else:
        root = next(r for r, c in enumerate(codes) if c != 0)
    others = [r for r in range(len(codes))
              if r != root and (codes[r] != 0 or r in waited.stopped)]
    error = records.get(root, {}).get("traceback", "")
    if root in records and records[root]["secondary"] and waited.stopped:
        error += (f"\n(rank(s) {', '.join(map(str, waited.stopped))} were still running when "
                  "stopped: hung, or slower than the timeout)")
    return RankFailedError(root, codes[root] if codes[root] is not None else 1, error, others)


def launch(fn: Callable[..., Optional[int]], nproc: int, args: tuple = (), *,
           timeout: float = DEFAULT_TIMEOUT, threads: Optional[int] = None,
           grace: float = 3.0) -> int:
    r"""Run ``fn(*args)`` as the ``nproc`` ranks of one job on this machine,
    like ``torchrun --standalone --nproc-per-node nproc`` for a plain Python
    function.

    Each rank is a fresh process (``spawn``) that sees ``RANK``,
    ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR=127.0.0.1`` and a free
    ``MASTER_PORT``; ``fn`` joins the process group with
    :func:`init_from_env` (or :func:`torch.distributed.init_process_group`
    with ``init_method="env://"``). ``fn`` must be importable by the children:
    a module-level function, not a lambda or a closure, and ``args`` must be
    picklable. Under ``python script.py`` guard the call with
    ``if __name__ == "__main__":``, as for any ``spawn``-ed process.

    The ranks are watched: when one exits non-zero, the others get ``grace``
    seconds to stop on their own (they usually fail at their next collective),
    then are terminated, and :class:`RankFailedError` reports the root cause
    (the first rank whose error is not a mere consequence of a peer failure)
    with its traceback. ``Ctrl-C`` reaches every rank; a second ``Ctrl-C``
    terminates them.

    Example::

        import torch
        import torch.distributed as dist
        from pyg_mmrec.train import distributed

        def rank_sum(n):  # module level: the ranks import it
            ctx = distributed.init_from_env("cpu")
            t = torch.tensor([float(ctx.rank)])
            dist.all_reduce(t)
            assert t.item() == n * (n - 1) / 2
            distributed.destroy()

        if __name__ == "__main__":
            distributed.launch(rank_sum, 2, (2,), timeout=60)  # returns 0

    Args:
        fn: the per-rank function; an ``int`` return value is the rank's exit
            code (anything else counts as 0).
        nproc (int): number of ranks.
        args (tuple): positional arguments of ``fn`` (picklable).
        timeout (float): seconds a rank may wait on another; exported as
            ``PYG_MMREC_DIST_TIMEOUT`` (for :func:`init_from_env` callers that
            pass it on, and for error messages).
        threads (int, optional): torch threads per rank (default:
            ``OMP_NUM_THREADS`` if set, else CPU count / ``nproc``).
        grace (float): seconds between the first failure and terminating the rest.

    Returns:
        0 when every rank exits with 0; 130 when they were interrupted.

    Raises:
        RankFailedError: a rank failed (``rank``, ``exitcode`` and ``error``
            name the root cause).
    """
    if int(nproc) != nproc or nproc < 1:
        raise ValueError(f"nproc: expected a positive integer, got {nproc!r}")
    nproc = int(nproc)
    if threads is None:
        threads = (int(os.environ["OMP_NUM_THREADS"]) if os.environ.get("OMP_NUM_THREADS")
                   else max(1, (os.cpu_count() or 1) // nproc))
    err_dir = tempfile.mkdtemp(prefix="pyg_mmrec_ranks_")
    procs = _spawn_ranks(fn, nproc, tuple(args), timeout, threads, err_dir)
    waited = _wait_for_ranks(procs, grace)
    records = _collect_error_records(err_dir, nproc)
    codes = [p.exitcode for p in procs]
    if all(c == 0 for c in codes):
        return 0
    if waited.interrupted or all(c in (0, 130) for c in codes):
        return 130  # Ctrl-C: the ranks checkpointed (or were stopped by a second Ctrl-C)
    raise _root_cause(codes, records, waited)


__all__ = ["DistributedTrainer", "DistContext", "GlobalBatchShards", "PeerFailureError",
           "RankFailedError", "init_from_env", "destroy", "launch",
           "all_reduce_gradients", "all_reduce_sparse_gradients", "broadcast_parameters",
           "check_consistency", "barrier", "rank_zero_first", "agree", "get_rank_world",
           "is_distributed", "env_world_size", "DEFAULT_TIMEOUT", "FAULT_ENV"]
