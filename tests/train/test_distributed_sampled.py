"""Sampled (``fanout``) training on several ranks: the sparse gradient
all-reduce, 2 gloo ranks against one process, and resuming with another
number of ranks. The ranks run module-level functions through ``launch``."""
import json
from pathlib import Path

import pytest
import torch
from conftest import stop_after, tiny_splits

from pyg_mmrec.config import train_defaults, validate_train
from pyg_mmrec.train import TrainData, Trainer, TrainingInterrupted
from pyg_mmrec.train.distributed import DistributedTrainer, launch
from pyg_mmrec.train.optim import LazyAdam

U, I = 30, 40
EXACT = [20, 20]  # >= every degree of tiny_data(): the sample is the whole 2-hop neighbourhood


def tiny_data():
    g = torch.Generator().manual_seed(0)
    ei = tiny_splits(U, I, 7, g)
    feats = {"image": torch.randn(I, 6, generator=g), "text": torch.randn(I, 4, generator=g)}
    masks = {m: torch.ones(I, dtype=torch.bool) for m in feats}
    return TrainData(U, I, ei["train"], ei["valid"], ei["test"], feats, masks)


def train_cfg(epochs=1, lr=0.01):
    t = train_defaults()
    # 150 training pairs: batches of 32 (16 per rank), the last one 22 = 11 + 11
    t.update(dict(epochs=epochs, batch_size=32, lr=lr, topk=[5, 10], metric="recall@10"))
    return validate_train(t)


def make_model(name, data, fanout):
    from pyg_mmrec.models import get_model_class
    torch.manual_seed(0)
    cls = get_model_class(name)
    if name == "LightGCN":
        return cls(U, I, data.train_edge_index, embedding_size=8, n_layers=2, fanout=fanout)
    return cls(U, I, data.train_edge_index, data.train_features, data.train_masks,
               embedding_size=8, feat_embed_dim=8, knn_k=3, fanout=fanout)


def rng_digest():
    return int(torch.get_rng_state().double().sum())


# ------------------------------------------------------------- per-rank functions
def _rank_sparse_reduce(out_dir):
    """Rank 0 (weight 3) and rank 1 (weight 1) hold different rows of two sparse
    tables; `table_b` has no gradient on rank 0; `mixed` is sparse on rank 0 and
    dense on rank 1; `dense` is an ordinary parameter."""
    from pyg_mmrec.train import distributed
    ctx = distributed.init_from_env("cpu", timeout=60)
    r = ctx.rank
    table_a = torch.nn.Parameter(torch.zeros(6, 2))
    table_b = torch.nn.Parameter(torch.zeros(5, 3))
    mixed = torch.nn.Parameter(torch.zeros(4, 2))
    dense = torch.nn.Parameter(torch.zeros(3))

    def sparse(rows, values, shape):  # uncoalesced, as an embedding backward leaves it
        return torch.sparse_coo_tensor(torch.tensor([rows]), torch.tensor(values), shape,
                                       check_invariants=True)

    if r == 0:
        table_a.grad = sparse([1, 4, 1], [[1., 2.], [3., 4.], [5., 6.]], (6, 2))
        mixed.grad = sparse([2], [[1., 1.]], (4, 2))
        dense.grad = torch.tensor([1., 2., 3.])
    else:
        table_a.grad = sparse([4, 5], [[10., 20.], [30., 40.]], (6, 2))
        table_b.grad = sparse([3, 0], [[1., 2., 3.], [4., 5., 6.]], (5, 3))
        mixed.grad = torch.full((4, 2), 2.0)
        dense.grad = torch.tensor([5., 6., 7.])
    distributed.all_reduce_gradients([table_a, table_b, mixed, dense],
                                     weight=3.0 if r == 0 else 1.0,
                                     sparse_params=[table_a, table_b, mixed])
    out = {}
    for name, p in [("a", table_a), ("b", table_b), ("mixed", mixed), ("dense", dense)]:
        g = p.grad
        out[name] = ({"sparse": True, "coalesced": g.is_coalesced(),
                      "rows": g._indices()[0].tolist(), "values": g._values().tolist()}
                     if g.is_sparse else {"sparse": False, "values": g.tolist()})
    Path(out_dir, f"rank{r}.json").write_text(json.dumps(out))
    distributed.barrier()  # leave together: a rank tearing gloo down alone can abort
    distributed.destroy()


def _rank_train(out_dir, name, fanout, epochs, stop_at_batch, lr=0.01):
    """Trains `name` on its share of every global batch; writes the history, the
    evaluation of the final weights, rank 0's weights and RNG digests."""
    from pyg_mmrec.train import distributed
    ctx = distributed.init_from_env("cpu", timeout=60)
    data = tiny_data()
    model = make_model(name, data, fanout)
    tr = DistributedTrainer(model, data, train_cfg(epochs, lr), seed=1,
                            out_dir=Path(out_dir, "run") if stop_at_batch else None)
    assert isinstance(tr.optimizer, LazyAdam) and tr.sparse_params
    rec = {"rank": ctx.rank}
    if stop_at_batch:
        if ctx.rank == 0:  # a request on one rank stops every rank after the same batch
            stop_after(tr, stop_at_batch)
        try:
            tr.fit(test=False)
        except TrainingInterrupted as e:
            rec["stopped_at"] = [e.epoch, e.batch]
    else:
        fit = tr.fit(test=False)
        rec["history"] = fit.history
        rec["valid"] = tr.evaluate("valid")  # the final weights, users split over the ranks
        distributed.check_consistency(model.named_parameters())
        rec["checksums"] = [float(p.detach().double().sum()) for p in model.parameters()]
        if ctx.rank == 0:
            torch.save(model.state_dict(), Path(out_dir, "weights.pt"))
    rec["rng"] = rng_digest()
    Path(out_dir, f"rank{ctx.rank}.json").write_text(json.dumps(rec))
    distributed.barrier()  # leave together: a rank tearing gloo down alone can abort
    distributed.destroy()


def _rank_step_syncs(out_dir):
    """Counts, with SyncMonitor, the synchronising calls of two steps of sampled
    LightGCN (fanout [2, 2]) on this rank: a full global batch and the epoch's
    last, uneven one (11 + 11 triples)."""
    from pyg_mmrec.train import distributed
    from pyg_mmrec.utils import SyncMonitor
    from pyg_mmrec.nn.neighbor_sampling import LayerwiseSampler
    import pyg_mmrec.ops.lazy_adam as lazy_adam
    LayerwiseSampler.static_shapes = True  # the accelerator path (the CPU default compacts)
    lazy_adam.LAZY_ADAM_DEVICES = frozenset()  # and lazy Adam's (no host-grouping CPU kernel)
    ctx = distributed.init_from_env("cpu", timeout=60)
    data = tiny_data()
    model = make_model("LightGCN", data, [2, 2])
    tr = DistributedTrainer(model, data, train_cfg(), seed=1)
    model.train()
    users, pos, neg = tr.sampler.sample(0, ctx.rank, ctx.world_size)
    bs = tr.train_cfg["batch_size"]
    steps = {}
    for b in (0, 1, 4):  # batch 0 warms up (optimiser state, caches)
        sl = slice(b * bs, (b + 1) * bs)
        with SyncMonitor() as mon:
            out = tr.train_step(users[sl], pos[sl], neg[sl], 0, b)
        steps[b] = {"events": [[e.kind, e.where] for e in mon.events],
                    "tensors": all(isinstance(v, torch.Tensor) for v in out.values()),
                    "loss": float(out["loss"]), "n": int(users[sl].numel())}
    Path(out_dir, f"rank{ctx.rank}.json").write_text(json.dumps(steps))
    distributed.barrier()  # leave together: a rank tearing gloo down alone can abort
    distributed.destroy()


def read_ranks(out_dir, n=2):
    return [json.loads(Path(out_dir, f"rank{r}.json").read_text()) for r in range(n)]


def without_times(history):
    return [{k: v for k, v in rec.items() if "seconds" not in k} for rec in history]


# ---------------------------------------------------------------------------- tests
def test_sparse_gradients_are_reduced_sparse_and_identical_on_both_ranks(tmp_path):
    assert launch(_rank_sparse_reduce, 2, (str(tmp_path),), timeout=60, threads=1) == 0
    r0, r1 = read_ranks(tmp_path)
    assert r0 == r1  # the same result, bit for bit, on both ranks
    # sum_r w_r g_r / sum_r w_r with w = (3, 1); rank 0's duplicate row 1 is summed first
    a = r0["a"]
    assert a["sparse"] and a["coalesced"] and a["rows"] == [1, 4, 5]  # the union, no other row
    expected = torch.tensor([[3 * (1 + 5), 3 * (2 + 6)], [3 * 3 + 10, 3 * 4 + 20], [30, 40]]) / 4
    assert torch.allclose(torch.tensor(a["values"]), expected)
    b = r0["b"]  # only rank 1 has rows: weighted by 1 / 4
    assert b["sparse"] and b["rows"] == [0, 3]
    assert torch.allclose(torch.tensor(b["values"]), torch.tensor([[4., 5, 6], [1, 2, 3]]) / 4)
    # dense on one rank: reduced densely everywhere
    mixed = torch.full((4, 2), 2.0 * 1)
    mixed[2] += 3 * 1.0
    assert not r0["mixed"]["sparse"]
    assert torch.allclose(torch.tensor(r0["mixed"]["values"]), mixed / 4)
    assert torch.allclose(torch.tensor(r0["dense"]["values"]),
                          (3 * torch.tensor([1., 2, 3]) + torch.tensor([5., 6, 7])) / 4)


def test_sparse_reduction_without_a_process_group_is_a_no_op():
    from pyg_mmrec.train.distributed import all_reduce_sparse_gradients
    table = torch.nn.Parameter(torch.zeros(4, 2))
    grad = torch.sparse_coo_tensor(torch.tensor([[2, 0, 2]]), torch.ones(3, 2), (4, 2),
                                   check_invariants=True)
    table.grad = grad
    assert all_reduce_sparse_gradients([table], weight=2.0) == []
    assert table.grad is grad


def one_process(name, fanout, epochs=1):
    data = tiny_data()
    model = make_model(name, data, fanout)
    tr = Trainer(model, data, train_cfg(epochs), seed=1)
    return tr, tr.fit(test=False)


@pytest.mark.parametrize("name", ["LightGCN", "FREEDOM"])
def test_two_ranks_sampled_training_matches_one_process(tmp_path, name):
    """Exact fan-out (the sample is the whole neighbourhood, so no randomness
    from sampling): 2 ranks follow the 1-process trajectory, losses to 1e-5
    relative (float summation order only). The parameters agree across ranks,
    the global RNG too, and evaluating the 2-rank weights in one process gives
    the 2-rank metrics."""
    data = tiny_data()
    deg = torch.cat([torch.bincount(data.train_edge_index[k]) for k in (0, 1)])
    assert int(deg.max()) <= min(EXACT)
    assert launch(_rank_train, 2, (str(tmp_path), name, EXACT, 1, 0), timeout=60,
                  threads=1) == 0
    r0, r1 = read_ranks(tmp_path)
    assert r0["checksums"] == r1["checksums"] and r0["rng"] == r1["rng"]
    assert without_times(r0["history"]) == without_times(r1["history"])
    assert r0["valid"] == r1["valid"]
    _, fit = one_process(name, EXACT)
    for k, v in fit.history[0].items():
        if k.startswith("loss"):
            assert r0["history"][0][k] == pytest.approx(v, rel=1e-5), k
    model = make_model(name, data, EXACT)
    model.load_state_dict(torch.load(Path(tmp_path, "weights.pt")))
    valid = Trainer(model, data, train_cfg(), seed=1).evaluate("valid")
    assert valid.keys() == r0["valid"].keys()
    for k in valid:
        assert r0["valid"][k] == pytest.approx(valid[k], abs=1e-6), k


def test_two_ranks_with_real_sampling_agree_in_distribution(tmp_path):
    """fanout [2, 2] (below most degrees), 3 epochs at lr 0.05: the ranks draw
    other samples than one process (each rank samples its own 16 triples'
    graph, from its own stream), so only the distribution of the trajectory can
    agree. The last epoch's mean loss of one process over 8 sampling streams
    (the same triples) is 0.559 +- 0.009 (std); 2 ranks must lie within 4 std
    of that mean. (The exact fan-out ends at 0.516, 4.9 std away: the check
    sees the sampling, and a wrongly weighted reduction moves the loss too.)"""
    assert launch(_rank_train, 2, (str(tmp_path), "LightGCN", [2, 2], 3, 0, 0.05), timeout=60,
                  threads=1) == 0
    r0, r1 = read_ranks(tmp_path)
    assert r0["checksums"] == r1["checksums"] and r0["rng"] == r1["rng"]
    losses = []
    for stream in range(8):
        data = tiny_data()
        model = make_model("LightGCN", data, [2, 2])
        tr = Trainer(model, data, train_cfg(3, 0.05), seed=1)
        torch.manual_seed(100 + stream)  # another sampling stream, the same triples
        losses.append(tr.fit(test=False).history[-1]["loss"])
    losses = torch.tensor(losses)
    mean, std = float(losses.mean()), float(losses.std())
    assert 0 < std < 0.03
    assert abs(r0["history"][-1]["loss"] - mean) <= 4 * std, (r0["history"][-1]["loss"], mean, std)


def test_sampled_two_rank_checkpoint_resumes_on_one_rank(tmp_path):
    """2 ranks stop in the middle of epoch 0 (rank 0 asks after global batch 3
    of 5, the ranks agree on it at the next batch and stop after batch 4); one
    process resumes from the checkpoint (weights and LazyAdam moments) and ends
    where an uninterrupted 1-process run ends (exact fan-out: 1e-5)."""
    assert launch(_rank_train, 2, (str(tmp_path), "LightGCN", EXACT, 2, 3), timeout=60,
                  threads=1) == 0
    r0, r1 = read_ranks(tmp_path)
    assert r0["stopped_at"] == r1["stopped_at"] == [0, 4]
    data = tiny_data()
    model = make_model("LightGCN", data, EXACT)
    with torch.no_grad():
        model.user_embedding.weight.zero_()  # everything must come from the checkpoint
    tr = DistributedTrainer(model, data, train_cfg(2), seed=1, out_dir=Path(tmp_path, "run"))
    resumed = tr.fit(resume=True, test=False)
    state = tr.optimizer.state[model.user_embedding.weight]
    assert int(state["step"]) == 2 * 5  # 4 steps on 2 ranks + 1 + 5 steps here
    full_tr, full = one_process("LightGCN", EXACT, epochs=2)
    assert [r["epoch"] for r in resumed.history] == [0, 1]
    for a, b in zip(resumed.history, full.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    for k, v in full_tr.model.state_dict().items():
        assert torch.allclose(model.state_dict()[k], v, atol=1e-5), k


def test_command_line_sampled_i3mrec_on_two_ranks(tmp_path, monkeypatch, capfd):
    """`--nproc 2` with `fanout`: I3-MRec (sparse ID embeddings and its CLUB
    estimators' dense optimiser) through the command line; only rank 0 writes."""
    from test_distributed import base_args, read_log, write_uneven_mmrec

    from pyg_mmrec.cli import main
    monkeypatch.setenv("PYG_MMREC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    root = write_uneven_mmrec(tmp_path / "data")
    out = tmp_path / "runs"
    assert main(base_args(root, "I3MRec", epochs=1)
                + ["--out", str(out), "--nproc", "2", "--set", "fanout=[3,3,3]"]) == 0
    assert capfd.readouterr().out.count("| tiny | i3mrec |") == 1
    log = read_log(out)
    assert len(log) == 1 and "loss/club" in log[0] and log[0]["valid"]["recall@10"] >= 0


def test_two_rank_sampled_step_reads_nothing_from_the_device(tmp_path):
    """2 gloo ranks, sampled LightGCN: a step (a full global batch, and the
    epoch's last one, 11 + 11 triples) makes no synchronising call on either
    rank besides the exchanges of host values (``_host_all_gather``: which
    gradients a rank has, their row counts and its weight; its number of
    triples, stop request and loss-term names), whose CPU tensors never were
    on a device. The loss values come back as tensors, the global batch's on
    both ranks."""
    assert launch(_rank_step_syncs, 2, (str(tmp_path),), timeout=60, threads=1) == 0
    r0, r1 = read_ranks(tmp_path)
    for rank in (r0, r1):
        for b in ("1", "4"):
            step = rank[b]
            other = [e for e in step["events"] if "(_host_all_gather)" not in e[1]]
            assert other == [], (b, other)
            # the gradient sizes and the loss header: one host exchange each
            assert [e[0] for e in step["events"]] == ["tolist", "tolist"], step["events"]
            assert step["tensors"]
    assert r0["4"]["n"] == r1["4"]["n"] == 11
    for b in ("0", "1", "4"):
        assert r0[b]["loss"] == r1[b]["loss"]  # the global batch's loss on both ranks
