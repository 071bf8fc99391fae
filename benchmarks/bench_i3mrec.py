r"""Seconds per epoch and peak memory of I3-MRec, against LightGCN measured in
the same run, on ``ml100k_mm`` (real) and on a synthetic graph (default 200k
users x 50k items x 5M interactions x 3 modalities; ``--quick``: 20k x 5k x
500k).

Every configuration runs in its own subprocess so that its peak resident
memory (``ru_maxrss``; on CUDA also ``torch.cuda.max_memory_allocated``) is
its own. A training step is what the trainer does per mini-batch: the
estimator step (``auxiliary_loss`` + its optimiser) and the main step
(``loss`` + backward + Adam). On ml100k a full epoch is timed; on the
synthetic graph ``--steps`` batches are timed and the epoch time is
extrapolated as ``s/step x steps per epoch`` (marked ``*``).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_i3mrec.py [--quick] [--steps 5] [--device cpu]
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

def _example_config() -> dict:
    """The model keys of the ml100k_mm example's I3-MRec config (its ``train:`` part dropped)."""
    import yaml
    cfg = yaml.safe_load((REPO / "examples" / "configs" / "i3mrec_ml100k.yaml").read_text())
    return {k: v for k, v in cfg.items() if k != "train"}


CONFIGS = {
    "lightgcn": ("lightgcn", {"embedding_size": 64, "n_layers": 3}),
    "i3mrec": ("i3mrec", {}),
    # what examples/train_i3mrec.py trains (ID branch, linear fusion, edge pruning, ...)
    "i3mrec-example": ("i3mrec", _example_config()),
    "i3mrec-irm": ("i3mrec", {"penalty": "irm"}),
    "i3mrec-no-ib": ("i3mrec", {"use_ib": False}),
}


def _rss_mb() -> float:
    # ru_maxrss is in KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def synthetic(num_users: int, num_items: int, num_edges: int, dims, seed: int = 0):
    """A power-law-ish interaction graph and random features with ~10% of the
    entries of each modality missing."""
    import torch
    g = torch.Generator().manual_seed(seed)
    pop = (torch.arange(1, num_items + 1, dtype=torch.float) ** -0.8)
    # popularity rank -> a random item id, so popular items are spread over the ids
    items = torch.randperm(num_items, generator=g)[
        torch.multinomial(pop, num_edges, replacement=True, generator=g)]
    users = torch.randint(0, num_users, (num_edges,), generator=g)
    ei = torch.stack([users, items])
    names = ["image", "text", "audio", "m3", "m4"][: len(dims)]
    feats = {m: torch.randn(num_items, d, generator=g) for m, d in zip(names, dims)}
    masks = {m: torch.rand(num_items, generator=g) > 0.1 for m in names}
    return num_users, num_items, ei, feats, masks


def worker(spec: dict) -> dict:
    import torch
    from pyg_mmrec.data import BPRSampler
    from pyg_mmrec.models import get_model_class

    torch.manual_seed(0)
    dev = torch.device(spec["device"])
    if spec["data"] == "ml100k_mm":
        from pyg_mmrec.data import MMRecDataset
        d = MMRecDataset(spec["root"], "ml100k_mm")[0]
        U, I = int(d["user"].num_nodes), int(d["item"].num_nodes)
        ei = d["user", "rates", "item"].edge_index
        feats = {m: d["item"][f"{m}_feat"] for m in d.modalities}
        masks = {m: d["item"][f"{m}_mask"] for m in d.modalities}
    else:
        U, I, ei, feats, masks = synthetic(*spec["synthetic"])
    name, hp = CONFIGS[spec["config"]]
    cls = get_model_class(name)
    if not getattr(cls, "uses_features", True):
        feats, masks = {}, {}
    base_mb = _rss_mb()
    model = cls(U, I, ei, feats, masks, **hp).to(dev)
    aux = list(model.auxiliary_parameters())
    aux_ids = {id(p) for p in aux}
    opt = torch.optim.Adam([p for p in model.parameters() if id(p) not in aux_ids], lr=1e-3)
    aux_opt = torch.optim.Adam(aux, lr=1e-3) if aux else None
    users, pos, neg = BPRSampler(ei, U, I, seed=0).sample(0)
    bs = spec["batch_size"]
    steps_per_epoch = math.ceil(users.numel() / bs)
    n_steps = steps_per_epoch if spec["steps"] <= 0 else min(spec["steps"], steps_per_epoch)

    def step(b: int) -> None:
        sl = slice(b * bs, (b + 1) * bs)
        u, p, q = users[sl].to(dev), pos[sl].to(dev), neg[sl].to(dev)
        if aux_opt is not None:
            aux_opt.zero_grad(set_to_none=True)
            a = model.auxiliary_loss(u, p, q)
            if a is not None:
                a.backward()
                aux_opt.step()
        opt.zero_grad(set_to_none=True)
        sum(model.loss(u, p, q).values()).backward()
        opt.step()

    model.train()
    if hasattr(model, "on_epoch_start"):  # what the trainer does first (e.g. edge pruning)
        model.on_epoch_start(0)
    step(0)  # warm-up (lazy caches, allocator)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for b in range(n_steps):
        step(b)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    s_step = (time.perf_counter() - t0) / n_steps
    out = {"s_per_step": s_step, "steps_per_epoch": steps_per_epoch,
           "s_per_epoch": s_step * steps_per_epoch, "extrapolated": n_steps < steps_per_epoch,
           "peak_rss_mb": _rss_mb(), "base_rss_mb": base_mb, "threads": torch.get_num_threads()}
    if dev.type == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=str(REPO / ".." / "shared" / "data"))
    p.add_argument("--quick", action="store_true", help="small synthetic graph (20k x 5k x 500k)")
    p.add_argument("--steps", type=int, default=5,
                   help="timed batches on the synthetic graph (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--device", default="cpu")
    p.add_argument("--configs", default=",".join(CONFIGS),
                   help="comma-separated subset of %s" % ",".join(CONFIGS))
    p.add_argument("--no-real", action="store_true", help="skip ml100k_mm")
    p.add_argument("--no-synthetic", action="store_true", help="skip the synthetic graph")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    configs = [c for c in args.configs.split(",") if c]
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        p.error(f"--configs: unknown {sorted(unknown)}; expected a subset of {list(CONFIGS)}")
    syn = (20_000, 5_000, 500_000, (512, 384, 128)) if args.quick else \
        (200_000, 50_000, 5_000_000, (512, 384, 128))
    datasets = []
    if not args.no_real and (Path(args.root) / "ml100k_mm").is_dir():
        datasets.append(("ml100k_mm", {"data": "ml100k_mm", "root": args.root, "steps": 0}))
    syn_name = "synthetic {}k x {}k x {}M x {}".format(syn[0] // 1000, syn[1] // 1000,
                                                        syn[2] / 1e6, len(syn[3]))
    if not args.no_synthetic:
        datasets.append((syn_name, {"data": "synthetic", "synthetic": list(syn),
                                    "steps": args.steps}))

    print(f"device {args.device}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"batch {args.batch_size}; ratios vs lightgcn on the same data")
    hdr = (f"{'data':<34}{'model':<16}{'s/step':>9}{'s/epoch':>11}{'x lgcn':>8}"
           f"{'peak MB':>10}{'+MB':>9}{'x lgcn':>8}")
    print(hdr)
    print("-" * len(hdr))
    for dname, dspec in datasets:
        rows = {}
        for c in configs:
            spec = dict(dspec, config=c, device=args.device, batch_size=args.batch_size)
            proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{dname:<34}{c:<16} FAILED: {proc.stderr.strip().splitlines()[-1:]}")
                continue
            rows[c] = r = json.loads(proc.stdout.strip().splitlines()[-1])
            ref = rows.get("lightgcn")
            t_ratio = f"{r['s_per_epoch'] / ref['s_per_epoch']:.2f}" if ref else "-"
            extra = r["peak_rss_mb"] - r["base_rss_mb"]
            m_ratio = (f"{extra / max(ref['peak_rss_mb'] - ref['base_rss_mb'], 1e-9):.2f}"
                       if ref else "-")
            star = "*" if r["extrapolated"] else " "
            print(f"{dname:<34}{c:<16}{r['s_per_step']:>9.3f}{r['s_per_epoch']:>10.1f}{star}"
                  f"{t_ratio:>8}{r['peak_rss_mb']:>10.0f}{extra:>9.0f}{m_ratio:>8}", flush=True)
    print("\n* extrapolated from the timed batches; peak MB = process peak RSS, +MB = peak "
          "minus RSS after loading the data (the model's own footprint)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
