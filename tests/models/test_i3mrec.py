from pathlib import Path

import pytest
import torch
import yaml

from conftest import random_batch, random_modal_data
from pyg_mmrec.models import get_model_class
from pyg_mmrec.models.i3mrec import I3MRec

U, I = 40, 60


def make_data(seed=0, dims=(12, 8), miss=0.3):
    return random_modal_data(U, I, seed, dims, miss)


def batch(seed=1, n=32):
    return random_batch(U, I, seed, n)


def build(seed=0, data=None, **hp):
    torch.manual_seed(seed)
    ei, feats, masks = data or make_data()
    return I3MRec(U, I, ei, feats, masks, embedding_size=16, n_layers=2, **hp)


def step(model, opt, aux_opt, b):
    aux_opt.zero_grad()
    aux = model.auxiliary_loss(*b)
    if aux is not None:
        aux.backward()
        aux_opt.step()
    opt.zero_grad()
    terms = model.loss(*b)
    loss = sum(terms.values())
    loss.backward()
    opt.step()
    return terms


def optimisers(model, lr=1e-2):
    aux_ids = {id(p) for p in model.auxiliary_parameters()}
    main = [p for p in model.parameters() if id(p) not in aux_ids]
    return (torch.optim.Adam(main, lr=lr),
            torch.optim.Adam(list(model.auxiliary_parameters()), lr=lr))


def test_registry_and_yaml_match_constructor():
    assert get_model_class("I3-MRec") is I3MRec
    cfg = yaml.safe_load((Path(__file__).resolve().parents[2] / "pyg_mmrec" / "configs"
                          / "i3mrec.yaml").read_text())
    cfg.pop("train")
    ei, feats, masks = make_data()
    model = I3MRec(U, I, ei, feats, masks, **cfg)  # every YAML key is a constructor argument
    assert model.penalty_coeff == 300.0 and model.embedding_size == 64


def test_forward_shapes_and_loss_terms_with_random_masks(device):
    model = build().to(device)
    b = tuple(t.to(device) for t in batch())
    out = model()
    assert out.user.shape == (U, 16) and out.item.shape == (I, 16)
    assert set(out.item_modal) == set(out.user_modal) == {"image", "text"}
    terms = model.loss(*b)
    assert set(terms) == {"bpr_fused", "bpr_modal", "vrex", "infonce", "club", "reg"}
    loss = sum(terms.values())
    assert torch.isfinite(loss)
    loss.backward()
    aux_ids = {id(p) for p in model.auxiliary_parameters()}
    for name, p in model.named_parameters():
        if id(p) in aux_ids:
            assert p.grad is None, name  # the estimators are constants in the main loss
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    model.zero_grad()
    model.auxiliary_loss(*b).backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == (id(p) in aux_ids), name


def test_irm_variant_and_ablations():
    b = batch()
    assert "irm" in build(penalty="irm").loss(*b)
    assert set(build(use_irm=False).loss(*b)) == {"bpr_fused", "bpr_modal", "infonce", "club", "reg"}
    no_ib = build(use_ib=False)
    assert set(no_ib.loss(*b)) == {"bpr_fused", "bpr_modal", "vrex", "reg"}
    assert no_ib.auxiliary_loss(*b) is None
    assert "infonce" not in build(use_masked_fusion=False).loss(*b)
    with pytest.raises(ValueError, match="penalty"):
        build(penalty="dro")
    with pytest.raises(ValueError, match="mask_prob"):
        build(mask_prob=1.0)


def test_variational_kl_alternative():
    model = build(min_info="kl")
    assert list(model.auxiliary_parameters()) == []
    b = batch()
    terms = model.loss(*b)
    assert "kl" in terms and "club" not in terms and model.auxiliary_loss(*b) is None
    sum(terms.values()).backward()
    assert model.vib.lin_logvar.weight.grad is not None
    model.eval()
    out = model()
    assert torch.equal(out.item, out.extras["z_mu"])  # deterministic at inference
    assert torch.equal(model().item, out.item)
    with pytest.raises(ValueError, match="min_info"):
        build(min_info="mine")


def test_three_modalities_and_single_modality():
    model = build(data=make_data(dims=(12, 8, 5)))
    assert len(model.club) == 3
    terms = model.loss(*batch())
    sum(terms.values()).backward()
    assert model.projections["audio"].weight.grad is not None
    single = build(data=make_data(dims=(12,)))
    terms = single.loss(*batch())
    assert "vrex" not in terms and torch.isfinite(sum(terms.values()))


def test_modality_missing_for_every_item_of_a_batch():
    ei, feats, masks = make_data()
    users, pos, neg = batch()
    masks["text"][pos] = False
    masks["text"][neg] = False
    model = build(data=(ei, feats, masks))
    terms = model.loss(users, pos, neg)
    assert all(torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()
    assert torch.isfinite(model.auxiliary_loss(users, pos, neg))
    # ... and a modality missing for every item, and items missing everything
    masks = {"image": torch.zeros(I, dtype=torch.bool), "text": torch.rand(I) > 0.5}
    model = build(data=(ei, feats, masks))
    terms = model.loss(users, pos, neg)
    assert all(torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()
    out = model.eval()()
    none = ~masks["text"]
    # no present modality: the fused vector falls back to the collaborative read-out
    fallback = torch.stack([out.item_modal[m] for m in ("image", "text")]).mean(0)
    assert torch.allclose(out.item[none], torch.tanh(model.fusion.lin(fallback[none])))


def test_missing_features_are_never_read():
    ei, feats, masks = make_data()
    model = build(data=(ei, feats, masks)).eval()
    before = model()
    garbage = {m: torch.where(masks[m].unsqueeze(-1), x, 1e3 * torch.randn_like(x))
               for m, x in feats.items()}
    model.set_modality_inputs(garbage, masks)
    after = model()
    assert torch.allclose(before.user, after.user, atol=1e-6)
    assert torch.allclose(before.item, after.item, atol=1e-6)


def test_switching_to_test_masks_changes_only_what_it_should():
    ei, feats, masks = make_data(miss=0.0)
    model = build(data=(ei, feats, masks)).eval()
    full = model()
    test_masks = {m: mk.clone() for m, mk in masks.items()}
    test_masks["image"][:10] = False
    model.set_modality_inputs(feats, test_masks)
    part = model()
    assert not torch.allclose(full.item[:10], part.item[:10])
    # text-only items 0..9 are fused from the text embedding alone
    assert torch.allclose(part.item[:10], torch.tanh(model.fusion.lin(part.item_modal["text"][:10])))


def test_sampled_missing_indicator():
    model = build(mask_prob=0.9)
    real = torch.rand(3, 500) > 0.4
    real[:, :5] = False
    keep = model.sample_missing_indicator(real)
    assert not (keep & ~real).any()                      # real missingness always applies
    assert torch.equal(keep.any(0), real.any(0))         # at least one survives if any can
    assert (keep != real).any()                          # something was actually dropped


def test_determinism_per_seed():
    def train(seed):
        model = build(seed=seed)
        opt, aux_opt = optimisers(model)
        torch.manual_seed(seed)
        for s in range(3):
            step(model, opt, aux_opt, batch(seed=s))
        return model.eval()().item

    a, b, c = train(0), train(0), train(1)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_training_reduces_loss(device):
    model = build(fusion_dropout=0.0).to(device)
    opt, aux_opt = optimisers(model, lr=5e-2)
    b = tuple(t.to(device) for t in batch(n=128))
    first = sum(v.item() for k, v in step(model, opt, aux_opt, b).items())
    for _ in range(30):
        last = sum(v.item() for k, v in step(model, opt, aux_opt, b).items())
    assert last < first


def test_one_epoch_on_real_data(data_root):
    from pyg_mmrec.train import run
    res = run("i3mrec", "ml100k_mm", root=data_root, missing="i3mrec:mm:0.3", seed=0,
              overrides={"epochs": 1, "batch_size": 20000, "embedding_size": 16,
                         "n_layers": 1})
    assert res.test is not None and 0.0 <= res.test["recall@20"] <= 1.0


def test_id_branches():
    from pyg_mmrec.models.lightgcn import LightGCN
    ei, feats, masks = make_data()
    none = build(data=(ei, feats, masks))
    assert none.item_embedding is None
    with pytest.raises(ValueError, match="id_branch"):
        build(data=(ei, feats, masks), id_branch="ids")
    for branch in ("embedding", "lightgcn"):
        model = build(data=(ei, feats, masks), id_branch=branch)
        model.eval()
        out = model.forward()
        e_u, e_i = model.user_embedding.weight, model.item_embedding.weight
        if branch == "embedding":
            base_u, base_i = e_u, e_i
        else:  # exactly LightGCN's propagation of the ID embeddings
            lgn = LightGCN(U, I, ei, embedding_size=16, n_layers=2)
            with torch.no_grad():
                lgn.user_embedding.weight.copy_(e_u)
                lgn.item_embedding.weight.copy_(e_i)
            ref = lgn.forward()
            base_u, base_i = ref.user, ref.item
        # what remains once the ID part is removed is the environment's own propagation
        none.load_state_dict({k: v for k, v in model.state_dict().items()
                              if not k.startswith("item_embedding")})
        none.eval()
        plain = none.forward()
        for m in model.modalities:
            assert torch.allclose(out.item_modal[m], base_i + plain.item_modal[m], atol=1e-6)
            assert torch.allclose(out.user_modal[m] - base_u, plain.user_modal[m] - e_u,
                                  atol=1e-6)
        model.train()
        sum(model.loss(*batch()).values()).backward()
        assert model.item_embedding.weight.grad.abs().sum() > 0


def test_club_batch_draws_a_uniform_subset_of_the_batch_items(monkeypatch):
    model = build(club_batch=4)
    seen = []

    def record(self, x, z, weight=None):
        assert weight is None or bool(weight.all())  # more present items than club_batch
        seen.append(x)
        return x.sum() * 0.0

    from pyg_mmrec.nn.mi_estimators import CLUB
    monkeypatch.setattr(CLUB, "learning_loss", record)
    m = model.modalities[0]
    x_all = model._x(m)
    pos = torch.arange(I)
    picked = []
    for _ in range(6):
        seen.clear()
        model.auxiliary_loss(torch.zeros(I, dtype=torch.long), pos, pos)
        x = seen[0]
        assert x.size(0) == 4
        ids = [int((x_all == row).all(-1).nonzero()[0]) for row in x]
        assert all(bool(model.mask(m)[i]) for i in ids)  # present items only
        picked.append(tuple(sorted(ids)))
    lowest = tuple(model.mask(m).nonzero().view(-1)[:4].tolist())
    assert len(set(picked)) > 1 and any(p != lowest for p in picked)


def dense_knn_smoothing(x, mask, k):
    """:math:`S` by hand: top-k cosine among present items, indicator weights,
    D^{-1/2} A D^{-1/2} with A[i, j] = 1 when j is one of i's neighbours."""
    xn = torch.nn.functional.normalize(x, dim=-1)
    sim = xn @ xn.t()
    sim.fill_diagonal_(float("-inf"))
    sim[:, ~mask] = float("-inf")
    a = torch.zeros(I, I)
    for i in mask.nonzero().view(-1).tolist():
        a[i, sim[i].topk(k).indices] = 1.0
    deg = a.sum(1)
    inv = torch.where(deg > 0, deg.rsqrt(), torch.zeros_like(deg))
    return inv[:, None] * a * inv[None, :]


def test_item_graph_adds_each_modality_knn_smoothing_of_item_ids():
    data = make_data(miss=0.4)
    with pytest.raises(ValueError, match="item_graph: expected"):
        build(data=data, id_branch="lightgcn", item_graph="full")
    with pytest.raises(ValueError, match="needs id_branch"):
        build(data=data, item_graph="knn")
    with pytest.raises(ValueError, match="knn_k"):
        build(data=data, id_branch="lightgcn", item_graph="knn", knn_k=0)
    with pytest.raises(ValueError, match="item_graph_layers"):
        build(data=data, id_branch="lightgcn", item_graph="knn", item_graph_layers=0)
    plain = build(data=data, id_branch="lightgcn")
    model = build(data=data, id_branch="lightgcn", item_graph="knn", knn_k=4,
                  item_graph_layers=2)
    model.load_state_dict(plain.state_dict())
    plain.eval(), model.eval()
    ref, out = plain.forward(), model.forward()
    e_i = model.item_embedding.weight
    for m in model.modalities:
        s = dense_knn_smoothing(model.feature(m), model.mask(m), 4)
        extra = out.item_modal[m] - ref.item_modal[m]
        assert torch.allclose(extra, s @ (s @ e_i), atol=1e-5)
        missing = ~model.mask(m)
        assert missing.any() and extra[missing].abs().max() == 0  # collaborative only
    # a missing item's ID embedding never reaches another item through S^m
    m = model.modalities[0]
    gone = (~model.mask(m)).nonzero()[0, 0]
    with torch.no_grad():
        model.item_embedding.weight[gone] += 5.0
    assert torch.allclose(model._smoothed_items(m)[model.mask(m)],
                          (out.item_modal[m] - ref.item_modal[m])[model.mask(m)], atol=1e-5)
    model.train()
    sum(model.loss(*batch()).values()).backward()
    assert model.item_embedding.weight.grad.abs().sum() > 0


def test_item_graph_follows_the_masks_in_use():
    ei, feats, masks = make_data(miss=0.2)
    model = build(data=(ei, feats, masks), id_branch="embedding", item_graph="knn", knn_k=3)
    model.eval()
    m = model.modalities[0]
    train_graph = model._item_graph(m)[0]
    test_masks = dict(masks)
    test_masks[m] = masks[m].clone()
    test_masks[m][masks[m].nonzero()[:5, 0]] = False  # test-time missingness
    model.set_modality_inputs(feats, test_masks)
    test_graph = model._item_graph(m)[0]
    dropped = ~test_masks[m]
    assert not dropped[test_graph].any() and dropped[train_graph].any()
    s = dense_knn_smoothing(feats[m], test_masks[m], 3)
    assert torch.allclose(model._smoothed_items(m), s @ model.item_embedding.weight, atol=1e-5)
    model.set_modality_inputs(feats, masks)  # back to the training masks: cached, same graph
    assert model._item_graph(m)[0] is train_graph


def test_edge_dropout_trains_on_a_pruned_graph_and_evaluates_on_the_full_one():
    ei, feats, masks = make_data()
    with pytest.raises(ValueError, match="edge_dropout"):
        build(data=(ei, feats, masks), edge_dropout=1.0)
    model = build(data=(ei, feats, masks), id_branch="lightgcn", edge_dropout=0.6,
                  fusion_dropout=0.0)
    full = model.forward()  # before the first epoch: the full graph
    torch.manual_seed(5)
    model.on_epoch_start(0)
    torch.manual_seed(5)
    from pyg_mmrec.nn.edge_pruning import degree_sensitive_prune
    kept = degree_sensitive_prune(ei, U, I, 0.6)
    assert kept.size(1) == int(torch.unique(ei, dim=1).size(1) * 0.4)
    ref = I3MRec(U, I, kept, feats, masks, embedding_size=16, n_layers=2, id_branch="lightgcn",
                 fusion_dropout=0.0)
    ref.load_state_dict(model.state_dict())
    out, expected = model.forward(), ref.forward()
    assert torch.allclose(out.item, expected.item, atol=1e-6)
    assert torch.allclose(out.user, expected.user, atol=1e-6)
    assert not torch.allclose(out.user, full.user, atol=1e-3)
    model.eval()
    assert torch.allclose(model.forward().user, full.user, atol=1e-6)
    model.train()
    torch.manual_seed(6)
    model.on_epoch_start(1)  # a fresh draw every epoch
    assert not torch.allclose(model.forward().user, out.user, atol=1e-3)


@pytest.mark.parametrize("estimator", ["vclub", "kl"])
def test_unique_ib_items_with_zero_weight_duplicates_equal_removing_them(estimator):
    # ib_items="unique" keeps the batch's duplicates as rows of weight 0 (static
    # shapes, no host read): the terms equal those of the deduplicated positives
    hp = dict(infonce_views="all_subsets", ib_items="unique", max_info_coeff=1.0,
              min_info_coeff=1.0, club_batch=64)
    hp.update(min_info="kl") if estimator == "kl" else hp.update(club_estimator="vclub")
    model = build(**hp).eval()  # no dropout: the same numbers twice
    out = model.forward()
    pos = torch.tensor([5, 3, 5, 9, 3, 3, 12, 40, 5, 0])
    dedup = torch.unique(pos)
    with_dups, removed = model._bottleneck_terms(out, pos, None), \
        model._bottleneck_terms(out, dedup, None)
    assert set(with_dups) == set(removed) and "infonce" in removed
    for k in removed:
        assert torch.allclose(with_dups[k], removed[k], atol=1e-6, rtol=1e-5), k
    if estimator == "vclub":
        users = torch.zeros(pos.numel(), dtype=torch.long)
        a = model.auxiliary_loss(users, pos, pos)
        b = model.auxiliary_loss(users[:dedup.numel()], dedup, dedup)
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)
