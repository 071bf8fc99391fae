r"""Full-ranking top-:math:`K` evaluation with `MMRec
<https://github.com/enoche/MMRec>`_'s metric definitions.

For a user :math:`u` with held-out targets :math:`T_u`, let :math:`r_{u,j}\in\{0,1\}`
say whether the :math:`j`-th ranked item (over *all* items, excluded ones
removed) is in :math:`T_u`. Per user

.. math::
    \mathrm{Recall@}K &= \frac{1}{|T_u|}\sum_{j\le K} r_{u,j}, \qquad
    \mathrm{Precision@}K = \frac{1}{K}\sum_{j\le K} r_{u,j}, \qquad
    \mathrm{Hit@}K = \max_{j\le K} r_{u,j},

    \mathrm{NDCG@}K &= \frac{\sum_{j\le K} r_{u,j}/\log_2(j+1)}
                           {\sum_{j\le \min(|T_u|,K)} 1/\log_2(j+1)}, \qquad
    \mathrm{MAP@}K = \frac{1}{\min(|T_u|,K)}\sum_{j\le K} r_{u,j}\,
                     \mathrm{Precision@}j,

and every metric is averaged over the users with :math:`|T_u|>0` (MMRec's
``recall``, ``ndcg``, ``precision`` and ``map``; ``hit`` as in RecBole).
These coincide (checked in ``tests/test_metrics.py``) with
:class:`torch_geometric.metrics.LinkPredRecall`, ``LinkPredNDCG``,
``LinkPredPrecision``, ``LinkPredMAP`` and ``LinkPredHitRatio`` of
torch_geometric 2.8 applied to the same top-:math:`K` lists (PyG also averages
over examples with at least one label and clamps the MAP / IDCG length at
:math:`\min(|T_u|, K)`). What PyG leaves to the caller is done here: scoring
all items, excluding training (and validation) items, and a single ``topk``
per chunk. PyG's ``weighted=True`` variants (graded relevance), ``LinkPredMRR``
and the beyond-accuracy metrics have no MMRec counterpart and are not used.
Note that MMRec's own test loader excludes only training items; pass
``[train, valid]`` to also exclude validation items when testing.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Iterable, Iterator, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

METRIC_NAMES = ("recall", "ndcg", "precision", "map", "hit")
DEFAULT_KS = (5, 10, 20, 50)
SPLITS = ("valid", "test")

Scorer = Callable[[Tensor], Tensor]


class Metrics(Mapping[str, float]):
    r"""Read-only mapping ``{"recall@20": 0.08, ...}`` produced by
    :func:`evaluate_full_ranking`, tagged with the split it was computed on.

    Every value is ``sums[key] / count`` (a mean over evaluated users), so
    shards of users evaluated on different workers combine exactly by adding
    ``sums`` and ``count`` (:meth:`combine`, :meth:`all_reduce`).

    Attributes:
        split: ``"valid"`` or ``"test"``.
        count: number of evaluated users (those with at least one target).
        sums: per-key sums over users.
    """

    def __init__(self, sums: Mapping[str, float], count: int, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
        self.split = split
        self.count = int(count)
        self.sums = {k: float(v) for k, v in sums.items()}
        self._values = {k: (v / self.count if self.count > 0 else 0.0)
                        for k, v in self.sums.items()}

    # mapping protocol
    def __getitem__(self, key: str) -> float:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    @classmethod
    def from_sums(cls, sums: Union[Mapping[str, float], Tensor], count: Union[int, Tensor],
                  split: str, keys: Optional[Sequence[str]] = None) -> "Metrics":
        r"""Builds metrics from (all-reduced) sums; ``sums`` may be a tensor in
        the order of ``keys`` (as returned by :meth:`sums_tensor`)."""
        if isinstance(sums, Tensor):
            if keys is None or len(keys) != sums.numel():
                raise ValueError("from_sums: a tensor of sums needs matching 'keys'")
            sums = dict(zip(keys, sums.tolist()))
        return cls(sums, int(count), split)

    def sums_tensor(self, device=None) -> Tuple[Tensor, Tuple[str, ...]]:
        r"""``(tensor [len(keys) + 1] float64 of sums then count, keys)``, ready
        for ``torch.distributed.all_reduce``."""
        keys = tuple(self.sums)
        t = torch.tensor([self.sums[k] for k in keys] + [float(self.count)],
                         dtype=torch.float64, device=device)
        return t, keys

    def all_reduce(self, group=None, device=None) -> "Metrics":
        r"""Sums over all workers of a ``torch.distributed`` group (no-op when
        not initialised)."""
        import torch.distributed as dist
        if not (dist.is_available() and dist.is_initialized()):
            return self
        t, keys = self.sums_tensor(device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
        return Metrics.from_sums(t[:-1], int(round(float(t[-1]))), self.split, keys)

    @staticmethod
    def combine(parts: Iterable["Metrics"]) -> "Metrics":
        """Exact combination of metrics computed on disjoint user shards."""
        parts = list(parts)
        if not parts:
            raise ValueError("combine: no metrics given")
        split = parts[0].split
        if any(p.split != split for p in parts):
            raise ValueError("combine: metrics come from different splits")
        sums = {k: sum(p.sums[k] for p in parts) for k in parts[0].sums}
        return Metrics(sums, sum(p.count for p in parts), split)

    def to_dict(self) -> Dict[str, float]:
        return dict(self._values)

    def __repr__(self) -> str:
        body = ", ".join(f"{k}={v:.4f}" for k, v in self._values.items())
        return f"Metrics(split={self.split!r}, users={self.count}, {body})"


def _csr_by_user(edge_index: Tensor, num_users: int) -> Tuple[Tensor, Tensor]:
    """(rowptr [num_users+1], items sorted by user) of a (user, item) edge list."""
    user, item = edge_index[0], edge_index[1]
    perm = user.argsort(stable=True)
    counts = torch.bincount(user, minlength=num_users)
    rowptr = torch.zeros(num_users + 1, dtype=torch.long, device=user.device)
    rowptr[1:] = counts.cumsum(0)
    return rowptr, item[perm]


def _gather_rows(rowptr: Tensor, col: Tensor, users: Tensor) -> Tuple[Tensor, Tensor]:
    r"""Vectorised CSR row gather: ``(row_in_batch, col)`` for ``users``."""
    start, end = rowptr[users], rowptr[users + 1]
    cnt = end - start
    total = int(cnt.sum())
    row = torch.repeat_interleave(torch.arange(users.numel(), device=users.device), cnt)
    offset = torch.arange(total, device=users.device) - torch.repeat_interleave(
        cnt.cumsum(0) - cnt, cnt)
    return row, col[torch.repeat_interleave(start, cnt) + offset]


def _check_edge_index(name: str, ei: Tensor, num_users: int, num_items: int) -> None:
    if not isinstance(ei, Tensor) or ei.dim() != 2 or ei.size(0) != 2:
        raise ValueError(f"{name}: expected a LongTensor [2, E] of (user, item) pairs, got "
                         f"{type(ei).__name__} {list(getattr(ei, 'shape', []))}")
    if ei.dtype not in (torch.long, torch.int):
        raise ValueError(f"{name}: expected an integer tensor, got {ei.dtype}")
    if ei.numel() > 0:
        if int(ei[0].min()) < 0 or int(ei[0].max()) >= num_users:
            raise ValueError(f"{name}: user ids must be in [0, {num_users}), got "
                             f"[{int(ei[0].min())}, {int(ei[0].max())}]")
        if int(ei[1].min()) < 0 or int(ei[1].max()) >= num_items:
            raise ValueError(f"{name}: item ids must be in [0, {num_items}), got "
                             f"[{int(ei[1].min())}, {int(ei[1].max())}]")


def topk_hits(scores: Tensor, k: int, target_row: Tensor, target_col: Tensor
              ) -> Tensor:
    r"""``bool [B, k]``: whether the :math:`j`-th best item of each row of
    ``scores [B, I]`` is one of that row's targets (``target_row``/``target_col``)."""
    top = scores.topk(k, dim=1).indices
    if target_row.numel() == 0:
        return torch.zeros_like(top, dtype=torch.bool)
    num_items = scores.size(1)
    keys = (target_row * num_items + target_col).sort().values
    flat = top + torch.arange(top.size(0), device=top.device).unsqueeze(1) * num_items
    pos = torch.searchsorted(keys, flat).clamp(max=keys.numel() - 1)
    return keys[pos] == flat


def metric_sums_from_hits(hits: Tensor, num_targets: Tensor, ks: Sequence[int]
                          ) -> Dict[str, float]:
    r"""Sums over users of every metric, given ``hits [B, maxK]`` and
    :math:`|T_u|` (``num_targets [B]``, all > 0)."""
    max_k = hits.size(1)
    h = hits.to(torch.float64)
    n = num_targets.to(torch.float64)
    pos = torch.arange(1, max_k + 1, dtype=torch.float64, device=h.device)
    discount = 1.0 / torch.log2(pos + 1.0)
    cum_hits = h.cumsum(1)
    cum_dcg = (h * discount).cumsum(1)
    ideal = discount.cumsum(0)  # ideal[j-1] = IDCG with j relevant items
    cum_ap = (cum_hits / pos * h).cumsum(1)
    out: Dict[str, float] = {}
    for k in ks:
        j = k - 1
        denom_k = torch.clamp(n, max=k)
        idcg = ideal[(denom_k - 1).long()]
        out[f"recall@{k}"] = float((cum_hits[:, j] / n).sum())
        out[f"ndcg@{k}"] = float((cum_dcg[:, j] / idcg).sum())
        out[f"precision@{k}"] = float(cum_hits[:, j].sum() / k)
        out[f"map@{k}"] = float((cum_ap[:, j] / denom_k).sum())
        out[f"hit@{k}"] = float((cum_hits[:, j] > 0).sum())
    return out


@torch.no_grad()
def evaluate_full_ranking(
    user_emb: Optional[Tensor],
    item_emb: Optional[Tensor],
    target_edge_index: Tensor,
    exclude_edge_indices: Union[None, Tensor, Sequence[Tensor]] = None,
    ks: Sequence[int] = DEFAULT_KS,
    split: str = "valid",
    chunk_size: Optional[int] = None,
    scorer: Optional[Scorer] = None,
    num_users: Optional[int] = None,
    num_items: Optional[int] = None,
    rank: int = 0,
    world_size: int = 1,
) -> Metrics:
    r"""Full-ranking evaluation: every item is ranked for every user that has
    targets, with the user's excluded items (training interactions, and
    validation ones when testing) pushed to :math:`-\infty`.

    Users are processed in chunks of ``chunk_size`` (memory
    :math:`O(\text{chunk\_size}\cdot I)`), and ``topk`` runs once per chunk at
    :math:`\max K`; all cut-offs are read from that single ranking.

    Args:
        user_emb (Tensor): :math:`E_U` ``[U, d]``; scores are ``user_emb @ item_emb.T``.
        item_emb (Tensor): :math:`E_I` ``[I, d]``.
        target_edge_index (LongTensor): ``[2, E]`` held-out (user, item) pairs.
        exclude_edge_indices (LongTensor or list): ``[2, E']`` pairs never
            recommended (e.g. ``[train]`` for validation, ``[train, valid]``
            for test).
        ks (sequence of int): cut-offs :math:`K`.
        split (str): ``"valid"`` or ``"test"``; recorded on the result so that
            :class:`~pyg_mmrec.train.early_stopping.EarlyStopping` can refuse
            test metrics.
        chunk_size (int, optional): users per chunk (default: about 16M
            scores per chunk).
        scorer (callable, optional): ``scorer(users [B]) -> scores [B, I]`` for
            models whose scores are not dot products; then ``user_emb`` and
            ``item_emb`` may be ``None`` and ``num_users``/``num_items`` are needed.
        rank, world_size (int): evaluate only the ``rank``-th of ``world_size``
            disjoint user shards; combine with :meth:`Metrics.all_reduce`.

    Returns:
        :class:`Metrics` with keys ``recall@K``, ``ndcg@K``, ``precision@K``,
        ``map@K``, ``hit@K``.
    """
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) <= 0:
        raise ValueError(f"ks: expected positive cut-offs, got {ks}")
    if scorer is None:
        if user_emb is None or item_emb is None:
            raise ValueError("user_emb and item_emb are required unless a scorer is given")
        if user_emb.dim() != 2 or item_emb.dim() != 2 or user_emb.size(1) != item_emb.size(1):
            raise ValueError(f"user_emb [U, d] and item_emb [I, d] must share d, got "
                             f"{list(user_emb.shape)} and {list(item_emb.shape)}")
        num_users = user_emb.size(0) if num_users is None else num_users
        num_items = item_emb.size(0) if num_items is None else num_items
        device = user_emb.device
    else:
        if num_users is None or num_items is None:
            raise ValueError("num_users and num_items are required with a scorer")
        device = (user_emb.device if user_emb is not None else target_edge_index.device)
    if max(ks) > num_items:
        raise ValueError(f"ks: max K={max(ks)} exceeds the number of items {num_items}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")

    _check_edge_index("target_edge_index", target_edge_index, num_users, num_items)
    if exclude_edge_indices is None:
        exclude_edge_indices = []
    elif isinstance(exclude_edge_indices, Tensor):
        exclude_edge_indices = [exclude_edge_indices]
    for j, ei in enumerate(exclude_edge_indices):
        _check_edge_index(f"exclude_edge_indices[{j}]", ei, num_users, num_items)

    target = target_edge_index.to(device=device, dtype=torch.long)
    t_rowptr, t_col = _csr_by_user(target, num_users)
    if exclude_edge_indices:
        excl = torch.cat([e.to(device=device, dtype=torch.long) for e in exclude_edge_indices], 1)
    else:
        excl = torch.empty(2, 0, dtype=torch.long, device=device)
    x_rowptr, x_col = _csr_by_user(excl, num_users)

    users = (t_rowptr.diff() > 0).nonzero().view(-1)
    users = users[rank::world_size]  # disjoint shards; union = all users
    max_k = max(ks)
    if chunk_size is None:
        chunk_size = max(1, (1 << 24) // max(num_items, 1))
    sums: Dict[str, float] = {f"{m}@{k}": 0.0 for k in ks for m in METRIC_NAMES}
    for start in range(0, users.numel(), chunk_size):
        u = users[start:start + chunk_size]
        if scorer is None:
            scores = user_emb[u] @ item_emb.t()
        else:
            scores = scorer(u)
            if scores.shape != (u.numel(), num_items):
                raise ValueError(f"scorer: expected scores of shape [{u.numel()}, {num_items}], "
                                 f"got {list(scores.shape)}")
        scores = scores.float() if scores.dtype in (torch.float16, torch.bfloat16) else scores
        row, col = _gather_rows(x_rowptr, x_col, u)
        if scorer is None:
            scores[row, col] = -math.inf  # our own buffer: in place
        else:  # the scorer's tensor may be shared: do not write into it
            scores = scores.index_put((row, col), scores.new_tensor(-math.inf))
        t_row, t_item = _gather_rows(t_rowptr, t_col, u)
        hits = topk_hits(scores, max_k, t_row, t_item)
        n = t_rowptr[u + 1] - t_rowptr[u]
        for key, v in metric_sums_from_hits(hits, n, ks).items():
            sums[key] += v
    return Metrics(sums, users.numel(), split)


__all__ = ["Metrics", "evaluate_full_ranking", "metric_sums_from_hits", "topk_hits",
           "METRIC_NAMES", "DEFAULT_KS"]
