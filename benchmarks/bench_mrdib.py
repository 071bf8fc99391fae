r"""What does the MRdIB plug-in cost per training epoch, per backbone?

Two measurements, both interleaved bare / wrapped so that machine load hits
both alike, both printing the ratio wrapped / bare:

* ``--mode epoch`` (the acceptance figure): trains the bare backbone and
  ``MRdIB(backbone, **variant)`` for ``--epochs`` epochs through
  :func:`pyg_mmrec.train.run` (the trainer's own sampler, estimator step and
  timing), ``--reps`` times each, and reports the median s/epoch, both the
  trainer's wall clock (``RunResult.seconds_per_epoch``) and the CPU time of
  its steps (robust to other processes sharing the cores; it leaves out the
  sampler, which costs both arms the same, so its ratio is the larger one).
* ``--mode step``: one trainer step (estimator step + main loss + backward +
  Adam) on a fixed batch, CPU time (``time.process_time``: robust to other
  processes sharing the cores), averaged over ``--reps`` steps (a multiple of
  ``every``: with ``every > 1`` the plug-in's terms run on one step in
  ``every``, so only the mean is meaningful).

Variants: the YAML defaults; the same with the plug-in's terms on every step
(``every=1``); without the CLUB estimator; and without the sub-batching.

    OMP_NUM_THREADS=1 python benchmarks/bench_mrdib.py --backbones vbpr,lattice,freedom
    OMP_NUM_THREADS=1 python benchmarks/bench_mrdib.py --mode step --variants defaults,every=1
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
    "every=1": {"every": 1},
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
    """The trainer's step: estimator first (if any), then the main loss."""
    if aux_opt is not None:
        aux_opt.zero_grad(set_to_none=True)
        a = net.auxiliary_loss(*batch)
        if a is not None:
            a.backward()
            aux_opt.step()
    opt.zero_grad(set_to_none=True)
    sum(net.loss(*batch).values()).backward()
    opt.step()


def bench_step(a, data, name, variant):
    ei = data["user", "rates", "item"].edge_index
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, ei.size(1), (a.batch_size,), generator=g)
    batch = (ei[0, idx], ei[1, idx],
             torch.randint(0, int(data["item"].num_nodes), (a.batch_size,), generator=g))
    models = (build(name, data, None), build(name, data, VARIANTS[variant]))
    for m in models:  # warm-up (caches, allocator)
        for _ in range(2):
            step(*m, batch)
    times = ([], [])
    for _ in range(a.reps):
        for i, m in enumerate(models):
            t = time.process_time()
            step(*m, batch)
            times[i].append(time.process_time() - t)
    return tuple(statistics.mean(t) * 1e3 for t in times)


def bench_epoch(a, name, variant):
    from pyg_mmrec.train import Trainer, run

    class TimedTrainer(Trainer):
        """Also sums the CPU time of the trainer's steps (estimator step + main
        step): other processes on the machine inflate wall-clock s/epoch."""
        cpu = 0.0

        def train_step(self, *args, **kwargs):
            t = time.process_time()
            try:
                return super().train_step(*args, **kwargs)
            finally:
                TimedTrainer.cpu += time.process_time() - t

    ov = {"train.epochs": a.epochs, "train.patience": 10 ** 6, "train.checkpoint_every": 0,
          "train.topk": [20], "train.metric": "recall@20"}
    pov = dict(ov, **{f"plugin.{k}": v for k, v in VARIANTS[variant].items()})
    wall, cpu = ([], []), ([], [])
    for _ in range(a.reps):
        for i, (plugin, o) in enumerate(((None, ov), ("mrdib", pov))):
            TimedTrainer.cpu = 0.0
            res = run(name, a.dataset, a.root, seed=0, overrides=o, plugin=plugin, test=False,
                      trainer_cls=TimedTrainer)
            wall[i].append(res.seconds_per_epoch)
            cpu[i].append(TimedTrainer.cpu / res.epochs)
    return tuple(statistics.median(t) for t in wall + cpu)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--dataset", default="ml100k_mm")
    p.add_argument("--backbones", default="vbpr,mmgcn,lattice,freedom,mgcn")
    p.add_argument("--variants", default="defaults")
    p.add_argument("--mode", choices=["epoch", "step"], default="epoch")
    p.add_argument("--epochs", type=int, default=3, help="epoch mode: epochs per training")
    p.add_argument("--batch-size", type=int, default=2048, help="step mode")
    p.add_argument("--reps", type=int, default=None,
                   help="trainings per arm (epoch mode, default 2) or steps (step mode, default 24)")
    a = p.parse_args()
    a.reps = a.reps or (2 if a.mode == "epoch" else 24)
    bad = [v for v in a.variants.split(",") if v not in VARIANTS]
    if bad:
        p.error(f"--variants: unknown {bad}; expected some of {list(VARIANTS)}")
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)  # as the trainer does
    data = MMRecDataset(a.root, a.dataset)[0] if a.mode == "step" else None
    if a.mode == "epoch":
        print("| backbone | variant | bare s/epoch | +MRdIB s/epoch | overhead (wall) "
              "| bare CPU s/epoch | +MRdIB CPU s/epoch | overhead (CPU) |")
        print("|---|---|---|---|---|---|---|---|")
    else:
        print("| backbone | variant | bare CPU ms/step | +MRdIB CPU ms/step | overhead |")
        print("|---|---|---|---|---|")
    for name in a.backbones.split(","):
        for v in a.variants.split(","):
            if a.mode == "epoch":
                b, w, bc, wc = bench_epoch(a, name, v)
                print(f"| {name} | {v} | {b:.3f} | {w:.3f} | {100 * (w / b - 1):+.1f}% | {bc:.3f} | "
                      f"{wc:.3f} | {100 * (wc / bc - 1):+.1f}% |", flush=True)
            else:
                b, w = bench_step(a, data, name, v)
                print(f"| {name} | {v} | {b:.3f} | {w:.3f} | {100 * (w / b - 1):+.1f}% |", flush=True)


if __name__ == "__main__":
    main()
