import pytest
import torch

from torch_geometric import EdgeIndex
from torch_geometric.typing import WITH_TORCH_SPARSE, SparseTensor

from pyg_mmrec.nn import MissingAwareConv, to_csr


def make_graph(n_src=8, n_dst=8, e=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    ei = torch.stack([torch.randint(0, n_src, (e,), generator=g),
                      torch.randint(0, n_dst, (e,), generator=g)])
    w = torch.rand(e, generator=g) + 0.1
    mask = torch.rand(n_src, generator=g) > 0.4
    mask[0] = False
    return ei, w, mask


def dense_reference(x_src, ei, mask, w, n_dst, aggr):
    """Hand computation with a dense [N_dst, N_src] matrix."""
    n_src = x_src.size(0)
    A = torch.zeros(n_dst, n_src, dtype=x_src.dtype)
    A.index_put_((ei[1], ei[0]), (torch.ones(ei.size(1)) if w is None else w).to(x_src.dtype),
                 accumulate=True)
    if mask is not None:
        A = A * mask.to(x_src.dtype)
    s = A.sum(1)
    out = A @ x_src
    if aggr == "mean":
        out = out / torch.where(s > 0, s, torch.ones_like(s)).unsqueeze(-1)
    return out, s


def test_hand_computed_mean_and_sum():
    # node 2 receives from 0 (w=1), 1 (w=3, missing) and 3 (w=2)
    ei = torch.tensor([[0, 1, 3], [2, 2, 2]])
    w = torch.tensor([1.0, 3.0, 2.0])
    x = torch.tensor([[1.0, 0.0], [100.0, 100.0], [5.0, 5.0], [0.0, 4.0]])
    mask = torch.tensor([True, False, True, True])
    out, s = MissingAwareConv(aggr="mean")(x, ei, mask, w, return_weight_sum=True)
    assert torch.allclose(out[2], torch.tensor([1.0 / 3.0, 8.0 / 3.0]))
    assert torch.allclose(s, torch.tensor([0.0, 0.0, 3.0, 0.0]))
    assert torch.equal(out[[0, 1, 3]], torch.zeros(3, 2))  # no information -> 0 and s = 0
    out = MissingAwareConv(aggr="sum")(x, ei, mask, w)
    assert torch.allclose(out[2], torch.tensor([1.0, 8.0]))


@pytest.mark.parametrize("aggr", ["mean", "sum"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_matches_dense_and_fused_equals_unfused(device, aggr, weighted, masked):
    ei, w, mask = make_graph()
    w = w if weighted else None
    mask = mask if masked else None
    x = torch.randn(8, 5)
    ref, s_ref = (t.to(device) for t in dense_reference(x, ei, mask, w, 8, aggr))
    ei, w, mask, x = (t.to(device) if t is not None else None for t in (ei, w, mask, x))
    conv = MissingAwareConv(aggr=aggr).to(device)
    fused, s1 = conv(x, ei, mask, w, return_weight_sum=True)
    conv.fuse = False
    unfused, s2 = conv(x, ei, mask, w, return_weight_sum=True)
    assert torch.allclose(fused, ref, atol=1e-5) and torch.allclose(s1, s_ref, atol=1e-5)
    assert torch.allclose(unfused, ref, atol=1e-5) and torch.allclose(s2, s_ref, atol=1e-5)


@pytest.mark.parametrize("channels", [(5, 3), (3, 7), (-1, 4)])
def test_linear_root_bias_fused_equals_unfused(channels):
    ei, w, mask = make_graph()
    in_c = 5 if channels[0] == -1 else channels[0]
    x = torch.randn(8, in_c)
    conv = MissingAwareConv(channels[0], channels[1], root_weight=True, bias=True)
    fused = conv(x, ei, mask, w)
    with torch.no_grad():
        conv.bias.fill_(0.5)
    fused = conv(x, ei, mask, w)
    conv.fuse = False
    unfused = conv(x, ei, mask, w)
    agg, _ = dense_reference(x, ei, mask, w, 8, "mean")
    ref = agg @ conv.lin_rel.weight.t() + x @ conv.lin_root.weight.t() + 0.5
    assert fused.shape == (8, channels[1])
    assert torch.allclose(fused, ref, atol=1e-5) and torch.allclose(unfused, ref, atol=1e-5)


def test_identity_root_weight():
    ei, w, mask = make_graph()
    x = torch.randn(8, 4)
    out = MissingAwareConv(root_weight=True)(x, ei, mask, w)
    agg, _ = dense_reference(x, ei, mask, w, 8, "mean")
    assert torch.allclose(out, agg + x, atol=1e-5)


ADJ_FORMATS = ["edge_index", "EdgeIndex", "EdgeIndex_sorted", "coo", "csr", "CSRAdjacency",
               "SparseTensor"]


def as_format(fmt, ei, w, n_src, n_dst):
    """Returns (adj, edge_weight kwarg) for one adjacency format."""
    if fmt == "edge_index":
        return ei, w
    if fmt == "EdgeIndex":
        return EdgeIndex(ei, sparse_size=(n_src, n_dst)), w
    if fmt == "EdgeIndex_sorted":
        e, perm = EdgeIndex(ei, sparse_size=(n_src, n_dst)).sort_by("col")
        return e, w[perm]
    if fmt == "coo":
        return torch.sparse_coo_tensor(ei.flip(0), w, (n_dst, n_src)), None
    if fmt == "csr":
        return torch.sparse_coo_tensor(ei.flip(0), w, (n_dst, n_src)).to_sparse_csr(), None
    if fmt == "CSRAdjacency":
        return to_csr(ei, (n_src, n_dst), w), None
    if not WITH_TORCH_SPARSE:
        pytest.skip("torch_sparse not installed")
    return SparseTensor(row=ei[1], col=ei[0], value=w, sparse_sizes=(n_dst, n_src)), None


@pytest.mark.parametrize("fmt", ADJ_FORMATS)
@pytest.mark.parametrize("fuse", [True, False])
def test_every_adjacency_format_same_output(fmt, fuse):
    ei, w, mask = make_graph(n_src=8, n_dst=6)
    x_src, x_dst = torch.randn(8, 4), torch.randn(6, 4)
    adj, ew = as_format(fmt, ei, w, 8, 6)
    conv = MissingAwareConv(4, 3, root_weight=True)
    conv.fuse = fuse
    out, s = conv((x_src, x_dst), adj, mask, ew, return_weight_sum=True)
    agg, s_ref = dense_reference(x_src, ei, mask, w, 6, "mean")
    ref = agg @ conv.lin_rel.weight.t() + x_dst @ conv.lin_root.weight.t()
    assert out.shape == (6, 3)
    assert torch.allclose(out, ref, atol=1e-5) and torch.allclose(s, s_ref, atol=1e-5)


def test_bipartite_items_to_users_without_target_features():
    # user–item propagation: items (sources) -> users (targets), x_dst = None
    n_items, n_users = 9, 4
    ei, w, mask = make_graph(n_src=n_items, n_dst=n_users, e=20)
    x_item = torch.randn(n_items, 3)
    conv = MissingAwareConv()
    out = conv((x_item, None), ei, mask, size=(n_items, n_users))
    ref, _ = dense_reference(x_item, ei, mask, None, n_users, "mean")
    assert out.shape == (n_users, 3) and torch.allclose(out, ref, atol=1e-6)
    conv.fuse = False
    assert torch.allclose(conv((x_item, None), ei, mask, size=(n_items, n_users)), ref, atol=1e-6)
    # sized adjacencies know N_dst themselves
    sized = [torch.sparse_coo_tensor(ei.flip(0), torch.ones(20), (n_users, n_items)),
             EdgeIndex(ei, sparse_size=(n_items, n_users)), to_csr(ei, (n_items, n_users))]
    for fuse in (True, False):
        conv.fuse = fuse
        for adj in sized:
            assert torch.allclose(conv((x_item, None), adj, mask), ref, atol=1e-6)
    with pytest.raises(ValueError, match="size"):
        conv((x_item, None), ei, mask)


@pytest.mark.parametrize("fuse", [True, False])
def test_masked_neighbours_truly_ignored(device, fuse):
    ei, w, mask, x = (t.to(device) for t in (*make_graph(), torch.randn(8, 4)))
    conv = MissingAwareConv(4, 4, aggr="mean").to(device)
    conv.fuse = fuse
    out = conv(x, ei, mask, w)
    x2 = x.clone()
    x2[~mask] = torch.randn(int((~mask).sum()), 4, device=device) * 1e4  # change what is missing
    assert torch.equal(conv(x2, ei, mask, w), out)
    x2[~mask] = float("nan")  # even non-finite fillers cannot leak
    assert torch.equal(conv(x2, ei, mask, w), out)
    x3 = x.clone()
    x3[mask.nonzero()[0]] += 1.0  # while a present neighbour does matter
    targets = ei[1][ei[0] == mask.nonzero()[0]]
    if targets.numel():
        assert not torch.allclose(conv(x3, ei, mask, w)[targets], out[targets])


@pytest.mark.parametrize("fuse", [True, False])
def test_gradients(device, fuse):
    ei, w, mask = (t.to(device) for t in make_graph())
    x = torch.randn(8, 4, dtype=torch.float64, device=device, requires_grad=True)
    w = w.double().requires_grad_()
    conv = MissingAwareConv(4, 2, bias=True).double().to(device)
    conv.fuse = fuse
    conv(x, ei, mask, w).pow(2).sum().backward()
    assert torch.equal(x.grad[~mask], torch.zeros_like(x.grad[~mask]))
    assert x.grad[mask].abs().sum() > 0
    assert w.grad is not None and torch.isfinite(w.grad).all()
    assert conv.lin_rel.weight.grad is not None and conv.bias.grad is not None
    # numerical check of the fused/unfused backward
    conv.zero_grad()
    assert torch.autograd.gradcheck(lambda a, b: conv(a, ei, mask, b), (x.detach().requires_grad_(),
                                                                      w.detach().requires_grad_()))


def test_cache_reused_and_invalidated():
    ei, w, mask = make_graph()
    x = torch.randn(8, 4)
    conv = MissingAwareConv()
    out = conv(x, ei, mask, w)
    structure = conv._cache._structure
    conv(x, ei, mask, w)
    assert conv._cache._structure is structure  # converted once for a static graph
    ei[1, :5] = (ei[1, :5] + 1) % 8  # in-place change of the graph -> rebuilt
    out2 = conv(x, ei, mask, w)
    assert conv._cache._structure is not structure
    ref, _ = dense_reference(x, ei, mask, w, 8, "mean")
    assert torch.allclose(out2, ref, atol=1e-5) and not torch.allclose(out2, out)
    uncached = MissingAwareConv(cached=False)
    assert torch.allclose(uncached(x, ei, mask, w), ref, atol=1e-5)
    assert uncached._cache._structure is None


def test_reset_parameters_and_repr():
    conv = MissingAwareConv(4, 3, root_weight=True, bias=True)
    with torch.no_grad():
        conv.bias.fill_(1.0)
    conv.reset_parameters()
    assert torch.equal(conv.bias, torch.zeros(3))
    assert repr(conv) == "MissingAwareConv(4, 3, aggr='mean', root_weight=True)"
    assert repr(MissingAwareConv(aggr="sum")) == \
        "MissingAwareConv(None, None, aggr='sum', root_weight=False)"


def test_bad_inputs_raise_clearly():
    ei, w, mask = make_graph()
    x = torch.randn(8, 4)
    conv = MissingAwareConv()
    with pytest.raises(ValueError, match=r"mask: expected shape \[8\]"):
        conv(x, ei, mask[:5])
    with pytest.raises(ValueError, match="mask: expected a bool"):
        conv(x, ei, mask.float())
    with pytest.raises(ValueError, match="x: expected a 2-D"):
        conv(x[:, 0], ei, mask)
    with pytest.raises(ValueError, match="x: expected a floating"):
        conv(x.long(), ei, mask)
    with pytest.raises(ValueError, match="edge_weight: expected shape"):
        conv(x, ei, mask, w[:3])
    with pytest.raises(ValueError, match="edge_index: expected shape"):
        conv(x, ei[:1], mask)
    with pytest.raises(ValueError, match="target"):
        conv(x[:4], ei[:, ei[0] < 4], mask[:4])  # targets >= 4 with only 4 nodes
    with pytest.raises(ValueError, match="graph has shape"):
        conv(x, to_csr(ei, (9, 9)), mask)
    sp = torch.sparse_coo_tensor(ei.flip(0), w, (8, 8))
    with pytest.raises(ValueError, match="edge_weight: must be None"):
        conv(x, sp, mask, w)
    with pytest.raises(ValueError, match="aggr"):
        MissingAwareConv(aggr="max")
    with pytest.raises(ValueError, match="bias"):
        MissingAwareConv(bias=True)
    with pytest.raises(ValueError, match="in_channels"):
        MissingAwareConv(None, 4)
    with pytest.raises(ValueError, match="root_weight"):
        MissingAwareConv(root_weight=True)((x, None), ei, mask, size=(8, 8))


class _TwoLayer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = MissingAwareConv(4, 8, root_weight=True, bias=True)
        self.conv2 = MissingAwareConv(8, 2, aggr="sum")

    def forward(self, x, adj, mask):
        h, s = self.conv1(x, adj, mask, return_weight_sum=True)
        h = torch.where(s.unsqueeze(-1) > 0, h.relu(), torch.zeros_like(h))
        return self.conv2(h, adj)


def test_torch_compile_fullgraph():
    ei, w, mask = make_graph()
    x = torch.randn(8, 4, requires_grad=True)
    model = _TwoLayer()
    adj = to_csr(ei, (8, 8), w)  # converted outside the compiled region
    adj.csc()
    ref = model(x, adj, mask)
    ref.sum().backward()
    grad_ref = x.grad.clone()
    x.grad = None
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x, adj, mask)
    out.sum().backward()
    assert torch.allclose(out, ref, atol=1e-5) and torch.allclose(x.grad, grad_ref, atol=1e-5)
    # a plain edge_index is converted inside the graph without breaks, too
    explanation = torch._dynamo.explain(model)(x, ei, mask)
    assert explanation.graph_break_count == 0


def test_sparse_values_receive_gradients():
    ei, w, mask = make_graph()
    x = torch.randn(8, 3)
    w1 = w.clone().requires_grad_()
    adj = torch.sparse_coo_tensor(ei.flip(0), w1, (8, 8))
    MissingAwareConv(aggr="mean")(x, adj, mask).pow(2).sum().backward()
    w2 = w.clone().requires_grad_()
    dense_reference(x, ei, mask, w2, 8, "mean")[0].pow(2).sum().backward()
    assert torch.allclose(w1.grad, w2.grad, atol=1e-5)
