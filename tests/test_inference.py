"""pyg_mmrec.load / TrainedRecommender: exact reproduction of a run's metrics,
recommend / score / embeddings / add_items, original ids, and bad input."""
import io
import json
import os

import numpy as np
import pytest
import torch

import pyg_mmrec
from conftest import write_tiny_mmrec
from pyg_mmrec.train import run
from pyg_mmrec.train.cold import new_item_candidates

FAST = {"epochs": 3, "topk": [5, 10], "metric": "recall@10", "batch_size": 64}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("inference")
    old = os.environ.get("PYG_MMREC_CACHE")
    os.environ["PYG_MMREC_CACHE"] = str(base / "cache")
    root = write_tiny_mmrec(base / "data", num_users=40, num_items=60, per_user=12)
    folder = root / "tiny"  # raw ids as the dataset builder writes them
    (folder / "u_id_mapping.csv").write_text(
        "raw_id\tuserID\n" + "".join(f"U{j:03d}\t{j}\n" for j in range(40)))
    (folder / "i_id_mapping.csv").write_text(
        "raw_id\titemID\n" + "".join(f"I{j:03d}\t{j}\n" for j in range(60)))
    runs = {}
    for key, model, plugin, missing, cold in [
            ("id", "lightgcn", None, "natural", None),
            ("content", "vbpr", None, "i3mrec:fm:0.5", None),
            ("mrdib", "freedom", "mrdib", "natural", None),
            ("cold_id", "lightgcn", None, "natural", 0.25),
            ("cold_content", "vbpr", None, "i3mrec:mm:0.3", 0.25),
            ("cold_mrdib", "vbpr", "mrdib", "natural", 0.25)]:
        out = base / "runs" / key
        run(model, "tiny", root, missing=missing, seed=3, plugin=plugin, overrides=FAST,
            out_dir=out, cold_items=cold)
        runs[key] = out
    yield root, runs
    if old is None:
        os.environ.pop("PYG_MMREC_CACHE", None)
    else:
        os.environ["PYG_MMREC_CACHE"] = old


def _tree(folder):
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _targets(rec, split):
    """The split's (user, item) pairs in public (dataset) ids."""
    td = rec._rb.built.data
    ei = td.valid_edge_index if split == "valid" else td.test_edge_index
    order = rec._rb.built.item_order
    return ei if order is None else torch.stack([ei[0], order[ei[1]]])


def _recall_from_recommend(rec, split, k, candidates=None):
    target = _targets(rec, split)
    if candidates is not None:
        target = target[:, torch.isin(target[1], torch.as_tensor(candidates))]
    users = torch.unique(target[0])
    items, _ = rec.recommend(users, k=k, exclude_valid=(split == "test"),
                             candidates=candidates)
    total = 0.0
    for row, u in enumerate(users.tolist()):
        t = set(target[1, target[0] == u].tolist())
        total += len(t & set(items[row].tolist())) / len(t)
    return total / users.numel()


@pytest.mark.parametrize("key", ["id", "content", "mrdib", "cold_id", "cold_content",
                                 "cold_mrdib"])
def test_load_reproduces_the_logged_metrics_and_writes_nothing(env, key):
    root, runs = env
    before = _tree(runs[key])
    rec = pyg_mmrec.load(runs[key], root=root)
    logged = json.loads((runs[key] / "result.json").read_text())
    for split in ("valid", "test"):
        again = rec.evaluate(split)
        assert again.keys() >= logged[split].keys()
        for name, value in logged[split].items():
            assert again[name] == pytest.approx(value, abs=1e-12), (split, name)
        # the same figure from recommend(): same ranking code, same exclusions
        assert _recall_from_recommend(rec, split, 10) == pytest.approx(
            logged[split]["recall@10"], abs=1e-9)
        if key.startswith("cold"):
            # the new items, in the seeded order the evaluation ranks them in (ties)
            td = rec._rb.built.data
            cold = rec._rb.built.item_order[new_item_candidates(td.cold)]
            saved = np.load(runs[key] / "masks" / "cold_items.npy")
            assert sorted(cold.tolist()) == saved.tolist()
            assert _recall_from_recommend(rec, split, 10, candidates=cold) == \
                pytest.approx(logged[split]["cold/recall@10"], abs=1e-9)
    rec.recommend([0, 1], k=5)
    rec.item_embeddings()
    assert _tree(runs[key]) == before  # nothing written, nothing touched


def test_load_uses_the_recorded_data_root(env):
    root, runs = env
    rec = pyg_mmrec.load(runs["id"])  # result.json recorded where the data was
    assert rec.data_root == root.resolve()
    assert rec.num_users == 40 and rec.num_items == 60
    with pytest.raises(FileNotFoundError, match="dataset 'tiny' of the run not found under"):
        pyg_mmrec.load(runs["id"], root=root / "nowhere")


def test_recommend_excludes_seen_items_and_respects_candidates(env):
    root, runs = env
    rec = pyg_mmrec.load(runs["content"], root=root)
    train = rec._rb.built.data.train_edge_index
    users = torch.arange(rec.num_users)
    items, scores = rec.recommend(users, k=10)
    assert items.shape == scores.shape == (40, 10)
    seen = set(map(tuple, train.t().tolist()))
    assert not any((u, i) in seen for u in range(40) for i in items[u].tolist())
    assert bool((scores[:, :-1] >= scores[:, 1:]).all())
    # the scores are the embeddings' dot products, and score() agrees
    s = rec.score(users, torch.arange(60))
    assert torch.allclose(s, rec.user_embeddings() @ rec.item_embeddings().t())
    assert torch.allclose(scores, s.gather(1, items))
    # unrestricted: the best unseen items
    s[train[0], train[1]] = -float("inf")
    assert torch.equal(scores, s.topk(10, dim=1).values)
    # candidates: only those, seen ones excluded (-inf and item -1 when too few remain)
    cand = [3, 7, 11]
    items, scores = rec.recommend([0], k=3, candidates=cand)
    kept = [i for i in items[0].tolist() if i >= 0]
    assert set(kept) <= set(cand)
    assert len(kept) == sum((0, c) not in seen for c in cand)
    assert bool(torch.isneginf(scores[0, len(kept):]).all())
    items, _ = rec.recommend([0], k=3, candidates=cand, exclude_seen=False)
    assert sorted(items[0].tolist()) == cand


def test_original_ids(env):
    root, runs = env
    rec = pyg_mmrec.load(runs["id"], root=root)
    a, sa = rec.recommend([4, 9], k=5)
    b, sb = rec.recommend(["U004", "U009"], k=5, ids="original")
    assert b.tolist() == [[f"I{i:03d}" for i in row] for row in a.tolist()]
    assert torch.equal(sa, sb)
    assert torch.equal(rec.score(["U004"], ["I001"], ids="original"), rec.score([4], [1]))
    with pytest.raises(ValueError, match="unknown original user id 'U999'"):
        rec.recommend(["U999"], ids="original")
    with pytest.raises(ValueError, match="ids: expected 'internal' or 'original'"):
        rec.recommend([0], ids="raw")


def test_original_ids_need_the_mapping_files(tmp_path, monkeypatch):
    monkeypatch.setenv("PYG_MMREC_CACHE", str(tmp_path / "cache"))
    root = write_tiny_mmrec(tmp_path / "data")
    run("bpr", "tiny", root, overrides=FAST, out_dir=tmp_path / "run")
    rec = pyg_mmrec.load(tmp_path / "run", root=root)
    with pytest.raises(ValueError, match="no u_id_mapping.csv"):
        rec.recommend([0], ids="original")


def test_add_items_places_new_items_from_content(env):
    root, runs = env
    rec = pyg_mmrec.load(runs["content"], root=root)
    data = rec._rb.dataset
    before = rec.item_embeddings().clone()
    # a copy of item 5's content, one item missing its image
    img, txt = data["item"]["image_feat"], data["item"]["text_feat"]
    new = rec.add_items({"image": img[[5, 5]], "text": txt[[5, 5]]},
                        masks={"image": torch.tensor([True, False])})
    assert new.tolist() == [60, 61] and rec.num_items == 62
    after = rec.item_embeddings()
    assert torch.allclose(after[:60], before)  # old items unchanged
    # VBPR: a new item is its content path only (ID part zero)
    assert bool((after[60, :after.size(1) // 2] == 0).all())
    assert not torch.equal(after[60], after[61])  # the missing image is masked
    items, scores = rec.recommend(torch.arange(40), k=62 - 12, exclude_seen=False)
    assert bool(torch.isin(torch.tensor([60, 61]), items).all())
    sc = rec.score([0, 1], new)
    assert sc.shape == (2, 2)
    # only the image given: text missing for both new items
    more = rec.add_items({"image": img[:1]})
    assert more.tolist() == [62]
    with pytest.raises(ValueError, match="unknown item id 63"):
        rec.score([0], [63])


@pytest.mark.parametrize("features,masks,match", [
    ({"image": torch.zeros(2, 7)}, None, r"features\['image'\]: expected a float array \[n, 6\]"),
    ({"image": torch.full((2, 6), float("nan"))}, None, r"features\['image'\]: row 0 holds NaN"),
    ({"image": torch.zeros(1, 6), "text": torch.zeros(1, 5)},
     {"text": torch.tensor([1])}, r"masks\['text'\]: expected a bool array"),
    ({"audio": torch.zeros(1, 3)}, None, "features: unknown modality 'audio'"),
    ({"image": torch.zeros(1, 6)}, {"text": torch.tensor([True])}, r"masks\['text'\]: no features"),
    ({"image": torch.zeros(2, 6), "text": torch.zeros(3, 5)}, None, "3 rows"),
    ({}, None, "features: expected a dict"),
])
def test_add_items_bad_input(env, features, masks, match):
    root, runs = env
    rec = pyg_mmrec.load(runs["content"], root=root)
    with pytest.raises(ValueError, match=match):
        rec.add_items(features, masks)
    assert rec.num_items == 60  # nothing half-added


def test_add_items_refuses_id_only_models(env):
    root, runs = env
    rec = pyg_mmrec.load(runs["id"], root=root)
    with pytest.raises(ValueError, match="lightgcn is an ID-only model"):
        rec.add_items({"image": torch.zeros(1, 6)})


@pytest.mark.parametrize("call,match", [
    (lambda r: r.recommend([40]), r"users: unknown user id 40 \(expected 0..39\)"),
    (lambda r: r.recommend([-1]), "users: unknown user id -1"),
    (lambda r: r.recommend(["0"]), "users: expected integer user ids"),
    (lambda r: r.recommend([0], k=0), r"k: expected an integer in 1..60"),
    (lambda r: r.recommend([0], k=61), r"k: expected an integer in 1..60"),
    (lambda r: r.recommend([0], k=3, candidates=[1, 2]), r"k: expected an integer in 1..2 "
                                                         r"\(the number of candidates\)"),
    (lambda r: r.recommend([0], candidates=[60]), "candidates: unknown item id 60"),
    (lambda r: r.score([0], [99]), "items: unknown item id 99"),
    (lambda r: r.recommend([]), "users: expected at least one id"),
])
def test_recommend_bad_input(env, call, match):
    root, runs = env
    rec = pyg_mmrec.load(runs["id"], root=root)
    with pytest.raises(ValueError, match=match):
        call(rec)


def _copy_run(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return dst


def test_load_bad_run_folders(env, tmp_path):
    root, runs = env
    with pytest.raises(FileNotFoundError, match="no checkpoint.pt"):
        pyg_mmrec.load(tmp_path / "nothing", root=root)
    unfinished = _copy_run(runs["id"], tmp_path / "unfinished")
    (unfinished / "result.json").unlink()
    with pytest.raises(FileNotFoundError, match="has not finished.*--resume"):
        pyg_mmrec.load(unfinished, root=root)

    truncated = _copy_run(runs["id"], tmp_path / "truncated")
    ck = truncated / "checkpoint.pt"
    ck.write_bytes(ck.read_bytes()[: ck.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"checkpoint.pt: cannot be read .*corrupted or "
                                         r"truncated"):
        pyg_mmrec.load(truncated, root=root)
    garbage = _copy_run(runs["id"], tmp_path / "garbage")
    (garbage / "checkpoint.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="corrupted or truncated"):
        pyg_mmrec.load(garbage, root=root)

    state = torch.load(runs["id"] / "checkpoint.pt", weights_only=False)
    old = _copy_run(runs["id"], tmp_path / "old")
    buf = io.BytesIO()
    torch.save({**state, "version": 0}, buf)
    (old / "checkpoint.pt").write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match="written by another code version"):
        pyg_mmrec.load(old, root=root)

    other = _copy_run(runs["id"], tmp_path / "other")
    best = dict(state["best_state"])
    best["extra.weight"] = torch.zeros(2)  # a model this code builds differently
    buf = io.BytesIO()
    torch.save({**state, "best_state": best}, buf)
    (other / "checkpoint.pt").write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match="its model state does not fit lightgcn"):
        pyg_mmrec.load(other, root=root)


def test_import_stays_light():
    import subprocess
    import sys
    code = "import sys, pyg_mmrec; print('torch' in sys.modules, hasattr(pyg_mmrec, 'load'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ}, check=True).stdout.split()
    assert out == ["False", "True"]
