r"""What does a sampled LGMRec step cost with the hyperedge embeddings estimated
from ``hyper_sample`` anchor items against every item an anchor
(``hyper_sample: null``), and against a full-graph step, as the graph grows?

On ML-100K, LGMRec keeps its full-graph quality sampled at fan-out [20, 20]
only with ``hyper_sample: null`` (docs/scaling.md). Then every item is a seed of
every step's neighbour sample, so the step should grow with the catalogue
instead of staying bounded by the batch; this measures by how much.

Synthetic data from ``bench_scale.py`` (:math:`U = E/20` users, :math:`I = E/40`
items, two random modalities, 20 % missing each). One process, ``--threads``
torch threads; per configuration one warm-up step, then ``--batches`` real
trainer steps at batch size 2048 (CPU seconds of this process by default).
Growth per doubling of :math:`E`: 2.0 is linear, 1.0 constant.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_lgmrec_anchors.py [--sizes 100k,200k,400k,800k]
        [--fanout 20,20] [--anchors 1024] [--batches 3] [--threads 1] [--quick]
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import BATCH, fmt_size, parse_fanout, parse_size, synthetic  # noqa: E402


def step_seconds(data, fanout, hyper_sample, batches: int, clock: str) -> float:
    """Mean seconds of ``batches`` LGMRec trainer steps on ``data`` (what
    :func:`synthetic` returns; ``fanout=None``: full graph)."""
    import torch

    from pyg_mmrec.config import build_config
    from pyg_mmrec.models import get_model_class
    from pyg_mmrec.train import TrainData, Trainer

    U, I, ei, valid, feats, masks = data
    cfg = build_config("LGMRec", {"batch_size": BATCH, "fanout": fanout,
                                  "hyper_sample": hyper_sample})
    torch.manual_seed(0)
    model = get_model_class("LGMRec")(U, I, ei, dict(feats), dict(masks), **cfg["hparams"])
    trainer = Trainer(model, TrainData(U, I, ei, valid, valid, feats, masks), cfg["train"])
    users, pos, neg = trainer.sampler.sample(0)
    model.train()
    now = time.process_time if clock == "cpu" else time.perf_counter
    times = []
    for b in range(batches + 1):  # the first step warms up (caches, allocator)
        sl = slice(b * BATCH, (b + 1) * BATCH)
        t0 = now()
        trainer.train_step(users[sl], pos[sl], neg[sl], 0, b)
        if b:
            times.append(now() - t0)
    return sum(times) / len(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="100k,200k,400k,800k",
                   help="interactions per synthetic graph, e.g. 100k,200k,400k")
    p.add_argument("--fanout", type=parse_fanout, default=[20, 20])
    p.add_argument("--anchors", type=int, default=1024,
                   help="hyper_sample of the bounded estimate (compared with null = all items)")
    p.add_argument("--batches", type=int, default=3, help="timed training steps per configuration")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    p.add_argument("--quick", action="store_true", help="100k,200k,400k; 2 batches")
    args = p.parse_args(argv)
    if args.anchors < 1:
        p.error(f"--anchors: expected a positive int, got {args.anchors}")
    if args.batches < 1:
        p.error(f"--batches: expected a positive int, got {args.batches}")
    if args.quick:
        args.sizes, args.batches = "100k,200k,400k", 2
    try:
        sizes = sorted(parse_size(s) for s in args.sizes.split(","))
    except argparse.ArgumentTypeError as e:
        p.error(str(e))
    import torch
    torch.set_num_threads(args.threads)

    modes = [("full graph", None, None), (f"{args.anchors} anchors", args.fanout, args.anchors),
             ("every item", args.fanout, None)]
    rows = []
    for size in sizes:
        data = synthetic(size)  # one graph per size, shared by the three modes
        U, I = data[0], data[1]
        t = {}
        for name, fanout, anchors in modes:
            t[name] = step_seconds(data, fanout, anchors, args.batches, args.clock)
            print(f"[{fmt_size(size)}] {name}: {t[name]:.3f} s/step", file=sys.stderr)
        rows.append((size, U, I, t))

    every, bounded = "every item", f"{args.anchors} anchors"
    print(f"\nLGMRec, sampled {args.fanout} vs full graph; {args.clock} seconds per step, "
          f"batch {BATCH}, {args.threads} thread(s)\n")
    print(f"| E | users | items | full graph | {bounded} | every item | every item / "
          f"{args.anchors} anchors | every item / full graph |")
    print("|---|---|---|---|---|---|---|---|")
    for size, U, I, t in rows:
        print(f"| {fmt_size(size)} | {U:,} | {I:,} | {t['full graph']:.3f} | {t[bounded]:.3f} | "
              f"{t[every]:.3f} | {t[every] / t[bounded]:.2f} | {t[every] / t['full graph']:.2f} |")
    if len(rows) > 1:
        doublings = math.log2(rows[-1][0] / rows[0][0])
        grow = {k: (rows[-1][3][k] / rows[0][3][k]) ** (1 / doublings) for k in rows[0][3]}
        print(f"\nstep growth per doubling of E, {fmt_size(rows[0][0])} -> "
              f"{fmt_size(rows[-1][0])} (1.0 = bounded, 2.0 = linear): "
              + ", ".join(f"{k} {v:.2f}" for k, v in grow.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
