r"""InfoNCE over aligned views: the fused pair against two autograd ``logsumexp``.

Question: how much of a multi-view InfoNCE step (forward + backward over every
pair of ``V`` views of ``N`` rows) does the fused pair of
:class:`pyg_mmrec.nn.InfoNCE` save? It takes one exponential of the similarity
matrix for both directions and writes its own backward; the alternative,
``InfoNCE._both_ways_autograd``, is the same loss in plain autograd (two
``logsumexp``, whose backward recomputes both exponentials). Both give the
same numbers (tests/nn/test_infonce.py). The I3-MRec reference configuration
contrasts 3-4 views of every 2,048 batch positives each step.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_infonce.py [--sizes 2048,4096] [--views 2,4]
"""
from __future__ import annotations

import argparse
import time


def step_seconds(fused: bool, n: int, views: int, weighted: bool, dim: int, repeats: int
                 ) -> float:
    import torch
    from pyg_mmrec.nn import InfoNCE
    torch.manual_seed(0)
    nce = InfoNCE(temperature=0.4)
    xs = [torch.randn(n, dim, requires_grad=True) for _ in range(views)]
    weight = (torch.rand(n) > 0.2) if weighted else None
    pair = nce._both_ways if fused else nce._both_ways_autograd

    def once():
        vs = [nce._prepare(x, "view") for x in xs]
        total = vs[0].new_zeros(())
        for i in range(views):
            for j in range(i + 1, views):
                ab, ba = pair(vs[i], vs[j], weight)
                total = total + ab + ba
        total.backward()

    once()  # warm-up
    t0 = time.process_time()
    for _ in range(repeats):
        once()
    return (time.process_time() - t0) / repeats


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="2048,4096", help="rows per view")
    p.add_argument("--views", default="2,4")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    print(f"InfoNCE forward + backward over every pair of views, d={args.dim}, 1 thread, "
          f"CPU s per step (mean of {args.repeats})\n")
    print("| rows | views | weighted | autograd s | fused s | speed-up |")
    print("|---|---|---|---|---|---|")
    for n in (int(x) for x in args.sizes.split(",")):
        for v in (int(x) for x in args.views.split(",")):
            for weighted in (False, True):
                ref = step_seconds(False, n, v, weighted, args.dim, args.repeats)
                fused = step_seconds(True, n, v, weighted, args.dim, args.repeats)
                print(f"| {n:,} | {v} | {'yes' if weighted else 'no'} | {ref:.3f} | "
                      f"{fused:.3f} | {ref / fused:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
