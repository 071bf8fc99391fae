r"""The optimiser step of sampled training: lazy Adam on the rows of a sparse gradient.

Question: how long does one step of :class:`pyg_mmrec.train.optim.LazyAdam`
take on an embedding table when a batch touches ``n`` rows (with repeats, as an
embedding backward leaves them), with the compiled row update
(``torch.ops.pyg_mmrec.lazy_adam_rows_``, CPU) against its torch-op reference
(static shapes, what other devices run) and against
:class:`torch.optim.SparseAdam` (which coalesces the gradient first)? Every
method updates the same rows with the same rule (SparseAdam without weight
decay, as the others here).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_lazy_adam.py [--rows 1200000] [--touched 100000,400000]
"""
from __future__ import annotations

import argparse
import time


def seconds(method: str, table_rows: int, touched: int, dim: int, repeats: int) -> float:
    import torch
    from pyg_mmrec.ops.lazy_adam import lazy_adam_rows_, lazy_adam_rows_reference
    g = torch.Generator().manual_seed(0)
    param = torch.nn.Parameter(torch.randn(table_rows, dim, generator=g))
    idx = torch.randint(0, table_rows, (touched,), generator=g)
    val = torch.randn(touched, dim, generator=g)
    grad = torch.sparse_coo_tensor(idx.unsqueeze(0), val, param.shape, check_invariants=False)
    m, v = torch.zeros_like(param), torch.zeros_like(param)
    kw = dict(step_size=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
              bc2_sqrt=0.5)
    if method == "sparse_adam":
        opt = torch.optim.SparseAdam([param], lr=1e-3)

        def step():
            param.grad = grad
            opt.step()
    else:
        fn = lazy_adam_rows_ if method == "compiled" else lazy_adam_rows_reference

        def step():
            with torch.no_grad():
                fn(param.data, m, v, idx, val, **kw)
    step()  # warm-up (SparseAdam allocates its state)
    t0 = time.process_time()
    for _ in range(repeats):
        step()
    return (time.process_time() - t0) / repeats


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_200_000, help="table rows")
    p.add_argument("--touched", default="100000,400000", help="gradient rows per step")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    from pyg_mmrec.ops.lazy_adam import LAZY_ADAM_DEVICES
    if "cpu" not in LAZY_ADAM_DEVICES:
        p.error("pyg_mmrec._C has no lazy_adam_rows_ kernel: build it first "
                "(python setup.py build_ext --inplace)")
    print(f"Lazy Adam step on a {args.rows:,} x {args.dim} table, 1 thread, CPU s per step "
          f"(mean of {args.repeats})\n")
    print("| rows touched | compiled s | reference s | SparseAdam s | reference / compiled | "
          "SparseAdam / compiled |")
    print("|---|---|---|---|---|---|")
    for n in (int(x) for x in args.touched.split(",")):
        t = {k: seconds(k, args.rows, n, args.dim, args.repeats)
             for k in ("compiled", "reference", "sparse_adam")}
        print(f"| {n:,} | {t['compiled']:.3f} | {t['reference']:.3f} | {t['sparse_adam']:.3f} | "
              f"{t['reference'] / t['compiled']:.2f} | {t['sparse_adam'] / t['compiled']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
