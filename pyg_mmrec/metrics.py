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


def _check_edge_index(name: str, ei: Tensor, num_users: Optional[int], num_items: int
                      ) -> None:
    if not isinstance(ei, Tensor) or ei.dim() != 2 or ei.size(0) != 2:
        raise ValueError(f"{name}: expected a LongTensor [2, E] of (user, item) pairs, got "
                         f"{type(ei).__name__} {list(getattr(ei, 'shape', []))}")
    if ei.dtype not in (torch.long, torch.int):
        raise ValueError(f"{name}: expected an integer tensor, got {ei.dtype}")
    if ei.numel() > 0:
        if int(ei[0].min()) < 0 or (num_users is not None and int(ei[0].max()) >= num_users):
            bound = f"[0, {num_users})" if num_users is not None else "[0, inf)"
            raise ValueError(f"{name}: user ids must be in {bound}, got "
                             f"[{int(ei[0].min())}, {int(ei[0].max())}]")
        if int(ei[1].min()) < 0 or int(ei[1].max()) >= num_items:
            raise ValueError(f"{name}: item ids must be in [0, {num_items}), got "
                             f"[{int(ei[1].min())}, {int(ei[1].max())}]")


def hits_of_top(top_items: Tensor, num_items: int, target_row: Tensor,
                target_col: Tensor) -> Tensor:
    r"""``bool [B, k]``: whether ``top_items[b, j]`` (an item id) is one of
    row :math:`b`'s targets (``target_row``/``target_col``, item ids in
    ``[0, num_items)``)."""
    if target_row.numel() == 0:
        return torch.zeros_like(top_items, dtype=torch.bool)
    keys = (target_row * num_items + target_col).sort().values
    flat = top_items + torch.arange(top_items.size(0),
                                    device=top_items.device).unsqueeze(1) * num_items
    pos = torch.searchsorted(keys, flat).clamp(max=keys.numel() - 1)
    return keys[pos] == flat


def topk_hits(scores: Tensor, k: int, target_row: Tensor, target_col: Tensor
              ) -> Tensor:
    r"""``bool [B, k]``: whether the :math:`j`-th best item of each row of
    ``scores [B, I]`` is one of that row's targets (``target_row``/``target_col``)."""
    top = scores.topk(k, dim=1).indices
    return hits_of_top(top, scores.size(1), target_row, target_col)


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


def _as_edge_list(name: str, edge_indices: Union[None, Tensor, Sequence[Tensor]]
                  ) -> Sequence[Tensor]:
    if edge_indices is None:
        return []
    if isinstance(edge_indices, Tensor):
        return [edge_indices]
    if not isinstance(edge_indices, (list, tuple)):
        raise ValueError(f"{name}: expected a LongTensor [2, E] or a list of them, got "
                         f"{type(edge_indices).__name__}")
    return list(edge_indices)


def _check_ids(name: str, ids: Tensor, upper: Optional[int], what: str) -> None:
    if not isinstance(ids, Tensor) or ids.dim() != 1:
        raise ValueError(f"{name}: expected a 1-D LongTensor of {what} ids, got "
                         f"{type(ids).__name__} {list(getattr(ids, 'shape', []))}")
    if ids.dtype not in (torch.long, torch.int):
        raise ValueError(f"{name}: expected an integer tensor of {what} ids, got {ids.dtype}")
    if ids.numel() > 0:
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or (upper is not None and hi >= upper):
            bound = f"[0, {upper})" if upper is not None else "[0, inf)"
            raise ValueError(f"{name}: {what} ids must be in {bound}, got [{lo}, {hi}]")


class ExclusionIndex:
    r"""(user, item) pairs never to recommend, grouped by user once (a CSR over user ids).

    :func:`chunked_topk` accepts it as ``exclude``: each call then reads only the requested
    users' rows, instead of passing over every pair (e.g. all training interactions) on every
    call, which is what a service answering one user at a time needs.

    Args:
        edge_indices (LongTensor or list): ``[2, E]`` (user, item) pairs, or a list of them.
        num_items (int): :math:`I`; item ids must be in ``[0, num_items)``.
        num_users (int, optional): :math:`U`; user ids must be in ``[0, num_users)``
            (default: the largest user id + 1; users beyond it have no excluded items).

    Attributes:
        rowptr (LongTensor): ``[num_users + 1]``; user :math:`u`'s excluded items are
            ``col[rowptr[u]:rowptr[u + 1]]``.
        col (LongTensor): ``[E]`` item ids.
    """

    def __init__(self, edge_indices: Union[Tensor, Sequence[Tensor]], num_items: int,
                 num_users: Optional[int] = None) -> None:
        edge_indices = _as_edge_list("edge_indices", edge_indices)
        for j, ei in enumerate(edge_indices):
            _check_edge_index(f"edge_indices[{j}]", ei, num_users, num_items)
        if edge_indices:
            pairs = torch.cat([e.to(edge_indices[0].device, torch.long) for e in edge_indices], 1)
        else:
            pairs = torch.empty(2, 0, dtype=torch.long)
        if num_users is None:
            num_users = int(pairs[0].max()) + 1 if pairs.size(1) else 0
        self.num_users, self.num_items = int(num_users), int(num_items)
        self.rowptr, self.col = _csr_by_user(pairs, self.num_users)

    @property
    def device(self) -> torch.device:
        return self.col.device

    @property
    def num_pairs(self) -> int:
        return self.col.numel()

    def to(self, device) -> "ExclusionIndex":
        out = ExclusionIndex.__new__(ExclusionIndex)
        out.num_users, out.num_items = self.num_users, self.num_items
        out.rowptr, out.col = self.rowptr.to(device), self.col.to(device)
        return out

    def items_of(self, user: int) -> Tensor:
        r"""The excluded item ids of one user."""
        if not 0 <= user < self.num_users:
            return self.col.new_empty(0)
        return self.col[int(self.rowptr[user]):int(self.rowptr[user + 1])]

    def __repr__(self) -> str:
        return (f"ExclusionIndex(num_users={self.num_users}, num_items={self.num_items}, "
                f"num_pairs={self.num_pairs})")


def _embedding_sizes(user_emb: Optional[Tensor], item_emb: Optional[Tensor],
                     num_users: Optional[int], num_items: Optional[int]):
    """``(num_users, num_items, device)`` of dot-product scoring, checking the
    embeddings (both given, 2-D, one width)."""
    if user_emb is None or item_emb is None:
        raise ValueError("user_emb and item_emb are required unless a scorer is given")
    if user_emb.dim() != 2 or item_emb.dim() != 2 or user_emb.size(1) != item_emb.size(1):
        raise ValueError(f"user_emb [U, d] and item_emb [I, d] must share d, got "
                         f"{list(user_emb.shape)} and {list(item_emb.shape)}")
    num_users = user_emb.size(0) if num_users is None else num_users
    num_items = item_emb.size(0) if num_items is None else num_items
    return num_users, num_items, user_emb.device


def chunked_topk(
    user_emb: Optional[Tensor],
    item_emb: Optional[Tensor],
    users: Tensor,
    k: int,
    *,
    exclude: Union[None, Tensor, Sequence[Tensor], ExclusionIndex] = None,
    candidates: Optional[Tensor] = None,
    chunk_size: Optional[int] = None,
    scorer: Optional[Scorer] = None,
    num_items: Optional[int] = None,
    num_users: Optional[int] = None,
) -> Iterator[Tuple[Tensor, Tensor, Tensor]]:
    r"""Top-:math:`k` items of every user in ``users``, computed over chunks of
    users so that at most ``chunk_size`` rows of scores exist at once. This is
    the one ranking routine of the library: :func:`evaluate_full_ranking` and
    recommendation both use it.

    For each chunk of :math:`B` users the scores
    :math:`S = E_U[\text{users}]\,E_I^\top` (or ``scorer(users)``) are computed,
    the excluded (user, item) pairs are set to :math:`-\infty`, and a single
    ``torch.topk`` picks the :math:`k` best items per row, sorted by
    decreasing score. Ties are broken as ``torch.topk`` breaks them on that
    row (deterministic for a given input, not by item id).

    All arguments are checked before the first chunk is computed; the
    returned object is an iterator.

    Args:
        user_emb (Tensor): :math:`E_U` ``[U, d]``; scores are
            ``user_emb @ item_emb.T``. May be ``None`` with a ``scorer``.
        item_emb (Tensor): :math:`E_I` ``[I, d]``. May be ``None`` with a
            ``scorer``.
        users (LongTensor): ``[N]`` user ids to rank for (duplicates allowed,
            order kept).
        k (int): number of items returned per user, :math:`1 \le k \le` the
            number of ranked items (``len(candidates)`` or :math:`I`).
        exclude (LongTensor or list, optional): ``[2, E]`` (user, item) pairs
            (or a list of them) never recommended: they are scored
            :math:`-\infty`. If fewer than :math:`k` items remain for a user,
            the trailing slots have score :math:`-\infty` and their item ids
            are excluded items: drop them with ``torch.isinf(top_scores)``.
            An :class:`ExclusionIndex` built once from the pairs gives the same
            result and avoids a pass over all pairs at every call.
        candidates (LongTensor, optional): ``[C]`` distinct item ids; only
            these items are ranked. Returned ids are still real item ids.
        chunk_size (int, optional): users per chunk (default: about 16M
            scores per chunk).
        scorer (callable, optional): ``scorer(users [B]) -> scores [B, I]``
            for models whose scores are not dot products; ``num_items`` is then
            required. The scorer's tensor is never written into.
        num_items (int, optional): :math:`I` (default: ``item_emb.size(0)``).
        num_users (int, optional): :math:`U`, to check user ids (default:
            ``user_emb.size(0)``; unchecked upper bound with a scorer and
            without ``num_users``).

    Returns:
        An iterator over the chunks, in the order of ``users``, yielding
        ``(users_chunk, top_items, top_scores)``.

    Shapes:
        - **users_chunk**: :math:`[B]`
        - **top_items**: :math:`[B, k]` (long, real item ids)
        - **top_scores**: :math:`[B, k]` (float32 for half-precision scores,
          else the scores' dtype)
    """
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise ValueError(f"k: expected a positive int, got {k!r}")
    if scorer is None:
        num_users, num_items, device = _embedding_sizes(user_emb, item_emb, num_users,
                                                        num_items)
    else:
        if num_items is None:
            raise ValueError("num_items is required with a scorer")
        device = (user_emb.device if user_emb is not None
                  else item_emb.device if item_emb is not None else users.device)
    _check_ids("users", users, num_users, "user")
    users = users.to(device=device, dtype=torch.long)
    if isinstance(exclude, ExclusionIndex):
        if exclude.num_items != num_items:
            raise ValueError(f"exclude: an ExclusionIndex over {exclude.num_items} items, "
                             f"expected {num_items}")
        if num_users is not None and exclude.num_users > num_users:
            raise ValueError(f"exclude: an ExclusionIndex over {exclude.num_users} users, "
                             f"expected at most {num_users}")
    else:
        exclude = _as_edge_list("exclude", exclude)
        for j, ei in enumerate(exclude):
            _check_edge_index(f"exclude[{j}]", ei, num_users, num_items)
    if candidates is not None:
        _check_ids("candidates", candidates, num_items, "item")
        candidates = candidates.to(device=device, dtype=torch.long)
        if candidates.numel() == 0:
            raise ValueError("candidates: expected at least one item id, got none")
        if candidates.unique().numel() != candidates.numel():
            raise ValueError("candidates: expected distinct item ids, got duplicates")
        num_ranked = candidates.numel()
        if k > num_ranked:
            raise ValueError(f"k: expected at most the {num_ranked} candidates, got {k}")
    else:
        num_ranked = num_items
        if k > num_ranked:
            raise ValueError(f"k: expected at most the number of items {num_ranked}, got {k}")
    if chunk_size is None:
        chunk_size = max(1, (1 << 24) // max(num_ranked, 1))
    elif isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size: expected a positive int, got {chunk_size!r}")

    x_rowptr = x_col = position = None
    if isinstance(exclude, ExclusionIndex):
        if exclude.num_pairs > 0 and users.numel() > 0:
            x_rowptr, x_col = exclude.rowptr.to(device), exclude.col.to(device)
            extra = int(users.max()) + 1 - exclude.num_users
            if extra > 0:  # users beyond the index exclude nothing
                x_rowptr = torch.cat([x_rowptr, x_rowptr[-1:].expand(extra)])
    else:
        # the requested users' pairs only, as a CSR over user ids: a recommendation for a
        # few users then costs one pass over the pairs, not a sort of all of them
        excl = [e for e in exclude if e.numel() > 0]
        if excl and users.numel() > 0:
            excl = torch.cat([e.to(device=device, dtype=torch.long) for e in excl], 1)
            wanted = torch.zeros(max(int(users.max()), int(excl[0].max())) + 1,
                                 dtype=torch.bool, device=device)
            wanted[users] = True
            excl = excl[:, wanted[excl[0]]]
            x_rowptr, x_col = _csr_by_user(excl, int(users.max()) + 1)
    if x_rowptr is not None and candidates is not None:
        # item id -> position among the candidates (-1: not ranked)
        position = torch.full((num_items,), -1, dtype=torch.long, device=device)
        position[candidates] = torch.arange(num_ranked, device=device)
    item_matrix = None
    if scorer is None:
        item_matrix = item_emb if candidates is None else item_emb[candidates]
    return _iterate_topk(user_emb, item_matrix, users, k, x_rowptr, x_col, position,
                         candidates, chunk_size, scorer, num_items)


def _iterate_topk(user_emb, item_matrix, users, k, x_rowptr, x_col, position, candidates,
                  chunk_size, scorer, num_items):
    with torch.no_grad():
        buffer = None
        if scorer is None and users.numel() > 0:
            # one [chunk, I] score buffer for every chunk: a fresh allocation per chunk costs
            # page faults on every chunk (about a third of the time at 1M items)
            buffer = torch.empty(min(chunk_size, users.numel()), item_matrix.size(0),
                                 dtype=torch.result_type(user_emb, item_matrix),
                                 device=item_matrix.device)
        for start in range(0, users.numel(), chunk_size):
            u = users[start:start + chunk_size]
            owned = True  # may we write into `scores`?
            if scorer is None:
                scores = torch.matmul(user_emb[u], item_matrix.t(), out=buffer[:u.numel()])
            else:
                scores = scorer(u)
                if scores.shape != (u.numel(), num_items):
                    raise ValueError(f"scorer: expected scores of shape [{u.numel()}, "
                                     f"{num_items}], got {list(scores.shape)}")
                owned = False
                if candidates is not None:
                    scores, owned = scores[:, candidates], True  # advanced indexing copies
            if scores.dtype in (torch.float16, torch.bfloat16):
                scores, owned = scores.float(), True
            if x_rowptr is not None:
                row, col = _gather_rows(x_rowptr, x_col, u)
                if position is not None:  # item ids -> columns among the candidates
                    col = position[col]
                    row, col = row[col >= 0], col[col >= 0]
                if owned:
                    scores[row, col] = -math.inf  # our own buffer: in place
                else:  # the scorer's tensor may be shared: do not write into it
                    scores = scores.index_put((row, col), scores.new_tensor(-math.inf))
            top = scores.topk(k, dim=1)
            items = top.indices if candidates is None else candidates[top.indices]
            yield u, items, top.values


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
    candidates: Optional[Tensor] = None,
) -> Metrics:
    r"""Full-ranking evaluation: every item is ranked for every user that has
    targets, with the user's excluded items (training interactions, and
    validation ones when testing) pushed to :math:`-\infty`.

    The ranking is :func:`chunked_topk` at :math:`\max K` (users in chunks of
    ``chunk_size``, memory :math:`O(\text{chunk\_size}\cdot I)`); all
    cut-offs are read from that single ranking.

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
        candidates (LongTensor, optional): ``[C]`` distinct item ids: only
            these items are ranked and only the targets among them count (a
            user with none is not evaluated), e.g. to evaluate on new items
            only. :math:`\max K` must not exceed :math:`C`.

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
        num_users, num_items, device = _embedding_sizes(user_emb, item_emb, num_users,
                                                        num_items)
    else:
        if num_users is None or num_items is None:
            raise ValueError("num_users and num_items are required with a scorer")
        device = (user_emb.device if user_emb is not None else target_edge_index.device)
    if candidates is not None:
        _check_ids("candidates", candidates, num_items, "item")
        if max(ks) > candidates.numel():
            raise ValueError(f"ks: max K={max(ks)} exceeds the number of candidate items "
                             f"{candidates.numel()}")
    elif max(ks) > num_items:
        raise ValueError(f"ks: max K={max(ks)} exceeds the number of items {num_items}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")

    _check_edge_index("target_edge_index", target_edge_index, num_users, num_items)
    exclude_edge_indices = _as_edge_list("exclude_edge_indices", exclude_edge_indices)
    for j, ei in enumerate(exclude_edge_indices):
        _check_edge_index(f"exclude_edge_indices[{j}]", ei, num_users, num_items)

    target = target_edge_index.to(device=device, dtype=torch.long)
    if candidates is not None:  # only the targets that can be ranked count
        is_candidate = torch.zeros(num_items, dtype=torch.bool, device=device)
        is_candidate[candidates.to(device=device, dtype=torch.long)] = True
        target = target[:, is_candidate[target[1]]]
    t_rowptr, t_col = _csr_by_user(target, num_users)

    users = (t_rowptr.diff() > 0).nonzero().view(-1)
    users = users[rank::world_size]  # disjoint shards; union = all users
    max_k = max(ks)
    sums: Dict[str, float] = {f"{m}@{k}": 0.0 for k in ks for m in METRIC_NAMES}
    for u, top_items, _ in chunked_topk(
            user_emb, item_emb, users, max_k, exclude=exclude_edge_indices,
            candidates=candidates, chunk_size=chunk_size, scorer=scorer,
            num_items=num_items, num_users=num_users):
        t_row, t_item = _gather_rows(t_rowptr, t_col, u)
        hits = hits_of_top(top_items, num_items, t_row, t_item)
        n = t_rowptr[u + 1] - t_rowptr[u]
        for key, v in metric_sums_from_hits(hits, n, ks).items():
            sums[key] += v
    return Metrics(sums, users.numel(), split)


__all__ = ["Metrics", "evaluate_full_ranking", "chunked_topk", "ExclusionIndex", "metric_sums_from_hits",
           "topk_hits", "hits_of_top", "METRIC_NAMES", "DEFAULT_KS"]
