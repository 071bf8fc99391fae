"""Benchmark: masked_spmm forward + backward against gather/scatter and sparse matmuls.

How fast is ``pyg_mmrec.ops.masked_spmm`` against the ways PyG/PyTorch users would write the
same masked, renormalised aggregation? Forward + backward (w.r.t. x) on:

(a) the real Amazon Baby user-item graph (train split, users + items as nodes, symmetric
    normalised bipartite adjacency), (b) synthetic random graphs with 1M and 10M edges.

F = 64, 50% of the nodes masked (missing modality), ``reduce="mean"`` (renormalise the present
weights), torch.set_num_threads(2), median of >= 10 runs. Alternatives, all computing the same
output (checked before timing):

- ``gather/scatter``: a PyG ``MessagePassing`` layer on ``edge_index`` (``x_j * w`` messages,
  scatter-sum), then the division by the scattered weight sum;
- ``torch.sparse.mm``: CSR with pre-masked, renormalised values (the masking is timed: masks
  change per batch, so the values must be rebuilt at every call);
- ``torch_sparse.matmul`` on a ``SparseTensor`` with the same values (when installed).

Our op is timed with the graph's transposed layout cached (``csc=``; graphs are static), once
without it, and once as a trusted graph (``trusted=True``: validated once by ``to_csr``, so the
checks that read rowptr/col values, a device sync each on CUDA, are skipped). The bandwidth column divides the bytes a perfect implementation must move
(rowptr + col + value + gathered source rows + output, forward and backward) by the time; the
memcpy line is the machine's measured copy bandwidth (read + write).

Run: ``python benchmarks/bench_masked_spmm.py`` (``--quick`` for a small run; on a shared,
oversubscribed machine add ``--threads 1 --clock cpu`` to time CPU work instead of waiting;
``--device cuda`` times the CUDA kernels, torch.sparse then being cuSPARSE).
"""
import argparse
import statistics
import time
from pathlib import Path

import torch
from torch_geometric.nn import MessagePassing

from pyg_mmrec.ops import WITH_EXT, csr_transpose, masked_spmm

try:
    import torch_sparse
except ImportError:  # optional: pip install torch-sparse
    torch_sparse = None

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


# ------------------------------------------------------------------------------------------
# Graphs: (rowptr, col, value) in CSR, square (nodes aggregate from nodes).

def to_csr(row, col, value, n):
    order = torch.argsort(row * n + col)
    row, col, value = row[order], col[order], value[order]
    rowptr = torch.zeros(n + 1, dtype=torch.long)
    rowptr[1:] = torch.bincount(row, minlength=n).cumsum(0)
    return rowptr, col, value


def sym_norm(row, col, n):
    deg = torch.bincount(row, minlength=n).float()
    inv_sqrt = deg.clamp(min=1).pow(-0.5)
    return inv_sqrt[row] * inv_sqrt[col]


def baby_graph(root):
    path = Path(root) / "baby" / "baby.inter"
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:]]
    inter = torch.tensor([[int(r[0]), int(r[1]), int(r[4])] for r in rows])
    inter = inter[inter[:, 2] == 0]  # train split: what the models propagate over
    num_users = int(inter[:, 0].max()) + 1
    n = num_users + int(inter[:, 1].max()) + 1
    u, i = inter[:, 0], inter[:, 1] + num_users
    row, col = torch.cat([u, i]), torch.cat([i, u])
    return to_csr(row, col, sym_norm(row, col, n), n)


def random_graph(num_edges, avg_degree=10, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n = num_edges // avg_degree
    row = torch.randint(0, n, (num_edges,), generator=gen)
    col = torch.randint(0, n, (num_edges,), generator=gen)
    return to_csr(row, col, sym_norm(row, col, n), n)


# ------------------------------------------------------------------------------------------
# Implementations: fn(x, mask) -> out [N, F] (mean of the present, weighted neighbours).

class MaskedMeanConv(MessagePassing):
    """The textbook PyG way: gather x_j, weight, scatter-add, divide by the present weight."""

    def __init__(self):
        super().__init__(aggr="sum", flow="target_to_source")  # edge_index[0] aggregates

    def forward(self, x, edge_index, value, mask):
        w = value * mask[edge_index[1]].to(x.dtype)
        out = self.propagate(edge_index, x=x, w=w)
        wsum = x.new_zeros(x.size(0)).index_add_(0, edge_index[0], w)
        return out / torch.where(wsum != 0, wsum, torch.ones_like(wsum)).unsqueeze(-1)

    def message(self, x_j, w):
        return x_j * w.unsqueeze(-1)


def renormalised_values(rowptr, row, col, value, mask):
    w = value * mask[col].to(value.dtype)
    wsum = torch.zeros(rowptr.numel() - 1, dtype=value.dtype,
                       device=value.device).index_add_(0, row, w)
    return w / torch.where(wsum != 0, wsum, torch.ones_like(wsum))[row]


def make_impls(rowptr, col, value):
    n = rowptr.numel() - 1
    row = torch.repeat_interleave(torch.arange(n, device=rowptr.device), rowptr.diff())
    edge_index = torch.stack([row, col])
    csc = csr_transpose(rowptr, col, n)
    conv = MaskedMeanConv()
    impls = {
        "masked_spmm (ours)": lambda x, m: masked_spmm(rowptr, col, x, m, value, csc=csc)[0],
        "masked_spmm, no csc cache": lambda x, m: masked_spmm(rowptr, col, x, m, value)[0],
        # a graph checked once by to_csr (what the models use): no per-call index checks
        "masked_spmm, trusted graph": lambda x, m: masked_spmm(rowptr, col, x, m, value, csc=csc,
                                                               trusted=True)[0],
        "PyG gather/scatter": lambda x, m: conv(x, edge_index, value, m),
    }

    def sparse_mm(x, m):
        w = renormalised_values(rowptr, row, col, value, m)
        adj = torch.sparse_csr_tensor(rowptr, col, w, (n, n))
        return torch.sparse.mm(adj, x)

    impls["torch.sparse.mm (CSR)"] = sparse_mm
    if torch_sparse is not None:
        def ts_matmul(x, m):
            w = renormalised_values(rowptr, row, col, value, m)
            adj = torch_sparse.SparseTensor(rowptr=rowptr, col=col, value=w, sparse_sizes=(n, n),
                                            is_sorted=True, trust_data=True)
            return torch_sparse.matmul(adj, x)
        impls["torch_sparse.matmul"] = ts_matmul
    return impls


def synchronize(device):
    # CUDA kernels run asynchronously: time them to completion.
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_fwd_bwd(fn, x, mask, reps, clock=time.perf_counter):
    times = []
    for it in range(reps + 1):  # the first run warms up allocator and caches
        x.grad = None
        synchronize(x.device)
        t0 = clock()
        out = fn(x, mask)
        out.backward(torch.ones_like(out))
        synchronize(x.device)
        dt = clock() - t0
        if it > 0:
            times.append(dt)
        del out
    return statistics.median(times)


def ideal_bytes(rowptr, col, mask, feat, elem=4):
    """Bytes moved by a perfect fwd + bwd: CSR (+ CSC) structure, values, present source
    rows gathered, output written; the backward gathers grad rows into present sources."""
    n = rowptr.numel() - 1
    e = col.numel()
    idx = rowptr.element_size()
    present_edges = int(mask[col].sum())
    fwd = (n + 1) * idx + e * idx + e * elem + present_edges * feat * elem + n * feat * elem
    bwd = (n + 1) * idx + 2 * e * idx + e * elem + present_edges * feat * elem + n * feat * elem
    return fwd + bwd


def available_memory(device="cpu"):
    if torch.device(device).type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return float("inf")


def memcpy_bandwidth(num_bytes=512 << 20, reps=10, clock=time.perf_counter, device="cpu"):
    src = torch.empty(num_bytes // 4, device=device)
    src.fill_(1.0)
    dst = torch.empty_like(src)
    times = []
    for _ in range(reps):
        synchronize(device)
        t0 = clock()
        dst.copy_(src)
        synchronize(device)
        times.append(clock() - t0)
    return 2 * num_bytes / statistics.median(times)  # read + write


def run_graph(name, rowptr, col, value, feat, reps, max_gather_edges, clock, device="cpu"):
    n = rowptr.numel() - 1
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, feat, generator=gen).to(device).requires_grad_()
    mask = (torch.rand(n, generator=gen) < 0.5).to(device)
    rowptr, col, value = rowptr.to(device), col.to(device), value.to(device)
    impls = make_impls(rowptr, col, value)
    # gather/scatter materialises about four [E, F] tensors (messages and their gradients).
    need = 4 * col.numel() * feat * x.element_size()
    free = available_memory(device)
    if col.numel() > max_gather_edges or need > 0.8 * free:
        impls.pop("PyG gather/scatter")
        print(f"  [{name}] PyG gather/scatter skipped: needs ~{need / 2**30:.1f} GiB, "
              f"{free / 2**30:.1f} GiB available", flush=True)
    # Same output everywhere (before timing).
    ref = impls["masked_spmm (ours)"](x, mask).detach()
    for key, fn in impls.items():
        out = fn(x, mask).detach()
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5, msg=f"{key} differs")
    nbytes = ideal_bytes(rowptr, col, mask, feat)
    results = {}
    for key, fn in impls.items():
        results[key] = time_fwd_bwd(fn, x, mask, reps, clock)
        print(f"  [{name}] {key}: {results[key] * 1e3:.1f} ms", flush=True)  # progress
    base = results["masked_spmm (ours)"]
    rows = []
    for key, t in results.items():
        rows.append((name, n, col.numel(), key, t * 1e3, t / base, nbytes / t / 1e9))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="Baby + 1M edges, 3 runs each")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--feat", type=int, default=64)
    parser.add_argument("--root", type=Path, default=DATA)
    parser.add_argument("--max-gather-edges", type=float, default=2e7,
                        help="skip gather/scatter above this many edges (memory: E*F floats)")
    parser.add_argument("--graphs", nargs="+", choices=["baby", "1M", "10M"],
                        help="subset of graphs (default: all; --quick: baby and 1M)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: process CPU time (robust on a shared, oversubscribed machine; "
                        "use with --threads 1, as it also counts idle spinning of extra threads)")
    parser.add_argument("--device", default="cpu",
                        help="cpu or cuda (on CUDA torch.sparse.mm is cuSPARSE; wall clock)")
    args = parser.parse_args()
    if torch.device(args.device).type == "cuda":
        if not torch.cuda.is_available():
            parser.error(f"--device {args.device}: no CUDA GPU is visible to torch")
        if args.clock == "cpu":
            parser.error("--clock cpu does not time GPU kernels; use the wall clock on CUDA")
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    torch.set_num_threads(args.threads)
    reps = 3 if args.quick else max(args.reps, 10)

    wanted = args.graphs or (["baby", "1M"] if args.quick else ["baby", "1M", "10M"])
    graphs = []
    if "baby" in wanted:
        if (args.root / "baby" / "baby.inter").exists():
            graphs.append(("baby (train, U+I)", *baby_graph(args.root)))
        else:
            print(f"[skip] Baby graph: {args.root}/baby/baby.inter not found")
    for key, num_edges in (("1M", 1_000_000), ("10M", 10_000_000)):
        if key in wanted:
            graphs.append((f"random {key}", *random_graph(num_edges)))

    print(f"torch {torch.__version__}, device={args.device}, threads={torch.get_num_threads()}, "
          f"F={args.feat}, "
          f"50% nodes masked, reduce=mean, fwd+bwd(x), median of {reps} runs "
          f"({args.clock} clock), "
          f"WITH_EXT={WITH_EXT}, torch_sparse={'yes' if torch_sparse else 'not installed'}")
    bw = memcpy_bandwidth(clock=clock, device=args.device)
    rows = []
    for name, rowptr, col, value in graphs:
        rows += run_graph(name, rowptr, col, value, args.feat, reps, args.max_gather_edges,
                          clock, args.device)

    head = f"{'graph':<18} {'nodes':>9} {'edges':>10} {'method':<26} {'ms':>10} " \
           f"{'x ours':>8} {'GB/s':>7}"
    print(head)
    print("-" * len(head))
    for name, n, e, key, ms, ratio, gbs in rows:
        print(f"{name:<18} {n:>9,} {e:>10,} {key:<26} {ms:>10.2f} {ratio:>8.2f} {gbs:>7.2f}")
    where = args.device if torch.device(args.device).type == "cuda" \
        else f"{torch.get_num_threads()} threads"
    print(f"memcpy bandwidth (read+write, {where}): {bw / 1e9:.2f} GB/s")
    if torch_sparse is None:
        print("torch_sparse.matmul: not installed (pip install torch-sparse), not measured")


if __name__ == "__main__":
    main()
