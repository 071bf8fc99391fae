import pytest
import torch

from pyg_mmrec.nn import LightGCNConv

U, I = 6, 9


def interactions(seed=0, e=25):
    g = torch.Generator().manual_seed(seed)
    ei = torch.stack([torch.randint(0, U, (e,), generator=g),
                      torch.randint(0, I, (e,), generator=g)])
    return torch.cat([ei, ei[:, :3]], dim=1)  # a few repeated interactions


def dense_norm_adj(ei):
    A = torch.zeros(U + I, U + I, dtype=torch.float64)
    A[ei[0], U + ei[1]] = 1.0  # binary: repeats count once
    A[U + ei[1], ei[0]] = 1.0
    d = A.sum(1)
    dinv = torch.where(d > 0, d.rsqrt(), torch.zeros_like(d))
    return dinv[:, None] * A * dinv[None, :]


def item_mask(seed=1):
    m = torch.rand(I, generator=torch.Generator().manual_seed(seed)) > 0.4
    m[0], m[1] = False, True
    return m


def test_one_layer_matches_dense(device):
    ei = interactions()
    conv = LightGCNConv(U, I, ei).to(device)
    x = torch.randn(U + I, 4, dtype=torch.float64)
    assert torch.allclose(conv(x.to(device)).cpu(), dense_norm_adj(ei) @ x)
    assert conv.col.numel() == 2 * torch.unique(ei[0] * I + ei[1]).numel()


def test_masked_without_renormalisation_drops_terms():
    ei, m = interactions(), item_mask()
    conv = LightGCNConv(U, I, ei, renormalize=False)
    x = torch.randn(U + I, 4, dtype=torch.float64)
    A = dense_norm_adj(ei)
    node_mask = torch.cat([torch.ones(U, dtype=torch.bool), m])
    assert torch.allclose(conv(x, m), (A * node_mask.double()) @ x)


def test_masked_with_renormalisation(device):
    ei, m = interactions(), item_mask()
    conv = LightGCNConv(U, I, ei, renormalize=True).to(device)
    x = torch.randn(U + I, 4, dtype=torch.float64)
    A = dense_norm_adj(ei)
    # Computed on `device`, compared on the CPU.
    def run(x, m):
        return conv(x.to(device), m.to(device)).cpu()
    Am = A * torch.cat([torch.ones(U), m.double()])
    present, full = Am.sum(1), A.sum(1)
    scale = torch.where(present > 0, full / present.clamp_min(1e-30), torch.zeros_like(full))
    assert torch.allclose(run(x, m), scale[:, None] * (Am @ x))
    # nothing missing -> exactly plain LightGCN
    assert torch.allclose(run(x, torch.ones(I, dtype=torch.bool)), A @ x)
    # a user whose items are all missing receives nothing
    only = torch.zeros(I, dtype=torch.bool)
    out = run(x, only)
    assert torch.equal(out[:U], torch.zeros(U, 4, dtype=torch.float64))
    assert torch.allclose(out[U:], (A @ x)[U:])  # items still hear their users


@pytest.mark.parametrize("renormalize", [True, False])
def test_missing_items_send_nothing(device, renormalize):
    ei, m = interactions(), item_mask().to(device)
    conv = LightGCNConv(U, I, ei, num_layers=3, renormalize=renormalize).to(device)
    x = torch.randn(U + I, 4, device=device)
    out = conv.propagate_layers(x, item_mask=m, combine="last")
    x2 = x.clone()
    x2[U:][~m] = 1e3 * torch.randn(int((~m).sum()), 4, device=device)
    assert torch.equal(conv.propagate_layers(x2, item_mask=m, combine="last"), out)


def test_propagate_layers_combinations_and_pairs():
    ei = interactions()
    conv = LightGCNConv(U, I, ei, num_layers=3)
    x = torch.randn(U + I, 4, dtype=torch.float64)
    A = dense_norm_adj(ei)
    layers = [x, A @ x, A @ A @ x, A @ A @ A @ x]
    assert torch.allclose(conv.propagate_layers(x), sum(layers) / 4)
    assert torch.allclose(conv.propagate_layers(x, 2, combine="sum"), sum(layers[:3]))
    assert torch.allclose(conv.propagate_layers(x, combine="last"), layers[-1])
    assert torch.allclose(conv.propagate_layers(x, combine="stack"), torch.stack(layers))
    assert torch.equal(conv.propagate_layers(x, 0), x)
    xu, xi = conv.propagate_layers((x[:U], x[U:]))
    assert torch.allclose(torch.cat([xu, xi]), sum(layers) / 4)
    yu, yi = conv((x[:U], x[U:]))
    assert yu.shape == (U, 4) and yi.shape == (I, 4)


def test_gradients_and_buffers():
    ei, m = interactions(), item_mask()
    conv = LightGCNConv(U, I, ei, num_layers=2)
    x = torch.randn(U + I, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: conv.propagate_layers(t, item_mask=m), (x,))
    conv(x, m).sum().backward()
    assert torch.equal(x.grad[U:][~m], torch.zeros(int((~m).sum()), 4, dtype=torch.float64))
    assert conv.state_dict() == {}  # graph buffers are derived, not checkpointed


def test_set_graph_rebuilds():
    conv = LightGCNConv(U, I, interactions(0))
    ei = interactions(5, e=10)
    conv.set_graph(ei)
    x = torch.randn(U + I, 3, dtype=torch.float64)
    assert torch.allclose(conv(x), dense_norm_adj(ei) @ x)
    assert "num_users=6" in repr(conv)


def test_bad_inputs():
    ei = interactions()
    with pytest.raises(ValueError, match=r"edge_index\[0\]: user ids"):
        LightGCNConv(U - 1, I, ei)
    with pytest.raises(ValueError, match=r"edge_index\[1\]: item ids"):
        LightGCNConv(U, I - 1, ei)
    with pytest.raises(ValueError, match="edge_index: expected"):
        LightGCNConv(U, I, ei[0])
    with pytest.raises(ValueError, match="integer"):
        LightGCNConv(U, I, ei.float())
    with pytest.raises(ValueError, match="num_users"):
        LightGCNConv(0, I, ei)
    conv = LightGCNConv(U, I, ei)
    x = torch.randn(U + I, 2)
    with pytest.raises(ValueError, match=r"item_mask: expected shape \[9\]"):
        conv(x, torch.ones(I + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="item_mask: expected a bool"):
        conv(x, torch.ones(I))
    with pytest.raises(ValueError, match="x: expected shape"):
        conv(x[:-1])
    with pytest.raises(ValueError, match="x: expected"):
        conv((x[:U], x[:U]))
    with pytest.raises(ValueError, match="combine"):
        conv.propagate_layers(x, combine="max")


def test_torch_compile_fullgraph():
    ei, m = interactions(), item_mask()
    conv = LightGCNConv(U, I, ei, num_layers=2)
    x = torch.randn(U + I, 4, requires_grad=True)
    ref = conv.propagate_layers(x, item_mask=m)
    torch._dynamo.reset()
    compiled = torch.compile(conv.propagate_layers, fullgraph=True, backend="eager")
    out = compiled(x, item_mask=m)
    out.sum().backward()
    assert torch.allclose(out, ref, atol=1e-6) and x.grad is not None
