import math

import pytest
import torch
from torch_geometric.metrics import (LinkPredHitRatio, LinkPredMAP, LinkPredNDCG,
                                     LinkPredPrecision, LinkPredRecall)

from pyg_mmrec.metrics import Metrics, evaluate_full_ranking

L2 = math.log2


def tiny():
    # scores = S exactly: user_emb = S, item_emb = identity
    S = torch.tensor([[10., 9, 8, 7, 6, 5], [1, 2, 3, 4, 5, 6]])
    target = torch.tensor([[0, 0, 1], [1, 4, 0]])
    exclude = torch.tensor([[0, 1, 1], [0, 5, 2]])
    return S, torch.eye(6), target, exclude


def test_hand_computed_values():
    S, E, target, exclude = tiny()
    m = evaluate_full_ranking(S, E, target, [exclude], ks=(1, 2, 4))
    # user 0 ranking 1,2,3,4,5 with targets {1,4}: hits [1,0,0,1]
    # user 1 ranking 4,3,1,0 with target {0}: hits [0,0,0,1]
    exp = {
        "recall@1": (0.5 + 0) / 2, "precision@1": (1 + 0) / 2, "ndcg@1": (1 + 0) / 2,
        "map@1": (1 + 0) / 2, "hit@1": 0.5,
        "recall@2": 0.5 / 2, "precision@2": 0.5 / 2, "ndcg@2": (1 / (1 + 1 / L2(3))) / 2,
        "map@2": 0.5 / 2, "hit@2": 0.5,
        "recall@4": (1 + 1) / 2, "precision@4": (0.5 + 0.25) / 2,
        "ndcg@4": ((1 + 1 / L2(5)) / (1 + 1 / L2(3)) + 1 / L2(5)) / 2,
        "map@4": ((1 + 2 / 4) / 2 + 0.25) / 2, "hit@4": 1.0,
    }
    assert set(m) == set(exp)
    for k, v in exp.items():
        assert m[k] == pytest.approx(v), k
    assert m.split == "valid" and m.count == 2


def test_exclusion_matters_and_scorer_path():
    S, E, target, exclude = tiny()
    a = evaluate_full_ranking(S, E, target, None, ks=(1,))
    assert a["recall@1"] == 0.0  # item 0 (excluded before) is not a target of user 0
    b = evaluate_full_ranking(None, None, target, exclude, ks=(1, 2, 4),
                              scorer=lambda u: S[u], num_users=2, num_items=6)
    c = evaluate_full_ranking(S, E, target, exclude, ks=(1, 2, 4))
    assert b.to_dict() == pytest.approx(c.to_dict())
    assert S[0, 0] == 10  # the scorer's tensor is never written into


def _pyg_reference(U, I, target, exclude, ks):
    scores = U @ I.t()
    scores[exclude[0], exclude[1]] = -float("inf")
    users = target[0].unique()
    top = scores[users].topk(max(ks), dim=1).indices
    row = torch.searchsorted(users, target[0])
    out = {}
    for k in ks:
        for name, cls in (("recall", LinkPredRecall), ("ndcg", LinkPredNDCG),
                          ("precision", LinkPredPrecision), ("map", LinkPredMAP),
                          ("hit", LinkPredHitRatio)):
            metric = cls(k)
            metric.update(top[:, :k], torch.stack([row, target[1]]))
            out[f"{name}@{k}"] = float(metric.compute())
    return out


def random_problem(seed, U=40, I=60, d=8):
    g = torch.Generator().manual_seed(seed)
    user_emb, item_emb = torch.randn(U, d, generator=g), torch.randn(I, d, generator=g)
    key = torch.randperm(U * I, generator=g)[: U * I // 4]
    pairs = torch.stack([key // I, key % I])
    train, target = pairs[:, : pairs.size(1) // 2], pairs[:, pairs.size(1) // 2:]
    return user_emb, item_emb, target, train


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_torch_geometric_linkpred_metrics(seed):
    user_emb, item_emb, target, train = random_problem(seed)
    ks = (1, 5, 10, 20)
    ours = evaluate_full_ranking(user_emb, item_emb, target, [train], ks=ks, chunk_size=7)
    ref = _pyg_reference(user_emb, item_emb, target, train, ks)
    for k, v in ref.items():
        assert ours[k] == pytest.approx(v, abs=1e-6), k


def test_chunking_and_shards_are_exact():
    user_emb, item_emb, target, train = random_problem(3)
    full = evaluate_full_ranking(user_emb, item_emb, target, train, chunk_size=1000)
    one = evaluate_full_ranking(user_emb, item_emb, target, train, chunk_size=1)
    assert one.to_dict() == pytest.approx(full.to_dict())
    shards = [evaluate_full_ranking(user_emb, item_emb, target, train, rank=r, world_size=3)
              for r in range(3)]
    assert sum(s.count for s in shards) == full.count
    assert Metrics.combine(shards).to_dict() == pytest.approx(full.to_dict())
    t, keys = shards[0].sums_tensor()
    for s in shards[1:]:
        t = t + s.sums_tensor()[0]
    again = Metrics.from_sums(t[:-1], int(t[-1]), "valid", keys)
    assert again.to_dict() == pytest.approx(full.to_dict())
    assert full.all_reduce() is full  # no process group: identity


def test_users_without_targets_are_not_counted():
    user_emb, item_emb, target, train = random_problem(4)
    keep = target[0] < 10
    m = evaluate_full_ranking(user_emb, item_emb, target[:, keep], train)
    assert m.count == int(target[0, keep].unique().numel())


def test_metrics_mapping_and_split():
    m = Metrics({"recall@20": 3.0}, 4, "test")
    assert m["recall@20"] == 0.75 and dict(m) == {"recall@20": 0.75} and m.split == "test"
    assert "test" in repr(m)
    with pytest.raises(ValueError, match="split"):
        Metrics({}, 1, "train")
    with pytest.raises(ValueError, match="different splits"):
        Metrics.combine([m, Metrics({"recall@20": 1.0}, 1, "valid")])


def test_bad_inputs():
    S, E, target, exclude = tiny()
    with pytest.raises(ValueError, match="max K=50 exceeds the number of items 6"):
        evaluate_full_ranking(S, E, target, exclude)
    with pytest.raises(ValueError, match=r"target_edge_index: item ids must be in \[0, 6\)"):
        evaluate_full_ranking(S, E, torch.tensor([[0], [6]]), exclude, ks=(1,))
    with pytest.raises(ValueError, match=r"exclude_edge_indices\[0\]: expected a LongTensor"):
        evaluate_full_ranking(S, E, target, torch.tensor([0, 1]), ks=(1,))
    with pytest.raises(ValueError, match="split"):
        evaluate_full_ranking(S, E, target, exclude, ks=(1,), split="train")
    with pytest.raises(ValueError, match="share d"):
        evaluate_full_ranking(S, torch.eye(5), target, exclude, ks=(1,))
    with pytest.raises(ValueError, match="scorer: expected scores of shape"):
        evaluate_full_ranking(None, None, target, exclude, ks=(1,), scorer=lambda u: S[u, :3],
                              num_users=2, num_items=6)
