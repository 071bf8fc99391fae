import pytest
import torch
import torch.nn.functional as F

from pyg_mmrec.data.knn import knn_graph, mask_key, normalize_edge_weight


def dense_knn(x, k, mask=None):
    """Brute force: full cosine matrix, self and missing items excluded."""
    n = x.size(0)
    mask = torch.ones(n, dtype=torch.bool) if mask is None else mask
    xn = F.normalize(x, dim=-1)
    sim = xn @ xn.t()
    sim.fill_diagonal_(float("-inf"))
    sim[:, ~mask] = float("-inf")
    k_eff = min(k, int(mask.sum()) - 1)
    edges = set()
    for i in mask.nonzero().view(-1).tolist():
        for j in sim[i].topk(k_eff).indices.tolist():
            edges.add((j, i))
    return edges, sim


def as_set(edge_index):
    return set(map(tuple, edge_index.t().tolist()))


@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
@pytest.mark.parametrize("masked", [False, True])
def test_knn_equals_dense_brute_force(chunk_size, masked):
    x = torch.randn(40, 6)
    mask = torch.rand(40) > 0.3 if masked else None
    ei, w = knn_graph(x, k=5, mask=mask, chunk_size=chunk_size)
    expected, sim = dense_knn(x, 5, mask)
    assert as_set(ei) == expected
    assert ei.size(1) == len(expected)  # no duplicates
    torch.testing.assert_close(w, sim[ei[1], ei[0]])
    # sorted by target, k edges per present target
    assert bool((ei[1].diff() >= 0).all())
    n_present = 40 if mask is None else int(mask.sum())
    assert ei.size(1) == n_present * 5


def test_knn_excludes_missing_items_and_self_loops():
    x = torch.randn(30, 4)
    mask = torch.ones(30, dtype=torch.bool)
    mask[[0, 3, 17, 29]] = False
    ei, _ = knn_graph(x, k=4, mask=mask)
    touched = torch.cat([ei[0], ei[1]]).unique()
    assert not bool((~mask[touched]).any())
    assert not bool((ei[0] == ei[1]).any())
    # a missing item's feature (here: a copy of item 1's) cannot attract edges
    x2 = x.clone()
    x2[0] = x[1]
    ei2, _ = knn_graph(x2, k=4, mask=mask)
    assert torch.equal(ei, ei2)


def test_knn_few_present_items_link_to_all_others():
    x = torch.randn(10, 3)
    mask = torch.zeros(10, dtype=torch.bool)
    mask[[2, 5, 7]] = True
    ei, _ = knn_graph(x, k=10, mask=mask)
    assert as_set(ei) == {(a, b) for a in (2, 5, 7) for b in (2, 5, 7) if a != b}
    mask[:] = False
    mask[4] = True
    ei, w = knn_graph(x, k=3, mask=mask)
    assert ei.shape == (2, 0) and w.numel() == 0


def test_knn_weights_are_differentiable():
    x = torch.randn(25, 5, requires_grad=True)
    ei, w = knn_graph(x, k=3)
    w.sum().backward()
    assert x.grad is not None and bool(x.grad.abs().sum() > 0)


def test_knn_bad_inputs():
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match="features"):
        knn_graph(x[0], k=2)
    with pytest.raises(ValueError, match="k"):
        knn_graph(x, k=0)
    with pytest.raises(ValueError, match="mask"):
        knn_graph(x, k=2, mask=torch.ones(9, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask"):
        knn_graph(x, k=2, mask=torch.ones(10))
    with pytest.raises(ValueError, match="chunk_size"):
        knn_graph(x, k=2, chunk_size=0)


@pytest.mark.parametrize("norm", ["sym", "row", "none"])
def test_normalize_edge_weight_matches_dense(norm):
    x = torch.rand(20, 4)  # non-negative features: positive cosine weights
    mask = torch.rand(20) > 0.2
    ei, w = knn_graph(x, k=4, mask=mask)
    A = torch.zeros(20, 20)
    A[ei[1], ei[0]] = w  # A[target, source]
    d = A.sum(1)
    if norm == "sym":
        inv = torch.where(d > 0, d.rsqrt(), torch.zeros_like(d))
        expected = inv[:, None] * A * inv[None, :]
    elif norm == "row":
        expected = A / torch.where(d > 0, d, torch.ones_like(d))[:, None]
    else:
        expected = A
    out = normalize_edge_weight(ei, w, 20, norm)
    torch.testing.assert_close(out, expected[ei[1], ei[0]])
    # indicator weights (FREEDOM): every row sums to 1 under "row"
    ind = normalize_edge_weight(ei, None, 20, "row")
    rows = torch.zeros(20).index_add_(0, ei[1], ind)
    torch.testing.assert_close(rows[mask], torch.ones(int(mask.sum())))
    with pytest.raises(ValueError, match="norm"):
        normalize_edge_weight(ei, w, 20, "bogus")


def test_mask_key_depends_on_content_only():
    m1 = torch.tensor([True, False, True])
    assert mask_key(m1) == mask_key(m1.clone())
    assert mask_key(m1) != mask_key(torch.tensor([True, True, True]))
    assert mask_key(None) == mask_key(None)


def test_knn_weights_same_with_and_without_autograd():
    x = torch.randn(30, 8)
    ei_plain, w_plain = knn_graph(x, k=4, chunk_size=7)
    ei_grad, w_grad = knn_graph(x.clone().requires_grad_(), k=4, chunk_size=7)
    assert torch.equal(ei_plain, ei_grad)
    torch.testing.assert_close(w_plain, w_grad.detach())
