import itertools

import pytest
import torch
import torch.nn.functional as F

from pyg_mmrec.models.base import Recommender, RecOutput
from pyg_mmrec.models.mrdib import MRdIB, MRdIBOutput

pytest.importorskip("pyg_mmrec.nn.mi_estimators")

NU, NI = 12, 20
ZERO = dict(kl_weight=0.0, unique_weight=0.0, redundant_weight=0.0, synergy_weight=0.0)


class Toy(Recommender):
    """A tiny multimodal backbone: ID embeddings plus one projection per
    modality (the ``h_m``), with dropout so that it consumes the global RNG."""

    def __init__(self, num_users, num_items, train_edge_index, features, masks, dim=8,
                 dropout=0.2, user_modal=False, equal_dims=False):
        super().__init__(num_users, num_items, train_edge_index, features, masks)
        self.user_emb = torch.nn.Embedding(num_users, dim)
        self.item_emb = torch.nn.Embedding(num_items, dim)
        w = {m: dim + (0 if equal_dims else i) for i, m in enumerate(features)}
        self.proj = torch.nn.ModuleDict({m: torch.nn.Linear(x.size(1), w[m]) for m, x in features.items()})
        self.back = torch.nn.ModuleDict({m: torch.nn.Linear(w[m], dim) for m in features})
        self.user_modal_emb = (torch.nn.ModuleDict({m: torch.nn.Embedding(num_users, dim + i)
                                                    for i, m in enumerate(features)})
                               if user_modal else None)
        self.dropout = dropout

    def forward(self):
        h = {m: self.proj[m](self.feature(m)) for m in self.modalities}
        item = self.item_emb.weight
        for m in self.modalities:
            item = item + self.back[m](h[m]) * self.mask(m).unsqueeze(-1)
        item = F.dropout(item, self.dropout, self.training)
        um = ({m: e.weight for m, e in self.user_modal_emb.items()} if self.user_modal_emb else {})
        return RecOutput(self.user_emb.weight, item, item_modal=h, user_modal=um)


def make_inputs(n_mod=2, missing=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    names = ["text", "image", "audio"][:n_mod]
    feats = {m: torch.randn(NI, 5 + i, generator=g) for i, m in enumerate(names)}
    masks = {m: torch.rand(NI, generator=g) > (0.3 if missing else -1.0) for m in names}
    if missing:
        masks[names[0]][:3] = False
        for m in names:
            masks[m][3] = False  # item 3 has no modality at all
    ei = torch.stack([torch.randint(0, NU, (60,), generator=g), torch.randint(0, NI, (60,), generator=g)])
    return ei, feats, masks


def toy(n_mod=2, missing=True, seed=0, **kw):
    ei, feats, masks = make_inputs(n_mod, missing)
    torch.manual_seed(seed)
    return Toy(NU, NI, ei, feats, masks, **kw)


def batch(step, B=16, n_neg=None):
    g = torch.Generator().manual_seed(100 + step)
    u = torch.randint(0, NU, (B,), generator=g)
    p = torch.randint(0, NI, (B,), generator=g)
    n = torch.randint(0, NI, (B,) if n_neg is None else (B, n_neg), generator=g)
    return u, p, n


def train(model, steps=5):
    """A miniature of the trainer's step: estimator first, then the main loss."""
    aux = list(model.auxiliary_parameters())
    ids = {id(p) for p in aux}
    opt = torch.optim.Adam([p for p in model.parameters() if id(p) not in ids], lr=1e-2)
    aux_opt = torch.optim.Adam(aux, lr=1e-2) if aux else None
    model.train()
    for s in range(steps):
        u, p, n = batch(s)
        if aux_opt is not None:
            aux_opt.zero_grad(set_to_none=True)
            a = model.auxiliary_loss(u, p, n)
            if a is not None:
                a.backward()
                aux_opt.step()
        opt.zero_grad(set_to_none=True)
        sum(model.loss(u, p, n).values()).backward()
        opt.step()
    model.eval()
    return model.embeddings_for_eval()


@pytest.mark.parametrize("off", [dict(enabled=False), ZERO])
def test_switched_off_trains_exactly_as_bare_backbone(off):
    bare_u, bare_i = train(toy())
    bare_rng = torch.get_rng_state()

    backbone = toy()
    state = torch.get_rng_state()
    model = MRdIB(backbone, **off)
    assert torch.equal(torch.get_rng_state(), state)  # wrapping consumed no global randomness
    u, i = train(model)
    assert torch.equal(u, bare_u) and torch.equal(i, bare_i)
    assert torch.equal(u @ i.T, bare_u @ bare_i.T)
    assert torch.equal(torch.get_rng_state(), bare_rng)  # same dropout stream all along
    assert not model.active


def test_enabled_does_not_touch_backbone_init_or_rng():
    ref = toy()
    state = torch.get_rng_state()
    backbone = toy()
    model = MRdIB(backbone, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    for (k, a), (_, b) in zip(ref.state_dict().items(), model.backbone.state_dict().items()):
        assert torch.equal(a, b), k
    # the plug-in's own init depends on its seed only
    other = MRdIB(toy(), seed=3)
    assert torch.equal(model.encoder.weight, other.encoder.weight)
    assert not torch.equal(MRdIB(toy(), seed=4).encoder.weight, model.encoder.weight)


def test_enabled_adds_terms_gradients_and_changes_scores(device):
    model = MRdIB(toy(), latent_dim=6).to(device).train()
    u, p, n = (t.to(device) for t in batch(0))
    terms = model.loss(u, p, n)
    assert {"mrdib_kl", "mrdib_unique", "mrdib_redundant", "mrdib_synergy"} <= set(terms)
    assert all(torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()
    assert model.encoder.weight.grad[0].abs().sum() > 0  # text's encoder
    assert model.user_weight.grad[-1].abs().sum() > 0    # the joint user code U_J
    assert model.backbone.proj["image"].weight.grad.abs().sum() > 0
    # the main loss never trains the MI estimator (it would cheat the bound)
    assert all(q.grad is None for q in model.estimators.parameters())
    model.eval()
    eu, ei = model.embeddings_for_eval()
    bu, bi = model.backbone.embeddings_for_eval()
    assert eu.shape == (NU, bu.size(1) + 6) and ei.shape == (NI, bi.size(1) + 6)
    assert torch.equal(eu[:, : bu.size(1)], bu) and torch.equal(ei[:, : bi.size(1)], bi)
    out = model()
    assert isinstance(out, MRdIBOutput) and torch.equal(out.item, ei)
    # the trainer may hand back the wrapper's own output: the loss reuses its backbone pass
    model.train()
    t1 = model.loss(u, p, n, out=model())
    assert set(t1) == set(terms)


def test_auxiliary_loss_trains_only_the_estimators():
    model = MRdIB(toy(), redundant_weight=1e-2).train()
    ids = {id(q) for q in model.auxiliary_parameters()}
    assert ids == {id(q) for q in model.estimators.parameters()}
    u, p, n = batch(0)
    assert model.auxiliary_loss(u, p, n) is None  # no codes yet (and no backbone pass)
    model.loss(u, p, n)
    a = model.auxiliary_loss(u, p, n)  # learns on the detached codes of that main step
    a.backward()
    assert all(q.grad is None for q in model.backbone.parameters())
    assert all(q.grad is None for q in model.encoder.parameters())
    assert any(q.grad is not None and q.grad.abs().sum() > 0 for q in model.estimators.parameters())
    # switched off -> the estimator is not an auxiliary parameter at all
    assert list(MRdIB(toy(), redundant_weight=0.0).auxiliary_parameters()) == []


def test_three_modalities_joint_code_and_pairs():
    model = MRdIB(toy(n_mod=3), latent_dim=4).eval()
    assert model.code_modalities == ["text", "image", "audio"]
    assert set(model.estimators) == {"text__image", "text__audio", "image__audio"}
    g = torch.Generator().manual_seed(0)
    z = {m: torch.randn(5, 4, generator=g) for m in model.code_modalities}
    pres = {"text": torch.tensor([1, 1, 0, 0, 1]).bool(), "image": torch.tensor([1, 0, 1, 0, 1]).bool(),
            "audio": torch.tensor([1, 1, 1, 0, 0]).bool()}
    out = model._joint(torch.stack([z[m] for m in model.code_modalities], 1),
                       torch.stack([pres[m] for m in model.code_modalities], 1))
    for i in range(5):
        here = [m for m in model.code_modalities if pres[m][i]]
        if not here:
            assert torch.equal(out[i], torch.zeros(4))  # no modality -> no joint code
            continue
        add = torch.stack([z[m][i] for m in here]).mean(0)
        pairs = list(itertools.combinations(here, 2))
        mul = (torch.stack([z[a][i] * z[b][i] for a, b in pairs]).mean(0) if pairs else torch.zeros(4))
        ref = add + model.lin_synergy(mul) if pairs else add
        assert torch.allclose(out[i], ref, atol=1e-6)
    u, i = train(MRdIB(toy(n_mod=3), latent_dim=4, redundant_weight=1e-2), steps=3)
    assert torch.isfinite(u @ i.T).all()


@pytest.mark.parametrize("B", [4, 64])  # batch-items path and all-items path
def test_missing_modality_contributes_no_code(B):
    """Changing h_m of items whose modality m is missing changes no MRdIB term
    and no score: those rows are skipped, not encoded as zeros."""
    backbone = toy(dropout=0.0)
    model = MRdIB(backbone, latent_dim=4, stochastic=False).train()
    missing = ~backbone.mask("text")
    assert missing.any()
    out = backbone()
    out2 = RecOutput(out.user, out.item, dict(out.item_modal), out.user_modal)
    out2.item_modal["text"] = out.item_modal["text"] + 50.0 * missing.unsqueeze(-1)
    u, p, n = batch(1, B=B)
    u, p = u[:B], p[:B]
    p[0], n[0] = 0, 1  # item 0 has no text (made missing in make_inputs)
    for name in ("mrdib_kl", "mrdib_unique", "mrdib_synergy", "mrdib_redundant"):
        model._noise_step.zero_()
        a = model.loss(u, p, n, out=out)[name]
        model._noise_step.zero_()
        b = model.loss(u, p, n, out=out2)[name]
        assert torch.allclose(a, b, atol=1e-6), name
    c1, c2 = model._codes(out, None, False), model._codes(out2, None, False)
    j1, j2 = model._joint(c1[0], c1[3]), model._joint(c2[0], c2[3])
    assert torch.allclose(j1, j2, atol=1e-6)
    assert torch.equal(j1[3], torch.zeros(4))  # item 3 has no modality


def test_codes_of_a_subset_equal_rows_of_all_codes():
    """Encoding only the batch's items (the training path) gives exactly the
    rows of encoding all items (the evaluation path), unequal widths included."""
    for equal in (True, False):
        model = MRdIB(toy(n_mod=3, equal_dims=equal), latent_dim=4).train()
        out = model.backbone()
        items = torch.tensor([0, 3, 5, 19])
        full = model._codes(out, None, sample=False)
        part = model._codes(out, items, sample=False)
        for x, y in zip(full, part):
            assert torch.allclose(x[items], y, atol=1e-6)
    model._generator(torch.device("cpu")).manual_seed(0)
    z, mu, logvar, _ = model._codes(out, None, sample=True)
    assert not torch.allclose(z, mu) and torch.isfinite(z).all()


def test_masks_follow_set_modality_inputs():
    ei, feats, masks = make_inputs()
    model = MRdIB(Toy(NU, NI, ei, feats, masks))
    none = {m: torch.zeros(NI, dtype=torch.bool) for m in feats}
    model.set_modality_inputs(feats, none)
    assert not model.mask("text").any() and not model.backbone.mask("image").any()
    model.eval()
    _, i = model.embeddings_for_eval()
    assert torch.equal(i[:, -model.latent_dim:], torch.zeros(NI, model.latent_dim))
    # no item has any code: only the backbone's loss and the (trivial) joint term remain
    model.train()
    terms = model.loss(*batch(0))
    # (the redundancy term stays, at exactly 0: no pair has two rows with both codes)
    assert terms["mrdib_redundant"].item() == 0.0 and terms["mrdib_unique"].item() == 0.0
    assert torch.isfinite(sum(terms.values()))


def test_redundancy_estimate_drops_when_codes_become_independent():
    model = MRdIB(toy(), latent_dim=4, redundant_weight=1e-2)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 4, generator=g)
    dependent = x @ torch.randn(4, 4, generator=g) + 0.1 * torch.randn(256, 4, generator=g)
    independent = dependent[torch.randperm(256, generator=g)]  # same marginal, no dependence
    present = torch.ones(256, 2, dtype=torch.bool)
    opt = torch.optim.Adam(model.auxiliary_parameters(), lr=1e-2)

    def fit_and_estimate(y):
        for _ in range(120):
            model._redundancy(torch.stack([x, y], 1), present)
            opt.zero_grad()
            model.auxiliary_loss(*batch(0)).backward()
            opt.step()
        with torch.no_grad():
            return model._redundancy(torch.stack([x, y], 1), present).item()

    dep = fit_and_estimate(dependent)
    ind = fit_and_estimate(independent)
    print(f"CLUB estimate: dependent {dep:.3f}, independent {ind:.3f}")
    assert dep > 1.0
    assert ind < 0.25 * dep


def test_redundancy_term_pushes_codes_apart():
    """One gradient step on the redundancy term alone lowers the estimate."""
    model = MRdIB(toy(), latent_dim=4)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(128, 4, generator=g)
    y = (x + 0.1 * torch.randn(128, 4, generator=g)).requires_grad_(True)
    present = torch.ones(128, 2, dtype=torch.bool)
    opt = torch.optim.Adam(model.estimators.parameters(), lr=1e-2)
    for _ in range(80):
        opt.zero_grad()
        model.estimators["text__image"].learning_loss(x, y).backward()
        opt.step()
    before = model._redundancy(torch.stack([x, y], 1), present)
    before.backward()
    with torch.no_grad():
        after = model._redundancy(torch.stack([x, y - 0.5 * y.grad], 1), present)
    assert after < before


def test_multiple_negatives():
    model = MRdIB(toy()).train()
    u, p, n = batch(0, n_neg=3)
    terms = model.loss(u, p, n)
    assert "mrdib_synergy" in terms and torch.isfinite(sum(terms.values()))


def test_ablation_without_synergy_scores_are_the_backbones():
    model = MRdIB(toy(), synergy_weight=0.0).eval()
    assert model.active and not model.uses_joint
    eu, ei = model.embeddings_for_eval()
    bu, bi = model.backbone.embeddings_for_eval()
    assert torch.equal(eu, bu) and torch.equal(ei, bi)
    assert "mrdib_synergy" not in model.train().loss(*batch(0))


def test_user_modal_is_used_when_present():
    model = MRdIB(toy(user_modal=True))
    assert model.user_in == [8, 9, 8]  # user_modal['text'], user_modal['image'], e_u (joint)
    terms = model.train().loss(*batch(0))
    sum(terms.values()).backward()
    assert model.backbone.user_modal_emb["image"].weight.grad.abs().sum() > 0


def test_mine_estimator_runs():
    model = MRdIB(toy(), mi_estimator="mine", redundant_weight=1e-2)
    u, i = train(model, steps=3)
    assert torch.isfinite(u @ i.T).all()


class NoModal(Recommender):
    uses_features = False

    def __init__(self):
        super().__init__(NU, NI, torch.zeros(2, 1, dtype=torch.long))
        self.e = torch.nn.Embedding(NU + NI, 4)

    def forward(self):
        return RecOutput(self.e.weight[:NU], self.e.weight[NU:])


def test_bad_arguments():
    with pytest.raises(ValueError, match="item_modal"):
        MRdIB(NoModal())
    assert MRdIB(NoModal(), enabled=False).embeddings_for_eval()[0].shape == (NU, 4)
    with pytest.raises(ValueError, match="kl_weight"):
        MRdIB(toy(), kl_weight=-1.0)
    with pytest.raises(ValueError, match="mi_estimator"):
        MRdIB(toy(), mi_estimator="nwj")
    with pytest.raises(ValueError, match="score"):
        MRdIB(toy(), score="l2")
    with pytest.raises(ValueError, match="backbone"):
        MRdIB(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="in_channels"):
        MRdIB(toy(), in_channels={"text": 3})


def test_trainer_runs_the_plugin_end_to_end():
    """``run(..., plugin="mrdib")`` builds MRdIB(backbone, **configs/mrdib.yaml),
    trains the estimator in alternation and evaluates the wrapped scores."""
    from torch_geometric.data import HeteroData

    from pyg_mmrec.train import run

    ei, feats, masks = make_inputs()
    data = HeteroData()
    data["user"].num_nodes, data["item"].num_nodes = NU, NI
    data.modalities = list(feats)
    for m in feats:
        data["item"][f"{m}_feat"], data["item"][f"{m}_mask"] = feats[m], masks[m]
    g = torch.Generator().manual_seed(5)
    store = data["user", "rates", "item"]
    store.edge_index = ei
    store.valid_edge_index = torch.stack([torch.arange(NU), torch.randint(0, NI, (NU,), generator=g)])
    store.test_edge_index = torch.stack([torch.arange(NU), torch.randint(0, NI, (NU,), generator=g)])
    ov = {"train.epochs": 2, "train.batch_size": 16, "train.topk": [5], "train.metric": "recall@5",
          "train.checkpoint_every": 0, "plugin.latent_dim": 4, "plugin.sub_batch": 8}
    res = run(Toy, data, plugin="mrdib", overrides=ov, seed=0)
    assert res.config["plugin"] == "mrdib" and res.config["plugin_hparams"]["latent_dim"] == 4
    assert {"mrdib_kl", "mrdib_unique", "mrdib_redundant", "mrdib_synergy"} <= {
        k.split("/", 1)[1] for h in res.history for k in h if k.startswith("loss/")}
    assert res.test is not None and 0.0 <= res.test["recall@5"] <= 1.0


def test_gate_starts_closed_and_opens_with_training():
    model = MRdIB(toy(), latent_dim=4).eval()
    eu, ei = model.embeddings_for_eval()
    bu, bi = model.backbone.embeddings_for_eval()
    assert torch.equal(eu @ ei.T, bu @ bi.T)  # gamma = 0: the backbone's ranking exactly
    train(model, steps=5)
    assert model.gate.item() != 0.0
    eu, ei = model.embeddings_for_eval()
    bu, bi = model.backbone.embeddings_for_eval()
    joint = eu[:, -4:] @ ei[:, -4:].T
    assert torch.allclose(eu @ ei.T, bu @ bi.T + joint, atol=1e-5)
    assert joint.abs().max() <= model.gate.abs().item() + 1e-5  # |gamma * cos| <= |gamma|


def test_every_amortises_terms_and_estimator_step():
    """every=n: the terms (scaled by n) and the estimator step run on one batch
    in n; the other batches cost exactly the bare backbone's loss."""
    one, three = MRdIB(toy(dropout=0.0), every=1).train(), MRdIB(toy(dropout=0.0), every=3).train()
    u, p, n = batch(0)
    t1 = one.loss(u, p, n)
    for step in range(6):
        plugin_step = step % 3 == 0
        # (no estimator step before the first plug-in step: no codes yet)
        assert (three.auxiliary_loss(u, p, n) is not None) == (plugin_step and step > 0)
        t3 = three.loss(u, p, n)
        assert ("mrdib_kl" in t3) == plugin_step
        if step == 0:
            for k in ("mrdib_kl", "mrdib_unique", "mrdib_synergy", "mrdib_redundant"):
                assert torch.allclose(t3[k], 3 * t1[k], rtol=1e-5), k
        if not plugin_step:
            assert set(t3) == set(three.backbone.loss(u, p, n))
    with pytest.raises(ValueError, match="every"):
        MRdIB(toy(), every=0)


def test_backbone_grad_zero_leaves_the_backbone_training_untouched():
    """backbone_grad=0: the plug-in is a head on the backbone's (detached)
    representations: the backbone trains bit-for-bit as the bare one while the
    plug-in's own parameters (and the scores) change."""
    bare = toy()
    train(bare)
    model = MRdIB(toy(), backbone_grad=0.0, latent_dim=4)
    train(model)
    for (k, a), (_, b) in zip(bare.state_dict().items(), model.backbone.state_dict().items()):
        assert torch.equal(a, b), k
    assert model.gate.item() != 0.0
    with pytest.raises(ValueError, match="backbone_grad"):
        MRdIB(toy(), backbone_grad=1.5)


@pytest.mark.parametrize("score,batch_items", [("cos", False), ("cos", True), ("dot", True)])
def test_unique_and_synergy_terms_match_a_per_triple_reference(score, batch_items):
    """The batched terms equal a plain loop over (user, i+, i-) triples, so
    every code is scored against its own triple's user (and pairs skip the
    modalities missing for either item)."""
    model = MRdIB(toy(dropout=0.0), latent_dim=4, stochastic=False, kl_weight=0.0,
                  redundant_weight=0.0, unique_weight=1.0, synergy_weight=1.0, score=score).train()
    with torch.no_grad():
        model.gate.fill_(0.7)
    if batch_items:  # pretend a large catalogue: encode only the batch's unique items
        model.num_items = 10 ** 6
    u, p, n = batch(2, B=12, n_neg=2)
    out = model.backbone()
    terms = model.loss(u, p, n, out=out)
    Z, _, _, P = model._codes(out, None, sample=False)
    J = model._joint(Z, P)
    M, tau = len(model.code_modalities), (model.temperature if score == "cos" else 1.0)
    unit = (lambda x: F.normalize(x, dim=-1)) if score == "cos" else (lambda x: x)
    per_m = [[] for _ in range(M)]
    bb, emergent = [], []
    for b in range(u.numel()):
        eu = out.user[u[b]]
        c = [unit(eu @ model.user_weight[j, :eu.numel()]) for j in range(M + 1)]
        for q in n[b]:
            margins = []
            for m in range(M):
                if P[p[b], m] and P[q, m]:
                    d = (c[m] @ unit(Z[p[b], m]) - c[m] @ unit(Z[q, m])) / tau
                    per_m[m].append(F.softplus(-d))
                    margins.append(d)
            dj = c[M] @ unit(J[p[b]]) - c[M] @ unit(J[q])
            d_bb = eu @ out.item[p[b]] - eu @ out.item[q]
            bb.append(F.softplus(-(d_bb + model.gate * dj)))
            if margins:
                emergent.append(F.softplus(max(margins).detach() - dj / tau))
    ref_u = torch.stack([torch.stack(x).mean() for x in per_m if x]).mean()
    ref_s = torch.stack(bb).mean() + torch.stack(emergent).mean()
    assert torch.allclose(terms["mrdib_unique"], ref_u, atol=1e-5)
    assert torch.allclose(terms["mrdib_synergy"], ref_s, atol=1e-5)


def test_negative_redundancy_estimate_is_not_rewarded():
    """MI >= 0: a negative CLUB estimate (the estimator lagging the codes)
    adds 0 and no gradient, so the codes cannot run away from the estimator."""
    model = MRdIB(toy(dropout=0.0), latent_dim=4, kl_weight=0.0, unique_weight=0.0,
                  synergy_weight=0.0, redundant_weight=1.0).train()
    u, p, n = batch(0)
    model.mi_estimate = lambda key, x, y, weight=None: -(x * y).sum() ** 2 - 1.0  # always negative
    t = model.loss(u, p, n)
    assert t["mrdib_redundant"].item() == 0.0
    t["mrdib_redundant"].backward()
    assert model.encoder.weight.grad is None or model.encoder.weight.grad.abs().sum() == 0
