"""I3-MRec's reference mode: each switch that reproduces the reference code,
checked against a hand computation, plus the fixed masks and the shipped
`--config reference` with its schedule."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import random_batch, random_modal_data
from torch_geometric.data import HeteroData

from pyg_mmrec.config import ConfigError, build_config, config_overrides, resolve_config_path
from pyg_mmrec.data.missing import MaskSet, make_masks, parse_missing_spec
from pyg_mmrec.models.i3mrec import I3MRec
from pyg_mmrec.models.i3mrec_options import I3MRecOptions
from pyg_mmrec.nn import InfoNCE, SigmoidCLUBSample
from pyg_mmrec.train.early_stopping import EarlyStopping

U, I = 40, 60


def build(dims=(12, 8), miss=0.3, seed=0, **hp):
    ei, feats, masks = random_modal_data(U, I, seed, dims, miss)
    torch.manual_seed(seed)
    return I3MRec(U, I, ei, feats, masks, **{"embedding_size": 16, "n_layers": 2, **hp})


def reference_hparams(**change):
    hp = build_config("i3mrec", config_overrides("reference", "i3mrec"))["hparams"]
    hp.update(embedding_size=16, n_layers=2, **change)
    return hp


def toy_data(I=120, U=50, seed=0):
    """Two modalities (3 items naturally miss an image); every item has a
    training interaction, the upper half of the items occur in the test split."""
    g = torch.Generator().manual_seed(seed)
    data = HeteroData()
    data["user"].num_nodes, data["item"].num_nodes = U, I
    e = ("user", "rates", "item")
    data[e].edge_index = torch.stack([torch.randint(0, U, (3 * I,), generator=g),
                                      torch.arange(3 * I) % I])
    data[e].valid_edge_index = torch.stack([torch.zeros(I // 4, dtype=torch.long),
                                            torch.arange(I // 4, I // 2)])
    data[e].test_edge_index = torch.stack([torch.zeros(I - I // 2, dtype=torch.long),
                                           torch.arange(I // 2, I)])
    for j, m in enumerate(("image", "text")):
        data["item"][f"{m}_feat"] = torch.randn(I, 4 + j, generator=g)
        mask = torch.ones(I, dtype=torch.bool)
        if j == 0:
            mask[[3, 7, 11]] = False
        data["item"][f"{m}_mask"] = mask
    data.modalities = ["image", "text"]
    return data


def hand_infonce(a, b, tau):
    """Mean over rows of -log(exp(cos(a_i, b_i)/tau) / sum_j exp(cos(a_i, b_j)/tau))."""
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    total = 0.0
    for i in range(a.size(0)):
        scores = [math.exp(float(a[i] @ b[j]) / tau) for j in range(b.size(0))]
        total += -math.log(scores[i] / sum(scores))
    return total / a.size(0)


# ---------------------------------------------------------------- InfoNCE
@pytest.mark.parametrize("num_views", [3, 7])
def test_infonce_scaling_against_a_hand_computation(num_views):
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(5, 4, generator=g) for _ in range(num_views)]
    loss = InfoNCE(temperature=0.4)
    pairs = [hand_infonce(views[a], views[b], 0.4)
             for a, b in itertools.permutations(range(num_views), 2)]
    assert float(loss.multi_view(views)) == pytest.approx(sum(pairs) / len(pairs), rel=1e-5)
    # the reference: the sum over ordered pairs plus a sixth of it
    ref = float(loss.multi_view(views, scaling="sum_plus_sixth"))
    assert ref == pytest.approx(sum(pairs) * 7 / 6, rel=1e-5)
    # 7x the mean with 2 modalities (3 views), 49x with 3 modalities (7 views)
    assert ref / float(loss.multi_view(views)) == pytest.approx({3: 7, 7: 49}[num_views], rel=1e-5)
    with pytest.raises(ValueError, match="scaling must be 'mean' or 'sum_plus_sixth'"):
        loss.multi_view(views, scaling="sum")


# ------------------------------------------------------------- the views
@pytest.mark.parametrize("num_modalities", [2, 3])
def test_view_list_is_every_non_empty_modality_subset(num_modalities):
    model = build(dims=(12, 8, 6)[:num_modalities], infonce_views="all_subsets")
    subsets = model.modality_subsets()
    assert subsets.shape == (2 ** num_modalities - 1, num_modalities)
    as_sets = {tuple(row.tolist()) for row in subsets}
    expected = {s for s in itertools.product([False, True], repeat=num_modalities) if any(s)}
    assert as_sets == expected and len(as_sets) == subsets.size(0)
    assert bool(subsets[-1].all())  # the full set is one of the views
    model.eval()
    out = model.forward()
    items = torch.arange(10)
    views = model._masked_views(out, items, model._real_mask(items))
    assert len(views) == 2 ** num_modalities - 1
    assert all(v.shape == (10, 16) for v in views)


def test_reference_infonce_term_against_a_hand_computation():
    """Zero-filled pooling (sum over the kept modalities / M), one view per
    subset, 7/6 of the sum over ordered pairs, every batch positive as a row."""
    model = build(**reference_hparams(fusion_dropout=0.0, min_info_coeff=0.0))
    model.train()
    users, pos, neg = random_batch(U, I, 1, 12)
    pos[1] = pos[0]  # a duplicate positive stays a row of its own
    out = model.forward()
    terms = model.loss(users, pos, neg, out=out)
    h = [out.item_modal[m].detach()[pos] for m in model.modalities]
    lin = model.fusion.lin.weight.detach()
    views = []
    for keep in [(1, 0), (0, 1), (1, 1)]:
        pooled = sum(k * x for k, x in zip(keep, h)) / 2
        views.append(torch.tanh(pooled @ lin.t()))
    pairs = [hand_infonce(views[a], views[b], 0.4) for a, b in itertools.permutations(range(3), 2)]
    assert float(terms["infonce"].detach()) == pytest.approx(1e-3 * 7 / 6 * sum(pairs), rel=1e-4)


def test_batch_rows_keep_duplicates(monkeypatch):
    seen = []
    original = InfoNCE.multi_view

    def record(self, views, scaling="mean", weight=None):
        # rows taking part: "unique" keeps the duplicates as rows of weight 0
        seen.append(views[0].size(0) if weight is None else int(weight.sum()))
        return original(self, views, scaling, weight)

    monkeypatch.setattr(InfoNCE, "multi_view", record)
    users, pos, neg = random_batch(U, I, 1, 32)
    pos[:4] = pos[4]
    for rows, expected in [("unique", torch.unique(pos).numel()), ("batch", 32)]:
        model = build(ib_items=rows)
        model.train()
        model.loss(users, pos, neg)
        assert seen[-1] == expected


# ---------------------------------------------------- zero-filled inputs
def test_zero_fill_sends_the_projection_bias_and_pools_every_modality():
    model = build(missing_input="zero_fill", fusion_dropout=0.0, renormalize=False)
    model.eval()
    m0 = model.modalities[0]
    missing = (~model.mask(m0)).nonzero().view(-1)
    assert missing.numel() > 0
    # the model never reads a missing row: its feature is zero
    assert torch.equal(model._x(m0)[missing], torch.zeros(missing.numel(), 12))
    assert bool(model._real_mask().all())  # every item takes part in every modality
    out = model.forward()
    h = torch.stack([out.item_modal[m] for m in model.modalities]).mean(0)
    assert torch.allclose(out.item, torch.tanh(h @ model.fusion.lin.weight.t()), atol=1e-6)
    # the masked model differs (a missing modality sends nothing there)
    masked = build(fusion_dropout=0.0, renormalize=False)
    masked.load_state_dict(model.state_dict())
    masked.eval()
    assert not torch.allclose(masked.forward().item, out.item)
    with pytest.raises(ValueError, match="missing_input: 'zero_fill' .* fusion_mode 'mean'"):
        build(missing_input="zero_fill", fusion_mode="attention")
    with pytest.raises(ValueError, match=r"missing_input: expected one of \('mask', 'zero_fill'\)"):
        build(missing_input="fill")


# ------------------------------------------------------ the CLUB estimator
def test_reference_club_estimator_shapes_squashing_and_one_negative():
    torch.manual_seed(0)
    est = SigmoidCLUBSample(6, 4, hidden_dim=32)
    assert est.mu[0].out_features == 32 and est.log_var[0].out_features == 32
    x, y = 50 * torch.randn(9, 6), torch.randn(9, 4)
    mu, log_var = est.moments(x)
    assert mu.shape == (9, 4) and log_var.shape == (9, 4)
    assert float(log_var.abs().max()) < 1.0  # squashed to (-1, 1), even for large inputs
    # the sigmoid is applied to the inputs
    xs = torch.sigmoid(x)
    assert torch.allclose(mu, est.mu(xs)) and torch.allclose(log_var, torch.tanh(
        est.log_var[2](torch.relu(est.log_var[0](xs)))))
    # the bound: one sampled negative per row (a permutation drawn in the call)
    torch.manual_seed(5)
    bound = est.mi_upper_bound(x, y)
    torch.manual_seed(5)
    perm = torch.randperm(9)
    ys, w = torch.sigmoid(y), (-log_var).exp()
    pos = -((mu - ys) ** 2 * w).sum(-1)
    negative = -((mu - ys[perm]) ** 2 * w).sum(-1)
    assert float(bound) == pytest.approx(float((pos - negative).mean() / 2), rel=1e-5)
    # the fit: sum over dimensions of (mu - y)^2 / var + log var, mean over rows
    fit = est.learning_loss(x, y)
    assert float(fit) == pytest.approx(float((((mu - ys) ** 2) / log_var.exp()
                                              + log_var).sum(-1).mean()), rel=1e-5)
    # frozen in the bound unless it goes through the estimator
    est.zero_grad()
    est.mi_upper_bound(x, y.requires_grad_()).backward()
    assert all(p.grad is None for p in est.parameters())
    est.mi_upper_bound(x, y, through_estimator=True).backward()
    assert all(p.grad is not None for p in est.parameters())


def test_per_epoch_fit_schedule_and_main_update(monkeypatch):
    model = build(**reference_hparams())
    assert isinstance(model.club[model.modalities[0]], SigmoidCLUBSample)
    # stepped by the main optimiser too: not auxiliary parameters of the trainer
    assert list(model.auxiliary_parameters()) == []
    assert model.club_fit.optimizer.param_groups[0]["lr"] == 1e-4
    users, pos, neg = random_batch(U, I, 1, 32)
    model.train()
    assert model.auxiliary_loss(users, pos, neg) is None  # nothing to fit per batch
    calls = []
    original = SigmoidCLUBSample.learning_loss

    def record(self, x, y):
        calls.append((x.shape[0], y.detach().clone(), x.detach().clone()))
        return original(self, x, y)

    monkeypatch.setattr(SigmoidCLUBSample, "learning_loss", record)
    total = model.fit_estimators()
    M = len(model.modalities)
    assert len(calls) == 10 * M  # club_fit_steps steps, one term per modality each
    assert model.club_fit.scheduler.last_epoch == 1 and total > 0
    state = model.club_fit.optimizer.state_dict()["state"]
    assert all(float(s["step"]) == 10 for s in state.values())
    # fitted on the projection W_m X^m (zero-filled inputs: every item is a candidate)
    n, y, x = calls[0]
    assert n == min(I, 2048)
    m0 = model.modalities[0]
    with torch.no_grad():
        assert torch.allclose(y, model.projections[m0](x), atol=1e-6)
    # the main loss's bound reaches the estimators
    model.zero_grad()
    sum(model.loss(users, pos, neg).values()).backward()
    assert model.club[m0].mu[0].weight.grad is not None
    # on_epoch_start fits once per epoch; the fit state survives a state_dict round trip
    monkeypatch.setattr(SigmoidCLUBSample, "learning_loss", original)
    model.on_epoch_start(1)
    again = build(**reference_hparams())
    again.load_state_dict(model.state_dict())
    assert again.club_fit.scheduler.last_epoch == 2
    assert all(float(s["step"]) == 20 for s in
               again.club_fit.optimizer.state_dict()["state"].values())


def test_our_club_regime_is_the_default_and_main_update_needs_per_epoch():
    model = build()
    assert model.club_fit is None and len(list(model.auxiliary_parameters())) > 0
    users, pos, neg = random_batch(U, I, 1, 32)
    model.train()
    assert model.auxiliary_loss(users, pos, neg) is not None
    with pytest.raises(ValueError, match="club_main_update: .* club_fit 'per_epoch'"):
        I3MRecOptions.from_flat({"club_main_update": True})
    for key, value in [("club_estimator", "sample"), ("club_fit", "epoch"),
                       ("club_fit_pairs", "x"), ("infonce_scaling", "sum"),
                       ("infonce_views", "all"), ("ib_items", "all")]:
        with pytest.raises(ValueError, match=f"{key}: expected one of"):
            I3MRecOptions.from_flat({key: value})
    with pytest.raises(ValueError, match="club_fit_steps: expected an integer >= 1"):
        I3MRecOptions.from_flat({"club_fit_steps": 0})
    with pytest.raises(ValueError, match="club_lr: expected > 0"):
        I3MRecOptions.from_flat({"club_lr": 0.0})


def test_projection_pairs_in_the_alternating_regime():
    model = build(club_fit_pairs="projection")
    model.train()
    users, pos, neg = random_batch(U, I, 1, 32)
    aux = model.auxiliary_loss(users, pos, neg)
    assert aux is not None and aux.requires_grad
    items = torch.unique(pos)
    real = model._real_mask(items)
    with torch.no_grad():
        want = torch.stack([model.club[m].learning_loss(
            model._x(m)[items[real[k]]], model.projections[m](model._x(m)[items[real[k]]]))
            for k, m in enumerate(model.modalities)]).mean()
    assert float(aux) == pytest.approx(float(want), rel=1e-5)


# ------------------------------------------------------------ fixed masks
def test_fixed_masks_are_the_same_across_seeds_and_lose_the_same_modality():
    data = toy_data(I=400, U=80)
    mods = data.modalities
    spec = "i3mrec:mm:0.3:fixed"
    assert str(parse_missing_spec(spec)) == spec
    assert str(parse_missing_spec("i3mrec:fm:0.3:eval_items=test:fixed")) == \
        "i3mrec:fm:0.3:eval_items=test:fixed"
    sets = [make_masks(spec, data, seed=s) for s in (0, 1, 7)]
    for other in sets[1:]:
        for m in mods:
            assert torch.equal(other.train[m], sets[0].train[m])
            assert torch.equal(other.eval[m], sets[0].eval[m])
    ms = sets[0]
    natural = {m: data["item"][f"{m}_mask"] for m in mods}
    lost_train = torch.stack([~ms.train[m] & natural[m] for m in mods], 1)
    lost_eval = torch.stack([~ms.eval[m] & natural[m] for m in mods], 1)
    both = lost_train.any(1) & lost_eval.any(1)
    assert int(both.sum()) > 10  # chosen for both: the same lost modality
    assert torch.equal(lost_train[both], lost_eval[both])
    assert int(lost_train.any(1).sum()) == round(0.3 * I_train(data))
    # without `fixed`: per-seed masks, and train/eval losses drawn independently
    a, b = make_masks("i3mrec:mm:0.3", data, seed=0), make_masks("i3mrec:mm:0.3", data, seed=1)
    assert not all(torch.equal(a.train[m], b.train[m]) for m in mods)
    la = torch.stack([~a.train[m] & natural[m] for m in mods], 1)
    le = torch.stack([~a.eval[m] & natural[m] for m in mods], 1)
    shared = la.any(1) & le.any(1)
    assert not torch.equal(la[shared], le[shared])
    # fm: full training, the same evaluation masks as mm
    fm = make_masks("i3mrec:fm:0.3:fixed", data, seed=3)
    assert all(bool(fm.train[m].equal(natural[m])) for m in mods)
    assert all(torch.equal(fm.eval[m], ms.eval[m]) for m in mods)


def I_train(data):
    return int(torch.unique(data[("user", "rates", "item")].edge_index[1]).numel())


def test_fixed_masks_save_load_and_errors(tmp_path):
    data = toy_data()
    ms = make_masks("i3mrec:fm:0.3:fixed", data, seed=4)
    ms.save(str(tmp_path / "masks"))
    back = MaskSet.load(str(tmp_path / "masks"))
    assert back.spec == "i3mrec:fm:0.3:fixed" and back.meta["drawn_with_seed"] == 0
    assert all(torch.equal(back.eval[m], ms.eval[m]) for m in data.modalities)
    with pytest.raises(ValueError, match="optionally followed by ':fixed'"):
        parse_missing_spec("i3mrec:fm:0.3:fixd")


# ---------------------------------------------- configuration and schedule
def test_config_reference_resolves_and_sets_the_reference_schedule():
    path = resolve_config_path("reference", "i3mrec")
    assert path.name == "i3mrec_reference.yaml"
    assert resolve_config_path("reference", "I3-MRec") == path
    cfg = build_config("i3mrec", config_overrides("reference", "i3mrec"))
    train, hp = cfg["train"], cfg["hparams"]
    assert (train["eval_every"], train["patience"], train["epochs"]) == (10, 3, 200)
    assert train["metric"] == "ndcg@10" and train["test_excludes_valid"] is False
    assert hp["infonce_scaling"] == "sum_plus_sixth" and hp["infonce_views"] == "all_subsets"
    assert hp["club_estimator"] == "reference" and hp["club_fit"] == "per_epoch"
    assert hp["club_main_update"] and hp["missing_input"] == "zero_fill"
    assert hp["club_hidden"] == 32 and hp["club_lr"] == 1e-4 and hp["club_fit_steps"] == 10
    # the defaults stay ours
    default = build_config("i3mrec", {})
    assert default["hparams"]["infonce_scaling"] == "mean"
    assert default["hparams"]["club_fit"] == "alternating"
    assert default["train"]["test_excludes_valid"] is True
    with pytest.raises(ConfigError, match="no shipped configuration 'paper' for model "
                                          "'i3mrec' \\(shipped: \\['reference'\\]\\)"):
        config_overrides("paper", "i3mrec")
    with pytest.raises(ConfigError, match="file not found: reference"):
        config_overrides("reference")


def test_patience_counts_evaluations_so_the_reference_stops_30_epochs_after_its_best():
    from pyg_mmrec.metrics import Metrics
    es = EarlyStopping(metric="ndcg@10", patience=3)
    scores = {9: 0.1, 19: 0.2, 29: 0.15, 39: 0.19, 49: 0.2}  # eval_every 10: epochs 9, 19, ...
    stopped = None
    for epoch, score in scores.items():
        es.step(epoch, Metrics({"ndcg@10": score}, 1, "valid"))
        if es.should_stop:
            stopped = epoch
            break
    assert es.best_epoch == 19 and stopped == 49  # 3 evaluations = 30 epochs without gain


def test_reference_config_trains_end_to_end_and_is_rescored(tiny_root, tmp_path, monkeypatch):
    import pyg_mmrec.metrics as metrics
    from pyg_mmrec.train import evaluate_run, run
    excluded = {}
    original = metrics.evaluate_full_ranking

    def record(user, item, target, exclude, **kw):
        excluded[kw["split"]] = len(exclude)
        return original(user, item, target, exclude, **kw)

    monkeypatch.setattr(metrics, "evaluate_full_ranking", record)
    overrides = {**config_overrides("reference", "i3mrec"), "model.embedding_size": 8,
                 "train.epochs": 2, "train.eval_every": 1, "train.batch_size": 64,
                 "train.topk": [5, 10], "train.metric": "ndcg@10"}
    res = run("i3mrec", "tiny", root=str(tiny_root), missing="i3mrec:mm:0.3:fixed", seed=1,
              overrides=overrides, out_dir=str(tmp_path / "run"), quiet=True)
    assert "ndcg@10" in res.test
    # the reference's test ranking leaves out training items only
    assert res.config["train"]["test_excludes_valid"] is False
    assert excluded == {"valid": 1, "test": 1}
    saved = MaskSet.load(str(tmp_path / "run" / "masks"))
    assert saved.spec == "i3mrec:mm:0.3:fixed"
    again = evaluate_run(str(tmp_path / "run"), root=str(tiny_root))
    assert again["test"]["ndcg@10"] == pytest.approx(res.test["ndcg@10"], abs=1e-6)
