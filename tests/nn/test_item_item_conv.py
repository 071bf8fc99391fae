import pytest
import torch

from torch_geometric import EdgeIndex

from pyg_mmrec.nn import ItemItemConv, to_csr

I = 10


def knn_like(k=3, seed=0):
    """A kNN-shaped graph: every item has k distinct neighbours (no self loops)."""
    g = torch.Generator().manual_seed(seed)
    src = torch.stack([torch.randperm(I - 1, generator=g)[:k] for _ in range(I)])
    src = src + (src >= torch.arange(I)[:, None]).long()  # skip self
    ei = torch.stack([src.reshape(-1), torch.arange(I).repeat_interleave(k)])
    w = torch.rand(ei.size(1), generator=g) + 0.05
    return ei, w


def dense_normalised(ei, w, norm):
    S = torch.zeros(I, I, dtype=torch.float64)
    S.index_put_((ei[1], ei[0]), (torch.ones(ei.size(1)) if w is None else w).double(),
                 accumulate=True)
    d = S.sum(1)
    if norm == "sym":
        dinv = torch.where(d > 0, d.rsqrt(), torch.zeros_like(d))
        return dinv[:, None] * S * dinv[None, :]
    if norm == "row":
        return S / torch.where(d > 0, d, torch.ones_like(d))[:, None]
    return S


def mask_(seed=2):
    m = torch.rand(I, generator=torch.Generator().manual_seed(seed)) > 0.35
    m[0] = False
    return m


@pytest.mark.parametrize("norm", ["sym", "row", "none"])
@pytest.mark.parametrize("renormalize", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_dense_fused_and_unfused(device, norm, renormalize, weighted):
    ei, w = knn_like()
    w = w if weighted else None
    m = mask_()
    x = torch.randn(I, 4, dtype=torch.float64)
    S = dense_normalised(ei, w, norm)
    Sm = S * m.double()
    ref = Sm @ x
    if renormalize:
        p, f = Sm.sum(1), S.sum(1)
        ref = torch.where(p > 0, f / p.clamp_min(1e-30), torch.zeros_like(p))[:, None] * ref
    ei, w, m, x, S, ref = (t.to(device) if t is not None else None
                           for t in (ei, w, m, x, S, ref))
    conv = ItemItemConv(normalize=norm, renormalize=renormalize).to(device)
    fused = conv(x, ei, m, w)
    conv.fuse = False
    unfused = conv(x, ei, m, w)
    assert torch.allclose(fused, ref, atol=1e-6) and torch.allclose(unfused, ref, atol=1e-6)
    # without a mask: plain normalised propagation
    conv.fuse = True
    assert torch.allclose(conv(x, ei, None, w), S @ x, atol=1e-6)


def test_row_renormalised_is_mean_over_present_neighbours():
    ei = torch.tensor([[1, 2, 3], [0, 0, 0]])
    w = torch.tensor([1.0, 2.0, 5.0])
    x = torch.tensor([[0.0], [3.0], [6.0], [1000.0]])
    m = torch.tensor([True, True, True, False])
    out = ItemItemConv(normalize="row", renormalize=True)(x, ei, m, w)
    assert torch.allclose(out[0], torch.tensor([(1 * 3.0 + 2 * 6.0) / 3.0]))


@pytest.mark.parametrize("fmt", ["EdgeIndex", "coo", "csr", "CSRAdjacency"])
@pytest.mark.parametrize("fuse", [True, False])
def test_adjacency_formats(fmt, fuse):
    ei, w = knn_like()
    m = mask_()
    x = torch.randn(I, 3)
    if fmt == "EdgeIndex":
        adj, ew = EdgeIndex(ei, sparse_size=(I, I)), w
    elif fmt == "CSRAdjacency":
        adj, ew = to_csr(ei, (I, I), w), None
    else:
        adj = torch.sparse_coo_tensor(ei.flip(0), w, (I, I))
        adj, ew = (adj.to_sparse_csr() if fmt == "csr" else adj), None
    conv = ItemItemConv(renormalize=True)
    ref = conv(x, ei, m, w)
    conv.fuse = fuse
    assert torch.allclose(conv(x, adj, m, ew), ref, atol=1e-5)


def test_masked_items_never_sources(device):
    ei, w, m, x = (t.to(device) for t in (*knn_like(), mask_(), torch.randn(I, 4)))
    conv = ItemItemConv().to(device)
    out = conv(x, ei, m, w)
    x2 = x.clone()
    x2[~m] = float("nan")
    assert torch.equal(conv(x2, ei, m, w), out)


def test_normalised_graph_cached_and_weight_gradients():
    ei, w = knn_like()
    x = torch.randn(I, 4)
    conv = ItemItemConv()
    conv(x, ei, None, w)
    cached = conv._cache._weighted
    conv(x, ei, None, w)
    assert conv._cache._weighted is cached  # normalised once for a static graph
    # learnable / feature-derived weights (LATTICE): gradients reach them
    w2 = w.clone().requires_grad_()
    conv(x, ei, mask_(), w2).sum().backward()
    assert w2.grad is not None and w2.grad.abs().sum() > 0


def test_with_knn_graph_builder():
    from pyg_mmrec.data.knn import knn_graph
    feats = torch.randn(I, 6)
    m = mask_()
    ei, w = knn_graph(feats, k=3, mask=m)
    conv = ItemItemConv(normalize="sym")
    out = conv(feats, ei, m, w)
    ref = dense_normalised(ei, w, "sym").float() @ feats
    assert out.shape == (I, 6) and torch.allclose(out, ref, atol=1e-5)


def test_bad_inputs_and_repr():
    ei, w = knn_like()
    x = torch.randn(I, 4)
    with pytest.raises(ValueError, match="normalize"):
        ItemItemConv(normalize="left")
    conv = ItemItemConv()
    with pytest.raises(ValueError, match="disagrees|square"):
        conv(x, to_csr(ei, (I, I + 2), w), None)
    with pytest.raises(ValueError, match="no bipartite"):
        conv((x, x), ei)
    with pytest.raises(ValueError, match=r"mask: expected shape \[10\]"):
        conv(x, ei, torch.ones(I - 1, dtype=torch.bool), w)
    with pytest.raises(ValueError, match="mask: expected a bool"):
        conv(x, ei, torch.ones(I), w)
    assert repr(conv) == "ItemItemConv(normalize='sym', renormalize=False)"


def test_torch_compile_fullgraph():
    ei, w = knn_like()
    m = mask_()
    conv = ItemItemConv(renormalize=True)
    adj = to_csr(ei, (I, I), w)
    x = torch.randn(I, 4, requires_grad=True)
    ref = conv(x, adj, m)
    torch._dynamo.reset()
    compiled = torch.compile(conv, fullgraph=True, backend="eager")
    out = compiled(x, adj, m)
    out.sum().backward()
    assert torch.allclose(out, ref, atol=1e-6) and x.grad is not None
