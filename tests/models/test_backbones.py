"""Every backbone on a tiny synthetic graph: shapes, training signal, masks, kNN caches."""
import re
from pathlib import Path

import pytest
import torch
import yaml

from conftest import tiny_graph
from pyg_mmrec.models import RecOutput, Recommender, get_model_class

U, I = 24, 36
ID_ONLY = ["bpr", "lightgcn"]
MULTIMODAL = ["vbpr", "mmgcn", "lattice", "freedom", "mgcn", "lgmrec"]
KNN_MODELS = ["lattice", "freedom", "mgcn"]
# models whose scores cannot depend on the filled feature of a missing entry
MASK_INVARIANT = {"mmgcn": {}, "lattice": {}, "freedom": {}, "mgcn": {}, "lgmrec": {},
                  "vbpr": {"drop_missing": True}}
CONFIGS = Path(__file__).resolve().parents[2] / "pyg_mmrec" / "configs"


def make_data(num_modalities, masked, seed=0):
    edge_index, feats, masks = tiny_graph(U, I, num_modalities, masked, seed, per_user=6,
                                          dim=4, dim_step=3)
    return edge_index, feats, masks


def build(name, num_modalities=2, masked=False, **kw):
    edge_index, feats, masks = make_data(num_modalities, masked)
    cfg = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    cfg.pop("train", None)
    cfg.update(kw)
    if "modal_weights" in cfg:
        cfg["modal_weights"] = None  # synthetic modality names
    return get_model_class(name)(U, I, edge_index, feats, masks, **cfg), edge_index


def batch(edge_index, seed=1):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, edge_index.size(1), (32,), generator=g)
    neg = torch.randint(0, I, (32,), generator=g).to(edge_index.device)
    return edge_index[0, idx.to(edge_index.device)], edge_index[1, idx.to(edge_index.device)], neg


@pytest.mark.parametrize("name", ID_ONLY + MULTIMODAL)
def test_yaml_keys_are_constructor_hparams(name):
    cfg = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    assert isinstance(cfg.get("train", {}), dict)
    model, _ = build(name)
    assert isinstance(model, Recommender)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("num_modalities", [1, 2, 3])
@pytest.mark.parametrize("name", ID_ONLY + MULTIMODAL)
def test_forward_backward(device, name, num_modalities, masked):
    model, ei = build(name, num_modalities, masked)
    model, ei = model.to(device), ei.to(device)
    model.train()
    model.on_epoch_start(0)
    out = model()
    assert isinstance(out, RecOutput)
    assert out.user.size(0) == U and out.item.size(0) == I
    assert out.user.size(1) == out.item.size(1)
    if name in MULTIMODAL:
        assert set(out.item_modal) == set(model.modalities)
        for h in out.item_modal.values():
            assert h.size(0) == I and bool(torch.isfinite(h).all())
        for h in out.user_modal.values():
            assert h.size(0) == U
    terms = model.loss(*batch(ei), out=out)
    loss = sum(terms.values())
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(bool(g.abs().sum() > 0) for g in grads)
    assert model.item_embedding.weight.grad is not None
    model.eval()
    u, i = model.embeddings_for_eval()
    assert bool(torch.isfinite(u @ i.t()).all())


@pytest.mark.parametrize("name", ID_ONLY + MULTIMODAL)
def test_loss_decreases(device, name):
    model, ei = build(name, 2, masked=True)
    model, ei = model.to(device), ei.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    model.on_epoch_start(0)
    users, pos, neg = batch(ei)
    losses = []
    for _ in range(15):
        loss = sum(model.loss(users, pos, neg).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]


@pytest.mark.parametrize("name", ["lightgcn", "lattice", "freedom", "mgcn", "lgmrec", "vbpr"])
def test_zero_modalities_reduce_to_id_model(name):
    model, ei = build(name, 0)
    out = model()
    assert out.item_modal == {}
    sum(model.loss(*batch(ei)).values()).backward()


def test_mmgcn_needs_a_modality():
    with pytest.raises(ValueError, match="modality"):
        build("mmgcn", 0)


@pytest.mark.parametrize("num_modalities", [1, 3])
@pytest.mark.parametrize("name", sorted(MASK_INVARIANT))
def test_masked_features_cannot_influence_scores(name, num_modalities):
    edge_index, feats, masks = make_data(num_modalities, masked=True)
    cfg = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    cfg.pop("train", None)
    cfg.update(MASK_INVARIANT[name])
    cfg.pop("modal_weights", None)

    def scores(features):
        torch.manual_seed(0)  # identical parameters for every build
        model = get_model_class(name)(U, I, edge_index, features, masks, **cfg).eval()
        u, i = model.embeddings_for_eval()
        return u @ i.t()

    s0 = scores(feats)
    perturbed = {m: x.clone() for m, x in feats.items()}
    for m, x in perturbed.items():  # arbitrary values where the modality is missing
        miss = ~masks[m]
        assert bool(miss.any())
        x[miss] = 100.0 * torch.randn(int(miss.sum()), x.size(1))
    torch.testing.assert_close(scores(perturbed), s0)
    # sanity: the *present* items' features do change the scores
    for m, x in perturbed.items():
        x[masks[m]] = torch.randn(int(masks[m].sum()), x.size(1))
    assert not torch.allclose(scores(perturbed), s0)


def _graph_edges(model):
    """The kNN edge_index of every modality currently used by the model."""
    if hasattr(model, "item_graphs"):
        return {m: ei for m, (ei, _) in model.item_graphs.items()}
    return {"mixed": model.mm_graph[0]}


@pytest.mark.parametrize("name", KNN_MODELS)
def test_knn_graphs_follow_mask_switch(name):
    model, _ = build(name, 2, masked=False)
    model.eval()
    train_masks = {m: torch.ones(I, dtype=torch.bool) for m in model.modalities}
    eval_masks = {m: torch.rand(I) > 0.5 for m in model.modalities}
    feats = dict(model._features)
    s_train = model.embeddings_for_eval()
    model.set_modality_inputs(feats, eval_masks)
    missing = torch.zeros(I, dtype=torch.bool)
    for m, ei in _graph_edges(model).items():
        mk = eval_masks[m] if m in eval_masks else None
        if mk is not None:
            assert not bool((~mk[ei]).any()), "a missing item is still in the kNN graph"
        missing |= ~eval_masks[model.modalities[0]]
    if not hasattr(model, "item_graphs"):  # FREEDOM's mixed graph: no item missing all
        ei = model.mm_graph[0]
        both_missing = torch.stack([~eval_masks[m] for m in model.modalities]).all(0)
        assert not bool(both_missing[ei].any())
    s_eval = model.embeddings_for_eval()
    assert not torch.allclose(s_eval[1], s_train[1])
    cache_size = len(model._knn_cache if hasattr(model, "_knn_cache") else model._orig_cache)
    model.set_modality_inputs(feats, train_masks)  # back: served from the cache
    assert len(model._knn_cache if hasattr(model, "_knn_cache") else model._orig_cache) == cache_size
    s_back = model.embeddings_for_eval()
    torch.testing.assert_close(s_back[0], s_train[0])
    torch.testing.assert_close(s_back[1], s_train[1])


def test_freedom_prunes_only_in_training():
    model, ei = build("freedom", 2, dropout=0.5)
    model.eval()
    s_full = model.embeddings_for_eval()
    model.train()
    model.on_epoch_start(0)
    kept = model.pruned_conv.col.numel() // 2
    assert kept == int(torch.unique(ei, dim=1).size(1) * 0.5)
    model.eval()
    torch.testing.assert_close(model.embeddings_for_eval()[1], s_full[1])


def test_lattice_learned_graph_gets_gradient_once_per_epoch():
    model, ei = build("lattice", 2)
    model.train()
    model.on_epoch_start(0)
    sum(model.loss(*batch(ei)).values()).backward()
    proj = next(iter(model.projections.values()))
    assert proj.weight.grad is not None and bool(proj.weight.grad.abs().sum() > 0)
    model.zero_grad()
    sum(model.loss(*batch(ei, 2)).values()).backward()  # same epoch: graph detached
    assert proj.weight.grad is None or bool(proj.weight.grad.abs().sum() == 0)


@pytest.mark.parametrize("name,kw,match", [
    ("freedom", {"dropout": 1.5}, "dropout"),
    ("freedom", {"modal_weights": {"m0": -1.0}}, "modal_weights"),
    ("lattice", {"lambda_coeff": 2.0}, "lambda_coeff"),
    ("mgcn", {"knn_k": 0}, "knn_k"),
    ("lightgcn", {"n_layers": -1}, "n_layers"),
    ("lgmrec", {"keep_rate": 0.0}, "keep_rate"),
    ("freedom", {"feat_embed_dim": 32}, "feat_embed_dim"),
    ("freedom", {"knn_method": "hnsw"}, "knn_method"),
    ("lattice", {"knn_method": "annoy"}, "knn_method"),
    ("mgcn", {"knn_method": None}, "knn_method"),
])
def test_bad_hparams_raise(name, kw, match):
    edge_index, feats, masks = make_data(2, False)
    with pytest.raises(ValueError, match=match):
        get_model_class(name)(U, I, edge_index, feats, masks, **kw)


def test_lattice_eval_graph_follows_loaded_parameters():
    model, ei = build("lattice", 2)
    opt = torch.optim.Adam(model.parameters(), lr=5e-2)
    model.train()
    for epoch in range(2):
        model.on_epoch_start(epoch)
        for b in range(3):
            loss = sum(model.loss(*batch(ei, b)).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    scores = [t.clone() for t in model.embeddings_for_eval()]
    # a fresh model loading the trained state scores identically
    torch.manual_seed(123)
    fresh, _ = build("lattice", 2)
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    for a, b in zip(fresh.embeddings_for_eval(), scores):
        torch.testing.assert_close(a, b)


def test_freedom_modality_weights():
    from pyg_mmrec.models.freedom import modality_weights
    assert modality_weights(["image", "text"], None, "w") == {"image": 0.5, "text": 0.5}
    w = modality_weights(["image", "text"], {"image": 0.1, "text": 0.9}, "w")
    assert w == pytest.approx({"image": 0.1, "text": 0.9})
    # an unlisted modality gets the mean of the listed weights, then all sum to one
    w = modality_weights(["image", "text", "audio"], {"image": 0.1, "text": 0.9}, "w")
    assert w == pytest.approx({"image": 0.1 / 1.5, "text": 0.9 / 1.5, "audio": 0.5 / 1.5})
    with pytest.raises(ValueError, match="w"):
        modality_weights(["image"], [0.3], "w")


@pytest.mark.parametrize("n_layers", [0, 1, 3])
def test_lightgcn_loss_reads_forward_scores_bit_for_bit(n_layers):
    # the loss computes the layer mean on the batch rows only; same numbers, same gradients
    from pyg_mmrec.models.lightgcn import LightGCN
    edge_index, _, _ = tiny_graph(40, 60, 0, False)
    torch.manual_seed(0)
    model = LightGCN(40, 60, edge_index, n_layers=n_layers)
    users, pos, neg = torch.randint(0, 40, (32,)), torch.randint(0, 60, (32,)), \
        torch.randint(0, 60, (32, 2))
    direct = model.loss(users, pos, neg)
    via_forward = model.loss(users, pos, neg, out=model.forward())
    assert torch.equal(direct["bpr"], via_forward["bpr"])
    params = [model.user_embedding.weight, model.item_embedding.weight]
    for g1, g2 in zip(torch.autograd.grad(sum(direct.values()), params),
                      torch.autograd.grad(sum(via_forward.values()), params)):
        torch.testing.assert_close(g1, g2, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", KNN_MODELS)
def test_knn_method_faiss_builds_the_same_graphs_on_a_small_catalogue(name):
    """On 36 items faiss's index has one list (nlist = I/39 rounded up to 1),
    so its search is exhaustive: the same graphs and scores as ``exact``."""
    pytest.importorskip("faiss")
    torch.manual_seed(0)
    exact, _ = build(name, 2, masked=True)
    torch.manual_seed(0)
    approx, _ = build(name, 2, masked=True, knn_method="faiss")
    assert approx.knn_method == "faiss" and exact.knn_method == "exact"
    for (m, e), (_, f) in zip(sorted(_graph_edges(exact).items()),
                              sorted(_graph_edges(approx).items())):
        assert {tuple(p) for p in e.t().tolist()} == {tuple(p) for p in f.t().tolist()}, m
    exact.eval()
    approx.eval()
    for a, b in zip(exact.embeddings_for_eval(), approx.embeddings_for_eval()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_knn_method_faiss_without_the_package(monkeypatch):
    import sys

    from pyg_mmrec.errors import MissingExtraError
    monkeypatch.setitem(sys.modules, "faiss", None)  # as if not installed
    edge_index, feats, masks = make_data(2, False)
    with pytest.raises(MissingExtraError, match="knn_method='faiss' .*pip install faiss-cpu"):
        get_model_class("freedom")(U, I, edge_index, feats, masks, knn_method="faiss")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("name", MULTIMODAL + ["i3mrec"])
def test_non_finite_features_are_refused_even_in_missing_rows(name, bad):
    # 0 * NaN is NaN: a non-finite filler of a masked row would reach the scores
    edge_index, feats, masks = make_data(2, masked=True)
    miss = (~masks["m1"]).nonzero().flatten()
    poisoned = dict(feats, m1=feats["m1"].clone())
    poisoned["m1"][miss[:2], 1] = bad
    cfg = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    cfg.pop("train", None)
    cfg.pop("modal_weights", None)
    msg = re.escape(f"features['m1']: 2 rows contain NaN or inf "
                    f"(first rows: {miss[:2].tolist()})")
    with pytest.raises(ValueError, match=msg):
        get_model_class(name)(U, I, edge_index, poisoned, masks, **cfg)
    model = get_model_class(name)(U, I, edge_index, feats, masks, **cfg)
    with pytest.raises(ValueError, match=msg):
        model.set_modality_inputs(poisoned, masks)
    assert model.feature("m1") is feats["m1"]  # the inputs in use are unchanged
