r"""The new-item (cold-items) protocol: a seeded share of the catalog is held
out of training entirely, so that at evaluation time those items are *new*:
they have no interaction the model could have learned from, only their
content (and a presence mask per modality).

:func:`make_cold_split` draws the new items and moves their interactions:

* the new items are a uniform, seeded draw of ``round(share * I)`` items among
  the items with at least one interaction (in any split). The generator is
  seeded from the run's seed (stream ``"cold"``, independent of the masks and
  of the BPR sampler), so a seed gives the same split on every machine;
* every *training* interaction of a new item moves to validation or test:
  per user, a seeded half goes to validation and the other half to test
  (a user with an odd number flips a seeded coin for the extra one);
  validation and test interactions of new items stay where they were;
* users left without any training interaction (all their training items were
  drawn as new) cannot be ranked by a collaborative model: their validation
  and test interactions are dropped, as the dataset loader does for users
  without training data (counted in :attr:`ColdSplit.dropped_users`).

The split also fixes the *internal* item order a run trains and evaluates
with: the warm (training) items first, ``0 .. W-1`` in dataset order, then
the new items ``W .. I-1`` in dataset order. A model is built on the warm
items only (new items are never positives, never sampled as negatives, never
in a graph or a kNN item graph) and the new items are appended to it before
evaluation through the same ``add_items`` path a deployment uses.
:attr:`ColdSplit.order` maps internal ids back to dataset ids.
"""
from __future__ import annotations

import json
import os
import os.path as osp
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .sampler import epoch_generator

#: stream id of the cold split's generator (the masks use 0..3)
_COLD_STREAM = 0xC01D
COLD_FILE = "cold_items.npy"
COLD_META = "cold.json"


@dataclass
class ColdSplit:
    r"""A drawn new-item split (see the module docstring).

    Attributes:
        share (float): requested share of items.
        seed (int): the seed it was drawn with.
        cold_items (LongTensor): dataset ids of the new items, sorted ``[C]``.
        order (LongTensor): internal id -> dataset id ``[I]`` (warm items, then new ones).
        num_warm (int): :math:`W`, the number of training items.
        train_edge_index, valid_edge_index, test_edge_index (LongTensor):
            ``[2, E]`` splits in *internal* item ids; training edges only
            touch warm items.
        moved (int): training interactions moved to validation/test.
        dropped_users (int): users without training interactions left, whose
            evaluation interactions were dropped.
    """

    share: float
    seed: int
    cold_items: Tensor
    order: Tensor
    num_warm: int
    train_edge_index: Tensor
    valid_edge_index: Tensor
    test_edge_index: Tensor
    moved: int = 0
    dropped_users: int = 0

    @property
    def num_items(self) -> int:
        return int(self.order.numel())

    @property
    def num_cold(self) -> int:
        return int(self.cold_items.numel())

    @property
    def warm_items(self) -> Tensor:
        """Dataset ids of the training items, in internal order ``[W]``."""
        return self.order[: self.num_warm]

    def to_internal(self) -> Tensor:
        """Dataset id -> internal id ``[I]``."""
        inv = torch.empty_like(self.order)
        inv[self.order] = torch.arange(self.order.numel())
        return inv

    def save(self, folder: str) -> None:
        r"""Writes ``cold_items.npy`` (dataset ids, int64) and ``cold.json``
        into ``folder``, each atomically."""
        from .missing import _atomic_save_npy, _atomic_write
        os.makedirs(folder, exist_ok=True)
        _atomic_save_npy(osp.join(folder, COLD_FILE), self.cold_items.numpy().astype(np.int64))
        meta = {"share": self.share, "seed": self.seed, "num_items": self.num_items,
                "num_cold": self.num_cold, "moved_train_interactions": self.moved,
                "dropped_users": self.dropped_users}
        _atomic_write(osp.join(folder, COLD_META), json.dumps(meta, indent=1).encode())

    @staticmethod
    def load_items(folder: str) -> Tensor:
        """The saved ``cold_items.npy`` of a run (dataset ids)."""
        path = osp.join(folder, COLD_FILE)
        if not osp.isfile(path):
            raise FileNotFoundError(f"{path}: not found (the run's saved new-item split)")
        a = np.load(path, allow_pickle=False)
        if a.dtype != np.int64 or a.ndim != 1:
            raise ValueError(f"{path}: expected a 1-D int64 array, got {a.dtype} {a.shape}")
        return torch.from_numpy(a.copy())


def _check_share(share: Any) -> float:
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 < share < 1.0:
        raise ValueError(f"cold_items: expected a share in (0, 1), got {share!r}")
    return float(share)


def make_cold_split(data: Any, share: float, seed: int = 0) -> ColdSplit:
    r"""Draws the new items of the cold-items protocol and moves their
    training interactions to validation/test (see the module docstring).

    Args:
        data: the dataset's ``HeteroData`` (``user``/``item`` nodes and the
            ``("user", "rates", "item")`` train/valid/test edges).
        share (float): share of items made new, in :math:`(0, 1)`.
        seed (int): the run's seed.

    Returns:
        :class:`ColdSplit`.
    """
    share = _check_share(share)
    num_users, num_items = int(data["user"].num_nodes), int(data["item"].num_nodes)
    store = data["user", "rates", "item"]
    train, valid, test = store.edge_index, store.valid_edge_index, store.test_edge_index
    seen = torch.zeros(num_items, dtype=torch.bool)
    for ei in (train, valid, test):
        seen[ei[1]] = True
    pool = seen.nonzero().view(-1)
    num_cold = int(round(share * num_items))
    if num_cold < 1 or num_cold >= pool.numel():
        raise ValueError(f"cold_items: a share of {share} gives {num_cold} new items out of "
                         f"{pool.numel()} items with interactions; expected at least one new "
                         "and one training item")
    g = epoch_generator(int(seed), _COLD_STREAM)
    cold = pool[torch.randperm(pool.numel(), generator=g)[:num_cold]].sort().values
    is_cold = torch.zeros(num_items, dtype=torch.bool)
    is_cold[cold] = True

    # training interactions of new items: per user, a seeded half to valid, the rest to test
    moving = is_cold[train[1]]
    mv = train[:, moving]
    keep_train = train[:, ~moving]
    key = torch.rand(mv.size(1), generator=g)
    perm = torch.argsort(key)
    perm = perm[torch.argsort(mv[0, perm], stable=True)]  # by user, random within a user
    mv = mv[:, perm]
    counts = torch.bincount(mv[0], minlength=num_users)
    start = counts.cumsum(0) - counts
    rank = torch.arange(mv.size(1)) - start[mv[0]]
    coin = torch.randint(0, 2, (num_users,), generator=g)
    n_valid = counts // 2 + (counts % 2) * coin
    to_valid = rank < n_valid[mv[0]]
    valid = torch.cat([valid, mv[:, to_valid]], 1)
    test = torch.cat([test, mv[:, ~to_valid]], 1)

    has_train = torch.zeros(num_users, dtype=torch.bool)
    has_train[keep_train[0]] = True
    lost = set(valid[0][~has_train[valid[0]]].tolist()) | set(test[0][~has_train[test[0]]].tolist())
    valid, test = valid[:, has_train[valid[0]]], test[:, has_train[test[0]]]

    order = torch.cat([(~is_cold).nonzero().view(-1), cold])
    inv = torch.empty_like(order)
    inv[order] = torch.arange(num_items)

    def internal(ei: Tensor) -> Tensor:
        ei = torch.stack([ei[0], inv[ei[1]]])
        # sorted by (user, item) like the dataset's own splits
        return ei[:, torch.argsort(ei[0] * num_items + ei[1])]

    return ColdSplit(share=share, seed=int(seed), cold_items=cold, order=order,
                     num_warm=num_items - num_cold, train_edge_index=internal(keep_train),
                     valid_edge_index=internal(valid), test_edge_index=internal(test),
                     moved=int(mv.size(1)), dropped_users=len(lost))


__all__ = ["ColdSplit", "make_cold_split", "COLD_FILE", "COLD_META"]
