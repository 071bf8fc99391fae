import json

import numpy as np
import pytest
import torch

from conftest import write_tiny_mmrec
from pyg_mmrec.config import ConfigError
from pyg_mmrec.models.base import Recommender, RecOutput
from pyg_mmrec.train import RunResult, run


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("PYG_MMREC_CACHE", str(tmp_path / "cache"))
    return write_tiny_mmrec(tmp_path / "data", image_mask=False)


FAST = {"epochs": 2, "topk": [5, 10], "metric": "recall@10", "batch_size": 64}


class Probe(Recommender):
    """Records the inputs it is given (features must be filled, masks switched)."""

    seen = []

    def __init__(self, num_users, num_items, train_edge_index, features, masks, dim=4):
        super().__init__(num_users, num_items, train_edge_index, features, masks)
        self.user_emb = torch.nn.Embedding(num_users, dim)
        self.item_emb = torch.nn.Embedding(num_items, dim)

    def on_inputs_changed(self):
        Probe.seen.append({m: (self._masks[m].clone(), self._features[m].clone())
                           for m in self.modalities})

    def forward(self):
        return RecOutput(user=self.user_emb.weight, item=self.item_emb.weight)


def test_run_with_callable_model_fill_and_eval_masks(root, tmp_path):
    Probe.seen = []
    res = run(Probe, "tiny", root, missing="i3mrec:mm:0.5", seed=1, fill="mean",
              overrides={**FAST, "dim": 8}, out_dir=tmp_path / "r")
    assert isinstance(res, RunResult) and res.config["hparams"] == {"dim": 8}
    assert res.test is not None and 0 <= res.test["recall@10"] <= 1
    train_in, eval_in = Probe.seen[0], Probe.seen[1]  # construction, then first validation
    for m in ("image", "text"):
        mk, x = train_in[m]
        assert (~mk).any()
        # "mean" fill: every missing row is the mean of the present rows
        assert torch.allclose(x[~mk], x[mk].mean(0).expand_as(x[~mk]), atol=1e-5)
        # validation sees the evaluation masks, with their own fill
        emk, ex = eval_in[m]
        assert (emk != mk).any() and (~emk).any()
        assert torch.allclose(ex[~emk], ex[emk].mean(0).expand_as(ex[~emk]), atol=1e-5)
    from pyg_mmrec.data.missing import MaskSet
    kept = MaskSet.load(str(tmp_path / "r" / "masks"))  # the run's exact missing entries
    assert torch.equal(kept.train["image"], train_in["image"][0])
    saved = json.loads((tmp_path / "r" / "result.json").read_text())
    assert saved["test"] == res.test and saved["missing"] == "i3mrec:mm:0.5" and saved["seed"] == 1


def test_same_seed_same_result_different_seed_differs(root):
    a = run("bpr", "tiny", root, seed=0, overrides=FAST)
    b = run("bpr", "tiny", root, seed=0, overrides=FAST)
    c = run("bpr", "tiny", root, seed=5, overrides=FAST)
    assert a.valid == b.valid and a.test == b.test
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    assert [h["loss"] for h in a.history] != [h["loss"] for h in c.history]


def test_mrdib_plugin_wraps_backbone(root):
    pytest.importorskip("pyg_mmrec.models.mrdib")
    res = run("vbpr", "tiny", root, plugin="mrdib", overrides={**FAST, "epochs": 1})
    assert res.config["plugin"] == "mrdib" and res.test is not None
    assert any(k.startswith("loss/") and k != "loss/bpr" for k in res.history[0])
    assert res.config["plugin_hparams"]["seed"] == 0  # follows the run's seed


def test_errors_before_training(root, tmp_path):
    with pytest.raises(ConfigError, match="fill: unknown strategy 'median'"):
        run("bpr", "tiny", root, fill="median")
    with pytest.raises(ConfigError, match="missing:"):
        run("bpr", "tiny", root, missing="nope:0.1")
    with pytest.raises(ConfigError, match="K=50"):
        run("bpr", "tiny", root, overrides={"topk": [50]})
    with pytest.raises(ConfigError, match="device"):
        run("bpr", "tiny", root, device="tpu")
    out = tmp_path / "r"
    run("bpr", "tiny", root, overrides=FAST, out_dir=out, test=False)
    assert json.loads((out / "result.json").read_text())["test"] is None
    with pytest.raises(FileExistsError, match="already holds a run"):
        run("bpr", "tiny", root, overrides=FAST, out_dir=out)
    with pytest.raises(ConfigError, match="configuration differs.*train.lr"):
        run("bpr", "tiny", root, overrides={**FAST, "lr": 0.5}, out_dir=out, resume=True)
    # resuming a finished run only evaluates the test split at the selected state
    res = run("bpr", "tiny", root, overrides=FAST, out_dir=out, resume=True)
    assert res.test is not None
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
