r"""How cost grows with the number of interactions: LightGCN and I3-MRec with
full-graph propagation (MMRec's scheme) and with sampled-subgraph (``fanout``)
training, on synthetic graphs.

Question: on one machine, does the cost of training and evaluation grow
linearly with the interactions :math:`E`, with no dense users×items or
items×items matrix anywhere, and what is the largest graph that fits in 24 GiB?

Synthetic data (seeded): :math:`U = E/20` users, :math:`I = E/40` items, items
drawn with a mild popularity skew, duplicates removed; two modalities
(``image`` 128-d, ``text`` 64-d random features), each missing for a random 20 %
of the items; one validation item per user. Every (size, model, mode) runs in a
fresh subprocess (peak RSS per configuration) with ``--threads`` torch threads.

Modes: ``full`` propagates the whole graph at every step (a step is
:math:`O(E)`, an epoch of :math:`E/B` steps :math:`O(E^2/B)`); ``sampled``
sets the model's ``fanout`` (``--fanout-lightgcn``, ``--fanout-i3mrec``): each
step propagates a layer-wise neighbour sample of the batch
(:class:`pyg_mmrec.nn.neighbor_sampling.LayerwiseSampler`) and steps the ID
embeddings with :class:`pyg_mmrec.train.optim.LazyAdam`, so a step is
:math:`O(B \prod_l f_l)` and an epoch :math:`O(E)`.

Measured per configuration:

* ``build``: model construction (graph normalisation, CSR caches) and the
  trainer (BPR sampler index);
Times are CPU seconds of the (1-thread) worker process by default (``--clock
cpu``): on a shared machine the wall clock moves by ±50 % with the other jobs'
load, the CPU time of a single-threaded process much less (``--clock wall`` for
wall-clock figures; the per-step wall time is always printed while running).

* ``s/step``: mean time of ``--batches`` real trainer steps (estimator
  step, forward, loss, backward, optimiser) at batch size 2048, after one
  warm-up step;
* ``s/epoch``: sampling the epoch's triples + ``s/step`` × ``ceil(E/2048)``
  steps: *extrapolated* from the timed steps, not a full epoch;
* ``s/eval``: a full-ranking validation, the same in both modes: one
  full-graph forward plus the chunked ranking of ``--eval-users`` users,
  *extrapolated* linearly to all :math:`U` users (``all``) or to
  ``--eval-max-users`` users (``capped``: what ``train.eval_max_users`` does;
  an estimate of the metrics over a fixed seeded subset of users);
* ``peak RSS`` (``ru_maxrss`` of the subprocess).

The growth factor per doubling between consecutive sizes is
:math:`(t_2/t_1)^{1/\log_2(E_2/E_1)}`: 2.0 is linear, 1.0 constant. Full
ranking of all users scores every item for every user, :math:`O(U\cdot I)`,
which is quadratic when both grow with :math:`E`; with a fixed user cap only
the forward (:math:`O(E)`) and the ranking of the capped users against all
items (:math:`O(I)`) remain. The largest size fitting in 24 GiB comes from a
least-squares line through the measured peak RSS.

Usage::

    python benchmarks/bench_scale.py [--sizes 1M,2M,4M] [--models lightgcn,i3mrec]
        [--modes full,sampled] [--fanout-lightgcn 10,10] [--fanout-i3mrec 5,5,5]
        [--batches 3] [--eval-users 4096] [--eval-max-users 4096] [--threads 1] [--quick]

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


def worker(size: int, model_key: str, mode: str, fanout, batches: int, eval_users: int,
           eval_max_users: int, threads: int) -> dict:
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
    overrides = {"batch_size": BATCH}
    if mode == "sampled":
        overrides["fanout"] = list(fanout)
    cfg = build_config(name, overrides)
    ctor = get_model_class(name)
    if not getattr(ctor, "uses_features", True):
        feats, masks = {}, {}
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = ctor(U, I, ei, dict(feats), dict(masks), **cfg["hparams"])
    trainer = Trainer(model, TrainData(U, I, ei, valid, valid, feats, masks), cfg["train"])
    t_build = time.perf_counter() - t0

    t0, c0 = time.perf_counter(), time.process_time()
    users, pos, neg = trainer.sampler.sample(0)
    t_sample, c_sample = time.perf_counter() - t0, time.process_time() - c0
    model.train()
    step_times, step_cpu = [], []
    for b in range(batches + 1):  # the first step warms up (caches, allocator)
        sl = slice(b * BATCH, (b + 1) * BATCH)
        t0, c0 = time.perf_counter(), time.process_time()
        trainer.train_step(users[sl], pos[sl], neg[sl], 0, b)
        if b:
            step_times.append(time.perf_counter() - t0)
            step_cpu.append(time.process_time() - c0)
    sample_nodes = sample_edges = None
    if mode == "sampled":  # size of one step's computation graph (bounded by B * prod(1 + f))
        sl = slice(0, BATCH)
        sub = model.sampler.sample(model.conv.adj, torch.cat(
            [users[sl], pos[sl] + U, neg[sl].reshape(-1) + U]))
        sample_nodes, sample_edges = int(sub.n_id.numel()), sub.num_sampled_edges()
        del sub
    del users, pos, neg
    s_step = sum(step_times) / len(step_times)
    c_step = sum(step_cpu) / len(step_cpu)
    num_batches = math.ceil(ei.size(1) / BATCH)

    model.eval()
    with torch.no_grad():
        t0, c0 = time.perf_counter(), time.process_time()
        user_emb, item_emb = model.embeddings_for_eval()
        t_fwd, c_fwd = time.perf_counter() - t0, time.process_time() - c0
        n_eval = min(eval_users, U)
        target = valid[:, :n_eval]
        t0, c0 = time.perf_counter(), time.process_time()
        evaluate_full_ranking(user_emb, item_emb, target, [ei], ks=(10, 20, 50))
        t_rank, c_rank = time.perf_counter() - t0, time.process_time() - c0
    # the exclusion CSR over all of E is built once per call (counted in t_rank, so
    # the extrapolation to all users over-counts it); the ranking is linear in users
    s_eval = t_fwd + t_rank * U / n_eval
    s_eval_cap = t_fwd + t_rank * min(eval_max_users, U) / n_eval
    # CPU seconds of this 1-thread process: insensitive to the other jobs' load
    cpu = {"s_batch": c_step, "s_epoch": c_sample + c_step * num_batches,
           "s_eval": c_fwd + c_rank * U / n_eval,
           "s_eval_cap": c_fwd + c_rank * min(eval_max_users, U) / n_eval}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"size": size, "model": model_key, "mode": mode,
            "fanout": list(fanout) if mode == "sampled" else None,
            "users": U, "items": I, "edges": ei.size(1),
            "data_s": t_data, "build_s": t_build, "sample_s": t_sample, "s_batch": s_step,
            "optimizer": type(trainer.optimizer).__name__, "sample_nodes": sample_nodes,
            "sample_edges": sample_edges,
            "num_batches": num_batches, "s_epoch": t_sample + s_step * num_batches,
            "fwd_s": t_fwd, "rank_s": t_rank, "eval_users": n_eval, "s_eval": s_eval,
            "eval_max_users": eval_max_users, "s_eval_cap": s_eval_cap,
            "peak_rss": rss, "threads": threads, "cpu": cpu, "wall_s_batch": s_step}


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


def parse_fanout(text: str):
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected e.g. 10,10, got {text!r}")
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"expected positive ints, e.g. 10,10, got {text!r}")
    return out


KEYS = ("s_batch", "s_epoch", "s_eval", "s_eval_cap", "peak_rss")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1M,2M,4M",
                   type=lambda s: [parse_size(x) for x in s.split(",") if x.strip()])
    p.add_argument("--models", default="lightgcn,i3mrec")
    p.add_argument("--modes", default="full,sampled")
    p.add_argument("--fanout-lightgcn", type=parse_fanout, default=[10, 10])
    p.add_argument("--fanout-i3mrec", type=parse_fanout, default=[5, 5, 5])
    p.add_argument("--batches", type=int, default=3, help="timed training steps per size")
    p.add_argument("--eval-users", type=int, default=4096,
                   help="users ranked for the evaluation timing (extrapolated)")
    p.add_argument("--eval-max-users", type=int, default=4096,
                   help="the capped evaluation (train.eval_max_users) reported next to the full one")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="100k,200k,400k; 2 batches")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    p.add_argument("--reuse", default=None, metavar="JSON",
                   help="rows of an earlier --json run: configurations found there are not re-run")
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                   help="report CPU seconds of the worker (default; robust to other jobs on "
                        "a shared machine) or wall-clock seconds")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--fanout", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        size, model, mode = args.worker.split(":")
        fanout = parse_fanout(args.fanout) if mode == "sampled" else None
        print(json.dumps(worker(int(size), model, mode, fanout, args.batches, args.eval_users,
                                args.eval_max_users, args.threads)))
        return 0
    if args.quick:
        args.sizes, args.batches, args.eval_users = [100_000, 200_000, 400_000], 2, 1024
    models = [m.strip().lower() for m in args.models.split(",")]
    for m in models:
        if m not in MODELS:
            p.error(f"--models: unknown {m!r}; expected {sorted(MODELS)}")
    modes = [m.strip().lower() for m in args.modes.split(",")]
    for m in modes:
        if m not in ("full", "sampled"):
            p.error(f"--modes: unknown {m!r}; expected full and/or sampled")
    fanouts = {"lightgcn": args.fanout_lightgcn, "i3mrec": args.fanout_i3mrec}
    sizes = sorted(args.sizes)
    print(f"# bench_scale: sizes {[fmt_size(s) for s in sizes]}, {args.threads} thread(s), "
          f"batch {BATCH}, {args.batches} timed step(s), {args.eval_users} timed eval users, "
          f"capped eval {args.eval_max_users} users, fanout {fanouts}", flush=True)
    configs = [(m, mode) for m in models for mode in modes]
    rows = {f"{m}:{mode}": [] for m, mode in configs}
    old = json.loads(Path(args.reuse).read_text()) if args.reuse else {}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads),
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for m, mode in configs:
        key = f"{m}:{mode}"
        for s in sizes:
            done = rows[key]
            prev = [r for r in old.get(key, []) if r["size"] == s]
            if prev:
                done.append(prev[0])
                print(f"  {key:16s} {fmt_size(s):>5s}: reused from {args.reuse}", flush=True)
                continue
            if len(done) >= 2:  # refuse sizes that would not fit in the free memory
                a, b = fit_line([r["edges"] for r in done], [r["peak_rss"] for r in done])
                need = a + b * s
                if need > 0.75 * mem_available():  # leave room for the others on this machine
                    print(f"skip {key} {fmt_size(s)}: needs ~{need / GIB:.1f} GiB, "
                          f"{mem_available() / GIB:.1f} GiB available", flush=True)
                    continue
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, __file__, "--worker", f"{s}:{m}:{mode}",
                                   "--fanout", ",".join(map(str, fanouts[m])),
                                   "--batches", str(args.batches), "--eval-users",
                                   str(args.eval_users), "--eval-max-users",
                                   str(args.eval_max_users), "--threads", str(args.threads)],
                                  capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                print(f"FAILED {key} {fmt_size(s)} (exit {proc.returncode}):\n"
                      f"{proc.stderr[-3000:]}", flush=True)
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            done.append(r)
            print(f"  {key:16s} {fmt_size(s):>5s}: {r['s_batch']:.3f} s/step "
                  f"({r.get('cpu', {}).get('s_batch', float('nan')):.3f} CPU s), "
                  f"{r['s_epoch']:.0f} s/epoch, {r['s_eval']:.0f} s/eval, "
                  f"{r['s_eval_cap']:.1f} s/eval capped, {r['peak_rss'] / GIB:.2f} GiB  "
                  f"({time.perf_counter() - t0:.0f} s wall)", flush=True)
            if args.json:  # keep partial results
                Path(args.json).write_text(json.dumps(rows, indent=2))

    if args.clock == "cpu":  # tables from the CPU-time figures (rows of older runs: wall)
        rows = {k: [{**r, **r.get("cpu", {})} for r in rs] for k, rs in rows.items()}

    def label(key):
        m, mode = key.split(":")
        return MODELS[m], (f"sampled {fanouts[m]}" if mode == "sampled" else "full graph")

    cap = args.eval_max_users
    print(f"\n| model | training | E (interactions) | users | items | nodes / edges per step | "
          f"build s | s/step | s/epoch* | s/eval* (all users) | s/eval* ({cap:,} users) | "
          "peak RSS GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for key, rs in rows.items():
        name, how = label(key)
        for r in rs:
            if r.get("sample_nodes") is not None:
                per_step = f"{r['sample_nodes']:,} / {r['sample_edges']:,}"
            elif r.get("mode", "full") == "full":
                per_step = f"{r['users'] + r['items']:,} / {2 * r['edges']:,} (all)"
            else:
                per_step = "n/a"
            print(f"| {name} | {how} | {r['edges']:,} | {r['users']:,} | {r['items']:,} | "
                  f"{per_step} | {r['build_s']:.1f} | {r['s_batch']:.3f} | "
                  f"{r['s_epoch']:,.0f} | {r['s_eval']:,.0f} | {r['s_eval_cap']:,.1f} | "
                  f"{r['peak_rss'] / GIB:.2f} |")
    print(f"\nTimes: {'CPU seconds of the 1-thread worker' if args.clock == 'cpu' else 'wall clock'}."
          " *extrapolated: s/epoch = sampling + s/step x ceil(E/2048); s/eval = full-graph "
          "forward + ranking time of the timed users x (all or capped users) / timed users")

    print("\nEpoch time, full graph / sampled (same run):\n")
    print("| model | E | full s/epoch | sampled s/epoch | speed-up |")
    print("|---|---|---|---|---|")
    for m in models:
        fr, sr = rows.get(f"{m}:full", []), rows.get(f"{m}:sampled", [])
        for a in fr:
            b = [r for r in sr if r["size"] == a["size"]]
            if b:
                print(f"| {MODELS[m]} | {a['edges']:,} | {a['s_epoch']:,.0f} | "
                      f"{b[0]['s_epoch']:,.0f} | {a['s_epoch'] / b[0]['s_epoch']:.1f}x |")

    print("\nGrowth factor per doubling of E (2.0 = linear, 1.0 = constant):\n")
    print(f"| model | training | sizes | s/step | s/epoch | s/eval (all) | s/eval ({cap:,}) | "
          "peak RSS |")
    print("|---|---|---|---|---|---|---|---|")
    for key, rs in rows.items():
        if len(rs) < 2:
            continue
        name, how = label(key)
        cols = [growth(rs, k) for k in KEYS]
        for j in range(len(rs) - 1):
            print(f"| {name} | {how} | {fmt_size(rs[j]['size'])} -> "
                  f"{fmt_size(rs[j + 1]['size'])} | " + " | ".join(f"{c[j]:.2f}" for c in cols)
                  + " |")
        if len(rs) > 2:  # end to end: less sensitive to the noise of single points
            ends = [rs[0], rs[-1]]
            print(f"| {name} | {how} | **{fmt_size(rs[0]['size'])} -> "
                  f"{fmt_size(rs[-1]['size'])}** | "
                  + " | ".join(f"**{growth(ends, k)[0]:.2f}**" for k in KEYS) + " |")
    print("\nLargest E fitting in 24 GiB (least squares on peak RSS):")
    for key, rs in rows.items():
        if len(rs) < 2:
            continue
        name, how = label(key)
        a, b = fit_line([r["edges"] for r in rs], [r["peak_rss"] for r in rs])
        emax = (24 * GIB - a) / b if b > 0 else float("inf")
        print(f"  {name} ({how}): RSS ~ {a / GIB:.2f} GiB + {b * 1e6 / GIB:.3f} GiB per 1M "
              f"interactions -> ~{emax / 1e6:.0f}M interactions "
              f"({emax / 20 / 1e6:.1f}M users, {emax / 40 / 1e6:.1f}M items)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
