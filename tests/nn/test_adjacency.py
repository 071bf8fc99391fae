import pytest
import torch

from torch_geometric import EdgeIndex
from torch_geometric.typing import WITH_TORCH_SPARSE, SparseTensor

from pyg_mmrec.nn import CSRAdjacency, to_csr
from pyg_mmrec.nn.adjacency import AdjacencyCache, csr_spmm

needs_torch_sparse = pytest.mark.skipif(not WITH_TORCH_SPARSE, reason="torch_sparse not installed")


def dense(adj: CSRAdjacency) -> torch.Tensor:
    """[N_dst, N_src] dense matrix of a CSRAdjacency (duplicates summed)."""
    out = torch.zeros(adj.shape, dtype=torch.float64)
    val = torch.ones(adj.num_edges) if adj.value is None else adj.value
    out.index_put_((adj.row(), adj.col), val.double(), accumulate=True)
    return out


def graph(n_src=5, n_dst=4, e=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ei = torch.stack([torch.randint(0, n_src, (e,), generator=g),
                      torch.randint(0, n_dst, (e,), generator=g)])
    w = torch.rand(e, generator=g)
    ref = torch.zeros(n_dst, n_src, dtype=torch.float64)
    ref.index_put_((ei[1], ei[0]), w.double(), accumulate=True)
    return ei, w, ref


def test_edge_index_rows_are_targets():
    ei, w, ref = graph()
    adj = to_csr(ei, (5, 4), w)
    assert adj.shape == (4, 5) and adj.num_edges == 12
    counts = torch.bincount(ei[1], minlength=4)
    assert torch.equal(adj.rowptr, torch.cat([counts.new_zeros(1), counts.cumsum(0)]))
    assert torch.allclose(dense(adj), ref)
    # edge_perm maps CSR positions back to input edges
    assert torch.equal(adj.col, ei[0][adj.edge_perm])
    assert torch.equal(adj.gather(w), adj.value)


def test_size_inferred_square_and_int():
    ei = torch.tensor([[0, 3], [1, 2]])
    assert to_csr(ei).shape == (4, 4)
    assert to_csr(ei, 6).shape == (6, 6)
    assert to_csr(ei, (4, None)).shape == (4, 4)


@pytest.mark.parametrize("fmt", ["edge_index", "edge_index_int32", "EdgeIndex_row",
                                 "EdgeIndex_col", "EdgeIndex_unsorted", "coo", "coo_uncoalesced",
                                 "csr", "csc", "CSRAdjacency"])
def test_every_format_same_matrix(fmt):
    ei, w, ref = graph()
    n_src, n_dst = 5, 4
    if fmt == "edge_index":
        adj = to_csr(ei, (n_src, n_dst), w)
    elif fmt == "edge_index_int32":
        adj = to_csr(ei.int(), (n_src, n_dst), w)
    elif fmt.startswith("EdgeIndex"):
        e = EdgeIndex(ei, sparse_size=(n_src, n_dst))
        if fmt == "EdgeIndex_unsorted":
            adj = to_csr(e, None, w)
        else:
            e, perm = e.sort_by("row" if fmt.endswith("row") else "col")
            adj = to_csr(e, None, w[perm])
    elif fmt.startswith("coo"):
        idx = ei.flip(0)
        if fmt == "coo_uncoalesced":
            idx, ww = torch.cat([idx, idx], 1), torch.cat([w / 2, w / 2])
        else:
            ww = w
        adj = to_csr(torch.sparse_coo_tensor(idx, ww, (n_dst, n_src)))
    elif fmt == "csr":
        adj = to_csr(torch.sparse_coo_tensor(ei.flip(0), w, (n_dst, n_src)).to_sparse_csr())
    elif fmt == "csc":
        adj = to_csr(torch.sparse_coo_tensor(ei.flip(0), w, (n_dst, n_src)).to_sparse_csc())
    else:
        adj = to_csr(to_csr(ei, (n_src, n_dst), w), (n_src, n_dst))
    assert adj.shape == (n_dst, n_src)
    assert adj.rowptr.dtype == torch.long and adj.col.dtype == torch.long
    assert torch.allclose(dense(adj), ref, atol=1e-6)


@needs_torch_sparse
def test_sparse_tensor():  # pragma: no cover - needs torch_sparse
    ei, w, ref = graph()
    adj_t = SparseTensor(row=ei[1], col=ei[0], value=w, sparse_sizes=(4, 5))
    adj = to_csr(adj_t)
    assert adj.shape == (4, 5)
    assert torch.allclose(dense(adj), ref, atol=1e-6)


def test_csc_and_transpose():
    ei, w, ref = graph(7, 3, 20)
    adj = to_csr(ei, (7, 3), w)
    colptr, row_t, perm = adj.csc()
    assert colptr.numel() == 8 and adj.has_csc()
    # every CSC edge is the CSR edge perm[k]: same source and target
    src_of_k = torch.repeat_interleave(torch.arange(7), colptr.diff())
    assert torch.equal(adj.col[perm], src_of_k)
    assert torch.equal(adj.row()[perm], row_t)
    assert adj.csc() is adj.csc()  # cached
    assert torch.allclose(dense(adj.t()), ref.t(), atol=1e-6)
    # with_value shares the cached transpose
    assert adj.with_value(torch.ones(20)).csc() is adj.csc()


def test_empty_graph():
    adj = to_csr(torch.empty(2, 0, dtype=torch.long), (3, 2))
    assert adj.shape == (2, 3) and torch.equal(adj.rowptr, torch.zeros(3, dtype=torch.long))
    out, ws = csr_spmm(adj, torch.randn(3, 4))
    assert torch.equal(out, torch.zeros(2, 4)) and torch.equal(ws, torch.zeros(2))


def test_csr_spmm_matches_dense_and_passes_csc(device):
    ei, w, ref = (t.to(device) for t in graph())
    adj = to_csr(ei, (5, 4), w)
    x = torch.randn(5, 3, dtype=torch.float64, device=device, requires_grad=True)
    mask = torch.tensor([True, False, True, True, False], device=device)
    out, ws = csr_spmm(adj, x, mask, reduce="sum")  # float32 weights follow x (float64)
    ref_m = ref * mask.double()
    assert torch.allclose(out, ref_m @ x) and torch.allclose(ws, ref_m.sum(1))
    assert adj.has_csc()  # the backward layout was built for the op and cached
    out.sum().backward()
    assert torch.allclose(x.grad, ref_m.sum(0, keepdim=True).t().expand(5, 3))


def test_to_device_keeps_caches():
    ei, w, _ = graph()
    adj = to_csr(ei, (5, 4), w)
    adj.csc()
    moved = adj.to("cpu")
    assert moved.has_csc() and torch.equal(moved.value, adj.value)


@pytest.mark.parametrize("bad, err", [
    (torch.tensor([[0.0, 1.0], [1.0, 0.0]]), "integer"),
    (torch.tensor([[0, 1, 2]]), r"\[2, E\]"),
    (torch.tensor([[0, 1], [1, 5]]), r"target .* \[0, 3\)"),
    (torch.tensor([[-1, 1], [1, 0]]), r"source .* \[0, 3\)"),
])
def test_bad_edge_index(bad, err):
    with pytest.raises(ValueError, match=err):
        to_csr(bad, (3, 3))


def test_bad_inputs():
    ei = torch.tensor([[0, 1], [1, 0]])
    with pytest.raises(ValueError, match="edge_weight: expected shape"):
        to_csr(ei, 2, torch.ones(3))
    with pytest.raises(ValueError, match="floating point"):
        to_csr(ei, 2, torch.ones(2, dtype=torch.long))
    sp = torch.sparse_coo_tensor(ei, torch.ones(2), (2, 2))
    with pytest.raises(ValueError, match="edge_weight: must be None"):
        to_csr(sp, None, torch.ones(2))
    with pytest.raises(ValueError, match="disagrees"):
        to_csr(sp, (3, 2))
    with pytest.raises(ValueError, match="adj: expected"):
        to_csr([[0, 1], [1, 0]])
    with pytest.raises(ValueError, match="size"):
        to_csr(ei, "big")
    with pytest.raises(ValueError, match="value: expected shape"):
        to_csr(ei, 2).with_value(torch.ones(5))


def test_cache_hits_and_invalidation():
    ei, w, ref = graph()
    cache = AdjacencyCache()
    a = cache(ei, (5, 4), w)
    assert cache(ei, (5, 4), w) is a  # same objects -> no reconversion
    assert cache(ei.clone(), (5, 4), w) is not a  # another tensor -> converted again
    b = cache(ei, (5, 4), w)
    w.mul_(2)  # in-place edit bumps the version -> new values
    c = cache(ei, (5, 4), w)
    assert c is not b and torch.allclose(dense(c), 2 * ref, atol=1e-6)
    assert c.rowptr is b.rowptr  # ... but the structure is reused
    ei[0, 0] = (ei[0, 0] + 1) % 5  # structural edit -> reconverted
    d = cache(ei, (5, 4), w)
    assert d.rowptr is not c.rowptr
    ref2 = torch.zeros(4, 5, dtype=torch.float64)
    ref2.index_put_((ei[1], ei[0]), w.double(), accumulate=True)
    assert torch.allclose(dense(d), ref2, atol=1e-6)


def test_cache_with_grad_weights_regathers():
    ei, w, _ = graph()
    cache = AdjacencyCache()
    w = w.clone().requires_grad_()
    a = cache(ei, (5, 4), w)
    b = cache(ei, (5, 4), w)
    assert a is not b and a.rowptr is b.rowptr  # structure shared, value fresh
    out, _ = csr_spmm(b, torch.ones(5, 2), reduce="sum")
    out.sum().backward()
    assert torch.allclose(w.grad, torch.full_like(w, 2.0))


def test_cache_transform_applied_once():
    ei, w, ref = graph()
    calls = []

    def double(adj):
        calls.append(1)
        return adj.with_value(adj.value * 2)

    cache = AdjacencyCache()
    a = cache(ei, (5, 4), w, transform=double)
    assert cache(ei, (5, 4), w, transform=double) is a and len(calls) == 1
    assert torch.allclose(dense(a), 2 * ref, atol=1e-6)


def test_checked_graphs_call_the_op_as_trusted(monkeypatch):
    """to_csr checks an edge_index once; the op then skips its data checks (device syncs)
    for that graph and the copies made from it, not for graphs built by hand or for
    features whose row count is not the graph's number of sources."""
    import pyg_mmrec.nn.adjacency as adjacency
    ei, w, ref = graph()
    adj = to_csr(ei, (5, 4), w)
    assert adj.validated
    assert adj.with_value(adj.value * 2).validated and adj.t().validated
    assert adj.to("cpu").validated
    by_hand = CSRAdjacency(adj.rowptr, adj.col, adj.value, adj.shape)
    assert not by_hand.validated
    seen = []
    real = adjacency.masked_spmm

    def spy(*args, trusted=False, **kwargs):
        seen.append(trusted)
        return real(*args, trusted=trusted, **kwargs)
    monkeypatch.setattr(adjacency, "masked_spmm", spy)
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    out, _ = csr_spmm(adj, x)
    assert torch.allclose(out, ref @ x)
    csr_spmm(by_hand, x)
    with pytest.raises(ValueError, match="`col(ptr)?`"):  # 3 rows: sources 3, 4 missing
        csr_spmm(adj, x[:3])
    assert seen == [True, False, False]
    # the LightGCN graph is built by to_csr and keeps the flag
    from pyg_mmrec.nn import LightGCNConv
    conv = LightGCNConv(3, 4, torch.tensor([[0, 1, 2], [1, 2, 3]]))
    assert conv.adj.validated
