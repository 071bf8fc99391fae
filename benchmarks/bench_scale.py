r"""How cost grows with the number of interactions: LightGCN, FREEDOM and
I3-MRec with full-graph propagation (MMRec's scheme) and with sampled-subgraph
(``fanout``) training, on synthetic graphs.

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
sets the model's ``fanout`` (``--fanout-lightgcn``, ``--fanout-freedom``,
``--fanout-i3mrec``): each step propagates a layer-wise neighbour sample of
the batch (:class:`pyg_mmrec.nn.neighbor_sampling.LayerwiseSampler`) and steps
the ID embeddings with :class:`pyg_mmrec.train.optim.LazyAdam`, so a step is
:math:`O(B \prod_l f_l)` and an epoch :math:`O(E)`. FREEDOM samples its
user–item (LightGCN) part in the epoch's pruned graph and propagates its
frozen item–item kNN graph exactly over the batch items' neighbourhood (at
most :math:`k` rows per item and modality).

FREEDOM's item–item kNN graphs are built once, at construction. The exact
search is :math:`O(I^2 F)` (4x per doubling of the catalogue, the largest cost
of the run at tens of millions of interactions on one core), so with
``--knn-method auto`` (the default) they are built with ``knn_method=faiss``
(an approximate inverted-file search, :func:`pyg_mmrec.data.knn.knn_graph`)
when faiss is installed and the catalogue has at least ``--knn-faiss-from``
items, exactly otherwise. The builder and its time are reported in their own
columns, not in ``build`` nor in ``s/step``.
On these random features the approximate graphs are not close to the exact
ones (no cluster structure): the benchmark measures cost, not graph quality.

Measured per configuration:

* ``build``: model construction (graph normalisation, CSR caches) and the
  trainer (BPR sampler index), without the kNN graphs;
* ``kNN``: the builder (``exact`` or ``faiss``) and the time of all kNN graph
  builds (FREEDOM: one per modality);
Times are CPU seconds of the (1-thread) worker process by default (``--clock
cpu``): on a shared machine the wall clock moves by ±50 % with the other jobs'
load, the CPU time of a single-threaded process much less (``--clock wall`` for
wall-clock figures; the per-step wall time is always printed while running).

* ``s/step``: mean time of ``--batches`` real trainer steps (estimator
  step, forward, loss, backward, optimiser) at batch size 2048, after one
  warm-up step;
* ``s/epoch``: the model's per-epoch work (``on_epoch_start``: FREEDOM's
  edge pruning) + sampling the epoch's triples + ``s/step`` ×
  ``ceil(E/2048)`` steps: *extrapolated* from the timed steps, not a full
  epoch;
* ``nodes / edges per step``: the sampled user–item computation graph of one
  batch; for FREEDOM also the item rows of the exact item–item neighbourhood;
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
items (:math:`O(I)`) remain. The largest size fitting in 24 GiB and the
memory per million interactions come from a least-squares line through the
measured peak RSS; ``--target-growth`` is checked for the s/epoch growth per
doubling from the first size >= ``--growth-from`` to the largest.

Usage::

    python benchmarks/bench_scale.py [--sizes 1M,2M,4M] [--models lightgcn,freedom,i3mrec]
        [--modes full,sampled] [--fanout-lightgcn 10,10] [--fanout-freedom 10,10]
        [--fanout-i3mrec 5,5,5] [--knn-method auto|exact|faiss] [--knn-faiss-from 50000]
        [--batches 3] [--eval-users 4096] [--eval-max-users 4096] [--threads 1] [--quick]
        [--growth-from 4M] [--target-growth 2.3]

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
MODELS = {"lightgcn": "LightGCN", "freedom": "FREEDOM", "i3mrec": "I3MRec"}
KNN_MODELS = {"freedom"}  # models that build item-item kNN graphs
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


def faiss_installed() -> bool:
    import importlib.util
    return importlib.util.find_spec("faiss") is not None


def choose_knn_method(requested: str, num_items: int, faiss_from: int) -> str:
    """``auto``: faiss when installed and the catalogue has >= ``faiss_from`` items."""
    if requested != "auto":
        return requested
    return "faiss" if faiss_installed() and num_items >= faiss_from else "exact"


class KnnTimer:
    """Times every kNN graph build of the model (the models import
    :func:`pyg_mmrec.data.knn.knn_graph_anchored` at call time)."""

    def __init__(self):
        import pyg_mmrec.data.knn as knn
        self.calls, self.wall, self.cpu, self._inner = 0, 0.0, 0.0, knn.knn_graph_anchored
        knn.knn_graph_anchored = self

    def __call__(self, *args, **kwargs):
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            return self._inner(*args, **kwargs)
        finally:
            self.calls += 1
            self.wall += time.perf_counter() - t0
            self.cpu += time.process_time() - c0


def worker(size: int, model_key: str, mode: str, fanout, batches: int, eval_users: int,
           eval_max_users: int, threads: int, knn_method: str = "auto",
           knn_faiss_from: int = 50_000) -> dict:
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
    knn = None
    if model_key in KNN_MODELS:
        knn = choose_knn_method(knn_method, I, knn_faiss_from)
        overrides["knn_method"] = knn
    cfg = build_config(name, overrides)
    ctor = get_model_class(name)
    if not getattr(ctor, "uses_features", True):
        feats, masks = {}, {}
    knn_timer = KnnTimer()
    t0, c0 = time.perf_counter(), time.process_time()
    torch.manual_seed(0)
    model = ctor(U, I, ei, dict(feats), dict(masks), **cfg["hparams"])
    trainer = Trainer(model, TrainData(U, I, ei, valid, valid, feats, masks), cfg["train"])
    # the kNN graphs have their own columns
    knn_wall, knn_cpu, knn_calls = knn_timer.wall, knn_timer.cpu, knn_timer.calls
    t_build = time.perf_counter() - t0 - knn_wall
    c_build = time.process_time() - c0 - knn_cpu

    t0, c0 = time.perf_counter(), time.process_time()
    if hasattr(model, "on_epoch_start"):  # per-epoch model work (FREEDOM: edge pruning)
        model.on_epoch_start(0)
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
    sample_nodes = sample_edges = item_item_rows = None
    if mode == "sampled":  # size of one step's computation graph (bounded by B * prod(1 + f))
        sl = slice(0, BATCH)
        conv = getattr(model, "pruned_conv", None) or model.conv  # FREEDOM: this epoch's graph
        sub = model.sampler.sample(conv.adj, torch.cat(
            [users[sl], pos[sl] + U, neg[sl].reshape(-1) + U]))
        sample_nodes, sample_edges = int(sub.n_id.numel()), sub.num_sampled_edges()
        del sub
        mm = getattr(model, "mm_graph", None)
        if mm is not None:  # FREEDOM: items of the exact item-item neighbourhood (1 layer)
            batch_items = torch.cat([pos[sl], neg[sl].reshape(-1)]).unique()
            hop = mm[0][0, torch.isin(mm[0][1], batch_items)]
            item_item_rows = int(torch.cat([batch_items, hop]).unique().numel())
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
           "build_s": c_build, "knn_s": knn_cpu,
           "s_eval": c_fwd + c_rank * U / n_eval,
           "s_eval_cap": c_fwd + c_rank * min(eval_max_users, U) / n_eval}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"size": size, "model": model_key, "mode": mode,
            "fanout": list(fanout) if mode == "sampled" else None,
            "users": U, "items": I, "edges": ei.size(1),
            "data_s": t_data, "build_s": t_build, "sample_s": t_sample, "s_batch": s_step,
            "knn_method": knn, "knn_s": knn_wall, "knn_calls": knn_calls,
            "knn_calls_after_build": knn_timer.calls - knn_calls,
            "optimizer": type(trainer.optimizer).__name__, "sample_nodes": sample_nodes,
            "sample_edges": sample_edges, "item_item_rows": item_item_rows,
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
    p.add_argument("--models", default="lightgcn,i3mrec",
                   help=f"comma-separated, of {sorted(MODELS)}")
    p.add_argument("--modes", default="full,sampled")
    p.add_argument("--fanout-lightgcn", type=parse_fanout, default=[10, 10])
    p.add_argument("--fanout-freedom", type=parse_fanout, default=[10, 10])
    p.add_argument("--fanout-i3mrec", type=parse_fanout, default=[5, 5, 5])
    p.add_argument("--knn-method", choices=("auto", "exact", "faiss"), default="auto",
                   help="kNN graphs of FREEDOM: auto = faiss when installed and the catalogue "
                        "has >= --knn-faiss-from items, exact otherwise")
    p.add_argument("--knn-faiss-from", type=int, default=50_000, metavar="ITEMS",
                   help="smallest catalogue built with faiss under --knn-method auto "
                        "(50k items = 2M interactions)")
    p.add_argument("--growth-from", type=parse_size, default=4_000_000,
                   help="first size of the end-to-end s/epoch growth checked against "
                        "--target-growth")
    p.add_argument("--target-growth", type=float, default=2.3,
                   help="largest acceptable s/epoch growth per doubling of E")
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
                                args.eval_max_users, args.threads, args.knn_method,
                                args.knn_faiss_from)))
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
    if args.knn_method == "faiss" and any(m in KNN_MODELS for m in models) \
            and not faiss_installed():
        p.error("--knn-method faiss: faiss is not installed; install it with: "
                "pip install faiss-cpu")
    fanouts = {"lightgcn": args.fanout_lightgcn, "freedom": args.fanout_freedom,
               "i3mrec": args.fanout_i3mrec}
    sizes = sorted(args.sizes)
    print(f"# bench_scale: sizes {[fmt_size(s) for s in sizes]}, {args.threads} thread(s), "
          f"batch {BATCH}, {args.batches} timed step(s), {args.eval_users} timed eval users, "
          f"capped eval {args.eval_max_users} users, fanout {fanouts}, kNN graphs "
          f"{args.knn_method} (faiss {'installed' if faiss_installed() else 'not installed'}, "
          f"from {args.knn_faiss_from:,} items)", flush=True)
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
                                   str(args.eval_max_users), "--threads", str(args.threads),
                                   "--knn-method", args.knn_method,
                                   "--knn-faiss-from", str(args.knn_faiss_from)],
                                  capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                print(f"FAILED {key} {fmt_size(s)} (exit {proc.returncode}):\n"
                      f"{proc.stderr[-3000:]}", flush=True)
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            done.append(r)
            knn = (f"kNN {r['knn_method']} {r.get('cpu', {}).get('knn_s', r['knn_s']):.1f} CPU s, "
                   if r.get("knn_method") else "")
            print(f"  {key:16s} {fmt_size(s):>5s}: {knn}{r['s_batch']:.3f} s/step "
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
          f"build s | kNN graphs | kNN build s | s/step | s/epoch* | s/eval* (all users) | "
          f"s/eval* ({cap:,} users) | peak RSS GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for key, rs in rows.items():
        name, how = label(key)
        for r in rs:
            if r.get("sample_nodes") is not None:
                per_step = f"{r['sample_nodes']:,} / {r['sample_edges']:,}"
                if r.get("item_item_rows") is not None:
                    per_step += f" (+ {r['item_item_rows']:,} item-item rows)"
            elif r.get("mode", "full") == "full":
                per_step = f"{r['users'] + r['items']:,} / {2 * r['edges']:,} (all)"
            else:
                per_step = "n/a"
            knn = r.get("knn_method")  # rows of runs before FREEDOM have no kNN columns
            knn_cols = f"{knn} | {r['knn_s']:,.1f}" if knn else "- | -"
            print(f"| {name} | {how} | {r['edges']:,} | {r['users']:,} | {r['items']:,} | "
                  f"{per_step} | {r['build_s']:.1f} | {knn_cols} | {r['s_batch']:.3f} | "
                  f"{r['s_epoch']:,.0f} | {r['s_eval']:,.0f} | {r['s_eval_cap']:,.1f} | "
                  f"{r['peak_rss'] / GIB:.2f} |")
    print(f"\nTimes: {'CPU seconds of the 1-thread worker' if args.clock == 'cpu' else 'wall clock'}."
          " kNN build s: all kNN graph builds (not in build s nor s/step)."
          " *extrapolated: s/epoch = per-epoch model work + sampling + s/step x ceil(E/2048); "
          "s/eval = full-graph "
          "forward + ranking time of the timed users x (all or capped users) / timed users")

    both = [m for m in models if rows.get(f"{m}:full") and rows.get(f"{m}:sampled")]
    if both:
        print("\nEpoch time, full graph / sampled (same run):\n")
        print("| model | E | full s/epoch | sampled s/epoch | speed-up |")
        print("|---|---|---|---|---|")
    for m in both:
        fr, sr = rows.get(f"{m}:full", []), rows.get(f"{m}:sampled", [])
        for a in fr:
            b = [r for r in sr if r["size"] == a["size"]]
            if b:
                print(f"| {MODELS[m]} | {a['edges']:,} | {a['s_epoch']:,.0f} | "
                      f"{b[0]['s_epoch']:,.0f} | {a['s_epoch'] / b[0]['s_epoch']:.1f}x |")

    print("\nGrowth factor per doubling of E (2.0 = linear, 1.0 = constant; kNN build: "
          "FREEDOM's item-item graphs, one builder per row):\n")
    print(f"| model | training | sizes | s/step | s/epoch | s/eval (all) | s/eval ({cap:,}) | "
          "peak RSS | kNN build |")
    print("|---|---|---|---|---|---|---|---|---|")

    def knn_growth(pair):  # only between rows built by the same kNN builder
        a, b = pair
        if not (a.get("knn_method") and a.get("knn_method") == b.get("knn_method")):
            return "-"
        return f"{growth(pair, 'knn_s')[0]:.2f}"

    for key, rs in rows.items():
        name, how = label(key)
        if len(rs) < 2:
            print(f"| {name} | {how} | {' '.join(fmt_size(r['size']) for r in rs) or 'none'} "
                  "| (needs two sizes) |  |  |  |  |  |")
            continue
        cols = [growth(rs, k) for k in KEYS]
        for j in range(len(rs) - 1):
            print(f"| {name} | {how} | {fmt_size(rs[j]['size'])} -> "
                  f"{fmt_size(rs[j + 1]['size'])} | " + " | ".join(f"{c[j]:.2f}" for c in cols)
                  + f" | {knn_growth(rs[j:j + 2])} |")
        if len(rs) > 2:  # end to end: less sensitive to the noise of single points
            ends = [rs[0], rs[-1]]
            print(f"| {name} | {how} | **{fmt_size(rs[0]['size'])} -> "
                  f"{fmt_size(rs[-1]['size'])}** | "
                  + " | ".join(f"**{growth(ends, k)[0]:.2f}**" for k in KEYS)
                  + f" | **{knn_growth(ends)}** |")

    print(f"\nEpoch growth per doubling from the first size >= {fmt_size(args.growth_from)} to "
          f"the largest (target <= {args.target_growth:g}):")
    for key, rs in rows.items():
        name, how = label(key)
        span = [r for r in rs if r["size"] >= args.growth_from]
        if len(span) < 2:
            print(f"  {name} ({how}): not measured (needs two sizes >= "
                  f"{fmt_size(args.growth_from)})")
            continue
        g = growth([span[0], span[-1]], "s_epoch")[0]
        print(f"  {name} ({how}): {fmt_size(span[0]['size'])} -> {fmt_size(span[-1]['size'])}: "
              f"{g:.2f} per doubling -> {'meets' if g <= args.target_growth else 'MISSES'} "
              f"the target")

    print("\nMemory per million interactions and largest E fitting in 24 GiB "
          "(least squares on peak RSS):")
    for key, rs in rows.items():
        name, how = label(key)
        if len(rs) < 2:
            print(f"  {name} ({how}): not measured (needs two sizes)")
            continue
        a, b = fit_line([r["edges"] for r in rs], [r["peak_rss"] for r in rs])
        emax = (24 * GIB - a) / b if b > 0 else float("inf")
        print(f"  {name} ({how}): RSS ~ {a / GIB:.2f} GiB + {b * 1e6 / 2 ** 20:,.0f} MB per "
              f"million interactions -> ~{emax / 1e6:.0f}M interactions "
              f"({emax / 20 / 1e6:.1f}M users, {emax / 40 / 1e6:.1f}M items) in 24 GiB")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
