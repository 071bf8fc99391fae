"""Sampled (``fanout``) training of every model: at a fan-out of at least the
maximum degree, the sampled forward rows, loss terms and gradients equal the
full-graph ones; at small fan-outs the step is random, trains and keeps
missing features out."""
import pytest
import torch
from conftest import random_batch, random_modal_data

from pyg_mmrec.config import build_config
from pyg_mmrec.models.bpr import BPR
from pyg_mmrec.models.freedom import FREEDOM
from pyg_mmrec.models.lattice import LATTICE
from pyg_mmrec.models.lgmrec import LGMRec
from pyg_mmrec.models.mgcn import MGCN
from pyg_mmrec.models.mmgcn import MMGCN
from pyg_mmrec.models.mrdib import MRdIB
from pyg_mmrec.models.vbpr import VBPR

U, I = 40, 60
BIG = 500  # above every degree of the test graphs

# model -> (hyper-parameters, number of user-item layers = len(fanout))
CASES = {
    "FREEDOM": (FREEDOM, dict(embedding_size=16, feat_embed_dim=16, knn_k=3, n_mm_layers=2,
                              dropout=0.0), 2),
    "FREEDOM_pruned": (FREEDOM, dict(embedding_size=16, feat_embed_dim=16, knn_k=3,
                                     dropout=0.5), 2),
    "LATTICE": (LATTICE, dict(embedding_size=16, feat_embed_dim=16, knn_k=3, n_layers=2), 2),
    "MGCN": (MGCN, dict(embedding_size=16, knn_k=3, n_layers=2, cl_loss=0.1), 2),
    "LGMRec": (LGMRec, dict(embedding_size=16, feat_embed_dim=16, keep_rate=0.5, hyper_sample=None,
                            cl_weight=0.1, reg_weight=1e-3), 2),
    "MMGCN": (MMGCN, dict(embedding_size=16, dim_latent=24), 2),
    "VBPR": (VBPR, dict(embedding_size=16, drop_missing=True), 1),
    "BPR": (BPR, dict(embedding_size=16), 1),
}


def make_data(seed=0, miss=0.3):
    return random_modal_data(U, I, seed, miss=miss)


def pair(name, fanout_value=BIG, data=None):
    cls, hp, n = CASES[name]
    ei, feats, masks = data if data is not None else make_data()
    torch.manual_seed(0)
    full = cls(U, I, ei, feats, masks, **hp)
    torch.manual_seed(0)
    sampled = cls(U, I, ei, feats, masks, fanout=[fanout_value] * n, **hp)
    sampled.load_state_dict(full.state_dict())
    return full, sampled


def start_epoch(*models):
    for model in models:
        torch.manual_seed(3)
        model.on_epoch_start(0)


def dense(g):
    return g.to_dense() if g is not None and g.is_sparse else g


def assert_close(a, b, what, atol=1e-5):
    assert a.shape == b.shape, what
    assert torch.allclose(a, b, atol=atol, rtol=1e-4), f"{what}: max diff {(a - b).abs().max()}"


@pytest.mark.parametrize("name", list(CASES))
def test_full_fanout_forward_rows_equal_full_graph(name):
    full, sampled = pair(name)
    start_epoch(full, sampled)
    users, items = torch.tensor([3, 1, 3, 7]), torch.tensor([5, 0, 59, 5, 12])
    torch.manual_seed(5)
    ref = full.forward()
    torch.manual_seed(5)
    out = sampled.sampled_output(users, items)
    # rows: the sorted unique ids, then (sampled models, static shapes) padding
    # rows that repeat the last id and are never read
    uids, iids = torch.tensor([1, 3, 7]), torch.tensor([0, 5, 12, 59])
    assert torch.equal(torch.unique(out.user_ids), uids)
    assert torch.equal(out.user_ids, out.user_ids.sort().values)
    if name == "LGMRec":  # its output also holds the anchor items drawn for the hyperedges
        assert torch.isin(iids, out.item_ids).all()
    else:
        assert torch.equal(torch.unique(out.item_ids), iids)
    ur, ir = out.user_rows(uids), out.item_rows(iids)
    assert_close(out.user[ur], ref.user[uids], "user")
    assert_close(out.item[ir], ref.item[iids], "item")
    for m, h in ref.item_modal.items():
        assert_close(out.item_modal[m][ir], h[iids], f"item_modal[{m}]")
    for m, h in ref.user_modal.items():
        assert_close(out.user_modal[m][ur], h[uids], f"user_modal[{m}]")


@pytest.mark.parametrize("name", list(CASES))
def test_full_fanout_loss_and_gradients_equal_full_graph(name):
    full, sampled = pair(name)
    start_epoch(full, sampled)
    b = random_batch(U, I, 1, 32)
    torch.manual_seed(7)
    lf = full.loss(*b)
    torch.manual_seed(7)
    ls = sampled.loss(*b)
    assert set(lf) == set(ls)
    for k in lf:
        assert_close(ls[k], lf[k], f"loss term {k}", atol=1e-6)
    sum(lf.values()).backward()
    sum(ls.values()).backward()
    grads_full = dict(full.named_parameters())
    for n, p in sampled.named_parameters():
        gf = grads_full[n].grad
        if gf is None:
            assert p.grad is None or not dense(p.grad).any(), n
            continue
        assert p.grad is not None, f"{n}: no gradient in the sampled step"
        assert_close(dense(p.grad), gf, f"grad of {n}")
    assert sampled.user_embedding.weight.grad.is_sparse  # only the batch's rows
    # evaluation always propagates the full graph
    full.eval(), sampled.eval()
    for a, c in zip(full.embeddings_for_eval(), sampled.embeddings_for_eval(), strict=True):
        assert_close(c, a, "evaluation embeddings")


@pytest.mark.parametrize("name", list(CASES))
def test_small_fanout_is_random_trains_and_ignores_missing_features(name):
    ei, feats, masks = make_data(miss=0.5)
    _, model = pair(name, 2, (ei, feats, masks))
    start_epoch(model)
    b = random_batch(U, I, 1, 32)
    torch.manual_seed(3)
    a = model.loss(*b)
    total = sum(a.values())
    assert torch.isfinite(total)
    total.backward()
    # a missing item's filled feature is never read
    feats2 = {m: torch.where(masks[m].unsqueeze(1), x, torch.full_like(x, 1e4))
              for m, x in feats.items()}
    model.set_modality_inputs(feats2, masks)
    torch.manual_seed(3)
    c = model.loss(*b)
    for k in a:
        assert_close(c[k], a[k], f"term {k} with garbage in missing rows", atol=1e-6)
    if CASES[name][2] and name not in ("VBPR", "BPR"):
        torch.manual_seed(4)
        d = model.loss(*b)
        assert any(not torch.equal(d[k], a[k]) for k in a), "small fan-out: no randomness"


@pytest.mark.parametrize("name", ["FREEDOM", "LATTICE", "MGCN", "LGMRec", "MMGCN"])
def test_bad_fanout_names_the_key(name):
    cls, hp, n = CASES[name]
    ei, feats, masks = make_data()
    for bad in ([], [10] * (n + 1), [10, 0][:n] + [0] * (n - 2 if n > 2 else 0)):
        with pytest.raises(ValueError, match="fanout"):
            cls(U, I, ei, feats, masks, fanout=bad, **hp)


def test_every_yaml_has_a_full_graph_fanout_default():
    for name in ("FREEDOM", "LATTICE", "MGCN", "LGMRec", "MMGCN", "VBPR", "BPR"):
        assert build_config(name)["hparams"]["fanout"] is None
        assert build_config(name, {"fanout": [5, 5]})["hparams"]["fanout"] == [5, 5]


def test_lgmrec_hyperedges_from_a_few_anchor_items_train():
    ei, feats, masks = make_data()
    cls, hp, n = CASES["LGMRec"]
    torch.manual_seed(0)
    model = cls(U, I, ei, feats, masks, fanout=[3, 3], **{**hp, "hyper_sample": 8})
    b = random_batch(U, I, 1, 16)
    torch.manual_seed(1)
    out = model.sampled_output(b[0], torch.cat([b[1], b[2]]))
    assert out.item_ids.unique().numel() <= torch.cat([b[1], b[2]]).unique().numel() + 8
    terms = model.loss(*b)
    sum(terms.values()).backward()
    assert model.hyper["image"].grad is not None and model.item_trs["text"].grad is not None
    with pytest.raises(ValueError, match="hyper_sample"):
        cls(U, I, ei, feats, masks, fanout=[3, 3], **{**hp, "hyper_sample": 0})


@pytest.mark.parametrize("name", ["FREEDOM", "MGCN", "LGMRec", "VBPR"])
def test_mrdib_over_a_sampled_backbone_equals_full_and_skips_the_full_pass(name):
    full_bb, sampled_bb = pair(name)
    hp = dict(latent_dim=8, mi_hidden=8, sub_batch=None, seed=1)
    full, sampled = MRdIB(full_bb, **hp), MRdIB(sampled_bb, **hp)
    sampled.load_state_dict(full.state_dict())
    start_epoch(full, sampled)

    def no_full_pass():
        raise AssertionError("a sampled step ran the backbone's full forward")

    sampled_bb.forward = no_full_pass
    # a batch covering under half the items: the full-graph MRdIB then also encodes the
    # batch's items only (over most of the catalogue it encodes all items, a different KL)
    b = random_batch(U, I, 1, 8)
    for step in range(2):  # the second step also trains the MI estimators
        torch.manual_seed(7 + step)
        af = full.auxiliary_loss(*b)
        lf = full.loss(*b)
        torch.manual_seed(7 + step)
        as_ = sampled.auxiliary_loss(*b)
        ls = sampled.loss(*b)
        assert set(lf) == set(ls) and {"mrdib_kl", "mrdib_unique", "mrdib_synergy"} <= set(ls)
        for k in lf:
            assert_close(ls[k], lf[k], f"{name} step {step}: {k}", atol=1e-6)
        if af is not None:
            assert_close(as_, af, "auxiliary loss", atol=1e-6)
    full.zero_grad(), sampled.zero_grad()
    sum(lf.values()).backward()
    sum(ls.values()).backward()
    grads_full = dict(full.named_parameters())
    for n, p in sampled.named_parameters():
        gf = grads_full[n].grad
        if gf is not None:
            assert p.grad is not None, n
            assert_close(dense(p.grad), gf, f"grad of {n}")


def test_mrdib_refuses_a_sampled_backbone_without_partial_output():
    from pyg_mmrec.models.i3mrec import I3MRec
    ei, feats, masks = make_data()
    backbone = I3MRec(U, I, ei, feats, masks, embedding_size=8, n_layers=2, fanout=[3, 3])
    with pytest.raises(ValueError, match="backbone: I3MRec built with fanout"):
        MRdIB(backbone)


def test_lightgcn_partial_output_matches_its_sampled_forward():
    from pyg_mmrec.models.lightgcn import LightGCN
    ei, feats, masks = make_data()
    torch.manual_seed(0)
    model = LightGCN(U, I, ei, embedding_size=8, fanout=[2, 2])
    users, items = torch.tensor([3, 1, 3]), torch.tensor([5, 0, 5])
    torch.manual_seed(4)
    u, i = model.sampled_forward(users, items)
    torch.manual_seed(4)
    out = model.sampled_output(users, items)
    assert torch.allclose(out.user[out.user_rows(users)], u)
    assert torch.allclose(out.item[out.item_rows(items)], i)


@pytest.mark.parametrize("name,fields", [("FREEDOM", ("user", "item")),
                                         ("MGCN", ("user_modal",))])
def test_small_fanout_estimates_are_unbiased(name, fields):
    # the parts that are linear in the sampled propagation: their mean over many
    # independent samples approaches the full-graph rows
    full, sampled = pair(name, 2)
    full.eval(), sampled.eval()  # no dropout / Gumbel noise: only the sampling is random
    users, items = torch.tensor([1, 3, 7]), torch.tensor([0, 5, 12, 59])
    ref = full.forward()
    def pick(out, f, rows_of):
        v = getattr(out, f)
        ids = users if f.startswith("user") else items
        rows = rows_of(out, f.startswith("user"), ids.sort().values)
        parts = list(v.values()) if isinstance(v, dict) else [v]
        return torch.cat([t[rows].reshape(-1) for t in parts])

    def partial_rows(out, is_user, ids):
        return out.user_rows(ids) if is_user else out.item_rows(ids)

    torch.manual_seed(11)
    draws = []
    with torch.no_grad():
        for _ in range(600):
            out = sampled.sampled_output(users, items)
            draws.append(torch.cat([pick(out, f, partial_rows) for f in fields]))
    stack = torch.stack(draws)
    want = torch.cat([pick(ref, f, lambda out, is_user, ids: ids) for f in fields])
    mean, se = stack.mean(0), stack.std(0) / stack.size(0) ** 0.5
    assert (stack.std(0) > 0).any(), "fan-out 2 drew nothing at random"
    assert ((mean - want).abs() <= 5 * se + 1e-5).float().mean() > 0.99


@pytest.mark.parametrize("n_mm_layers", [0, 1, 2, 3])
def test_lgmrec_modality_embeddings_are_exact_at_any_fanout(n_mm_layers):
    # E^m = (A^L [F_U; F_I]) W_m is linear in W_m: the sampled step reads its exact rows
    cls, hp, n = CASES["LGMRec"]
    ei, feats, masks = make_data()
    feats = {m: f.clone() for m, f in feats.items()}
    for m in feats:
        feats[m][~masks[m]] = 1e4  # a missing item's filled feature is never read
    hp = {**hp, "n_mm_layers": n_mm_layers}
    torch.manual_seed(0)
    full = cls(U, I, ei, feats, masks, **hp)
    sampled = cls(U, I, ei, feats, masks, fanout=[2] * n, **hp)
    sampled.load_state_dict(full.state_dict())
    full.eval(), sampled.eval()
    users, items = torch.tensor([1, 3, 7, 3]), torch.tensor([0, 5, 12, 59, 5])
    ref = full.forward()
    torch.manual_seed(11)
    out = sampled.sampled_output(users, items)
    for m in full.modalities:
        got_u = out.user_modal[m][out.user_rows(users)]
        got_i = out.item_modal[m][out.item_rows(items)]
        assert torch.isfinite(got_u).all() and torch.isfinite(got_i).all()
        assert torch.allclose(got_u, ref.user_modal[m][users], atol=1e-5), m
        assert torch.allclose(got_i, ref.item_modal[m][items], atol=1e-5), m
    # the gradient of W_m from the exact rows equals the full graph's
    w = {m: torch.randn(4, 16) for m in full.modalities}
    for model, o, rows_u, rows_i in ((full, ref, users, items),
                                     (sampled, sampled.sampled_output(users, items),
                                      None, None)):
        model.zero_grad()
        ru = o.user_rows(users) if rows_u is None else rows_u
        ri = o.item_rows(items[:4]) if rows_i is None else rows_i[:4]
        sum((o.user_modal[m][ru] * w[m]).sum() + (o.item_modal[m][ri] * w[m]).sum()
            for m in model.modalities).backward()
    for m in full.modalities:
        assert torch.allclose(full.item_trs[m].grad, sampled.item_trs[m].grad, atol=1e-4), m


@pytest.mark.parametrize("bad", [5, "10,10", [], [3, 0]])
def test_graph_free_models_check_fanout_too(bad):
    ei, feats, masks = make_data()
    for cls in (VBPR, BPR):
        with pytest.raises(ValueError, match="fanout: expected"):
            cls(U, I, ei, feats, masks, fanout=bad)


def _trainer_data():
    from pyg_mmrec.train import TrainData
    g = torch.Generator().manual_seed(0)
    rows = {"train": [], "valid": [], "test": []}
    for u in range(U):
        its = torch.randperm(I, generator=g)[:8].tolist()
        rows["valid"].append((u, its[0]))
        rows["test"].append((u, its[1]))
        rows["train"] += [(u, i) for i in its[2:]]
    ei = {k: torch.tensor(v).t().contiguous() for k, v in rows.items()}
    _, feats, masks = make_data()
    return TrainData(U, I, ei["train"], ei["valid"], ei["test"], feats, masks)


@pytest.mark.parametrize("name", ["FREEDOM_pruned", "LATTICE", "MGCN", "LGMRec", "MMGCN",
                                  "VBPR", "MRdIB"])
def test_trainer_fits_sampled_models_with_lazy_adam_and_resumes(name, tmp_path):
    from pyg_mmrec.config import train_defaults, validate_train
    from pyg_mmrec.train import Trainer, TrainingInterrupted
    from pyg_mmrec.train.optim import LazyAdam
    data = _trainer_data()
    t = train_defaults()
    t.update(dict(epochs=2, batch_size=64, lr=0.01, topk=[5, 10], metric="recall@10"))
    t = validate_train(t)

    def build():
        cls, hp, n = CASES["FREEDOM" if name == "MRdIB" else name]
        if name == "LGMRec":
            hp = {**hp, "hyper_sample": 16}
        torch.manual_seed(0)
        model = cls(U, I, data.train_edge_index, data.train_features, data.train_masks,
                    fanout=[3] * n, **hp)
        return MRdIB(model, latent_dim=8, mi_hidden=8, seed=1) if name == "MRdIB" else model

    class StopAt(Trainer):
        def on_batch_end(self, epoch, batch):
            self._n = getattr(self, "_n", 0) + 1
            if self._n == 3:
                self.request_stop()

    whole = build()
    tr = Trainer(whole, data, t, out_dir=tmp_path / "whole")
    assert isinstance(tr.optimizer, LazyAdam)
    res = tr.fit()
    assert res.epochs == 2 and all(v == v for v in res.history[-1].values()
                                   if isinstance(v, float))
    if name == "LATTICE":
        # LATTICE does not resume bit for bit from mid-epoch with or without fanout: the
        # graphs learned on the epoch's first batch are not in the checkpoint
        return
    with pytest.raises(TrainingInterrupted):
        StopAt(build(), data, t, out_dir=tmp_path / "cut").fit()
    resumed_model = build()
    resumed = Trainer(resumed_model, data, t, out_dir=tmp_path / "cut").fit(resume=True)
    for k, v in whole.state_dict().items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, resumed_model.state_dict()[k]), k
    assert resumed.valid == res.valid


@pytest.mark.parametrize("name", ["FREEDOM", "LATTICE", "MGCN", "LGMRec", "MMGCN", "VBPR"])
def test_sampled_steps_after_add_items(name):
    _, model = pair(name, 3)
    ei, feats, _ = make_data(seed=5)
    ids = model.add_items({m: feats[m][:2] for m in model.modalities})
    start_epoch(model)
    users = model.train_edge_index[0, :8]
    terms = model.loss(users, model.train_edge_index[1, :8], ids.repeat(4))
    sum(terms.values()).backward()
    assert all(torch.isfinite(v) for v in terms.values())
