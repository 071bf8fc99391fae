"""The core of benchmarks/bench_recommend.py on a tiny catalog: every method returns the same
exact top-k, the exactness check catches a wrong one, and a worker run writes what the driver
compares."""
import pytest
import torch

from conftest import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/bench_recommend.py", "_bench_recommend")


def _methods(bench):
    methods = ["chunked", "dense", "loop"]
    if bench.faiss_available():
        methods.append("faiss")
    return methods


@pytest.mark.parametrize("k", [1, 10, 400])
def test_methods_agree_on_a_tiny_catalog(bench, k):
    user_emb, item_emb = bench.embeddings(30, 400, dim=16, seed=1)
    users = torch.tensor([0, 7, 3, 29, 11])
    index = bench.faiss_index(item_emb) if bench.faiss_available() else None
    ref_ids, ref_scores = bench.run_method("chunked", user_emb, item_emb, users, k)
    assert ref_ids.shape == ref_scores.shape == (5, k)
    brute = (user_emb[users] @ item_emb.t()).sort(dim=1, descending=True).values[:, :k]
    torch.testing.assert_close(ref_scores, brute)
    ref_exact = bench.exact_scores(user_emb, item_emb, users, ref_ids)
    for method in _methods(bench):
        ids, scores = bench.run_method(method, user_emb, item_emb, users, k, index=index)
        ids = ids.long()
        torch.testing.assert_close(scores.float(), ref_scores, rtol=1e-5, atol=1e-5)
        exact = bench.exact_scores(user_emb, item_emb, users, ids)
        identical, equivalent, rows = bench.compare(ref_ids, ref_exact, ids, exact)
        assert equivalent == rows == 5, method


def test_compare_catches_a_wrong_top_k(bench):
    user_emb, item_emb = bench.embeddings(10, 200, dim=8, seed=2)
    users = torch.arange(10)
    ids, _ = bench.run_method("chunked", user_emb, item_emb, users, 5)
    exact = bench.exact_scores(user_emb, item_emb, users, ids)
    assert bench.compare(ids, exact, ids, exact) == (10, 10, 10)
    worse = ids.clone()
    worse[3, 4] = (user_emb[3] @ item_emb.t()).argmin()  # the worst item instead of the 5th
    assert bench.compare(ids, exact, worse, bench.exact_scores(user_emb, item_emb, users,
                                                                worse)) == (9, 9, 10)
    twice = ids.clone()
    twice[0, 1] = twice[0, 0]  # an item twice: not a top-k even with close scores
    assert bench.compare(ids, exact, twice, exact)[1] == 9


def test_workers_write_what_the_driver_checks(bench, tmp_path):
    threads = torch.get_num_threads()
    try:
        rows = [bench.worker("synthetic", m, 1, [3, 7], n_users=25, items=300, loop_users=6,
                             latency_queries=4, dense_gib=0.01, check_users=10, clock_name="cpu",
                             data_root="unused", out_dir=str(tmp_path), min_time=0.01)
                for m in _methods(bench)]
    finally:
        torch.set_num_threads(threads)
    by = {r["method"]: r for r in rows}
    assert by["chunked"]["timed_users"] == 25 and by["loop"]["timed_users"] == 6
    for r in rows:
        for k in ("3", "7"):
            p = r["per_k"][k]
            assert p["users_per_s"] > 0 and 0 <= p["p50_ms"] <= p["p99_ms"]
        assert r["peak_rss"] > 0
    res = bench.check_exactness(tmp_path, "synthetic", _methods(bench), [1], [3, 7])
    assert set(res) == {(m, 1, k) for m in _methods(bench) if m != "chunked" for k in (3, 7)}
    for identical, equivalent, n in res.values():
        assert equivalent == n == 6 or equivalent == n == 10


def test_ml100k_rows_with_seen_items_excluded(bench, data_root, tmp_path):
    num_users, num_items, train = bench.ml100k_interactions(data_root)
    assert (num_users, num_items) == (943, 1682) and train.shape == (2, 80000)
    seen = set(map(tuple, train.t().tolist()))
    threads = torch.get_num_threads()
    try:
        for method in bench.EXCLUDING:
            bench.worker("ml100k", method, 1, [20], n_users=0, items=0, loop_users=1,
                         latency_queries=2, dense_gib=1, check_users=50, clock_name="cpu",
                         data_root=str(data_root), out_dir=str(tmp_path), min_time=0.0)
    finally:
        torch.set_num_threads(threads)
    edge_list = torch.load(tmp_path / f"ml100k_{bench.EXCLUDED}_1_20.pt")["ids"]
    index = torch.load(tmp_path / f"ml100k_{bench.EXCLUDED_INDEX}_1_20.pt")["ids"]
    assert edge_list.equal(index) and edge_list.shape == (50, 20)
    assert not any((u, i) in seen for u, row in enumerate(edge_list.tolist()) for i in row)


def test_bad_arguments(bench):
    with pytest.raises(SystemExit):
        bench.main(["--datasets", "movielens"])
    with pytest.raises(SystemExit):
        bench.main(["--methods", "dense,faiss"])  # no reference for the ratios
    with pytest.raises(SystemExit):
        bench.main(["--items", "-5"])
