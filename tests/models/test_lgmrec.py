"""LGMRec: the batched propagation and de-duplicated contrast equal the plain formulation."""
from itertools import combinations

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_graph
from pyg_mmrec.models import get_model_class

U, I = 20, 30


def make(num_modalities, masked, seed=0, **kw):
    ei, feats, masks = tiny_graph(U, I, num_modalities, masked, seed)
    hp = dict(embedding_size=8, feat_embed_dim=8, cl_weight=0.1, reg_weight=1e-3)
    hp.update(kw)
    return get_model_class("lgmrec")(U, I, ei, feats, masks, **hp)


def reference_forward(model):
    """One modality after the other, users/items as pairs, as in Guo et al. / MMRec."""
    e_u, e_i = model.conv.propagate_layers(
        (model.user_embedding.weight, model.item_embedding.weight),
        num_layers=model.n_ui_layers, combine="mean")
    if not model.modalities:
        return e_u, e_i, {}
    local_u, local_i, glob_u, glob_i, hyp = e_u, e_i, 0.0, 0.0, {}
    for m in model.modalities:
        f, mk = model.feature(m), model.mask(m)
        keep = mk.unsqueeze(-1).float()
        x_i = (f @ model.item_trs[m]) * keep
        x_u = model.user_mean((x_i, None), model.item_to_user, mk, size=(I, U))
        for layer in range(model.n_mm_layers):
            x_u, x_i = model.conv((x_u, x_i), item_mask=mk if layer == 0 else None)
        local_u = local_u + F.normalize(x_u, dim=-1)
        local_i = local_i + F.normalize(x_i, dim=-1)
        logit_i = f @ model.hyper[m]
        logit_u = model.user_sum((logit_i, None), model.item_to_user, mk, size=(I, U))
        h_i = model._assign(logit_i) * keep
        h_u = model._assign(logit_u)
        h_i, h_u = model.dropout(h_i), model.dropout(h_u)
        g_i = e_i
        for _ in range(model.n_hyper_layer):
            lat = h_i.t() @ g_i
            g_i, g_u = h_i @ lat, h_u @ lat
        hyp[m] = (g_u, g_i)
        glob_u, glob_i = glob_u + g_u, glob_i + g_i
    glob = F.normalize(torch.cat([glob_u, glob_i]), dim=-1)
    return local_u + model.alpha * glob[:U], local_i + model.alpha * glob[U:], hyp


def reference_cl(model, hyp, users, pos):
    def triple(z1, z2, z2_all):
        z1, z2, z2_all = (F.normalize(t, dim=-1) for t in (z1, z2, z2_all))
        logits = z1 @ z2_all.t() / model.tau
        return (torch.logsumexp(logits, dim=1) - (z1 * z2).sum(-1) / model.tau).sum()

    cl = torch.zeros(())
    for a, b in combinations(model.modalities, 2):
        cl = cl + triple(hyp[a][0][users], hyp[b][0][users], hyp[b][0])
        both = model.mask(a)[pos] & model.mask(b)[pos]
        if both.any():
            cl = cl + triple(hyp[a][1][pos[both]], hyp[b][1][pos[both]], hyp[b][1])
    return model.cl_weight * cl


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("num_modalities,layers", [(0, (2, 2)), (1, (2, 2)), (2, (2, 2)),
                                                   (2, (1, 3)), (3, (3, 1))])
def test_forward_loss_and_gradients_match_reference(num_modalities, layers, masked, training):
    model = make(num_modalities, masked, n_ui_layers=layers[0], n_mm_layers=layers[1])
    model.train(training)
    g = torch.Generator().manual_seed(3)
    users = torch.randint(0, U, (64,), generator=g)  # many repeated rows
    pos = torch.randint(0, I, (64,), generator=g)
    neg = torch.randint(0, I, (64,), generator=g)
    torch.manual_seed(7)  # same Gumbel noise and dropout masks in both passes
    out = model()
    terms = model.loss(users, pos, neg, out=out)
    torch.manual_seed(7)
    ref_u, ref_i, hyp = reference_forward(model)
    torch.testing.assert_close(out.user, ref_u, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.item, ref_i, rtol=1e-5, atol=1e-6)
    params = [p for p in model.parameters() if p.requires_grad]
    if num_modalities < 2:
        assert "cl" not in terms
        return
    ref_cl = reference_cl(model, hyp, users, pos)
    torch.testing.assert_close(terms["cl"], ref_cl, rtol=1e-5, atol=1e-7)
    g_new = torch.autograd.grad(terms["cl"] + (out.item ** 2).sum(), params, allow_unused=True)
    g_ref = torch.autograd.grad(ref_cl + (ref_i ** 2).sum(), params, allow_unused=True)
    for p, a, b in zip(params, g_new, g_ref):
        assert (a is None) == (b is None)
        if a is not None:
            # float32 rounding, relative to the gradient's scale
            assert float((a - b).abs().max()) <= 1e-4 * float(b.abs().max()) + 1e-9
