import pytest
import torch

from pyg_mmrec.nn.lightgcn_conv import LightGCNConv
from pyg_mmrec.nn.neighbor_sampling import (LayerwiseSampler, check_fanout,
                                            present_weight_sum)

U, I, F = 30, 40, 8


def graph(seed=0, num_edges=300):
    g = torch.Generator().manual_seed(seed)
    ei = torch.stack([torch.randint(0, U, (num_edges,), generator=g),
                      torch.randint(0, I, (num_edges,), generator=g)])
    return LightGCNConv(U, I, ei, num_layers=2), torch.randn(U + I, F, generator=g)


def item_mask(seed=1):
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(I, generator=g) > 0.4
    return m, torch.cat([torch.ones(U, dtype=torch.bool), m])


SEEDS = torch.tensor([0, 3, 3, U + 5, U + 7, 1, U + 7])


def max_degree(conv):
    return int(conv.adj.rowptr.diff().max())


@pytest.mark.parametrize("combine", ["mean", "sum", "last"])
def test_large_fanout_equals_full_graph(device, combine):
    conv, x = graph()
    conv, x = conv.to(device), x.to(device)
    full = conv.propagate_layers(x, combine=combine)
    seeds = SEEDS.to(device)
    sub = LayerwiseSampler([max_degree(conv)] * 2).sample(conv.adj, seeds)
    out = sub.propagate(x[sub.n_id], combine=combine)
    assert torch.allclose(out[sub.seed_index], full[seeds], atol=1e-6)
    # nested node sets, seeds first
    assert sub.sizes == sorted(sub.sizes) and len(sub.sizes) == 3
    # static shapes: the unique seeds, then padding that repeats the last one
    n0, real = sub.sizes[0], sub.valid
    assert n0 == seeds.numel() and sub.n_id.numel() == sub.sizes[-1]
    uniq = torch.unique(seeds)
    assert torch.equal(sub.seeds[real[:n0]], uniq) and bool((sub.seeds[~real[:n0]] == uniq[-1]).all())
    assert sub.n_id[real].unique().numel() == int(real.sum()) == sub.num_nodes()


def test_masked_large_fanout_equals_masked_conv(device):
    conv, x = graph()
    conv, x = conv.to(device), x.to(device)
    m, node_mask = (t.to(device) for t in item_mask())
    full = conv.propagate_layers(x, item_mask=m)
    SEEDS_ = SEEDS.to(device)
    sub = LayerwiseSampler([max_degree(conv)] * 2).sample(conv.adj, SEEDS_)
    ps = present_weight_sum(conv.adj, node_mask)
    out = sub.propagate(x[sub.n_id], node_mask=node_mask[sub.n_id], row_sum=conv.row_sum,
                        present_sum=ps)
    assert torch.allclose(out[sub.seed_index], full[SEEDS_], atol=1e-6)


def test_masked_items_are_never_read():
    conv, x = graph()
    m, node_mask = item_mask()
    ps = present_weight_sum(conv.adj, node_mask)
    torch.manual_seed(0)
    sub = LayerwiseSampler([3, 3]).sample(conv.adj, torch.arange(U))  # seeds: all users
    local_mask = node_mask[sub.n_id]
    assert (~local_mask).any()
    kw = dict(node_mask=local_mask, row_sum=conv.row_sum, present_sum=ps, combine="last")
    x1 = x[sub.n_id]
    x2 = x1.clone()
    x2[~local_mask] = float("nan")  # missing items' inputs: must not leak anywhere
    y1, y2 = sub.propagate(x1, **kw), sub.propagate(x2, **kw)
    assert torch.isfinite(y2).all() and torch.equal(y1, y2)


def test_unbiased_with_small_fanout():
    conv, x = graph()
    m, node_mask = item_mask()
    ps = present_weight_sum(conv.adj, node_mask)
    sampler = LayerwiseSampler([2, 2])
    assert max_degree(conv) > 6  # the fan-out really subsamples
    torch.manual_seed(0)
    for masked in (False, True):
        full = conv.propagate_layers(x, item_mask=m if masked else None)[SEEDS]
        draws = []
        for _ in range(800):
            sub = sampler.sample(conv.adj, SEEDS)
            kw = dict(node_mask=node_mask[sub.n_id], row_sum=conv.row_sum,
                      present_sum=ps) if masked else {}
            draws.append(sub.propagate(x[sub.n_id], **kw)[sub.seed_index])
        draws = torch.stack(draws)
        mean, sem = draws.mean(0), draws.std(0) / draws.size(0) ** 0.5
        assert (draws.std(0) > 0).any()  # it is random
        # within 5 standard errors everywhere
        assert ((mean - full).abs() <= 5 * sem + 1e-5).all()


def test_gradients_flow():
    conv, x = graph()
    x = x.requires_grad_()
    sub = LayerwiseSampler([4, 4]).sample(conv.adj, SEEDS)
    xs = x[sub.n_id]
    sub.propagate(xs)[sub.seed_index].sum().backward()
    assert x.grad is not None and x.grad[sub.n_id].abs().sum() > 0
    outside = torch.ones(U + I, dtype=torch.bool)
    outside[sub.n_id] = False
    assert (x.grad[outside] == 0).all()  # nothing outside the sample is touched


def test_deterministic_per_seed():
    conv, x = graph()
    sampler = LayerwiseSampler([2, 3])

    def run(seed):
        torch.manual_seed(seed)
        sub = sampler.sample(conv.adj, SEEDS)
        return sub.n_id, sub.propagate(x[sub.n_id])

    a, b, c = run(5), run(5), run(6)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not (a[0].numel() == c[0].numel() and torch.equal(a[0], c[0]) and
                torch.equal(a[1], c[1]))


def test_cost_bounded_by_fanout():
    conv, _ = graph(num_edges=600)
    sub = LayerwiseSampler([2, 3], static_shapes=True).sample(conv.adj, SEEDS)
    n0 = sub.sizes[0]
    # edge slots and node capacities: fixed on the host by the seeds and fan-outs
    assert sub.blocks[0][1].numel() == 2 * n0
    assert sub.blocks[1][1].numel() == 3 * sub.sizes[1]
    assert sub.sizes[1] == n0 * 3 and sub.sizes[2] == n0 * 3 * 4
    assert torch.equal(sub.blocks[0][0], torch.arange(n0 + 1) * 2)
    assert sub.num_sampled_edges() <= 2 * n0 + 3 * sub.sizes[1]


def test_compact_hops_keep_the_reached_nodes_only():
    conv, _ = graph(num_edges=600)
    torch.manual_seed(0)
    static = LayerwiseSampler([2, 3], static_shapes=True).sample(conv.adj, SEEDS)
    torch.manual_seed(0)
    compact = LayerwiseSampler([2, 3], static_shapes=False).sample(conv.adj, SEEDS)
    assert LayerwiseSampler([2]).static_shapes is None  # default: compact on the CPU
    n0 = compact.sizes[0]
    # past the seeds every row is a reached node, each once; the static sample pads
    assert bool(compact.valid[n0:].all())
    assert compact.n_id[n0:].unique().numel() == compact.sizes[-1] - n0
    assert compact.sizes[-1] < static.sizes[-1]
    # hop 0 draws the same numbers (same targets): the same first-hop nodes
    real = static.n_id[n0:static.sizes[1]][static.valid[n0:static.sizes[1]]]
    assert torch.equal(compact.n_id[n0:compact.sizes[1]], real)


@pytest.mark.parametrize("fanout,layers,match", [
    ([], 2, "fanout"), ([10, 0], 2, "fanout"), ([10, -1], 2, "fanout"), ([10], 2, "n_layers=2"),
    ([10, 10, 10], 2, "fanout"), ("10", 1, "fanout"), ([2.5, 3], 2, "fanout"),
    ([True, 3], 2, "fanout")])
def test_bad_fanout(fanout, layers, match):
    with pytest.raises(ValueError, match=match):
        check_fanout(fanout, layers)
    with pytest.raises(ValueError, match="fanout"):
        LayerwiseSampler(fanout, layers)


def test_bad_seeds_and_inputs():
    conv, x = graph()
    s = LayerwiseSampler([2, 2])
    with pytest.raises(ValueError, match="seeds"):
        s.sample(conv.adj, torch.tensor([U + I]))
    with pytest.raises(ValueError, match="seeds"):
        s.sample(conv.adj, torch.tensor([0.5]))
    sub = s.sample(conv.adj, SEEDS)
    with pytest.raises(ValueError, match="x"):
        sub.propagate(x)
    with pytest.raises(ValueError, match="row_sum"):
        sub.propagate(x[sub.n_id], row_sum=conv.row_sum)
