r"""How cost grows with the number of interactions: LightGCN and I3-MRec on
synthetic graphs of 1M, 5M and 20M interactions.

Question: on one machine, does the cost of training and evaluation grow
linearly with the interactions :math:`E`, with no dense users×items or
items×items matrix anywhere, and what is the largest graph that fits in 24 GiB?

Synthetic data (seeded): :math:`U = E/20` users, :math:`I = E/40` items, items
drawn with a mild popularity skew, duplicates removed; two modalities
(``image`` 128-d, ``text`` 64-d random features), each missing for a random 20 %
of the items; one validation item per user. Every (size, model) runs in a fresh
subprocess (peak RSS per configuration) with ``--threads`` torch threads.

Measured per configuration:

* ``build``: model construction (graph normalisation, CSR caches) and the
  trainer (BPR sampler index);
* ``s/batch``: mean wall time of ``--batches`` real trainer steps (estimator
  step, forward over the whole graph, loss, backward, Adam) at batch size
  2048, after one warm-up step;
* ``s/epoch``: sampling the epoch's triples + ``s/batch`` × ``ceil(E/2048)``
  batches: *extrapolated* from the timed batches, not a full epoch;
* ``s/eval``: a full-ranking validation: the full-graph forward plus the
  chunked ranking of ``--eval-users`` users, *extrapolated* linearly to all
  :math:`U` users;
* ``peak RSS`` (``ru_maxrss`` of the subprocess).

The growth factor per doubling between consecutive sizes is
:math:`(t_2/t_1)^{1/\log_2(E_2/E_1)}`: 2.0 is linear. Two facts bound what can
be linear: every step propagates over the *whole* graph (as MMRec's LightGCN
and I3-MRec do), so ``s/batch`` is :math:`O(E)` but an epoch of
:math:`E/B` steps is :math:`O(E^2/B)` at a fixed batch size :math:`B`; and
full ranking scores every item for every user, :math:`O(U\cdot I)`, which is
quadratic when both grow with :math:`E` (memory stays bounded by chunking).
The largest size fitting in 24 GiB comes from a least-squares line through
the measured peak RSS.

Usage::

    python benchmarks/bench_scale.py [--sizes 1M,5M,20M] [--models lightgcn,i3mrec]
        [--batches 3] [--eval-users 4096] [--threads 1] [--quick]

``--quick``: sizes 100k,200k,400k, 2 batches, 1024 evaluation users.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"lightgcn": "LightGCN", "i3mrec": "I3MRec"}
DIMS = {"image": 128, "text": 64}
BATCH = 2048
GIB = 2 ** 30


def parse_size(text: str) -> int:
    t = text.strip().lower()
    mult = {"k": 10 ** 3, "m": 10 ** 6}.get(t[-1:], 1)
    try:
        return int(float(t[:-1] if t[-1:] in "km" else t) * mult)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes: expected e.g. 1M,5M,20M, got {text!r}")


def fmt_size(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 10 ** 6 else f"{n / 1e3:g}k"


# ----------------------------------------------------------------------------- one configuration
def synthetic(num_inter: int, seed: int = 0):
    import torch
    g = torch.Generator().manual_seed(seed)
    U, I = max(2, num_inter // 20), max(2, num_inter // 40)
    user = torch.randint(0, U, (num_inter,), generator=g)
    # mild popularity skew: item = floor(I * x^1.5), x uniform
    item = (torch.rand(num_inter, generator=g).pow(1.5) * I).long().clamp_(max=I - 1)
    key = torch.unique(user * I + item)
    ei = torch.stack([key // I, key % I])
    valid = torch.stack([torch.arange(U), torch.randint(0, I, (U,), generator=g)])
    feats = {m: torch.randn(I, d, generator=g) for m, d in DIMS.items()}
    masks = {m: torch.rand(I, generator=g) >= 0.2 for m in DIMS}
    return U, I, ei, valid, feats, masks


def worker(size: int, model_key: str, batches: int, eval_users: int, threads: int) -> dict:
    import torch
    torch.set_num_threads(threads)
    from pyg_mmrec.config import build_config
    from pyg_mmrec.metrics import evaluate_full_ranking
    from pyg_mmrec.models import get_model_class
    from pyg_mmrec.train import TrainData, Trainer

    t0 = time.perf_counter()
    U, I, ei, valid, feats, masks = synthetic(size)
    t_data = time.perf_counter() - t0
    name = MODELS[model_key]
    cfg = build_config(name, {"batch_size": BATCH})
    ctor = get_model_class(name)
    if not getattr(ctor, "uses_features", True):
        feats, masks = {}, {}
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = ctor(U, I, ei, dict(feats), dict(masks), **cfg["hparams"])
    trainer = Trainer(model, TrainData(U, I, ei, valid, valid, feats, masks), cfg["train"])
    t_build = time.perf_counter() - t0

    t0 = time.perf_counter()
    users, pos, neg = trainer.sampler.sample(0)
    t_sample = time.perf_counter() - t0
    model.train()
    step_times = []
    for b in range(batches + 1):  # the first step warms up (caches, allocator)
        sl = slice(b * BATCH, (b + 1) * BATCH)
        t0 = time.perf_counter()
        trainer._step(users[sl], pos[sl], neg[sl], 0, b)
        if b:
            step_times.append(time.perf_counter() - t0)
    del users, pos, neg
    s_batch = sum(step_times) / len(step_times)
    num_batches = math.ceil(ei.size(1) / BATCH)

    model.eval()
    with torch.no_grad():
        t0 = time.perf_counter()
        user_emb, item_emb = model.embeddings_for_eval()
        t_fwd = time.perf_counter() - t0
        n_eval = min(eval_users, U)
        target = valid[:, :n_eval]
        t0 = time.perf_counter()
        evaluate_full_ranking(user_emb, item_emb, target, [ei], ks=(10, 20, 50))
        t_rank = time.perf_counter() - t0
    # the exclusion CSR over all of E is built once per call (counted in t_rank);
    # the ranking itself is linear in the number of users
    s_eval = t_fwd + t_rank * U / n_eval
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"size": size, "model": model_key, "users": U, "items": I, "edges": ei.size(1),
            "data_s": t_data, "build_s": t_build, "sample_s": t_sample, "s_batch": s_batch,
            "num_batches": num_batches, "s_epoch": t_sample + s_batch * num_batches,
            "fwd_s": t_fwd, "rank_s": t_rank, "eval_users": n_eval, "s_eval": s_eval,
            "peak_rss": rss, "threads": threads}


# ----------------------------------------------------------------------------- driver
def mem_available() -> int:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def fit_line(xs, ys):
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return my - b * mx, b


def growth(rows, key):
    out = []
    for r1, r2 in zip(rows, rows[1:]):
        doublings = math.log2(r2["edges"] / r1["edges"])
        out.append((r2[key] / r1[key]) ** (1.0 / doublings) if r1[key] > 0 else float("nan"))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1M,5M,20M",
                   type=lambda s: [parse_size(x) for x in s.split(",") if x.strip()])
    p.add_argument("--models", default="lightgcn,i3mrec")
    p.add_argument("--batches", type=int, default=3, help="timed training steps per size")
    p.add_argument("--eval-users", type=int, default=4096,
                   help="users ranked for the evaluation timing (extrapolated to all)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="100k,200k,400k; 2 batches")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    p.add_argument("--reuse", default=None, metavar="JSON",
                   help="rows of an earlier --json run: configurations found there are not re-run")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        size, model = args.worker.split(":")
        print(json.dumps(worker(int(size), model, args.batches, args.eval_users, args.threads)))
        return 0
    if args.quick:
        args.sizes, args.batches, args.eval_users = [100_000, 200_000, 400_000], 2, 1024
    models = [m.strip().lower() for m in args.models.split(",")]
    for m in models:
        if m not in MODELS:
            p.error(f"--models: unknown {m!r}; expected {sorted(MODELS)}")
    sizes = sorted(args.sizes)
    print(f"# bench_scale: sizes {[fmt_size(s) for s in sizes]}, {args.threads} thread(s), "
          f"batch {BATCH}, {args.batches} timed step(s), {args.eval_users} eval users",
          flush=True)
    rows = {m: [] for m in models}
    old = json.loads(Path(args.reuse).read_text()) if args.reuse else {}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads),
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for m in models:
        for s in sizes:
            done = rows[m]
            prev = [r for r in old.get(m, []) if r["size"] == s]
            if prev:
                done.append(prev[0])
                print(f"  {m:8s} {fmt_size(s):>5s}: reused from {args.reuse}", flush=True)
                continue
            if len(done) >= 2:  # refuse sizes that would not fit in the free memory
                a, b = fit_line([r["edges"] for r in done], [r["peak_rss"] for r in done])
                need = a + b * s
                if need > 0.75 * mem_available():  # leave room for the others on this machine
                    print(f"skip {m} {fmt_size(s)}: needs ~{need / GIB:.1f} GiB, "
                          f"{mem_available() / GIB:.1f} GiB available", flush=True)
                    continue
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, __file__, "--worker", f"{s}:{m}",
                                   "--batches", str(args.batches), "--eval-users",
                                   str(args.eval_users), "--threads", str(args.threads)],
                                  capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                print(f"FAILED {m} {fmt_size(s)} (exit {proc.returncode}):\n{proc.stderr[-3000:]}",
                      flush=True)
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            done.append(r)
            print(f"  {m:8s} {fmt_size(s):>5s}: {r['s_batch']:.3f} s/batch, "
                  f"{r['s_epoch']:.0f} s/epoch, {r['s_eval']:.0f} s/eval, "
                  f"{r['peak_rss'] / GIB:.2f} GiB  ({time.perf_counter() - t0:.0f} s wall)",
                  flush=True)

    print("\n| model | E (interactions) | users | items | build s | s/batch | s/epoch* | "
          "s/eval* | peak RSS GiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for m in models:
        for r in rows[m]:
            print(f"| {MODELS[m]} | {r['edges']:,} | {r['users']:,} | {r['items']:,} | "
                  f"{r['build_s']:.1f} | {r['s_batch']:.3f} | {r['s_epoch']:,.0f} | "
                  f"{r['s_eval']:,.0f} | {r['peak_rss'] / GIB:.2f} |")
    print("\n*extrapolated: s/epoch = sampling + s/batch x ceil(E/2048); s/eval = forward + "
          "ranking time of the timed users x U / timed users")
    print("\nGrowth factor per doubling of E (2.0 = linear):\n")
    print("| model | sizes | s/batch | s/epoch | s/eval | peak RSS | build |")
    print("|---|---|---|---|---|---|---|")
    for m in models:
        rs = rows[m]
        if len(rs) < 2:
            continue
        cols = [growth(rs, k) for k in ("s_batch", "s_epoch", "s_eval", "peak_rss", "build_s")]
        for j in range(len(rs) - 1):
            print(f"| {MODELS[m]} | {fmt_size(rs[j]['size'])} -> {fmt_size(rs[j + 1]['size'])} | "
                  + " | ".join(f"{c[j]:.2f}" for c in cols) + " |")
        if len(rs) > 2:  # end to end: less sensitive to the noise of single points
            ends = [rs[0], rs[-1]]
            print(f"| {MODELS[m]} | **{fmt_size(rs[0]['size'])} -> {fmt_size(rs[-1]['size'])}** | "
                  + " | ".join(f"**{growth(ends, k)[0]:.2f}**"
                               for k in ("s_batch", "s_epoch", "s_eval", "peak_rss", "build_s"))
                  + " |")
    print("\nLargest E fitting in 24 GiB (least squares on peak RSS):")
    for m in models:
        rs = rows[m]
        if len(rs) < 2:
            continue
        a, b = fit_line([r["edges"] for r in rs], [r["peak_rss"] for r in rs])
        emax = (24 * GIB - a) / b if b > 0 else float("inf")
        print(f"  {MODELS[m]}: RSS ~ {a / GIB:.2f} GiB + {b * 1e6 / GIB:.3f} GiB per 1M "
              f"interactions -> ~{emax / 1e6:.0f}M interactions "
              f"({emax / 20 / 1e6:.1f}M users, {emax / 40 / 1e6:.1f}M items)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
