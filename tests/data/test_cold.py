"""The new-item (cold-items) protocol: the split, the run, the evaluation."""
import json

import numpy as np
import pytest
import torch

from conftest import write_tiny_mmrec
from pyg_mmrec.config import ConfigError
from pyg_mmrec.data import MMRecDataset
from pyg_mmrec.data.cold import make_cold_split
from pyg_mmrec.train import evaluate_run, run
from pyg_mmrec.train.cold import ColdEval, fill_new_item_features, new_item_candidates

FAST = {"epochs": 2, "topk": [5, 10], "metric": "recall@10", "batch_size": 64}


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("PYG_MMREC_CACHE", str(tmp_path / "cache"))
    return write_tiny_mmrec(tmp_path / "data", num_users=40, num_items=60, per_user=12)


def _pairs(ei):
    return set(map(tuple, ei.t().tolist()))


def test_cold_split_moves_every_training_interaction_of_the_new_items(root):
    data = MMRecDataset(str(root), "tiny")[0]
    store = data["user", "rates", "item"]
    s = make_cold_split(data, 0.25, seed=4)
    assert s.num_cold == 15 and s.num_warm == 45
    assert torch.equal(s.cold_items, s.cold_items.sort().values)
    assert torch.equal(make_cold_split(data, 0.25, seed=4).cold_items, s.cold_items)
    assert not torch.equal(make_cold_split(data, 0.25, seed=5).cold_items, s.cold_items)
    # internal order: warm items first (dataset order), then the new ones
    assert torch.equal(s.order[s.num_warm:], s.cold_items)
    assert torch.equal(s.order.sort().values, torch.arange(60))
    # training edges only touch warm items; nothing lost, nothing invented
    assert int(s.train_edge_index[1].max()) < s.num_warm
    public = [torch.stack([e[0], s.order[e[1]]]) for e in
              (s.train_edge_index, s.valid_edge_index, s.test_edge_index)]
    before = _pairs(store.edge_index) | _pairs(store.valid_edge_index) | \
        _pairs(store.test_edge_index)
    assert _pairs(public[0]) | _pairs(public[1]) | _pairs(public[2]) == before
    assert s.dropped_users == 0
    is_cold = torch.isin(store.edge_index[1], s.cold_items)
    moved = store.edge_index[:, is_cold]
    assert s.moved == moved.size(1) > 0
    assert _pairs(public[0]) == _pairs(store.edge_index[:, ~is_cold])
    # per user, half of the moved interactions to validation, half to test
    new_valid = _pairs(public[1]) - _pairs(store.valid_edge_index)
    new_test = _pairs(public[2]) - _pairs(store.test_edge_index)
    assert new_valid | new_test == _pairs(moved) and not new_valid & new_test
    for u in moved[0].unique().tolist():
        n = int((moved[0] == u).sum())
        nv = sum(1 for (a, _) in new_valid if a == u)
        assert nv in (n // 2, (n + 1) // 2)


def test_cold_split_bad_share(root):
    data = MMRecDataset(str(root), "tiny")[0]
    for share in (0, 1.0, -0.1, True, "0.2"):
        with pytest.raises(ValueError, match="cold_items: expected a share in"):
            make_cold_split(data, share)
    with pytest.raises(ValueError, match="expected at least one new"):
        make_cold_split(data, 0.001)


def test_new_items_fill_rule():
    x = {"a": torch.tensor([[1.0, 2.0], [5.0, 5.0]])}
    mk = {"a": torch.tensor([True, False])}
    ref = {"a": torch.tensor([[2.0, 0.0], [4.0, 2.0], [9.0, 9.0]])}
    rmk = {"a": torch.tensor([True, True, False])}
    assert fill_new_item_features(x, mk, ref, rmk, "zero")["a"].tolist() == [[1, 2], [0, 0]]
    for rule in ("mean", "propagate"):  # a new item has no neighbour: the present mean
        assert fill_new_item_features(x, mk, ref, rmk, rule)["a"].tolist() == [[1, 2], [3, 1]]


def test_candidates_are_a_seeded_order_of_the_new_items():
    c = ColdEval(10, 16, {}, {}, seed=2)
    a = new_item_candidates(c)
    assert sorted(a.tolist()) == list(range(10, 16))
    assert torch.equal(a, new_item_candidates(ColdEval(10, 16, {}, {}, seed=2)))


@pytest.mark.parametrize("model,plugin,missing", [("vbpr", None, "i3mrec:mm:0.5"),
                                                  ("lightgcn", None, "natural"),
                                                  ("freedom", "mrdib", "natural")])
def test_cold_run_trains_on_warm_items_and_reports_new_item_metrics(root, tmp_path, model,
                                                                    plugin, missing):
    out = tmp_path / "run"
    res = run(model, "tiny", root, missing=missing, seed=1, plugin=plugin, overrides=FAST,
              out_dir=out, cold_items=0.25)
    for split in (res.valid, res.test):
        assert {"recall@10", "cold/recall@10", "cold/ndcg@5"} <= set(split)
        assert all(0 <= v <= 1 for v in split.values())
    assert res.config["cold_items"] == 0.25
    saved = np.load(out / "masks" / "cold_items.npy")
    meta = json.loads((out / "masks" / "cold.json").read_text())
    assert saved.size == meta["num_cold"] == 15
    logged = json.loads((out / "result.json").read_text())
    assert logged["cold_items"] == 0.25
    again = evaluate_run(out, root=root)
    for split in ("valid", "test"):
        for k, v in logged[split].items():
            assert again[split][k] == pytest.approx(v, abs=1e-12)
    # a changed split is refused (the data changed since the run)
    np.save(out / "masks" / "cold_items.npy", np.roll(saved, 1))
    with pytest.raises(ValueError, match="saved new items differ"):
        evaluate_run(out, root=root, splits=("valid",))


def test_cold_model_never_sees_new_items(root):
    seen = {}

    from pyg_mmrec.models import get_model_class
    vbpr = get_model_class("vbpr")

    class Spy(vbpr):
        def __init__(self, num_users, num_items, train_edge_index, features, masks, **kw):
            seen.update(num_items=num_items, max_item=int(train_edge_index[1].max()),
                        rows={m: x.size(0) for m, x in features.items()})
            super().__init__(num_users, num_items, train_edge_index, features, masks, **kw)

    Spy.supports_new_items = True
    res = run(Spy, "tiny", root, seed=2, overrides=FAST, cold_items=0.25)
    assert seen["num_items"] == 45 and seen["max_item"] < 45
    assert seen["rows"] == {"image": 45, "text": 45}
    assert "cold/recall@10" in res.test


def test_selection_on_new_item_metric_and_errors(root):
    res = run("vbpr", "tiny", root, seed=1, cold_items=0.25,
              overrides={**FAST, "metric": "cold/recall@10"})
    best = max(h["valid"]["cold/recall@10"] for h in res.history if "valid" in h)
    assert res.valid["cold/recall@10"] == best
    with pytest.raises(ConfigError, match="new-item metrics exist only under"):
        run("vbpr", "tiny", root, overrides={**FAST, "metric": "cold/recall@10"})
    with pytest.raises(ConfigError, match="cold_items: expected a share"):
        run("vbpr", "tiny", root, overrides=FAST, cold_items=1.5)
    with pytest.raises(ConfigError, match="K=10 is larger than the number of new items"):
        run("vbpr", "tiny", root, overrides=FAST, cold_items=0.1)
