r"""Sampled (``fanout``) LightGCN on one rank against several gloo ranks.

Question: how much faster is a step of sampled training on :math:`W` ranks
(1 thread each) than on one, at the same *global* batch, and what does the
sparse gradient reduction cost in it, against densifying the embedding
gradients (the reduction of full-graph training)?

The graph is the synthetic one of ``bench_scale.py`` (:math:`U = E/20` users,
:math:`I = E/40` items). Every configuration is one job started with
:func:`pyg_mmrec.train.distributed.launch` (``--ranks 1`` is a job of one
rank): the ranks build the graph, LightGCN with ``--fanout`` and a
:class:`~pyg_mmrec.train.distributed.DistributedTrainer`, run one warm-up step
and ``--batches`` timed steps of the epoch's global batches
(``--batch-size``). Rank 0 reports:

* ``s/step``: wall seconds per step (the ranks meet at every reduction, so
  this is the job's step time);
* ``s/reduce``: of which the gradient reduction (all ranks' slowest share
  shows up in everybody's);
* ``rows``: embedding rows of the reduced gradient (the union of the ranks'
  sampled rows), which is what the lazy optimiser updates;
* ``speed-up``: ``s/step`` of 1 rank over ``s/step`` of :math:`W` ranks.

``--reduce dense`` densifies the embedding gradients before the all-reduce
(:math:`O((U+I)d)` per step, and the optimiser then touches every row), for
comparison with the default ``sparse`` (all-gather of the ranks' rows).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_sampled_ranks.py --size 1M --ranks 1,2 \
        [--reduce sparse,dense] [--fanout 10,10] [--batch-size 2048] [--batches 5]

``--quick``: 20k interactions, batch 512, 3 steps (a check that it runs).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import fmt_size, parse_fanout, parse_size, synthetic  # noqa: E402


def rank_job(out: str, size: int, fanout, batch_size: int, batches: int, reduce: str) -> None:
    """One rank of a job (module level: the spawned ranks import it)."""
    import torch

    from pyg_mmrec.config import build_config
    from pyg_mmrec.models import get_model_class
    from pyg_mmrec.train import TrainData, distributed

    ctx = distributed.init_from_env("cpu")
    U, I, ei, valid, _, _ = synthetic(size)
    cfg = build_config("LightGCN", {"batch_size": batch_size, "fanout": list(fanout)})
    torch.manual_seed(0)
    model = get_model_class("LightGCN")(U, I, ei, **cfg["hparams"])
    tr = distributed.DistributedTrainer(model, TrainData(U, I, ei, valid, valid), cfg["train"])
    if reduce == "dense":
        tr.sparse_params = []  # every sparse gradient is densified, then all-reduced
    spent, counting = [0.0], [0.0]
    rows = []
    reduce_gradients = tr.reduce_gradients

    def timed_reduce(params, n):
        t0 = time.perf_counter()
        reduce_gradients(params, n)
        t1 = time.perf_counter()
        spent[0] += t1 - t0
        rows.append(sum(int(t.grad.coalesce()._nnz()) if t.grad.is_sparse else t.size(0)
                        for t in (model.user_embedding.weight, model.item_embedding.weight)
                        if t.grad is not None))
        counting[0] += time.perf_counter() - t1  # not part of training: taken out of s/step
    tr.reduce_gradients = timed_reduce
    users, pos, neg = tr.sampler.sample(0, ctx.rank, ctx.world_size)
    local = tr.train_cfg["batch_size"]
    model.train()
    times = []
    for b in range(batches + 1):  # the first step warms up
        sl = slice(b * local, (b + 1) * local)
        if b == 1:
            spent[0], rows[:] = 0.0, []
        distributed.barrier()
        counting[0] = 0.0
        t0 = time.perf_counter()
        tr.train_step(users[sl], pos[sl], neg[sl], 0, b)
        if b:
            times.append(time.perf_counter() - t0 - counting[0])
    if ctx.rank == 0:
        Path(out).write_text(json.dumps({
            "ranks": ctx.world_size, "reduce": reduce, "edges": int(ei.size(1)), "users": U,
            "items": I, "s_step": sum(times) / len(times), "s_reduce": spent[0] / len(times),
            "rows": sum(rows) / max(1, len(rows))}))
    distributed.destroy()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=parse_size, default=parse_size("1M"),
                   help="interactions of the synthetic graph (default: 1M)")
    p.add_argument("--ranks", default="1,2", help="rank counts to compare (default: %(default)s)")
    p.add_argument("--reduce", default="sparse",
                   help="sparse, dense or both (comma-separated; default: %(default)s)")
    p.add_argument("--fanout", type=parse_fanout, default=[10, 10])
    p.add_argument("--batch-size", type=int, default=2048, help="global batch")
    p.add_argument("--batches", type=int, default=5, help="timed steps")
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--quick", action="store_true", help="20k interactions, batch 512, 3 steps")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.batch_size, args.batches = 20_000, 512, 3
    try:
        ranks = [int(r) for r in args.ranks.split(",")]
    except ValueError:
        p.error(f"--ranks: expected e.g. 1,2, got {args.ranks!r}")
    reduces = args.reduce.split(",")
    if not set(reduces) <= {"sparse", "dense"}:
        p.error(f"--reduce: expected sparse, dense or sparse,dense, got {args.reduce!r}")
    from pyg_mmrec.train.distributed import launch

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for reduce in reduces:
            for w in ranks:
                out = os.path.join(tmp, f"{reduce}{w}.json")
                launch(rank_job, w, (out, args.size, args.fanout, args.batch_size, args.batches,
                                     reduce), timeout=args.timeout, threads=1)
                rows.append(json.loads(Path(out).read_text()))
                r = rows[-1]
                print(f"  {reduce} reduce, {w} rank(s): {r['s_step']:.4f} s/step", file=sys.stderr)
    base = {r["reduce"]: r["s_step"] for r in rows if r["ranks"] == 1}
    r0 = rows[0]
    print(f"LightGCN fanout={args.fanout}, E={fmt_size(r0['edges'])} ({r0['edges']:,}), "
          f"U={r0['users']:,}, I={r0['items']:,}, global batch {args.batch_size}, "
          f"1 thread per rank, {args.batches} timed steps (wall clock)\n")
    print("| reduce | ranks | s/step | s/reduce | rows per step | speed-up vs 1 rank |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ratio = base[r["reduce"]] / r["s_step"] if r["reduce"] in base else float("nan")
        print(f"| {r['reduce']} | {r['ranks']} | {r['s_step']:.4f} | {r['s_reduce']:.4f} | "
              f"{r['rows']:,.0f} | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
