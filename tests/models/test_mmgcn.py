"""MMGCN: the lock-step / transform-first forward equals the textbook per-modality GCN."""
import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_graph
from pyg_mmrec.models import get_model_class

U, I = 20, 30


def make(num_modalities, masked, n_layers=2, seed=0):
    ei, feats, masks = tiny_graph(U, I, num_modalities, masked, seed)
    model = get_model_class("mmgcn")(U, I, ei, feats, masks, embedding_size=8, dim_latent=12,
                                     n_layers=n_layers)
    return model


def reference_forward(model):
    """Aggregate first, then transform; users and items as separate tensors (Wei et al.)."""
    conv = model.ui_conv
    users, items = [], []
    for m in model.modalities:
        g, feat, mask = model.gcns[m], model.feature(m), model.mask(m)
        x = F.normalize(torch.cat([g.preference, g.mlp(feat) * mask.unsqueeze(-1).float()]),
                        dim=-1)
        x_u, x_i = x[:U], x[U:]
        for layer in range(model.n_layers):
            agg_u, agg_i = conv((x_u, x_i), item_mask=mask if layer == 0 else None)
            w, lin, gate = g.conv[layer], g.linear[layer], g.gate[layer]
            h_u, h_i = F.leaky_relu(w(agg_u)), F.leaky_relu(w(agg_i))
            xh_u = F.leaky_relu(lin(x_u)) + model.user_embedding.weight
            xh_i = F.leaky_relu(lin(x_i)) + model.item_embedding.weight
            x_u, x_i = F.leaky_relu(gate(h_u) + xh_u), F.leaky_relu(gate(h_i) + xh_i)
        users.append(x_u)
        items.append(x_i)
    return torch.stack(users).mean(0), torch.stack(items).mean(0), users, items


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("num_modalities,n_layers", [(1, 2), (2, 1), (2, 2), (3, 3)])
def test_forward_and_gradients_match_reference(num_modalities, n_layers, masked):
    model = make(num_modalities, masked, n_layers)
    out = model()
    ref_u, ref_i, ref_us, ref_is = reference_forward(model)
    torch.testing.assert_close(out.user, ref_u, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.item, ref_i, rtol=1e-5, atol=1e-6)
    for m, ru, ri in zip(model.modalities, ref_us, ref_is):
        torch.testing.assert_close(out.user_modal[m], ru, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out.item_modal[m], ri, rtol=1e-5, atol=1e-6)
    # same gradients for a loss touching every output row
    w_u, w_i = torch.randn_like(ref_u), torch.randn_like(ref_i)
    params = [p for p in model.parameters() if p.requires_grad]
    g_new = torch.autograd.grad((out.user * w_u).sum() + (out.item * w_i).sum(), params,
                                allow_unused=True)
    g_ref = torch.autograd.grad((ref_u * w_u).sum() + (ref_i * w_i).sum(), params,
                                allow_unused=True)
    for p, a, b in zip(params, g_new, g_ref):
        assert (a is None) == (b is None)
        if a is not None:
            # float32 rounding, relative to the gradient's scale
            assert float((a - b).abs().max()) <= 1e-4 * float(b.abs().max()) + 1e-9


def test_masked_feature_cannot_leak():
    model = make(2, True)
    m = model.modalities[0]
    mask = model.mask(m)
    feats = {k: model.feature(k).clone() for k in model.modalities}
    before = model().item.detach()
    feats[m][~mask] = 1e3  # a different fill of the missing rows
    model.set_modality_inputs(feats, {k: model.mask(k) for k in model.modalities})
    torch.testing.assert_close(model().item.detach(), before)


def test_in_place_feature_change_is_seen():
    model = make(1, False)
    m = model.modalities[0]
    before = model().item.detach().clone()
    model.feature(m).mul_(2.0)  # the scaled-feature cache must notice
    after = model().item.detach()
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, reference_forward(model)[1], rtol=1e-5, atol=1e-6)


def test_l2_normalize_matches_f_normalize_and_gradcheck():
    from pyg_mmrec.models.mmgcn import _l2_normalize
    x = torch.randn(12, 5, dtype=torch.double)
    assert torch.autograd.gradcheck(_l2_normalize, (x.clone().requires_grad_(),))
    x[3] = 0.0  # a missing item's zero row
    x[5] *= 1e-14  # below eps: the clamp makes the map linear there
    x.requires_grad_()
    g = torch.randn_like(x)
    (a,) = torch.autograd.grad(_l2_normalize(x), x, g)
    (b,) = torch.autograd.grad(F.normalize(x, dim=-1), x, g)
    torch.testing.assert_close(_l2_normalize(x), F.normalize(x, dim=-1))
    torch.testing.assert_close(a, b)
