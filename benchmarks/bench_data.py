r"""Data-layer benchmark: loading, BPR sampling and full-ranking evaluation.

Questions answered (each with a ratio against an alternative measured in the
same run):

1. How long do ``MMRecDataset`` processing and cached loading take on the real
   sets (``baby``, ``ml100k_mm``) and on a synthetic 1M-user x 100k-item x
   20M-interaction set, and what is the peak memory (child process RSS)?
2. How fast is one epoch of vectorised BPR sampling vs. a per-interaction
   Python rejection loop?
3. How fast is chunked full-ranking evaluation of all ``baby`` users with
   random d=64 embeddings vs. a naive per-user score-then-``topk`` loop and
   vs. scoring the whole user x item matrix at once (and do they agree)?

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_data.py --quick
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_data.py           # full (minutes)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_data.py --only synthetic
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("PYG_MMREC_DATA", ROOT / ".." / "shared" / "data")).resolve()


def rss_mb() -> float:
    """Peak resident memory of this process in MB. VmHWM is per address space;
    ru_maxrss would include the parent's RSS at fork (Linux keeps it across exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


# --------------------------------------------------------------- child jobs
def child_load(root: str, name: str, cache: str, sample: bool) -> dict:
    """Runs in a fresh process so that ru_maxrss is the load's own peak."""
    import tracemalloc

    from pyg_mmrec.data import BPRSampler, MMRecDataset
    base = rss_mb()
    tracemalloc.start()
    t0, c0 = time.perf_counter(), time.process_time()
    ds = MMRecDataset(root, name, cache_dir=cache, force_reload=True)
    t_process, c_process = time.perf_counter() - t0, time.process_time() - c0
    _, py_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak_process = rss_mb()
    t0 = time.perf_counter()
    ds = MMRecDataset(root, name, cache_dir=cache)
    data = ds[0]
    t_cached = time.perf_counter() - t0
    out = {"process_s": t_process, "process_cpu_s": c_process, "cached_s": t_cached, "rss_base_mb": base,
           "rss_peak_mb": peak_process, "numpy_peak_mb": py_peak / 2**20, "repr": repr(ds)}
    if sample:
        st = data["user", "rates", "item"]
        t0 = time.perf_counter()
        s = BPRSampler(st.edge_index, ds.num_users, ds.num_items, seed=0)
        out["sampler_init_s"] = time.perf_counter() - t0
        t0, c0 = time.perf_counter(), time.process_time()
        s.sample(0)
        out["sample_epoch_s"] = time.perf_counter() - t0
        out["sample_epoch_cpu_s"] = time.process_time() - c0
    return out


def run_child(root, name, cache, sample=False) -> dict:
    cmd = [sys.executable, __file__, "--child", str(root), name, str(cache)]
    if sample:
        cmd.append("--child-sample")
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ,
                         "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}"})
    if res.returncode != 0:
        raise RuntimeError(f"child failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# ------------------------------------------------------- synthetic data set
def _ascii_ints(cols, sep=b"\t"):
    r"""Vectorised formatting of non-negative int64 columns into TSV bytes
    (``np.savetxt`` would take minutes for 20M rows)."""
    n = cols[0].size
    ndig = [np.maximum(1, np.floor(np.log10(np.maximum(c, 1))).astype(np.int64) + 1)
            for c in cols]
    row_len = sum(ndig) + len(cols)  # separators + newline
    start = np.zeros(n, dtype=np.int64)
    np.cumsum(row_len[:-1], out=start[1:])
    total = int(row_len.sum())
    buf = np.empty(total + 1, dtype=np.uint8)  # last byte: scratch for unused digit slots
    off = start.copy()
    for j, (c, nd) in enumerate(zip(cols, ndig)):
        for d in range(int(nd.max())):
            # no boolean compaction: rows with fewer digits write into the scratch byte
            idx = np.where(nd > d, off + d, total)
            p = 10 ** np.maximum(nd - 1 - d, 0)
            buf[idx] = (c // p) % 10 + 48
        off += nd
        buf[off] = ord("\t") if j < len(cols) - 1 else ord("\n")
        off += 1
    buf = buf[:total]
    return buf.tobytes()


def make_synthetic(folder: Path, name: str, U: int, I: int, E: int, seed: int = 0) -> float:
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    # coverage pairs: every user and every item occurs (ids contiguous)
    u0 = np.arange(U, dtype=np.int64)
    i0 = (u0 * 7919) % I if U >= I else np.arange(I) % I
    if U < I:
        u0 = np.arange(I, dtype=np.int64) % U
    base = u0 * I + i0
    extra = rng.integers(0, U * I, size=int((E - base.size) * 1.01) + 10, dtype=np.int64)
    extra = np.setdiff1d(np.unique(extra), base, assume_unique=False)
    extra = extra[rng.permutation(extra.size)[: E - base.size]]
    key = np.concatenate([base, extra])
    user, item = key // I, key % I
    label = np.zeros(key.size, dtype=np.int64)
    label[base.size:] = rng.choice(3, size=extra.size, p=[0.7, 0.15, 0.15])
    perm = rng.permutation(key.size)
    user, item, label = user[perm], item[perm], label[perm]
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{name}.inter", "wb") as f:
        f.write(b"userID\titemID\trating\ttimestamp\tx_label\n")
        step = 2_000_000
        for s in range(0, key.size, step):
            sl = slice(s, s + step)
            ones = np.ones(user[sl].size, dtype=np.int64)
            f.write(_ascii_ints([user[sl], item[sl], ones, ones * 0, label[sl]]))
    return time.perf_counter() - t0


# ----------------------------------------------------------- BPR baselines
def naive_bpr_epoch(edge_index: torch.Tensor, num_items: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    u, i = edge_index[0].tolist(), edge_index[1].tolist()
    pos = {}
    for a, b in zip(u, i):
        pos.setdefault(a, set()).add(b)
    order = rng.permutation(len(u))
    out = []
    for j in order:
        a = u[j]
        while True:
            n = int(rng.integers(num_items))
            if n not in pos[a]:
                break
        out.append((a, i[j], n))
    return out


# ------------------------------------------------------ ranking baselines
def naive_per_user(user_emb, item_emb, target, exclude, ks):
    from pyg_mmrec.metrics import metric_sums_from_hits
    tgt, exc = {}, {}
    for a, b in target.t().tolist():
        tgt.setdefault(a, []).append(b)
    for a, b in exclude.t().tolist():
        exc.setdefault(a, []).append(b)
    sums, n = {}, 0
    for u in sorted(tgt):
        s = item_emb @ user_emb[u]
        if u in exc:
            s[torch.tensor(exc[u])] = -math.inf
        top = s.topk(max(ks)).indices
        hits = torch.isin(top, torch.tensor(tgt[u])).unsqueeze(0)
        for k, v in metric_sums_from_hits(hits, torch.tensor([len(tgt[u])]), ks).items():
            sums[k] = sums.get(k, 0.0) + v
        n += 1
    return {k: v / n for k, v in sums.items()}


def dense_all_at_once(user_emb, item_emb, target, exclude, ks):
    from pyg_mmrec.metrics import metric_sums_from_hits, topk_hits
    users = target[0].unique()
    scores = user_emb[users] @ item_emb.t()
    row = torch.searchsorted(users, exclude[0])
    ok = (row < users.numel()) & (users[row.clamp(max=users.numel() - 1)] == exclude[0])
    scores[row[ok], exclude[1][ok]] = -math.inf
    trow = torch.searchsorted(users, target[0])
    hits = topk_hits(scores, max(ks), trow, target[1])
    n = torch.bincount(trow, minlength=users.numel())
    sums = metric_sums_from_hits(hits, n, ks)
    return {k: v / users.numel() for k, v in sums.items()}, scores.numel() * 4 / 2**20


def timeit(fn, repeat=1):
    """Best CPU time (user+sys, one thread) of ``repeat`` runs: on a shared,
    overloaded machine wall time mostly measures the neighbours."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.process_time()
        out = fn()
        best = min(best, time.process_time() - t0)
    return best, out


def table(rows, header):
    w = [max(len(str(r[j])) for r in rows + [header]) for j in range(len(header))]
    line = "  ".join(str(h).ljust(w[j]) for j, h in enumerate(header))
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(str(c).ljust(w[j]) for j, c in enumerate(r)))
    print()


# ------------------------------------------------------------------ sections
def bench_real(args, tmp):
    rows = []
    for name in ("baby", "ml100k_mm"):
        if not (args.root / name / f"{name}.inter").exists():
            print(f"[skip] {name}: not found under {args.root}")
            continue
        r = run_child(args.root, name, tmp / "cache", sample=True)
        rows.append([name, f"{r['process_s']:.2f}", f"{r['process_cpu_s']:.2f}",
                     f"{r['cached_s']:.3f}",
                     f"{r['process_s'] / r['cached_s']:.0f}x", f"{r['rss_peak_mb']:.0f}",
                     f"{r['rss_peak_mb'] - r['rss_base_mb']:.0f}", f"{r['sample_epoch_cpu_s']:.3f}"])
        print("  ", r["repr"])
    print("\n== 1. MMRecDataset on real data (child process, 1 thread) ==")
    table(rows, ["dataset", "process s", "process CPU s", "cached load s", "process/cached",
                 "peak RSS MB", "peak-base MB", "BPR epoch CPU s"])


def bench_synthetic(args, tmp):
    U, I, E = args.users, args.items, args.interactions
    folder = tmp / "synthetic" / "synth"
    t_gen = make_synthetic(folder, "synth", U, I, E)
    size = (folder / "synth.inter").stat().st_size / 2**20
    print(f"\n== 1b. synthetic {U:,} users x {I:,} items x {E:,} interactions "
          f"({size:.0f} MB .inter, generated in {t_gen:.1f} s) ==")
    r = run_child(tmp / "synthetic", "synth", tmp / "cache", sample=True)
    print("  ", r["repr"])
    table([["synthetic", f"{r['process_s']:.1f}", f"{r['process_cpu_s']:.1f}",
            f"{r['cached_s']:.2f}",
            f"{r['process_s'] / r['cached_s']:.0f}x", f"{r['rss_peak_mb']:.0f}",
            f"{r['rss_peak_mb'] - r['rss_base_mb']:.0f}", f"{r['numpy_peak_mb']:.0f}",
            f"{r['sampler_init_s']:.1f}", f"{r['sample_epoch_s']:.1f}",
            f"{r['sample_epoch_cpu_s']:.1f}"]],
          ["dataset", "process s", "process CPU s", "cached load s", "process/cached",
           "peak RSS MB", "peak-base MB", "numpy peak MB", "sampler init s", "BPR epoch s",
           "BPR epoch CPU s"])
    shutil.rmtree(tmp / "synthetic", ignore_errors=True)


def bench_sampler_and_ranking(args, tmp):
    from pyg_mmrec.data import BPRSampler, MMRecDataset
    from pyg_mmrec.metrics import evaluate_full_ranking
    if not (args.root / "baby" / "baby.inter").exists():
        print("[skip] baby not found")
        return
    ds = MMRecDataset(args.root, "baby", cache_dir=str(tmp / "cache"))
    st = ds[0]["user", "rates", "item"]
    U, I = ds.num_users, ds.num_items

    s = BPRSampler(st.edge_index, U, I, seed=0)
    t_ours, _ = timeit(lambda: s.sample(0), repeat=3)
    t_naive, _ = timeit(lambda: naive_bpr_epoch(st.edge_index, I), repeat=1)
    print("\n== 2. one BPR epoch on baby (119,674 triples) ==")
    table([["BPRSampler.sample (vectorised)", f"{t_ours:.3f}", "1.0x"],
           ["Python rejection loop", f"{t_naive:.3f}", f"{t_naive / t_ours:.1f}x slower"]],
          ["method", "CPU s", "ratio"])

    g = torch.Generator().manual_seed(0)
    user_emb, item_emb = torch.randn(U, 64, generator=g), torch.randn(I, 64, generator=g)
    ks = (5, 10, 20, 50)
    for split, target, excl in (("valid", st.valid_edge_index, [st.edge_index]),
                                ("test", st.test_edge_index, [st.edge_index,
                                                              st.valid_edge_index])):
        t_ours, ours = timeit(lambda: evaluate_full_ranking(user_emb, item_emb, target, excl,
                                                            ks, split=split), repeat=2)
        chunk = max(1, (1 << 24) // I)
        exclude = torch.cat(excl, 1)
        t_dense, (dense, dense_mb) = timeit(
            lambda: dense_all_at_once(user_emb, item_emb, target, exclude, ks))
        users = target[0].unique()
        if args.quick:  # naive loop on a subset of users, extrapolated
            sub = users[torch.randperm(users.numel(), generator=g)[:2000]]
            keep_t, keep_x = torch.isin(target[0], sub), torch.isin(exclude[0], sub)
            t_sub, _ = timeit(lambda: naive_per_user(user_emb, item_emb, target[:, keep_t],
                                                     exclude[:, keep_x], ks))
            t_naive, naive = t_sub * users.numel() / sub.numel(), None
        else:
            t_naive, naive = timeit(lambda: naive_per_user(user_emb, item_emb, target,
                                                           exclude, ks))
        agree = max(abs(ours[k] - dense[k]) for k in ours)
        if naive is not None:
            agree = max(agree, max(abs(ours[k] - naive[k]) for k in ours))
        print(f"\n== 3. full-ranking evaluation, baby {split} ({users.numel():,} users x "
              f"{I:,} items, d=64; max |diff| between methods = {agree:.2e}) ==")
        table([["evaluate_full_ranking (chunked)", f"{t_ours:.2f}", "1.0x",
                 f"{chunk * I * 4 / 2**20:.0f}"],
               ["score all users at once + topk", f"{t_dense:.2f}",
                f"{t_dense / t_ours:.2f}x", f"{dense_mb:.0f}"],
               ["per-user loop" + (" (extrapolated from 2,000 users)" if args.quick else ""),
                f"{t_naive:.2f}", f"{t_naive / t_ours:.1f}x", f"{I * 4 / 2**20:.2f}"]],
              ["method", "CPU s", "time vs ours", "score buffer MB"])
        print(f"   {split} recall@20={ours['recall@20']:.4f} ndcg@20={ours['ndcg@20']:.4f} "
              f"(random embeddings; chance recall@20 ~ 20/{I} = {20 / I:.4f})")


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=DEFAULT_DATA)
    p.add_argument("--quick", action="store_true",
                   help="small synthetic set (100k x 10k x 2M), naive loops on subsets")
    p.add_argument("--only", choices=["real", "synthetic", "ranking"], default=None)
    p.add_argument("--users", type=int, default=None)
    p.add_argument("--items", type=int, default=None)
    p.add_argument("--interactions", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--child-sample", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child_load(*args.child, sample=args.child_sample)))
        return
    big = (1_000_000, 100_000, 20_000_000)
    small = (100_000, 10_000, 2_000_000)
    d = small if args.quick else big
    args.users = args.users or d[0]
    args.items = args.items or d[1]
    args.interactions = args.interactions or d[2]
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, data={args.root}")
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        tmp = Path(tmp)
        if args.only in (None, "real"):
            bench_real(args, tmp)
        if args.only in (None, "ranking"):
            bench_sampler_and_ranking(args, tmp)
        if args.only in (None, "synthetic"):
            bench_synthetic(args, tmp)


if __name__ == "__main__":
    main()
