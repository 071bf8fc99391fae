r"""Vectorised, seeded BPR triple sampler (`Rendle et al., UAI 2009
<https://arxiv.org/abs/1205.2618>`_).

One epoch yields one :math:`(u, i^+, i^-)` triple per training interaction,
where :math:`i^-` is drawn uniformly from the items :math:`u` has *not*
interacted with in training. Everything is tensor code: membership of
:math:`(u, i^-)` in the training set is a ``searchsorted`` over the sorted keys
:math:`u\cdot I + i`, and only colliding draws are resampled.
"""
from __future__ import annotations

from typing import Iterator, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor


def epoch_generator(seed: int, epoch: int, *stream: int,
                    device: Optional[Union[str, torch.device]] = None) -> torch.Generator:
    """Generator (on the CPU unless ``device``) seeded from ``(seed, epoch,
    *stream)`` (mixed by ``numpy.SeedSequence``)."""
    state = np.random.SeedSequence([int(v) & 0xFFFFFFFF for v in (seed, epoch, *stream)])
    g = torch.Generator() if device is None else torch.Generator(device=device)
    g.manual_seed(int(state.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)))
    return g


class BPRSampler:
    r"""Uniform BPR sampler over a fixed training graph.

    Args:
        train_edge_index (LongTensor): ``[2, E]`` training (user, item) pairs.
        num_users (int): :math:`U`.
        num_items (int): :math:`I`.
        num_neg (int): negatives per positive; ``neg`` is ``[B]`` for 1, else ``[B, num_neg]``.
        seed (int): base seed; epoch ``e`` uses a generator seeded from ``(seed, e)``.
        max_rounds (int): resampling rounds before giving up (never reached
            unless a user has interacted with almost every item).
        device (torch.device, optional): where the graph is kept and the
            triples are drawn (generators on that device, seeded as on the
            CPU; a CUDA device draws other numbers than the CPU). An epoch's
            triples are then on the training device: slicing a batch copies
            nothing between host and device, and the negatives' redraw loop
            reads the device once per round, i.e. per epoch, not per step.
            Default: the CPU.
    """

    def __init__(self, train_edge_index: Tensor, num_users: int, num_items: int,
                 num_neg: int = 1, seed: int = 0, max_rounds: int = 1000,
                 device: Optional[Union[str, torch.device]] = None) -> None:
        if train_edge_index.dim() != 2 or train_edge_index.size(0) != 2:
            raise ValueError(f"train_edge_index: expected [2, E], got "
                             f"{list(train_edge_index.shape)}")
        if train_edge_index.size(1) == 0:
            raise ValueError("train_edge_index: no training interactions")
        if num_neg < 1:
            raise ValueError(f"num_neg: expected >= 1, got {num_neg}")
        ei = train_edge_index.detach().to("cpu", torch.long)
        user, item = ei[0], ei[1]
        if int(user.min()) < 0 or int(user.max()) >= num_users:
            raise ValueError(f"train_edge_index: user ids outside [0, {num_users})")
        if int(item.min()) < 0 or int(item.max()) >= num_items:
            raise ValueError(f"train_edge_index: item ids outside [0, {num_items})")
        self.num_users, self.num_items = int(num_users), int(num_items)
        self.num_neg, self.seed, self.max_rounds = int(num_neg), int(seed), int(max_rounds)
        self.user, self.item = user.contiguous(), item.contiguous()
        # Sorted, de-duplicated keys u*I+i (int64: fine up to ~9e18 pairs).
        self.keys = torch.unique(user * self.num_items + item)
        deg = torch.bincount(self.keys // self.num_items, minlength=self.num_users)
        full = (deg >= self.num_items).nonzero().view(-1)
        if full.numel() > 0:
            raise ValueError(f"train_edge_index: user {int(full[0])} interacted with all "
                             f"{num_items} items; no negative item exists")
        self.device = torch.device("cpu") if device is None else torch.device(device)
        if self.device.type != "cpu":
            self.user, self.item = self.user.to(self.device), self.item.to(self.device)
            self.keys = self.keys.to(self.device)

    def _generator(self, epoch: int, *stream: int) -> torch.Generator:
        # the CPU's generators exactly as before; another device: its own, same seed
        return epoch_generator(self.seed, epoch, *stream,
                               device=None if self.device.type == "cpu" else self.device)

    def __len__(self) -> int:
        return self.user.numel()

    def is_positive(self, user: Tensor, item: Tensor) -> Tensor:
        """Bool tensor: whether each (user, item) is a training interaction."""
        q = user * self.num_items + item
        shape = q.shape
        q = q.reshape(-1)
        if q.numel() < (1 << 16):
            pos = torch.searchsorted(self.keys, q).clamp(max=self.keys.numel() - 1)
            return (self.keys[pos] == q).view(shape)
        # Many queries: sort them first so that the binary searches walk the
        # key array monotonically (cache friendly; ~3.5x less CPU at 14M).
        qs, perm = q.sort()
        pos = torch.searchsorted(self.keys, qs).clamp(max=self.keys.numel() - 1)
        out = torch.empty_like(q, dtype=torch.bool)
        out[perm] = self.keys[pos] == qs
        return out.view(shape)

    def sample_negatives(self, user: Tensor, g: torch.Generator) -> Tensor:
        r"""Uniform negatives ``[B, num_neg]`` for ``user [B]`` (resampling collisions)."""
        u = user.unsqueeze(1).expand(-1, self.num_neg)
        neg = torch.randint(0, self.num_items, u.shape, generator=g, device=user.device)
        bad = self.is_positive(u, neg)
        rounds = 0
        while bool(bad.any()):
            rounds += 1
            if rounds > self.max_rounds:
                raise RuntimeError(f"BPRSampler: could not draw negatives for "
                                   f"{int(bad.sum())} entries after {self.max_rounds} rounds")
            idx = bad.nonzero(as_tuple=True)
            redraw = torch.randint(0, self.num_items, (idx[0].numel(),), generator=g,
                                   device=user.device)
            neg[idx] = redraw
            bad[idx] = self.is_positive(u[idx], redraw)
        return neg

    def sample(self, epoch: int, rank: int = 0, world_size: int = 1,
               drop_last: bool = False) -> Tuple[Tensor, Tensor, Tensor]:
        r"""Triples of one epoch (or of one worker's shard of it).

        The permutation depends only on ``(seed, epoch)``: shards
        ``rank = 0..world_size-1`` are disjoint and together cover every
        training interaction exactly once (sizes differ by at most one, or are
        equal with ``drop_last=True``). Negatives are drawn by the same
        generator after the permutation, so results are reproducible.

        Returns:
            ``(users [B], pos [B], neg [B] or [B, num_neg])``, ``int64`` on
            :attr:`device`.
        """
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        g = self._generator(epoch)
        perm = torch.randperm(len(self), generator=g, device=self.device)
        if drop_last:
            perm = perm[: (len(self) // world_size) * world_size]
        shard = perm[rank::world_size]
        # Per-shard generator for the negatives: independent of the other shards.
        g_neg = self._generator(epoch, rank + 1)
        users, pos = self.user[shard], self.item[shard]
        neg = self.sample_negatives(users, g_neg)
        return users, pos, (neg.squeeze(1) if self.num_neg == 1 else neg)

    def batches(self, epoch: int, batch_size: int, rank: int = 0, world_size: int = 1,
                drop_last: bool = False) -> Iterator[Tuple[Tensor, Tensor, Tensor]]:
        """Yields the epoch's triples in mini-batches of ``batch_size``."""
        users, pos, neg = self.sample(epoch, rank, world_size, drop_last)
        for s in range(0, users.numel(), batch_size):
            yield users[s:s + batch_size], pos[s:s + batch_size], neg[s:s + batch_size]

    def add_items(self, n: int) -> None:
        r"""Extends the catalogue by ``n`` items without interactions (as
        :meth:`~pyg_mmrec.models.Recommender.add_items` does for a model):
        they can now be drawn as negatives; the positives are unchanged."""
        if int(n) != n or n < 0:
            raise ValueError(f"n: expected an int >= 0, got {n!r}")
        new_num = self.num_items + int(n)
        # keys u*I+i depend on I: re-key them (the order of (u, i) is unchanged)
        user, item = self.keys // self.num_items, self.keys % self.num_items
        self.keys = user * new_num + item
        self.num_items = new_num

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(users={self.num_users}, items={self.num_items}, "
                f"interactions={len(self)}, num_neg={self.num_neg}, seed={self.seed})")


__all__ = ["BPRSampler", "epoch_generator"]
