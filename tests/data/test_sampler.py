import pytest
import torch

from pyg_mmrec.data import BPRSampler


def graph(U=30, I=20, density=0.6, seed=0):
    g = torch.Generator().manual_seed(seed)
    adj = torch.rand(U, I, generator=g) < density
    adj[:, 0] = False  # every user keeps at least one negative
    adj[torch.arange(U), torch.randint(1, I, (U,), generator=g)] = True
    return adj.nonzero().t(), adj


def test_one_triple_per_interaction_and_true_negatives():
    ei, adj = graph()
    s = BPRSampler(ei, 30, 20, seed=1)
    u, p, n = s.sample(0)
    assert u.shape == p.shape == n.shape == (ei.size(1),)
    assert bool(adj[u, p].all()) and not bool(adj[u, n].any())
    # every training pair exactly once
    key = (u * 20 + p).sort().values
    assert torch.equal(key, (ei[0] * 20 + ei[1]).sort().values)


def test_reproducible_per_seed_and_epoch():
    ei, _ = graph()
    a = BPRSampler(ei, 30, 20, seed=3).sample(5)
    b = BPRSampler(ei, 30, 20, seed=3).sample(5)
    c = BPRSampler(ei, 30, 20, seed=3).sample(6)
    d = BPRSampler(ei, 30, 20, seed=4).sample(5)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[0], d[0])


@pytest.mark.parametrize("drop_last", [False, True])
def test_shards_are_disjoint_and_cover(drop_last):
    ei, _ = graph()
    s = BPRSampler(ei, 30, 20)
    keys, sizes = [], []
    for r in range(3):
        u, p, n = s.sample(2, rank=r, world_size=3, drop_last=drop_last)
        keys.append(u * 20 + p)
        sizes.append(u.numel())
    allk = torch.cat(keys)
    assert allk.unique().numel() == allk.numel()
    if drop_last:
        assert len(set(sizes)) == 1 and allk.numel() == (len(s) // 3) * 3
    else:
        assert allk.numel() == len(s) and max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError, match="rank"):
        s.sample(0, rank=3, world_size=3)


def test_several_negatives_and_batches():
    ei, adj = graph()
    s = BPRSampler(ei, 30, 20, num_neg=4)
    u, p, n = s.sample(0)
    assert n.shape == (u.numel(), 4)
    assert not bool(adj[u.unsqueeze(1).expand_as(n), n].any())
    batches = list(s.batches(0, batch_size=50))
    assert sum(b[0].numel() for b in batches) == len(s)
    assert torch.equal(torch.cat([b[2] for b in batches]), n)


def test_bad_inputs():
    ei, _ = graph()
    with pytest.raises(ValueError, match="item ids outside"):
        BPRSampler(ei, 30, 10)
    with pytest.raises(ValueError, match=r"expected \[2, E\]"):
        BPRSampler(ei.t(), 30, 20)
    with pytest.raises(ValueError, match="num_neg"):
        BPRSampler(ei, 30, 20, num_neg=0)
    full = torch.stack([torch.zeros(3, dtype=torch.long), torch.arange(3)])
    with pytest.raises(ValueError, match="user 0 interacted with all 3 items"):
        BPRSampler(full, 1, 3)


def test_is_positive_large_query_path_matches_small():
    ei, adj = graph(U=300, I=400, density=0.3)
    s = BPRSampler(ei, 300, 400)
    g = torch.Generator().manual_seed(0)
    u, i = torch.randint(0, 300, (70_000,), generator=g), torch.randint(0, 400, (70_000,), generator=g)
    big = s.is_positive(u, i)  # sorted-query path (>= 2**16 queries)
    small = torch.cat([s.is_positive(u[k:k + 1000], i[k:k + 1000]) for k in range(0, 70_000, 1000)])
    assert torch.equal(big, small) and torch.equal(big, adj[u, i])
