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


# ----------------------------------------------------------------------------- chunked_topk
def integer_problem(seed, U=12, I=15, d=3):
    # small integer embeddings: every score is exact in float32 and ties abound
    g = torch.Generator().manual_seed(seed)
    user_emb = torch.randint(-2, 3, (U, d), generator=g).float()
    item_emb = torch.randint(-2, 3, (I, d), generator=g).float()
    key = torch.randperm(U * I, generator=g)[: U * I // 3]
    pairs = torch.stack([key // I, key % I])
    return user_emb, item_emb, pairs[:, ::2], pairs[:, 1::2]


def brute_force_topk_scores(S, user, k, excluded, candidates):
    """The k best scores of one user, one item at a time (-inf pads)."""
    items = range(S.size(1)) if candidates is None else candidates.tolist()
    kept = sorted((float(S[user, i]) for i in items if (user, i) not in excluded),
                  reverse=True)[:k]
    return kept + [-math.inf] * (k - len(kept))


def check_against_brute_force(chunks, S, users, k, exclude, candidates):
    excluded = {(a, b) for e in exclude for a, b in e.t().tolist()}
    allowed = set(range(S.size(1)) if candidates is None else candidates.tolist())
    seen_users = []
    for u, items, scores in chunks:
        assert items.shape == scores.shape == (u.numel(), k) and items.dtype == torch.long
        seen_users += u.tolist()
        for user, row_items, row_scores in zip(u.tolist(), items, scores):
            assert row_scores.tolist() == brute_force_topk_scores(S, user, k, excluded,
                                                                  candidates)
            finite = torch.isfinite(row_scores)
            kept = row_items[finite].tolist()
            assert len(set(kept)) == len(kept)  # no item twice
            for i, s in zip(kept, row_scores[finite].tolist()):
                assert i in allowed and (user, i) not in excluded and float(S[user, i]) == s
    assert seen_users == users.tolist()


@pytest.mark.parametrize("chunk_size", [1, 3, None])
@pytest.mark.parametrize("use_candidates", [False, True])
@pytest.mark.parametrize("use_scorer", [False, True])
def test_chunked_topk_matches_brute_force(chunk_size, use_candidates, use_scorer):
    from pyg_mmrec.metrics import chunked_topk
    user_emb, item_emb, train, valid = integer_problem(5)
    S = user_emb @ item_emb.t()
    users = torch.tensor([3, 0, 11, 3, 7, 5, 1])  # unsorted, with a repeat
    candidates = torch.tensor([14, 2, 9, 0, 5, 6, 11, 3]) if use_candidates else None
    num_ranked = 8 if use_candidates else 15
    exclude = [train, valid]
    emb = (None, None) if use_scorer else (user_emb, item_emb)
    scorer = (lambda u: S[u]) if use_scorer else None
    for k in (1, 4, num_ranked):  # k = every ranked item: -inf slots after the exclusions
        chunks = chunked_topk(*emb, users, k, exclude=exclude, candidates=candidates,
                              chunk_size=chunk_size, scorer=scorer, num_items=15)
        check_against_brute_force(chunks, S, users, k, exclude, candidates)
    # a single [2, E] exclusion and no exclusion at all
    check_against_brute_force(chunked_topk(*emb, users, 5, exclude=train, candidates=candidates,
                                           chunk_size=chunk_size, scorer=scorer, num_items=15),
                              S, users, 5, [train], candidates)
    check_against_brute_force(chunked_topk(*emb, users, 5, candidates=candidates,
                                           chunk_size=chunk_size, scorer=scorer, num_items=15),
                              S, users, 5, [], candidates)
    assert S.equal(user_emb @ item_emb.t())  # the scorer's tensor is never written into


def test_chunked_topk_chunking_does_not_change_results_with_ties():
    from pyg_mmrec.metrics import chunked_topk
    user_emb, item_emb, train, _ = integer_problem(6, U=30, I=40)
    users = torch.arange(30)
    ref = list(chunked_topk(user_emb, item_emb, users, 10, exclude=train, chunk_size=30))
    assert len(ref) == 1
    for chunk_size in (1, 3, 7):
        parts = list(chunked_topk(user_emb, item_emb, users, 10, exclude=train,
                                  chunk_size=chunk_size))
        assert torch.cat([p[1] for p in parts]).equal(ref[0][1])
        assert torch.cat([p[2] for p in parts]).equal(ref[0][2])


def test_chunked_topk_scorer_dtypes_and_empty_users():
    from pyg_mmrec.metrics import chunked_topk
    user_emb, item_emb, train, _ = integer_problem(7)
    S64 = (user_emb @ item_emb.t()).double()
    before = S64.clone()
    (u, items, scores), = chunked_topk(None, None, torch.arange(12), 3, exclude=train,
                                       scorer=lambda u: S64[u], num_items=15)
    assert scores.dtype == torch.float64 and S64.equal(before)  # not written into
    (_, items16, scores16), = chunked_topk(None, None, torch.arange(12), 3, exclude=train,
                                           scorer=lambda u: S64[u].half(), num_items=15)
    assert scores16.dtype == torch.float32 and scores16.equal(scores.float())
    assert list(chunked_topk(user_emb, item_emb, torch.empty(0, dtype=torch.long), 3)) == []


def test_evaluate_full_ranking_ties_match_a_single_topk():
    # tie-heavy integer scores: the chunked evaluation must pick exactly the items a single
    # torch.topk over all users' rows picks (the behaviour before chunked_topk existed)
    for seed in range(3):
        user_emb, item_emb, target, train = integer_problem(seed, U=30, I=40)
        ks = (1, 3, 10)
        ref = _pyg_reference(user_emb, item_emb, target, train, ks)
        for chunk_size in (1, 4, None):
            ours = evaluate_full_ranking(user_emb, item_emb, target, [train], ks=ks,
                                         chunk_size=chunk_size)
            for k, v in ref.items():
                assert ours[k] == pytest.approx(v, abs=1e-6), (seed, chunk_size, k)


def test_evaluate_full_ranking_with_candidates():
    user_emb, item_emb, target, train = random_problem(8)
    candidates = torch.tensor([5, 17, 3, 40, 22, 59, 8, 31, 12, 0, 44, 27])
    ks = (1, 5, 10)
    ours = evaluate_full_ranking(user_emb, item_emb, target, [train], ks=ks,
                                 candidates=candidates, chunk_size=6)
    # the same problem with the candidates as the whole catalog
    position = torch.full((60,), -1)
    position[candidates] = torch.arange(candidates.numel())

    def restrict(ei):
        col = position[ei[1]]
        return torch.stack([ei[0], col])[:, col >= 0]

    sub_target = restrict(target)
    ref = evaluate_full_ranking(user_emb, item_emb[candidates], sub_target, [restrict(train)],
                                ks=ks)
    assert ours.count == ref.count == int(sub_target[0].unique().numel()) > 0
    assert ours.to_dict() == pytest.approx(ref.to_dict(), abs=1e-12)
    # scorer path, and every item as candidates = no candidates
    S = user_emb @ item_emb.t()
    via_scorer = evaluate_full_ranking(None, None, target, [train], ks=ks, candidates=candidates,
                                       scorer=lambda u: S[u], num_users=40, num_items=60)
    assert via_scorer.to_dict() == pytest.approx(ref.to_dict(), abs=1e-6)
    everything = evaluate_full_ranking(user_emb, item_emb, target, [train], ks=ks,
                                       candidates=torch.arange(60))
    assert everything.to_dict() == evaluate_full_ranking(user_emb, item_emb, target, [train],
                                                         ks=ks).to_dict()
    with pytest.raises(ValueError, match="max K=20 exceeds the number of candidate items 12"):
        evaluate_full_ranking(user_emb, item_emb, target, [train], ks=(20,),
                              candidates=candidates)


def test_chunked_topk_bad_arguments():
    from pyg_mmrec.metrics import chunked_topk
    user_emb, item_emb, train, _ = integer_problem(9)
    users = torch.arange(4)
    cases = [
        (dict(k=0), r"k: expected a positive int, got 0"),
        (dict(k=-3), r"k: expected a positive int"),
        (dict(k=True), r"k: expected a positive int"),
        (dict(k=16), r"k: expected at most the number of items 15, got 16"),
        (dict(k=4, candidates=torch.tensor([1, 2, 3])), r"k: expected at most the 3 candidates"),
        (dict(k=1, candidates=torch.tensor([1, 2, 2])), r"candidates: expected distinct"),
        (dict(k=1, candidates=torch.tensor([1, 15])), r"candidates: item ids must be in \[0, 15\)"),
        (dict(k=1, candidates=torch.tensor([-1, 2])), r"candidates: item ids must be in"),
        (dict(k=1, candidates=torch.empty(0, dtype=torch.long)), r"candidates: expected at least"),
        (dict(k=1, candidates=torch.tensor([1.0])), r"candidates: expected an integer tensor"),
        (dict(k=1, users=torch.tensor([0, 12])), r"users: user ids must be in \[0, 12\), got"),
        (dict(k=1, users=torch.tensor([-1])), r"users: user ids must be in"),
        (dict(k=1, users=torch.tensor([[0]])), r"users: expected a 1-D LongTensor"),
        (dict(k=1, users=torch.tensor([0.0])), r"users: expected an integer tensor"),
        (dict(k=1, exclude=[torch.tensor([[0], [15]])]),
         r"exclude\[0\]: item ids must be in \[0, 15\)"),
        (dict(k=1, exclude=[train, torch.tensor([[12], [0]])]),
         r"exclude\[1\]: user ids must be in \[0, 12\)"),
        (dict(k=1, exclude="train"), r"exclude: expected a LongTensor \[2, E\] or a list"),
        (dict(k=1, chunk_size=0), r"chunk_size: expected a positive int"),
    ]
    for kwargs, message in cases:
        kwargs.setdefault("users", users)
        with pytest.raises(ValueError, match=message):
            chunked_topk(user_emb, item_emb, **kwargs)  # raised at the call, not on iteration
    with pytest.raises(ValueError, match="num_items is required with a scorer"):
        chunked_topk(None, None, users, 1, scorer=lambda u: u)
    with pytest.raises(ValueError, match="user_emb and item_emb are required"):
        chunked_topk(user_emb, None, users, 1)
    with pytest.raises(ValueError, match="must share d"):
        chunked_topk(user_emb, item_emb[:, :2], users, 1)
    with pytest.raises(ValueError, match=r"scorer: expected scores of shape \[4, 15\]"):
        next(chunked_topk(None, None, users, 1, scorer=lambda u: torch.zeros(4, 3), num_items=15))
