"""Sampled-subgraph (``fanout``) training of LightGCN and I3-MRec."""
import pytest
import torch

from conftest import random_batch, random_modal_data
from pyg_mmrec.config import build_config
from pyg_mmrec.models.i3mrec import I3MRec
from pyg_mmrec.models.lightgcn import LightGCN

U, I = 40, 60


def make_data(seed=0, miss=0.3):
    return random_modal_data(U, I, seed, miss=miss)


def batch(seed=1, n=32):
    return random_batch(U, I, seed, n)


def max_degree(model):
    return int(model.conv.adj.rowptr.diff().max())


def pair(cls, data, fanout, **hp):
    ei, feats, masks = data
    torch.manual_seed(0)
    full = cls(U, I, ei, feats, masks, **hp)
    torch.manual_seed(0)
    sampled = cls(U, I, ei, feats, masks, fanout=fanout, **hp)
    sampled.load_state_dict(full.state_dict())
    return full, sampled


def test_lightgcn_large_fanout_matches_full_loss_and_grads():
    data = make_data()
    full, sampled = pair(LightGCN, data, [500, 500], embedding_size=8, n_layers=2)
    assert max_degree(full) < 500
    b = batch()
    lf, ls = full.loss(*b), sampled.loss(*b)
    for k in lf:
        assert torch.allclose(lf[k], ls[k], atol=1e-6)
    sum(lf.values()).backward()
    sum(ls.values()).backward()
    g = sampled.user_embedding.weight.grad
    assert g.is_sparse  # only the sampled rows
    assert torch.allclose(g.to_dense(), full.user_embedding.weight.grad, atol=1e-6)
    assert torch.allclose(sampled.item_embedding.weight.grad.to_dense(),
                          full.item_embedding.weight.grad, atol=1e-6)
    # evaluation always uses the full graph
    sampled.eval()
    assert torch.allclose(sampled.embeddings_for_eval()[0], full.embeddings_for_eval()[0])


def test_lightgcn_small_fanout_is_random_and_multi_negative():
    full, sampled = pair(LightGCN, make_data(), [2, 2], embedding_size=8, n_layers=2)
    u, p, _ = batch()
    neg = torch.randint(0, I, (u.numel(), 3))
    torch.manual_seed(1)
    a = sampled.loss(u, p, neg)["bpr"]
    torch.manual_seed(1)
    assert torch.equal(a, sampled.loss(u, p, neg)["bpr"])
    assert not torch.equal(a, sampled.loss(u, p, neg)["bpr"])
    a.backward()


@pytest.mark.parametrize("id_branch,item_graph", [("none", "none"), ("embedding", "none"),
                                                  ("lightgcn", "none"), ("lightgcn", "knn")])
def test_i3mrec_large_fanout_matches_full_forward(id_branch, item_graph):
    full, sampled = pair(I3MRec, make_data(), [500, 500], embedding_size=16, n_layers=2,
                         id_branch=id_branch, item_graph=item_graph, knn_k=3,
                         item_graph_layers=2)
    full.eval(), sampled.eval()  # no fusion dropout: deterministic comparison
    ref = full.forward()
    users, items = torch.tensor([3, 1, 3, 7]), torch.tensor([5, 0, 59, 5, 12])
    out, uid_rows, iid_rows = sampled.sampled_forward(users, items)
    # sorted unique ids, then padding rows (static shapes) that repeat the last id
    uid, iid = torch.tensor([1, 3, 7]), torch.tensor([0, 5, 12, 59])
    assert torch.equal(uid_rows.unique(), uid) and torch.equal(iid_rows.unique(), iid)
    out.user, out.item = out.user[torch.searchsorted(uid_rows, uid)], \
        out.item[torch.searchsorted(iid_rows, iid)]
    out.item_modal = {m: h[torch.searchsorted(iid_rows, iid)] for m, h in out.item_modal.items()}
    out.user_modal = {m: h[torch.searchsorted(uid_rows, uid)] for m, h in out.user_modal.items()}
    assert torch.allclose(out.user, ref.user[uid], atol=1e-5)
    assert torch.allclose(out.item, ref.item[iid], atol=1e-5)
    for m in sampled.modalities:
        assert torch.allclose(out.item_modal[m], ref.item_modal[m][iid], atol=1e-5)
        assert torch.allclose(out.user_modal[m], ref.user_modal[m][uid], atol=1e-5)


def test_i3mrec_sampled_loss_trains_and_ignores_missing_features():
    ei, feats, masks = make_data(miss=0.5)
    torch.manual_seed(0)
    model = I3MRec(U, I, ei, feats, masks, embedding_size=16, n_layers=2, fanout=[3, 3])
    b = batch()
    torch.manual_seed(2)
    aux = model.auxiliary_loss(*b)
    terms = model.loss(*b)
    assert {"bpr_fused", "bpr_modal", "vrex", "infonce", "club", "reg"} <= set(terms)
    sum(terms.values()).backward()
    aux.backward()
    assert model.user_embedding.weight.grad.is_sparse
    assert all(p.grad is not None for n, p in model.named_parameters())
    # the filled feature of a missing item is never read: same loss with garbage there
    feats2 = {m: torch.where(masks[m].unsqueeze(1), x, torch.full_like(x, 1e4))
              for m, x in feats.items()}
    torch.manual_seed(3)
    a = model.loss(*b)
    model.set_modality_inputs(feats2, masks)
    torch.manual_seed(3)
    c = model.loss(*b)
    for k in ("bpr_fused", "bpr_modal", "vrex"):
        assert torch.allclose(a[k], c[k], atol=1e-6)


@pytest.mark.parametrize("name,fanout,match", [
    ("LightGCN", [], "fanout"), ("LightGCN", [10], "fanout"), ("LightGCN", [10, 0], "fanout"),
    ("I3MRec", [10, 10], "fanout"), ("I3MRec", [5, -5, 5], "fanout")])
def test_bad_fanout_names_the_key(name, fanout, match):
    ei, feats, masks = make_data()
    cls = {"LightGCN": LightGCN, "I3MRec": I3MRec}[name]
    with pytest.raises(ValueError, match=match):
        cls(U, I, ei, feats, masks, fanout=fanout)  # defaults: 2 and 3 layers


def test_yaml_default_is_full_graph():
    for name in ("LightGCN", "I3MRec"):
        cfg = build_config(name, {"fanout": [5, 5, 5] if name == "I3MRec" else [5, 5]})
        assert cfg["hparams"]["fanout"] in ([5, 5], [5, 5, 5])
        assert build_config(name)["hparams"]["fanout"] is None


def test_i3mrec_sampled_item_graph_keeps_sparse_item_gradients():
    ei, feats, masks = make_data(miss=0.3)
    full, sampled = pair(I3MRec, (ei, feats, masks), [500, 500], embedding_size=16, n_layers=2,
                         id_branch="embedding", item_graph="knn", knn_k=3,
                         fusion_dropout=0.0, use_ib=False)  # no random terms: losses agree
    b = batch()
    sum(sampled.loss(*b).values()).backward()
    sum(full.loss(*b).values()).backward()
    g = sampled.item_embedding.weight.grad
    assert g.is_sparse
    assert torch.allclose(g.to_dense(), full.item_embedding.weight.grad, atol=1e-5)


def test_i3mrec_sampled_steps_use_the_pruned_graph_of_the_epoch():
    full, sampled = pair(I3MRec, make_data(), [500, 500], embedding_size=16, n_layers=2,
                         id_branch="lightgcn", edge_dropout=0.5, fusion_dropout=0.0)
    for model in (full, sampled):
        torch.manual_seed(3)
        model.on_epoch_start(0)
    ref = full.forward()  # training mode: this epoch's pruned graph
    users, items = torch.tensor([3, 1, 7]), torch.tensor([5, 0, 59, 12])
    out, uid, iid = sampled.sampled_forward(users, items)
    assert torch.allclose(out.user, ref.user[uid], atol=1e-5)
    assert torch.allclose(out.item, ref.item[iid], atol=1e-5)
    for m in sampled.modalities:
        assert torch.allclose(out.user_modal[m], ref.user_modal[m][uid], atol=1e-5)
