"""MGCN: the user-row aggregation and joint propagation equal the plain formulation."""
import pytest
import torch

from conftest import tiny_graph
from pyg_mmrec.models import get_model_class

U, I = 20, 30


def make(num_modalities, masked, seed=0, **kw):
    ei, feats, masks = tiny_graph(U, I, num_modalities, masked, seed)
    return get_model_class("mgcn")(U, I, ei, feats, masks, embedding_size=8, knn_k=4, **kw)


def reference_forward(model):
    """Users and items as pairs; users aggregate through the full joint conv (Yu et al.)."""
    e_u, e_i = model.conv.propagate_layers((model.user_embedding.weight,
                                            model.item_embedding.weight), combine="mean")
    content = torch.cat([e_u, e_i])
    views, present = [], []
    for m in model.modalities:
        mk = model.mask(m)
        gate = torch.sigmoid(model.purifier_gates[m](model.projections[m](model.feature(m))))
        h = model.item_embedding.weight * gate
        ei, w = model.item_graphs[m]
        for _ in range(model.n_layers):
            h = model.item_convs[m](h, ei, mk, edge_weight=w)
        h_u = model.conv((torch.zeros_like(e_u), h), item_mask=mk)[0]
        views.append(torch.cat([h_u, h]))
        present.append(torch.cat([torch.ones(U, dtype=torch.bool), mk]))
    H, P = torch.stack(views, 1), torch.stack(present, 1)
    score = model.query_common(H).squeeze(-1).masked_fill(~P, float("-inf"))
    beta = torch.nan_to_num(torch.softmax(score, dim=1), nan=0.0)
    common = (beta.unsqueeze(-1) * H).sum(1)
    side = common
    for k, m in enumerate(model.modalities):
        s = torch.sigmoid(model.prefer_gates[m](content)) * (H[:, k] - common)
        side = side + P[:, k:k + 1].float() * s
    side = side / (len(model.modalities) + 1)
    return content + side, views


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("num_modalities,n_layers", [(1, 1), (2, 1), (2, 2), (3, 0)])
def test_forward_and_gradients_match_reference(num_modalities, n_layers, masked):
    model = make(num_modalities, masked, n_layers=n_layers)
    out = model()
    z, views = reference_forward(model)
    torch.testing.assert_close(torch.cat([out.user, out.item]), z, rtol=1e-5, atol=1e-6)
    for m, v in zip(model.modalities, views):
        torch.testing.assert_close(out.user_modal[m], v[:U], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out.item_modal[m], v[U:], rtol=1e-5, atol=1e-6)
    w = torch.randn_like(z)
    params = [p for p in model.parameters() if p.requires_grad]
    g_new = torch.autograd.grad((torch.cat([out.user, out.item]) * w).sum(), params,
                                allow_unused=True)
    g_ref = torch.autograd.grad((z * w).sum(), params, allow_unused=True)
    for p, a, b in zip(params, g_new, g_ref):
        assert (a is None) == (b is None)
        if a is not None:
            assert float((a - b).abs().max()) <= 1e-4 * float(b.abs().max()) + 1e-9


def test_user_rows_follow_device_and_dtype():
    model = make(2, True).double()
    model.set_modality_inputs({m: model.feature(m).double() for m in model.modalities},
                              {m: model.mask(m) for m in model.modalities})
    out = model()
    assert out.user.dtype == torch.float64
    z, _ = reference_forward(model)
    torch.testing.assert_close(torch.cat([out.user, out.item]), z)


def test_user_rows_follow_a_new_graph():
    model = make(2, True)
    g = torch.Generator().manual_seed(5)
    users = torch.arange(U).repeat_interleave(3)
    new_ei = torch.stack([users, torch.randint(0, I, (users.numel(),), generator=g)])
    model.conv.set_graph(new_ei)  # e.g. an edge-dropout step
    z, _ = reference_forward(model)
    out = model()
    torch.testing.assert_close(torch.cat([out.user, out.item]), z, rtol=1e-5, atol=1e-6)
