r"""Top-k recommendation speed: :func:`pyg_mmrec.metrics.chunked_topk` against the ways a
team would otherwise rank items for users.

Question: how many users per second get their exact top-:math:`k` items (``k`` = 10 and 100),
how long does a single user wait (p50 / p99), and how much memory does each way need, on the
ML-100K catalog and on a synthetic catalog of 1M items × d = 64? Target: our throughput at
least that of faiss's exact inner-product search.

Catalogs (embeddings are what a trained two-tower / LightGCN model hands to the ranking; the
ranking cost does not depend on their values, so they are seeded random, not trained):

- ``ml100k``: the shape of ``ml100k_mm`` (943 users × 1,682 items, read from its ``.inter``
  file), d = 64, N(0, 1/d) entries; every user is ranked. Two extra rows time our routine with
  each user's training interactions excluded (what recommendation and evaluation do), given as
  the edge list at every call or as an :class:`~pyg_mmrec.metrics.ExclusionIndex` built once.
- ``synthetic``: ``--items`` items (default 1M) × d = 64, ``--users`` users (default 500;
  10,000 for the full run).

Methods, each in a fresh subprocess (peak RSS per method), with ``--threads`` (default 1 and
2) torch and faiss threads (``torch.set_num_threads``, ``faiss.omp_set_num_threads``,
``OMP_NUM_THREADS``):

- ``chunked_topk``: ours, default chunk size (about 16M scores per chunk), one preallocated
  score buffer, one ``torch.topk`` per chunk;
- ``score all + topk``: one ``[users, items]`` matmul then one ``topk``; on the synthetic
  catalog the users are capped so the score matrix stays within ``--dense-gib`` (default 2);
- ``per-user loop``: one ``[items]`` score vector and one ``topk`` per user (``--loop-users``
  users, default 100);
- ``faiss IndexFlatIP``: faiss-cpu's exact inner-product search (``pip install faiss-cpu``,
  the ``faiss`` extra); skipped when not installed. Building the index (a copy of the item
  matrix) is reported apart and not timed as search.

Throughput is users / time over all timed users at each ``k`` (the fastest of repeated runs
until ``--min-time`` seconds are spent: one run on the large catalog); latency is measured over
``--latency-queries`` single-user queries (after one warm-up query; with fewer than 100
queries the p99 is the slowest one). Clock: CPU seconds of the
worker process at 1 thread (robust on a shared, loaded machine), wall-clock seconds at more
threads (CPU time would add the threads up); ``--clock`` overrides. Peak memory: ``ru_maxrss``
of the worker, and its growth over the RSS once the embeddings exist (what the method itself
needs).

Exactness: every method's top-k of the first ``--check-users`` users is compared with ours:
identical item ids, or (float32 rounding differs between BLAS kernels) the same float64
re-computed scores up to 1e-4, i.e. an equally exact top-k that orders near-ties differently.
Seen-item exclusion is off in the comparison (faiss has no per-user exclusion).

Usage::

    python benchmarks/bench_recommend.py [--datasets ml100k,synthetic] [--items 1M]
        [--users 500] [--ks 10,100] [--threads 1,2] [--methods chunked,dense,loop,faiss]
        [--loop-users 100] [--min-time 1] [--latency-queries 100] [--dense-gib 2] [--quick]

``--quick``: 100k synthetic items, 500 users, 1 thread. ``--users 10000`` for a longer,
steadier throughput figure on the synthetic catalog.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data"
DIM = 64
METHODS = {"chunked": "chunked_topk (ours)", "dense": "score all + topk",
           "loop": "per-user loop", "faiss": "faiss IndexFlatIP"}
# our routine with seen items excluded (ml100k only, not compared): the training pairs given
# as an edge list at every call, or grouped by user once in an ExclusionIndex
EXCLUDED = "chunked_excl"
EXCLUDED_INDEX = "chunked_excl_index"
EXCLUDING = (EXCLUDED, EXCLUDED_INDEX)
LABELS = {**METHODS, EXCLUDED: "chunked_topk, seen excluded (edge list)",
          EXCLUDED_INDEX: "chunked_topk, seen excluded (ExclusionIndex)"}
SCORE_TOL = 1e-4
GIB = 2 ** 30


def parse_size(text: str) -> int:
    t = text.strip().lower()
    mult = {"k": 10 ** 3, "m": 10 ** 6}.get(t[-1:], 1)
    try:
        n = int(float(t[:-1] if t[-1:] in "km" else t) * mult)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 1M or 20000, got {text!r}")
    if n <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive size, got {text!r}")
    return n


def parse_ints(text: str):
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}")
    if not out or min(out) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive ints, got {text!r}")
    return out


# ----------------------------------------------------------------------------- catalogs
def ml100k_interactions(root: Path):
    r"""``(num_users, num_items, train_edge_index)`` of ``ml100k_mm`` (train rows only)."""
    import numpy as np
    import torch
    path = Path(root) / "ml100k_mm" / "ml100k_mm.inter"
    if not path.exists():
        raise FileNotFoundError(f"--data: expected {path} (see the data README)")
    rows = np.loadtxt(path, dtype=np.int64, skiprows=1, usecols=(0, 1, 4))
    num_users, num_items = int(rows[:, 0].max()) + 1, int(rows[:, 1].max()) + 1
    train = torch.from_numpy(rows[rows[:, 2] == 0][:, :2].T.copy())
    return num_users, num_items, train


def embeddings(num_users: int, num_items: int, dim: int = DIM, seed: int = 0):
    r"""Seeded ``N(0, 1/d)`` user and item embeddings (float32)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    scale = 1.0 / math.sqrt(dim)
    # scaled in place: a temporary copy of the catalog would set the worker's peak RSS
    return (torch.randn(num_users, dim, generator=g).mul_(scale),
            torch.randn(num_items, dim, generator=g).mul_(scale))


# ----------------------------------------------------------------------------- the methods
def topk_chunked(user_emb, item_emb, users, k, exclude=None):
    from pyg_mmrec.metrics import chunked_topk
    import torch
    parts = list(chunked_topk(user_emb, item_emb, users, k, exclude=exclude))
    return torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts])


def topk_dense(user_emb, item_emb, users, k):
    top = (user_emb[users] @ item_emb.t()).topk(k, dim=1)
    return top.indices, top.values


def topk_loop(user_emb, item_emb, users, k):
    import torch
    ids, scores = [], []
    for u in users.tolist():
        top = (item_emb @ user_emb[u]).topk(k)
        ids.append(top.indices)
        scores.append(top.values)
    return torch.stack(ids), torch.stack(scores)


def faiss_index(item_emb):
    import faiss
    index = faiss.IndexFlatIP(item_emb.size(1))
    index.add(item_emb.contiguous().numpy())
    return index


def topk_faiss(index, user_emb, users, k):
    import torch
    scores, ids = index.search(user_emb[users].contiguous().numpy(), k)
    return torch.from_numpy(ids), torch.from_numpy(scores)


def run_method(method, user_emb, item_emb, users, k, index=None, exclude=None):
    r"""``(ids [n, k], scores [n, k])`` of one method."""
    if method == "chunked":
        return topk_chunked(user_emb, item_emb, users, k)
    if method in EXCLUDING:
        return topk_chunked(user_emb, item_emb, users, k, exclude=exclude)
    if method == "dense":
        return topk_dense(user_emb, item_emb, users, k)
    if method == "loop":
        return topk_loop(user_emb, item_emb, users, k)
    if method == "faiss":
        return topk_faiss(index, user_emb, users, k)
    raise ValueError(f"method: expected one of {sorted(METHODS)}, got {method!r}")


def exact_scores(user_emb, item_emb, users, ids):
    r"""float64 scores of the returned ``ids [n, k]`` (independent of any BLAS rounding)."""
    u = user_emb[users].double().unsqueeze(1)
    return (u * item_emb[ids].double()).sum(-1)  # only the returned rows: no float64 catalog


def compare(ref_ids, ref_exact, ids, exact, tol: float = SCORE_TOL):
    r"""``(identical_rows, equivalent_rows, rows)``: rows whose ids equal the reference, and
    rows that are an equally exact top-k (distinct ids, float64 scores sorted in decreasing
    order agreeing with the reference's within ``tol``; ids may differ on near-ties)."""
    import torch
    identical = (ids == ref_ids).all(1)
    distinct = torch.tensor([row.unique().numel() == row.numel() for row in ids])
    a = exact.sort(dim=1, descending=True).values
    b = ref_exact.sort(dim=1, descending=True).values
    close = ((a - b).abs() <= tol * b.abs().clamp(min=1.0)).all(1)
    equivalent = identical | (distinct & close)
    return int(identical.sum()), int(equivalent.sum()), ids.size(0)


# ----------------------------------------------------------------------------- one worker
def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(dataset: str, method: str, threads: int, ks, n_users: int, items: int,
           loop_users: int, latency_queries: int, dense_gib: float, check_users: int,
           clock_name: str, data_root: str, out_dir: str, min_time: float = 1.0) -> dict:
    import torch
    torch.set_num_threads(threads)
    clock = time.process_time if clock_name == "cpu" else time.perf_counter
    exclude = None
    if dataset == "ml100k":
        num_users, num_items, exclude = ml100k_interactions(Path(data_root))
        user_emb, item_emb = embeddings(num_users, num_items)
        n_timed = num_users
    else:
        num_items = items
        user_emb, item_emb = embeddings(n_users, num_items)
        n_timed = n_users
    if method == "loop":
        n_timed = min(n_timed, loop_users)
    elif method == "dense":  # the whole score matrix at once: capped by --dense-gib
        n_timed = max(1, min(n_timed, int(dense_gib * GIB // (4 * num_items))))
    users = torch.arange(n_timed)
    rss_data = current_rss()
    index, build_s = None, 0.0
    if method == EXCLUDED_INDEX:
        from pyg_mmrec.metrics import ExclusionIndex
        t0 = clock()
        exclude = ExclusionIndex(exclude, num_items=num_items, num_users=num_users)
        build_s = clock() - t0
    if method == "faiss":
        import faiss
        faiss.omp_set_num_threads(threads)
        t0 = clock()
        index = faiss_index(item_emb)
        build_s = clock() - t0
    out = {"dataset": dataset, "method": method, "threads": threads, "clock": clock_name,
           "users": int(num_users if dataset == "ml100k" else n_users), "items": num_items,
           "timed_users": n_timed, "build_s": build_s, "per_k": {}}
    for k in ks:
        run_method(method, user_emb, item_emb, users[:1], k, index, exclude)  # warm-up
        # best of repeated runs until min_time has been spent (one run on large catalogs)
        elapsed, spent, runs = math.inf, 0.0, 0
        while runs == 0 or (spent < min_time and runs < 50):
            t0 = clock()
            ids, scores = run_method(method, user_emb, item_emb, users, k, index, exclude)
            dt = clock() - t0
            elapsed, spent, runs = min(elapsed, dt), spent + dt, runs + 1
        lat = []
        g = torch.Generator().manual_seed(k)
        for u in torch.randint(0, user_emb.size(0), (latency_queries,), generator=g):
            t0 = clock()
            run_method(method, user_emb, item_emb, u.view(1), k, index, exclude)
            lat.append(clock() - t0)
        lat.sort()
        c = min(check_users, n_timed)
        ids_c = ids[:c].long()
        torch.save({"ids": ids_c, "exact": exact_scores(user_emb, item_emb, users[:c], ids_c)},
                   Path(out_dir) / f"{dataset}_{method}_{threads}_{k}.pt")
        out["per_k"][str(k)] = {
            "seconds": elapsed, "runs": runs, "users_per_s": n_timed / elapsed if elapsed > 0 else math.inf,
            "p50_ms": 1e3 * lat[len(lat) // 2] if lat else math.nan,
            "p99_ms": 1e3 * lat[min(len(lat) - 1, math.ceil(0.99 * len(lat)) - 1)]
            if lat else math.nan}
    out["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out["extra_rss"] = max(0, out["peak_rss"] - rss_data)
    return out


# ----------------------------------------------------------------------------- driver
def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def check_exactness(out_dir: Path, dataset: str, methods, threads, ks):
    r"""``{(method, threads, k): (identical, equivalent, rows)}`` against ``chunked`` at the
    same thread count."""
    import torch
    res = {}
    for t in threads:
        for k in ks:
            ref_path = out_dir / f"{dataset}_chunked_{t}_{k}.pt"
            if not ref_path.exists():
                continue
            ref = torch.load(ref_path)
            for m in methods:
                path = out_dir / f"{dataset}_{m}_{t}_{k}.pt"
                if m == "chunked" or m in EXCLUDING or not path.exists():
                    continue
                got = torch.load(path)
                n = min(ref["ids"].size(0), got["ids"].size(0))
                res[(m, t, k)] = compare(ref["ids"][:n], ref["exact"][:n], got["ids"][:n],
                                         got["exact"][:n])
    return res


def print_tables(rows, exactness, ks):
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        rs = [r for r in rows if r["dataset"] == dataset]
        r0 = rs[0]
        print(f"\n### {dataset}: {r0['users']:,} users x {r0['items']:,} items, d = {DIM}\n")
        head = "| threads | method | timed users |"
        for k in ks:
            head += f" k={k} users/s | vs ours | vs faiss | p50 ms | p99 ms |"
        print(head + " peak RSS MiB | + over embeddings MiB | exact vs ours |")
        print("|" + "---|" * (3 + 5 * len(ks) + 3))
        for t in dict.fromkeys(r["threads"] for r in rs):
            group = [r for r in rs if r["threads"] == t]
            base = {k: next((r["per_k"][str(k)]["users_per_s"] for r in group
                             if r["method"] == "chunked"), math.nan) for k in ks}
            fa = {k: next((r["per_k"][str(k)]["users_per_s"] for r in group
                           if r["method"] == "faiss"), math.nan) for k in ks}
            for r in group:
                line = f"| {t} ({r['clock']}) | {LABELS[r['method']]} | {r['timed_users']:,} |"
                for k in ks:
                    p = r["per_k"][str(k)]
                    line += (f" {p['users_per_s']:,.0f} | {p['users_per_s'] / base[k]:.2f}x | "
                             f"{p['users_per_s'] / fa[k]:.2f}x | {p['p50_ms']:.2f} | "
                             f"{p['p99_ms']:.2f} |")
                checks = [exactness[dataset].get((r["method"], t, k)) for k in ks]
                if r["method"] == "chunked":
                    ex = "reference"
                elif r["method"] in EXCLUDING:
                    ex = "n/a (excludes)"
                elif any(c is None for c in checks):
                    ex = "not checked"
                else:
                    ex = ", ".join(f"k={k}: {c[0]}/{c[2]} same ids, {c[1]}/{c[2]} exact"
                                   for k, c in zip(ks, checks))
                line += (f" {r['peak_rss'] / 2**20:,.0f} | {r['extra_rss'] / 2**20:,.0f} | "
                         f"{ex} |")
                print(line)
        for r in rs:
            if r["method"] in ("faiss", EXCLUDED_INDEX):
                print(f"\n{LABELS[r['method']]}: index built in {1e3 * r['build_s']:.1f} ms "
                      f"({r['threads']} thread(s), {r['clock']}), not included above")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="ml100k,synthetic")
    p.add_argument("--items", type=parse_size, default=1_000_000,
                   help="synthetic catalog size (default 1M)")
    p.add_argument("--users", type=parse_size, default=500,
                   help="synthetic users ranked for the throughput (default 500)")
    p.add_argument("--ks", type=parse_ints, default=[10, 100])
    p.add_argument("--threads", type=parse_ints, default=[1, 2])
    p.add_argument("--methods", default="chunked,dense,loop,faiss")
    p.add_argument("--loop-users", type=parse_size, default=100)
    p.add_argument("--min-time", type=float, default=1.0,
                   help="repeat a throughput run until this many seconds are spent; keep the "
                        "fastest run (default 1)")
    p.add_argument("--latency-queries", type=parse_size, default=100)
    p.add_argument("--dense-gib", type=float, default=2.0,
                   help="cap on the score matrix of 'score all + topk' (GiB)")
    p.add_argument("--check-users", type=parse_size, default=100)
    p.add_argument("--clock", choices=("auto", "cpu", "wall"), default="auto",
                   help="auto: CPU seconds at 1 thread, wall-clock seconds at more")
    p.add_argument("--data", default=str(DATA), help="folder holding ml100k_mm/")
    p.add_argument("--quick", action="store_true",
                   help="100k synthetic items, 500 users, 1 thread")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out-dir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    for d in datasets:
        if d not in ("ml100k", "synthetic"):
            p.error(f"--datasets: unknown {d!r}; expected ml100k and/or synthetic")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            p.error(f"--methods: unknown {m!r}; expected some of {','.join(METHODS)}")
    if "chunked" not in methods:
        p.error("--methods: 'chunked' is the reference of every ratio and must be included")
    if args.quick:
        args.items, args.users, args.threads = 100_000, 500, [1]
    if args.worker:
        dataset, method, threads = args.worker.split(":")
        threads = int(threads)
        clock = args.clock if args.clock != "auto" else ("cpu" if threads == 1 else "wall")
        print(json.dumps(worker(dataset, method, threads, args.ks, args.users, args.items,
                                args.loop_users, args.latency_queries, args.dense_gib,
                                args.check_users, clock, args.data, args.out_dir,
                                args.min_time)))
        return 0

    if "faiss" in methods and not faiss_available():
        print("# faiss-cpu not installed (pip install faiss-cpu): its rows are skipped")
        methods.remove("faiss")
    print(f"# bench_recommend: datasets {datasets}, synthetic {args.items:,} items x "
          f"{args.users:,} users, d = {DIM}, ks {args.ks}, threads {args.threads}, "
          f"methods {methods}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} "
          f"CPUs", flush=True)
    rows, exactness = [], {}
    with tempfile.TemporaryDirectory(prefix="bench_recommend_") as tmp:
        for dataset in datasets:
            todo = methods + (list(EXCLUDING) if dataset == "ml100k" else [])
            for t in args.threads:
                for m in todo:
                    env = {**os.environ, "OMP_NUM_THREADS": str(t), "MKL_NUM_THREADS": str(t),
                           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
                    cmd = [sys.executable, __file__, "--worker", f"{dataset}:{m}:{t}",
                           "--out-dir", tmp, "--ks", ",".join(map(str, args.ks)),
                           "--users", str(args.users), "--items", str(args.items),
                           "--loop-users", str(args.loop_users),
                           "--latency-queries", str(args.latency_queries),
                           "--dense-gib", str(args.dense_gib),
                           "--check-users", str(args.check_users), "--clock", args.clock,
                           "--min-time", str(args.min_time),
                           "--data", args.data, "--datasets", dataset, "--methods", "chunked"]
                    t0 = time.perf_counter()
                    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                    if proc.returncode != 0:
                        print(f"FAILED {dataset} {m} {t} thread(s) (exit {proc.returncode}):\n"
                              f"{proc.stderr[-3000:]}", flush=True)
                        continue
                    r = json.loads(proc.stdout.strip().splitlines()[-1])
                    rows.append(r)
                    rates = ", ".join(f"k={k}: {r['per_k'][str(k)]['users_per_s']:,.0f} users/s"
                                      for k in args.ks)
                    print(f"  {dataset:9s} {LABELS[m]:34s} {t} thread(s): {rates}, "
                          f"peak {r['peak_rss'] / 2**20:,.0f} MiB "
                          f"({time.perf_counter() - t0:.0f} s wall)", flush=True)
            exactness[dataset] = check_exactness(Path(tmp), dataset, todo, args.threads,
                                                 args.ks)
    print_tables(rows, exactness, args.ks)
    bad = [(d, key, c) for d, res in exactness.items() for key, c in res.items() if c[1] != c[2]]
    print("\nExactness: " + ("every method returned an exact top-k for every checked user "
                             "(same ids, or the same float64 scores within "
                             f"{SCORE_TOL:g} where near-ties are ordered differently)"
                             if not bad else f"MISMATCH {bad}"))
    print(f"Load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs "
          f"(wall-clock rows are only meaningful on an otherwise idle machine).")
    print(f"Throughput clock: CPU seconds of the worker at 1 thread, wall seconds at more "
          f"(unless --clock); latency over {args.latency_queries} single-user queries.")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "exactness": {
            d: {f"{m}:{t}:{k}": c for (m, t, k), c in res.items()}
            for d, res in exactness.items()}}, indent=2))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
