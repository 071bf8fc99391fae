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


# ------------------------------------------------------------------ method="faiss"
def _faiss():
    return pytest.importorskip("faiss")


def _neighbour_lists(edge_index, k):
    """{target: [sources]} of a kNN graph sorted by target."""
    out = {}
    for j, i in edge_index.t().tolist():
        out.setdefault(i, []).append(j)
    assert all(len(v) == k for v in out.values())
    return out


def test_knn_faiss_exhaustive_equals_exact():
    """nprobe = nlist scans every list: the exact graph, up to ties at the k-th score."""
    _faiss()
    from pyg_mmrec.data.knn import faiss_nlist
    x = torch.randn(600, 16)
    mask = torch.rand(600) > 0.2
    n = int(mask.sum())
    nlist = faiss_nlist(n)
    assert nlist > 1  # a real partition, not a flat index
    ei_e, w_e = knn_graph(x, k=7, mask=mask)
    ei_f, w_f = knn_graph(x, k=7, mask=mask, method="faiss", nprobe=nlist)
    assert ei_f.shape == ei_e.shape and w_f.dtype == w_e.dtype
    assert torch.equal(ei_f[1], ei_e[1])  # same targets, same order (sorted, k per item)
    _, sim = dense_knn(x, 7, mask)
    exact, approx = _neighbour_lists(ei_e, 7), _neighbour_lists(ei_f, 7)
    for i in exact:
        diff = set(exact[i]) ^ set(approx[i])
        kth = sim[i, exact[i][-1]]
        # a differing neighbour may only be a (float32) tie with the k-th score
        assert all(abs(float(sim[i, j] - kth)) < 1e-5 for j in diff), i
    torch.testing.assert_close(w_f, sim[ei_f[1], ei_f[0]], atol=1e-5, rtol=1e-5)


def test_knn_faiss_recall_on_clustered_data():
    """Default parameters (nlist = 4 sqrt(I), nprobe = 16) on 60 Gaussian
    clusters: recall@10 against the exact graph >= 0.95 (0.993 measured)."""
    _faiss()
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(60, 32, generator=g)
    x = centres[torch.randint(0, 60, (6000,), generator=g)] + torch.randn(6000, 32, generator=g)
    ei_e, _ = knn_graph(x, k=10)
    ei_f, _ = knn_graph(x, k=10, method="faiss")
    exact = ei_e[0].view(-1, 10)
    approx = ei_f[0].view(-1, 10)
    recall = (approx.unsqueeze(2) == exact.unsqueeze(1)).any(1).float().mean().item()
    assert recall >= 0.95, recall


def test_knn_faiss_respects_masks_and_self():
    _faiss()
    x = torch.randn(400, 8)
    mask = torch.ones(400, dtype=torch.bool)
    mask[::7] = False
    x[0] = x[1]  # a missing item's copy of a present one cannot attract edges
    ei, w = knn_graph(x, k=5, mask=mask, method="faiss", nprobe=2)
    touched = torch.cat([ei[0], ei[1]]).unique()
    assert not bool((~mask[touched]).any())
    assert not bool((ei[0] == ei[1]).any())
    assert ei.size(1) == int(mask.sum()) * 5  # k neighbours for every present item
    assert bool((ei[1].diff() >= 0).all())
    # no duplicate neighbour of an item
    assert len(as_set(ei)) == ei.size(1)
    # few present items: all others, as for the exact search
    small = torch.zeros(400, dtype=torch.bool)
    small[[3, 50, 99]] = True
    ei, _ = knn_graph(x, k=10, mask=small, method="faiss")
    assert as_set(ei) == {(a, b) for a in (3, 50, 99) for b in (3, 50, 99) if a != b}


def test_knn_faiss_short_lists_fall_back_to_exact(monkeypatch):
    """With many lists and nprobe=1 some items see fewer than k candidates:
    those rows are answered exactly, so every item still gets k neighbours."""
    _faiss()
    import pyg_mmrec.data.knn as knn
    exact_rows = []
    exact_topk = knn._exact_topk

    def spy(queries, *args, **kwargs):
        exact_rows.append(queries.size(0))
        return exact_topk(queries, *args, **kwargs)

    monkeypatch.setattr(knn, "_exact_topk", spy)
    x = torch.randn(300, 4)
    ei, w = knn_graph(x, k=20, method="faiss", nlist=12, nprobe=1)
    assert exact_rows and 0 < exact_rows[0] <= 300
    assert ei.size(1) == 300 * 20 and len(as_set(ei)) == 300 * 20
    assert not bool((ei[0] == ei[1]).any())


def test_knn_faiss_weights_differentiable_and_anchored():
    _faiss()
    from pyg_mmrec.data.knn import knn_graph_anchored
    x = torch.randn(500, 8)
    mask = torch.rand(500) > 0.1
    ei_a, w_a = knn_graph(x[:400], k=4, mask=mask[:400], method="faiss")
    ei, w = knn_graph_anchored(x, k=4, mask=mask, num_anchors=400, method="faiss")
    old = ei[1] < 400
    assert torch.equal(ei[:, old], ei_a) and torch.equal(w[old], w_a)
    assert bool((ei[0, ~old] < 400).all())  # later items link to anchors only
    assert int((~old).sum()) == int(mask[400:].sum()) * 4
    xg = x.clone().requires_grad_()
    ei_g, w_g = knn_graph(xg, k=4, mask=mask, method="faiss")
    w_g.sum().backward()
    assert xg.grad is not None and bool(xg.grad.abs().sum() > 0)


def test_knn_method_errors(monkeypatch):
    import sys

    from pyg_mmrec.errors import MissingExtraError
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match="method: expected one of"):
        knn_graph(x, k=2, method="hnsw")
    with pytest.raises(ValueError, match="nprobe"):
        knn_graph(x, k=2, method="faiss", nprobe=0)
    monkeypatch.setitem(sys.modules, "faiss", None)  # as if not installed
    with pytest.raises(MissingExtraError, match="pip install faiss-cpu"):
        knn_graph(x, k=2, method="faiss")
