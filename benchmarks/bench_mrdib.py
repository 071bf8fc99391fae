r"""What does the MRdIB plug-in cost per training step, per backbone?

For every backbone, builds the bare model and ``MRdIB(model, **variant)`` on
the real data, then times one trainer step each (estimator step + main loss +
backward + Adam), interleaved bare/wrapped so that machine load hits both
alike, and prints the median step time and the ratio wrapped / bare. Variants:
the YAML defaults, without the CLUB estimator, and without the plug-in's
sub-batching (all triples of the batch).

    OMP_NUM_THREADS=1 python benchmarks/bench_mrdib.py --backbones vbpr,freedom --reps 15
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pyg_mmrec.config import model_defaults  # noqa: E402
from pyg_mmrec.data import MMRecDataset  # noqa: E402
from pyg_mmrec.models import get_model_class  # noqa: E402
from pyg_mmrec.models.mrdib import MRdIB  # noqa: E402

VARIANTS = {
    "defaults": {},
    "no CLUB": {"redundant_weight": 0.0},
    "full batch": {"sub_batch": None},
}


def build(name, data, plugin_kw):
    nu, ni = int(data["user"].num_nodes), int(data["item"].num_nodes)
    ei = data["user", "rates", "item"].edge_index
    feats = {m: data["item"][f"{m}_feat"] for m in data.modalities}
    masks = {m: data["item"][f"{m}_mask"] for m in data.modalities}
    hp, _ = model_defaults(name)
    torch.manual_seed(0)
    net = get_model_class(name)(nu, ni, ei, feats, masks, **hp)
    if plugin_kw is not None:
        kw, _ = model_defaults("mrdib")
        kw.update(plugin_kw)
        net = MRdIB(net, **kw)
    aux = list(net.auxiliary_parameters())
    ids = {id(p) for p in aux}
    opt = torch.optim.Adam([p for p in net.parameters() if id(p) not in ids], lr=1e-3)
    aux_opt = torch.optim.Adam(aux, lr=1e-3) if aux else None
    return net.train(), opt, aux_opt


def step(net, opt, aux_opt, batch):
    if aux_opt is not None:
        aux_opt.zero_grad(set_to_none=True)
        a = net.auxiliary_loss(*batch)
        if a is not None:
            a.backward()
            aux_opt.step()
    opt.zero_grad(set_to_none=True)
    sum(net.loss(*batch).values()).backward()
    opt.step()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--dataset", default="ml100k_mm")
    p.add_argument("--backbones", default="vbpr,mmgcn,lattice,freedom,mgcn")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--reps", type=int, default=15)
    a = p.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)  # as the trainer does
    data = MMRecDataset(a.root, a.dataset)[0]
    ei = data["user", "rates", "item"].edge_index
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, ei.size(1), (a.batch_size,), generator=g)
    batch = (ei[0, idx], ei[1, idx], torch.randint(0, int(data["item"].num_nodes), (a.batch_size,), generator=g))

    print(f"| backbone | variant | bare ms/step | +MRdIB ms/step | ratio |")
    print("|---|---|---|---|---|")
    for name in a.backbones.split(","):
        bare = build(name, data, None)
        for v in a.variants.split(","):
            wrapped = build(name, data, VARIANTS[v])
            for m in (bare, wrapped):  # warm-up (caches, allocator)
                step(*m, batch)
            times = ([], [])
            for _ in range(a.reps):
                for i, m in enumerate((bare, wrapped)):
                    t = time.perf_counter()
                    step(*m, batch)
                    times[i].append(time.perf_counter() - t)
            b, w = (statistics.median(t) * 1e3 for t in times)
            print(f"| {name} | {v} | {b:.1f} | {w:.1f} | {w / b:.3f} |", flush=True)


if __name__ == "__main__":
    main()
