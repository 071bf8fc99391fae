"""Placing new items (no interactions) by their content: Recommender.add_items in every model."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from conftest import tiny_graph
from pyg_mmrec.data.knn import knn_graph, knn_graph_anchored
from pyg_mmrec.data.sampler import BPRSampler
from pyg_mmrec.models import Recommender, get_model_class
from pyg_mmrec.models.base import grow_optimizer_state
from pyg_mmrec.models.mrdib import MRdIB

U, I = 24, 36
CONFIGS = Path(__file__).resolve().parents[2] / "pyg_mmrec" / "configs"
ISOLATED = 0  # an old item left without training interactions

# (model name, overrides): every model with a content path, I3-MRec in each ID variant
VARIANTS = {
    "vbpr": ("vbpr", {"drop_missing": True}),
    "mmgcn": ("mmgcn", {}),
    "lattice": ("lattice", {}),
    "freedom": ("freedom", {}),
    "mgcn": ("mgcn", {}),
    "lgmrec": ("lgmrec", {}),
    "lgmrec-2hyper": ("lgmrec", {"n_hyper_layer": 2}),
    "i3mrec": ("i3mrec", {}),
    "i3mrec-emb": ("i3mrec", {"id_branch": "embedding"}),
    "i3mrec-lgcn": ("i3mrec", {"id_branch": "lightgcn", "edge_dropout": 0.5}),
    "i3mrec-knn": ("i3mrec", {"id_branch": "lightgcn", "item_graph": "knn"}),
    "mrdib-freedom": ("freedom", {"mrdib": True}),
    "mrdib-i3mrec": ("i3mrec", {"mrdib": True, "id_branch": "embedding"}),
}
# a new item that copies an isolated old item (zero ID row) is represented exactly like it
NO_ITEM_GRAPH = ["vbpr", "mmgcn", "lgmrec", "lgmrec-2hyper", "i3mrec", "i3mrec-emb",
                 "i3mrec-lgcn", "mrdib-i3mrec"]


def build(variant, masked=True, num_modalities=2, **kw):
    name, over = VARIANTS[variant]
    over = dict(over, **kw)
    wrap = over.pop("mrdib", False)
    edge_index, feats, masks = tiny_graph(U, I, num_modalities, masked, per_user=6, dim=4,
                                          dim_step=3)
    edge_index = edge_index[:, edge_index[1] != ISOLATED]
    cfg = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    cfg.pop("train", None)
    if "modal_weights" in cfg:
        cfg["modal_weights"] = None  # synthetic modality names
    cfg.update(over)
    model = get_model_class(name)(U, I, edge_index, feats, masks, **cfg)
    if wrap:
        model = MRdIB(model, seed=1)
        with torch.no_grad():
            model.gate.fill_(0.5)  # the joint code enters the scores
    return model.eval()


def new_rows(model, copy_of, present=None):
    """Features of items that copy the content of old items ``copy_of``."""
    backbone = getattr(model, "backbone", model)
    idx = torch.as_tensor(copy_of)
    feats = {m: backbone.feature(m)[idx].clone() for m in backbone.modalities}
    masks = {m: backbone.mask(m)[idx].clone() for m in backbone.modalities}
    if present is not None:
        masks = {m: present.get(m, mk) for m, mk in masks.items()}
    return feats, masks


def eval_embeddings(model):
    model.eval()
    return model.embeddings_for_eval()


def item_rep(model):
    return model.embeddings_for_eval()[1]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_indices_shapes_and_old_items_unchanged(variant):
    model = build(variant)
    assert model.supports_new_items
    user0, item0 = eval_embeddings(model)
    out0 = model()
    ids = model.add_items(*new_rows(model, [1, 2, 3, 4]))
    assert ids.dtype == torch.long and ids.tolist() == [I, I + 1, I + 2, I + 3]
    assert model.num_items == I + 4
    user, item = eval_embeddings(model)
    assert user.shape == user0.shape and item.shape == (I + 4, item0.size(1))
    assert bool(torch.isfinite(item).all())
    out = model()
    assert out.item.size(0) == I + 4
    for m, h in out.item_modal.items():
        assert h.size(0) == I + 4
        # old items keep their per-modality representations too
        torch.testing.assert_close(h[:I], out0.item_modal[m], rtol=1e-5, atol=1e-6)
    # old items and users unchanged (no documented exception: new items never enter
    # an old item's neighbour list nor, in LGMRec, a hyperedge embedding)
    torch.testing.assert_close(user, user0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(item[:I], item0, rtol=1e-5, atol=1e-6)
    # a second call appends after the first
    assert model.add_items(*new_rows(model, [5])).tolist() == [I + 4]
    torch.testing.assert_close(item_rep(model)[:I + 4], item, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", NO_ITEM_GRAPH)
def test_copy_of_an_item_without_interactions_is_represented_like_it(variant):
    model = build(variant, masked=False)
    backbone = getattr(model, "backbone", model)
    if getattr(backbone, "item_embedding", None) is not None:
        with torch.no_grad():  # what a new item's ID row holds
            backbone.item_embedding.weight[ISOLATED] = 0.0
    user, item0 = eval_embeddings(model)
    (new,) = model.add_items(*new_rows(model, [ISOLATED])).tolist()
    item = item_rep(model)
    torch.testing.assert_close(item[new], item0[ISOLATED], rtol=1e-5, atol=1e-6)
    # so it ranks exactly where the content path puts the old item for every user
    torch.testing.assert_close(user @ item[new], user @ item0[ISOLATED], rtol=1e-5, atol=1e-5)
    assert bool(item[new].abs().sum() > 0)  # content gives it a representation


def test_vbpr_new_item_is_its_content_factor():
    model = build("vbpr")
    d = model.embedding_size
    _, item0 = eval_embeddings(model)
    (new,) = model.add_items(*new_rows(model, [5])).tolist()
    item = item_rep(model)
    assert bool((item[new, :d] == 0).all())  # gamma_i = 0
    torch.testing.assert_close(item[new, d:], item0[5, d:])  # the old item's content factor


def test_freedom_copy_reads_the_copied_items_id_embedding():
    model = build("freedom", masked=False, knn_k=1, n_mm_layers=1)
    (new,) = model.add_items(*new_rows(model, [7])).tolist()
    # its one content neighbour in every modality is item 7 (cosine 1), S weight 1/sqrt(1*1)
    torch.testing.assert_close(item_rep(model)[new], model.item_embedding.weight[7])


def test_lattice_copy_is_the_normalised_id_embedding_of_the_copied_item():
    model = build("lattice", masked=False, knn_k=1, n_layers=1)
    (new,) = model.add_items(*new_rows(model, [7])).tolist()
    torch.testing.assert_close(item_rep(model)[new], F.normalize(model.item_embedding.weight[7],
                                                                 dim=0))


def test_mgcn_copy_reads_the_copied_items_purified_embedding():
    model = build("mgcn", masked=False, knn_k=1, n_layers=1)
    (new,) = model.add_items(*new_rows(model, [7])).tolist()
    out = model()
    assert bool((out.extras["content"][U + new] == 0).all())  # no collaborative part
    for m in model.modalities:
        proj = model.projections[m]
        gate = torch.sigmoid(model.purifier_gates[m](proj(model.feature(m)[7])))
        expected = model.item_embedding.weight[7] * gate
        # a positive multiple (the sym-normalised kNN weight) of item 7's purified embedding
        cos = F.cosine_similarity(out.item_modal[m][new], expected, dim=0)
        assert float(cos) == pytest.approx(1.0, abs=1e-5)


def test_i3mrec_knn_copy_adds_the_copied_items_id_embedding():
    model = build("i3mrec-knn", masked=False, knn_k=1)
    (new,) = model.add_items(*new_rows(model, [7])).tolist()
    out = model()
    L = model.n_layers
    for m in model.modalities:
        h0 = F.normalize(model.projections[m](model._x(m)[7]), dim=0) / (L + 1)
        torch.testing.assert_close(out.item_modal[m][new], h0 + model.item_embedding.weight[7])


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_masked_modality_row_is_never_read(variant):
    model = build(variant, masked=False)
    backbone = getattr(model, "backbone", model)
    first = backbone.modalities[0]
    feats, masks = new_rows(model, [3, 3, 3, 3])
    feats[first][1] = 0.0
    feats[first][2] = 0.0
    feats[first][3] = 100.0 * torch.randn_like(feats[first][3])
    masks[first] = torch.tensor([True, True, False, False])
    ids = model.add_items(feats, masks)
    item = item_rep(model)
    # masked: whatever the row holds, the same representation
    torch.testing.assert_close(item[ids[2]], item[ids[3]], rtol=1e-5, atol=1e-6)
    # present: the row matters (the comparison above could fail)
    assert not torch.allclose(item[ids[0]], item[ids[1]], atol=1e-4)


def test_vbpr_without_drop_missing_projects_the_given_fill():
    # documented: the filled row is what training saw for a missing entry
    model = build("vbpr", drop_missing=False)
    feats, masks = new_rows(model, [3, 3])
    feats["m0"][1] = 5.0
    masks["m0"] = torch.tensor([False, False])
    ids = model.add_items(feats, masks)
    item = item_rep(model)
    assert not torch.allclose(item[ids[0]], item[ids[1]])


@pytest.mark.parametrize("name", ["bpr", "lightgcn"])
def test_id_only_models_raise(name):
    edge_index, feats, masks = tiny_graph(U, I, 2, False)
    model = get_model_class(name)(U, I, edge_index, feats, masks)
    assert model.supports_new_items is False
    with pytest.raises(ValueError, match=f"{type(model).__name__} has no content path: an item "
                                         f"with no interactions has no representation"):
        model.add_items({m: x[:2] for m, x in feats.items()}, None)
    assert model.num_items == I and model.item_embedding.num_embeddings == I


def test_content_model_without_modalities_raises():
    edge_index, _, _ = tiny_graph(U, I, 0, False)
    model = get_model_class("freedom")(U, I, edge_index, {}, None)
    with pytest.raises(ValueError, match="FREEDOM has no content path"):
        model.add_items({}, None)


@pytest.mark.parametrize("variant", ["freedom", "i3mrec", "mrdib-freedom"])
def test_bad_input_is_rejected_and_leaves_the_model_unchanged(variant):
    model = build(variant)
    feats, masks = new_rows(model, [1, 2])
    _, item0 = eval_embeddings(model)
    cases = [
        (dict(feats, extra=feats["m0"]), masks, r"features: expected exactly the modalities"),
        ({"m0": feats["m0"]}, masks, r"features: expected exactly the modalities"),
        (dict(feats, m0=feats["m0"][:, :-1]), masks, r"features\['m0'\]: expected shape \[n, 4\]"),
        (dict(feats, m0=feats["m0"][0]), masks, r"features\['m0'\]: expected shape"),
        (dict(feats, m0=feats["m0"].double()), masks, r"features\['m0'\]: expected dtype"),
        (dict(feats, m0=feats["m0"].numpy()), masks, r"features\['m0'\]: expected a torch.Tensor"),
        (dict(feats, m1=feats["m1"][:1]), masks, r"features\['m1'\]: expected 2 rows"),
        (dict(feats, m1=feats["m1"].clone().fill_(float("nan"))), masks,
         r"features\['m1'\]: expected finite values"),
        (feats, dict(masks, m0=masks["m0"].to(torch.uint8)), r"masks\['m0'\]: expected a bool"),
        (feats, dict(masks, m0=masks["m0"][:1]), r"masks\['m0'\]: expected a bool tensor of shape"),
        (feats, dict(masks, other=masks["m0"]), r"masks: unknown modalities \['other'\]"),
        ([feats["m0"]], masks, r"features: expected a dict"),
    ]
    for f, mk, msg in cases:
        with pytest.raises(ValueError, match=msg):
            model.add_items(f, mk)
    assert model.num_items == I
    torch.testing.assert_close(item_rep(model), item0)
    # an omitted mask means present; zero new items change nothing
    assert model.add_items(feats, None).tolist() == [I, I + 1]
    assert model.add_items({m: x[:0] for m, x in feats.items()}).numel() == 0
    assert model.num_items == I + 2


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_trains_after_add_items(variant):
    model = build(variant).train()
    params = [p for p in model.parameters() if p.requires_grad]
    sparse = any(getattr(mod, "sparse", False) for mod in model.modules())
    opt = torch.optim.SGD(params, lr=0.1) if sparse else torch.optim.Adam(params, lr=1e-2)
    backbone = getattr(model, "backbone", model)
    ei = backbone.train_edge_index
    g = torch.Generator().manual_seed(1)

    def step(num_items):
        k = torch.randint(0, ei.size(1), (16,), generator=g)
        neg = torch.randint(0, num_items, (16,), generator=g)
        neg[:4] = torch.arange(num_items - 4, num_items)  # the new items as negatives
        model.on_epoch_start(0)
        loss = sum(model.loss(ei[0, k], ei[1, k], neg).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        aux = model.auxiliary_loss(ei[0, k], ei[1, k], neg)
        assert aux is None or bool(torch.isfinite(aux))
        return loss

    step(I)
    model.add_items(*new_rows(model, [1, 2, 3, 4]))
    grow_optimizer_state(opt)  # the same optimiser continues
    before = [p.detach().clone() for p in params]
    assert bool(torch.isfinite(step(I + 4)))
    assert any(not torch.equal(a, p) for a, p in zip(before, params))
    model.eval()
    assert item_rep(model).size(0) == I + 4


def test_i3mrec_sampled_training_after_add_items():
    model = build("i3mrec-lgcn", fanout=[4, 4, 4]).train()
    model.add_items(*new_rows(model, [1, 2]))
    ei = model.train_edge_index
    loss = sum(model.loss(ei[0, :16], ei[1, :16], torch.tensor([I, I + 1] * 8)).values())
    loss.backward()
    assert bool(torch.isfinite(loss))
    assert model.z_cache.size(0) == I + 2


def test_grow_optimizer_state_pads_adam_moments():
    model = build("freedom").train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sum(model.loss(*[torch.arange(8)] * 2, torch.arange(8, 16)).values()).backward()
    opt.step()
    model.add_items(*new_rows(model, [1, 2]))
    grow_optimizer_state(opt)
    state = opt.state[model.item_embedding.weight]
    assert state["exp_avg"].shape == (I + 2, model.embedding_size)
    assert bool((state["exp_avg"][I:] == 0).all() and (state["exp_avg_sq"][I:] == 0).all())


# --------------------------------------------------------------- kNN over anchors
def test_knn_graph_anchored():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 5, generator=g)
    mask = torch.rand(30, generator=g) > 0.2
    A, k = 22, 4
    ei, w = knn_graph_anchored(x, k, mask, A)
    ei_a, w_a = knn_graph(x[:A], k, mask[:A])
    n_a = ei_a.size(1)
    assert torch.equal(ei[:, :n_a], ei_a) and torch.equal(w[:n_a], w_a)  # anchors untouched
    src, dst = ei[:, n_a:]
    assert bool((src < A).all() and mask[src].all())  # only present anchors are neighbours
    assert bool((dst >= A).all()) and bool((dst[1:] >= dst[:-1]).all())  # sorted by target
    assert set(dst.tolist()) == set((torch.arange(A, 30)[mask[A:]]).tolist())
    xn = F.normalize(x, dim=-1)
    anchors = torch.arange(A)[mask[:A]]
    for i in set(dst.tolist()):
        sims = xn[i] @ xn[anchors].t()
        expected = set(anchors[sims.topk(k).indices].tolist())
        assert set(src[dst == i].tolist()) == expected
        torch.testing.assert_close(w[n_a:][dst == i].sort().values,
                                   sims.topk(k).values.sort().values)
    # no anchors cut: the plain graph; differentiable weights for a learned graph
    e2, w2 = knn_graph_anchored(x, k, mask, None)
    assert torch.equal(e2, knn_graph(x, k, mask)[0])
    xg = x.clone().requires_grad_()
    _, wg = knn_graph_anchored(xg, k, mask, A)
    wg.sum().backward()
    assert xg.grad is not None and bool(xg.grad[A:].abs().sum() > 0)


def test_bpr_sampler_add_items():
    edge_index, _, _ = tiny_graph(U, I, 0, False)
    sampler = BPRSampler(edge_index, U, I, seed=0)
    sampler.add_items(5)
    assert sampler.num_items == I + 5
    assert bool(sampler.is_positive(edge_index[0], edge_index[1]).all())
    assert not bool(sampler.is_positive(edge_index[0], torch.full_like(edge_index[1], I + 2)).any())
    neg = torch.cat([sampler.sample(e)[2] for e in range(20)])
    assert int(neg.max()) >= I  # new items are drawn as negatives
    with pytest.raises(ValueError, match="n: expected an int >= 0"):
        sampler.add_items(-1)


def test_mrdib_follows_its_backbone():
    model = build("mrdib-freedom")
    assert isinstance(model, Recommender) and model.supports_new_items
    model.add_items(*new_rows(model, [1]))
    assert model.num_items == model.backbone.num_items == I + 1
    assert model.num_anchor_items == I


@pytest.mark.parametrize("variant", ["freedom", "lattice", "mgcn", "i3mrec-knn", "lgmrec"])
def test_mask_swap_after_add_items_keeps_old_items_as_without_them(variant):
    # e.g. the fm protocol's evaluation masks, set after new items were added
    torch.manual_seed(0)
    grown = build(variant)
    torch.manual_seed(0)
    plain = build(variant)
    feats, masks = new_rows(grown, [1, 2, 3])
    grown.add_items(feats, masks)
    g = torch.Generator().manual_seed(5)
    swapped = {m: plain.mask(m) & (torch.rand(I, generator=g) > 0.3) for m in plain.modalities}
    old_feats = {m: plain.feature(m) for m in plain.modalities}
    plain.set_modality_inputs(old_feats, swapped)
    grown.set_modality_inputs({m: torch.cat([old_feats[m], feats[m]]) for m in feats},
                              {m: torch.cat([swapped[m], masks[m]]) for m in masks})
    u_p, i_p = eval_embeddings(plain)
    u_g, i_g = eval_embeddings(grown)
    torch.testing.assert_close(u_g, u_p, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(i_g[:I], i_p, rtol=1e-5, atol=1e-6)
