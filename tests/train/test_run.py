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
    # the epoch budget alone may change: a larger one trains on from the cap ...
    res = run("bpr", "tiny", root, overrides={**FAST, "epochs": 3}, out_dir=out, resume=True)
    assert res.epochs == 3 and len((out / "metrics.jsonl").read_text().splitlines()) == 3
    assert "epochs: 3" in (out / "config.yaml").read_text()
    # ... so does more patience (the run ended at its cap: nothing more to train)
    res = run("bpr", "tiny", root, overrides={**FAST, "epochs": 3, "patience": 60}, out_dir=out,
              resume=True)
    assert res.epochs == 3 and "patience: 60" in (out / "config.yaml").read_text()
    # ... and one below what was trained is refused
    with pytest.raises(ConfigError, match="already trained 3 epoch"):
        run("bpr", "tiny", root, overrides={**FAST, "epochs": 1, "patience": 60}, out_dir=out,
            resume=True)


def _tree_bytes(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("model,plugin,missing", [("freedom", None, "i3mrec:fm:0.5"),
                                                  ("vbpr", "mrdib", "natural")])
def test_evaluate_run_rescores_the_selected_epoch(root, tmp_path, model, plugin, missing):
    from pyg_mmrec.train import evaluate_run, load_checkpoint, save_checkpoint
    out = tmp_path / "r"
    res = run(model, "tiny", root, missing=missing, seed=2, plugin=plugin,
              overrides={**FAST, "epochs": 4}, out_dir=out)
    # spoil the last state: re-scoring must use the state of the selected epoch
    ckpt = load_checkpoint(out / "checkpoint.pt")
    ckpt["model"] = {k: torch.zeros_like(v) if torch.is_tensor(v) else v
                     for k, v in ckpt["model"].items()}
    save_checkpoint(out / "checkpoint.pt", ckpt)
    before = _tree_bytes(out)

    ev = evaluate_run(out, root=root, topk=[3, 5, 10])
    assert _tree_bytes(out) == before  # read only
    for split, logged in (("valid", res.valid), ("test", res.test)):
        for k in ("recall@5", "recall@10", "ndcg@5", "ndcg@10"):
            assert ev[split][k] == logged[k]
        assert 0 <= ev[split]["recall@3"] <= ev[split]["recall@5"]
    assert ev["config"]["train"]["topk"] == [3, 5, 10] and ev["best_epoch"] == res.best_epoch
    assert ev["config"]["seed"] == 2 and ev["config"]["missing"] == missing
    only_valid = evaluate_run(out, root=root, splits=("valid",))
    assert "test" not in only_valid and only_valid["valid"] == res.valid


def test_evaluate_run_refuses_what_it_cannot_reproduce_honestly(root, tmp_path):
    from pyg_mmrec.train import evaluate_run
    out = tmp_path / "r"
    run("freedom", "tiny", root, missing="i3mrec:fm:0.5", overrides=FAST, out_dir=out,
        test=False)  # a grid candidate that was not selected
    with pytest.raises(ValueError, match="test split of this run was never read"):
        evaluate_run(out, root=root, topk=[3])
    assert evaluate_run(out, root=root, splits=("valid",), topk=[3])["valid"]["recall@3"] >= 0
    with pytest.raises(ValueError, match="splits"):
        evaluate_run(out, root=root, splits=("train",))
    with pytest.raises(ConfigError, match="topk"):
        evaluate_run(out, root=root, splits=("valid",), topk=[0])
    with pytest.raises(ConfigError, match="K=64"):
        evaluate_run(out, root=root, splits=("valid",), topk=[64])

    # a logged figure the code no longer reproduces
    result = out / "result.json"
    logged = json.loads(result.read_text())
    logged["valid"]["recall@10"] += 0.1
    result.write_text(json.dumps(logged))
    with pytest.raises(ValueError, match="does not reproduce the logged valid recall@10"):
        evaluate_run(out, root=root, splits=("valid",))
    logged["valid"]["recall@10"] -= 0.1
    result.write_text(json.dumps(logged))

    # masks that are not the ones the run trained with (the data changed)
    text = out / "masks" / "eval_text.npy"
    kept = np.load(text)
    np.save(text, ~kept)
    with pytest.raises(ValueError, match="saved presence masks differ"):
        evaluate_run(out, root=root, splits=("valid",))
    np.save(text, kept)
    assert evaluate_run(out, root=root, splits=("valid",))["valid"]["recall@10"] >= 0

    result.unlink()  # an unfinished run has no selected epoch to re-score
    with pytest.raises(FileNotFoundError, match="has not finished"):
        evaluate_run(out, root=root, splits=("valid",))
    with pytest.raises(FileNotFoundError, match="no checkpoint.pt"):
        evaluate_run(tmp_path / "nowhere", root=root)
