import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_inter
from pyg_mmrec.cli import main
from pyg_mmrec.data import BPRSampler
from pyg_mmrec.train import Trainer, TrainData
from pyg_mmrec.train.checkpoint import load_checkpoint
from pyg_mmrec.train.distributed import (FAULT_ENV, DistributedTrainer, GlobalBatchShards,
                                         RankFailedError, _parse_fault, all_reduce_gradients)


def write_uneven_mmrec(root, name="tiny", num_users=60, num_items=50, per_user=10, seed=0):
    """<root>/<name>/<name>.inter (451 training pairs: 451 % 64 = 3, so the last
    global batch of 64 splits unevenly over two ranks) + two modalities."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(num_users):
        items = [(u + j) % num_items for j in range(3)]
        items += rng.permutation(num_items)[:per_user - 3].tolist()
        for j, i in enumerate(dict.fromkeys(items)):
            rows.append((u, i, 5, j, 1 if j == 0 else 2 if j == 1 else 0))
    folder = write_inter(root / name, name, rows)
    np.save(folder / "image_feat.npy", rng.normal(size=(num_items, 6)).astype(np.float32))
    np.save(folder / "text_feat.npy", rng.normal(size=(num_items, 5)).astype(np.float32))
    return root


@pytest.fixture
def tiny_root(tmp_path, monkeypatch):
    monkeypatch.setenv("PYG_MMREC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return write_uneven_mmrec(tmp_path / "data")


def base_args(root, model="LightGCN", epochs=3):
    return ["train", "--model", model, "--dataset", "tiny", "--root", str(root),
            "--epochs", str(epochs), "--topk", "5,10", "--metric", "recall@10",
            "--batch-size", "64", "--quiet", "--dist-timeout", "120"]


def read_log(out):
    (f,) = list(Path(out).rglob("metrics.jsonl"))
    return [json.loads(line) for line in f.read_text().splitlines()]


# --------------------------------------------------------------------------- units
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_global_batch_shards_rebuild_the_one_process_batches(world_size):
    g = torch.Generator().manual_seed(0)
    n_users, n_items = 13, 17
    ei = torch.stack([torch.randint(0, n_users, (101,), generator=g),
                      torch.randint(0, n_items, (101,), generator=g)]).unique(dim=1)
    base = BPRSampler(ei, n_users, n_items, seed=3)
    B = 12
    full = GlobalBatchShards(base, B).sample(5)  # one process
    n = full[0].numel()
    assert n == ei.size(1)  # W = 1 drops nothing
    shards = [GlobalBatchShards(base, B).sample(5, r, world_size) for r in range(world_size)]
    tail = n % B
    kept = n - tail if 0 < tail < world_size else n
    local = B // world_size
    num_batches = -(-kept // B)
    for r in range(world_size):  # every rank runs the same number of steps
        assert -(-shards[r][0].numel() // local) == num_batches
    for b in range(num_batches):
        glob = torch.stack([t[b * B:min(kept, (b + 1) * B)] for t in full], 1)
        parts = torch.cat([torch.stack([t[b * local:(b + 1) * local] for t in s], 1)
                           for s in shards])
        assert sorted(map(tuple, parts.tolist())) == sorted(map(tuple, glob.tolist()))


def test_global_batch_shards_validation():
    ei = torch.tensor([[0, 1, 2], [0, 1, 2]])
    s = GlobalBatchShards(BPRSampler(ei, 3, 4), 4)
    with pytest.raises(ValueError, match="not divisible"):
        s.sample(0, 0, 3)
    with pytest.raises(ValueError, match="rank"):
        s.sample(0, 2, 2)
    with pytest.raises(ValueError, match="global_batch_size"):
        GlobalBatchShards(s.sampler, 0)


def test_fault_spec_and_error_message():
    assert _parse_fault("rank=1,epoch=0,batch=2") == {"rank": 1, "epoch": 0, "batch": 2,
                                                      "mode": "raise"}
    assert _parse_fault("rank=0,epoch=1,batch=0,mode=exit")["mode"] == "exit"
    for bad in ("rank=1", "rank=a,epoch=0,batch=0", "rank=0,epoch=0,batch=0,mode=boom"):
        with pytest.raises(ValueError, match=FAULT_ENV):
            _parse_fault(bad)
    e = RankFailedError(1, -9, "", others=[0])
    assert "rank 1 was killed by signal 9; the other rank(s) 0 were stopped" in str(e)
    assert "died without raising" in str(e)


def test_one_process_distributed_trainer_is_the_plain_trainer():
    from pyg_mmrec.config import build_config
    from pyg_mmrec.models import get_model_class
    g = torch.Generator().manual_seed(0)
    ei = torch.stack([torch.randint(0, 30, (300,), generator=g),
                      torch.randint(0, 40, (300,), generator=g)]).unique(dim=1)
    valid = torch.stack([torch.arange(30), torch.randint(0, 40, (30,), generator=g)])
    data = TrainData(30, 40, ei, valid, valid)
    cfg = build_config("LightGCN", {"epochs": 2, "batch_size": 32, "topk": [5],
                                    "metric": "recall@5"})
    fits = []
    for cls in (Trainer, DistributedTrainer):
        torch.manual_seed(0)
        model = get_model_class("LightGCN")(30, 40, ei, **cfg["hparams"])
        fits.append(cls(model, data, cfg["train"], seed=1).fit(test=False))
    assert fits[0].history[-1]["loss"] == fits[1].history[-1]["loss"]
    assert fits[0].valid == fits[1].valid
    # without a process group the gradient all-reduce is a no-op
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    all_reduce_gradients([p], weight=5.0)
    assert p.grad.tolist() == [2.0, 2.0, 2.0]


def test_batch_size_must_split_over_ranks():
    ei = torch.tensor([[0, 1], [0, 1]])
    data = TrainData(2, 3, ei, ei, ei)
    with pytest.raises(ValueError, match="divisible by the number of ranks 2"):
        DistributedTrainer(torch.nn.Linear(1, 1), data, {"batch_size": 63}, rank=0,
                           world_size=2)


# ------------------------------------------------------------------ multi-process
# Plain module-level functions for `launch` (the spawned ranks import them).
def _rank_all_reduce(out_dir, expected_world):
    """Joins the job, all-reduces its rank and records what it saw."""
    import torch.distributed as dist
    from pyg_mmrec.train import distributed
    ctx = distributed.init_from_env("cpu", timeout=60)
    t = torch.tensor([float(ctx.rank)])
    dist.all_reduce(t)
    Path(out_dir, f"rank{ctx.rank}.json").write_text(json.dumps(
        {"rank": ctx.rank, "world": ctx.world_size, "sum": float(t),
         "expected_world": expected_world}))
    distributed.destroy()


def _rank_one_raises(bad_rank):
    import os
    if int(os.environ["RANK"]) == bad_rank:
        raise ValueError(f"rank {bad_rank} cannot go on")
    return 0


def _rank_returns_code():
    import os
    return 5 if os.environ["RANK"] == "1" else 0


def _rank_gather_both_ways(out_dir):
    """_gather_padded on gloo (all-reduce of a slotted zero buffer) and as on NCCL
    (padded all-gather), with uneven counts (rank 2 sends nothing) and a scale."""
    import torch.distributed as dist
    from pyg_mmrec.train import distributed
    ctx = distributed.init_from_env("cpu", timeout=60)
    counts = [3, 5, 0]
    t = torch.arange(counts[ctx.rank] * 2, dtype=torch.float64).view(-1, 2) + 10 * ctx.rank
    slotted = distributed._gather_padded(t.split([1, t.size(0) - 1]) if t.size(0) else [t],
                                         counts, scale=0.5)  # pieces join in the buffer
    backend = dist.get_backend
    dist.get_backend = lambda group=None: "nccl"  # the all_gather branch, still on gloo
    try:
        gathered = distributed._gather_padded([t], counts, scale=0.5)
    finally:
        dist.get_backend = backend
    Path(out_dir, f"rank{ctx.rank}.json").write_text(json.dumps(
        {"slotted": [p.tolist() for p in slotted], "gathered": [p.tolist() for p in gathered]}))
    distributed.barrier()
    distributed.destroy()


def test_padded_gather_is_the_same_by_all_reduce_and_by_all_gather(tmp_path):
    from pyg_mmrec.train.distributed import launch
    assert launch(_rank_gather_both_ways, 3, (str(tmp_path),), timeout=60, threads=1) == 0
    expected = [[[0.5 * (2 * i + j) + 5 * r for j in range(2)] for i in range(n)]
                for r, n in enumerate([3, 5, 0])]
    for f in tmp_path.glob("rank*.json"):
        rec = json.loads(f.read_text())
        assert rec["slotted"] == rec["gathered"] == expected


def test_launch_runs_a_plain_function_on_every_rank(tmp_path):
    from pyg_mmrec.train.distributed import launch
    assert launch(_rank_all_reduce, 3, (str(tmp_path), 3), timeout=60, threads=1) == 0
    seen = sorted(json.loads(f.read_text())["rank"] for f in tmp_path.glob("rank*.json"))
    assert seen == [0, 1, 2]
    for f in tmp_path.glob("rank*.json"):
        rec = json.loads(f.read_text())
        assert rec["world"] == rec["expected_world"] == 3 and rec["sum"] == 0 + 1 + 2


def test_launch_reports_the_failing_rank_of_a_plain_function():
    from pyg_mmrec.train.distributed import launch
    with pytest.raises(RankFailedError) as info:
        launch(_rank_one_raises, 2, (1,), timeout=60, threads=1, grace=10.0)
    e = info.value
    assert (e.rank, e.exitcode) == (1, 1)
    assert "ValueError: rank 1 cannot go on" in e.error and "ValueError" in str(e)
    # an int return value is the rank's exit code; a rank leaving no traceback is named too
    with pytest.raises(RankFailedError, match="rank 1 exited with code 5") as info:
        launch(_rank_returns_code, 2, timeout=60, threads=1)
    assert info.value.exitcode == 5 and info.value.error == ""
    with pytest.raises(ValueError, match="nproc: expected a positive integer"):
        launch(_rank_returns_code, 0)


def test_two_gloo_ranks_match_one_process(tiny_root, tmp_path, capfd):
    """2 ranks x 32 = the 1-process global batch of 64 (the last batch, 3 triples,
    splits 2 + 1): same trajectory up to float summation order. Tolerance: loss
    values 1e-5 relative, every validation/test metric 1e-6 absolute."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(base_args(tiny_root) + ["--out", str(one)]) == 0
    assert main(base_args(tiny_root) + ["--out", str(two), "--nproc", "2"]) == 0
    table = capfd.readouterr().out  # the ranks write to the file descriptors
    assert table.count("| tiny | lightgcn |") == 2  # rank 1 printed nothing
    log1, log2 = read_log(one), read_log(two)
    assert len(log2) == 3  # only rank 0 writes
    for a, b in zip(log1, log2):
        for k in ("loss", "loss/bpr", "loss/reg"):
            assert b[k] == pytest.approx(a[k], rel=1e-5)
        assert a["valid"].keys() == b["valid"].keys()
        for k in a["valid"]:
            assert b["valid"][k] == pytest.approx(a["valid"][k], abs=1e-6)
    (r1,), (r2,) = list(one.rglob("result.json")), list(two.rglob("result.json"))
    r1, r2 = json.loads(r1.read_text()), json.loads(r2.read_text())
    assert r1["best_epoch"] == r2["best_epoch"]
    for k in r1["test"]:
        assert r2["test"][k] == pytest.approx(r1["test"][k], abs=1e-6)


def test_torchrun_ranks_train_and_leave_cleanly(tiny_root, tmp_path):
    """The same job under torchrun: both ranks exit 0 (they leave the process group
    and skip the interpreter's teardown), only rank 0 prints the table."""
    import shutil
    import subprocess
    import sys
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not installed next to this Python")
    out = tmp_path / "tr"
    proc = subprocess.run(
        [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "pyg_mmrec",
         *base_args(tiny_root), "--out", str(out)],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("| tiny | lightgcn |") == 1
    assert "terminate called" not in proc.stderr
    (result,) = list(out.rglob("result.json"))
    assert json.loads(result.read_text())["test"]


def run_bounded(argv, seconds):
    """main(argv) in a thread; fails the test instead of hanging."""
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("rc", main(argv)), daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"the job did not finish within {seconds} s"
    return result["rc"]


def test_failing_rank_stops_the_job_and_the_checkpoint_resumes(tiny_root, tmp_path, capfd,
                                                              monkeypatch):
    """I3-MRec (with its CLUB estimators' optimiser) on 2 ranks; rank 1 raises in
    epoch 1: the job exits non-zero (bounded: a hang fails the test), shows rank
    1's error, and the epoch-0 checkpoint resumes on a single rank."""
    out = tmp_path / "runs"
    args = base_args(tiny_root, "I3MRec", epochs=2) + ["--out", str(out)]
    monkeypatch.setenv(FAULT_ENV, "rank=1,epoch=1,batch=1")  # inherited by the ranks
    assert run_bounded(args + ["--nproc", "2"], 240) == 1
    err = capfd.readouterr().err
    assert "error: rank 1 exited with code 1" in err
    assert "injected failure (PYG_MMREC_FAULT) on rank 1 at epoch 1, batch 1" in err
    monkeypatch.delenv(FAULT_ENV)
    (ckpt,) = list(out.rglob("checkpoint.pt"))
    state = load_checkpoint(ckpt)
    assert (state["epoch"], state["batch"], state["finished"]) == (1, 0, False)
    epoch0 = read_log(out)
    assert [r["epoch"] for r in epoch0] == [0]
    assert main(args + ["--resume"]) == 0  # a different number of ranks
    log = read_log(out)
    assert [r["epoch"] for r in log] == [0, 1] and log[0] == epoch0[0]
    assert json.loads(next(out.rglob("result.json")).read_text())["test"]["recall@10"] >= 0
