r"""Backbone alone vs backbone + MRdIB on real data (MovieLens-100K with posters and plots).

For every backbone and seed, both arms get the same budget of ``G`` trainings,
each selected on VALIDATION Recall@20 (the test split is read only at the
selected epoch of every run, and only the selected run's test figures are
reported):

* **backbone**: the backbone's YAML defaults, ``train.lr`` searched over ``G``
  values; or, with ``--lr`` (a fixed learning rate for every model, e.g. the
  common protocol ``--lr 5e-3 --patience 50 --epochs 500``), the backbone's
  ``reg_weight`` searched over ``G`` multiples {1, 10, 0.1, 100, 0.01} of its
  default;
* **+ MRdIB**: the backbone at the configuration the first arm selected, the
  plug-in's weights searched over ``G`` values :math:`\lambda` of the paper's grid
  {1e-4, 1e-3, 5e-3, 1e-2, 5e-2} (tied: :math:`\beta = \lambda_u = \lambda_s =
  \lambda`, :math:`\lambda_r = \lambda \cdot` ``--red-ratio``), the way a plug-in
  is tuned on top of a tuned backbone.

Then prints Recall@5/20 and NDCG@5/20 (mean ± std over seeds), the relative
gain and the seconds per training epoch of both arms.

Examples::

    # quick: one seed, all five backbones
    OMP_NUM_THREADS=1 python examples/train_mrdib.py
    # the README table: every model's YAML settings (one training per arm), 3 seeds
    OMP_NUM_THREADS=1 python examples/train_mrdib.py --lrs yaml --lambdas yaml \
        --patience 50 --epochs 400 --seeds 1,2,3 --out mrdib.jsonl
    # the full table with the paper's grid
    python examples/train_mrdib.py --seeds 1,2,3 --grid-size 5
    # the common protocol (fixed lr, long training, early stopping on validation)
    python examples/train_mrdib.py --lr 5e-3 --patience 50 --epochs 500 --seeds 1,2,3 --grid-size 3
    # ablation (w/o MIB, unique, redundant, synergy) at the selected configuration
    python examples/train_mrdib.py --backbones vbpr,freedom --ablation
    # robustness to missing modalities (I3-MRec's fm protocol, 30% missing)
    python examples/train_mrdib.py --missing i3mrec:fm:0.3
    # tables of runs split over several processes (each with --out runs.jsonl)
    python examples/train_mrdib.py --report runs.jsonl
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pyg_mmrec.train import run  # noqa: E402

LR_GRID = [1e-3, 5e-3, 5e-4, 2e-3, 2.5e-4]          # the first G values are used
REG_SCALES = [1.0, 10.0, 0.1, 100.0, 0.01]           # x the backbone's reg_weight (with --lr)
LAMBDA_GRID = [1e-2, 5e-2, 1e-3, 5e-3, 1e-4]        # the paper's grid (order: screening on validation), first G used
WEIGHTS = ("kl_weight", "unique_weight", "redundant_weight", "synergy_weight")
ABLATIONS = {
    "w/o MIB": {"kl_weight": 0.0, "stochastic": False},
    "w/o unique": {"unique_weight": 0.0},
    "w/o redundant": {"redundant_weight": 0.0},
    "w/o synergy": {"synergy_weight": 0.0},
}
METRICS = ("recall@5", "recall@20", "ndcg@5", "ndcg@20")


RED_RATIO = 1.0


def lr_setting(lr: Optional[float]) -> Dict[str, float]:
    """The backbone's learning-rate override (None: keep its YAML lr)."""
    return {} if lr is None else {"train.lr": lr}


def tied(lam: Optional[float]) -> Dict[str, float]:
    """The four plug-in weights tied to ``lam`` (None: keep the YAML weights)."""
    if lam is None:
        return {}
    return {f"plugin.{w}": lam * (RED_RATIO if w == "redundant_weight" else 1.0) for w in WEIGHTS}


class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.log = open(args.out, "a") if args.out else None

    def train(self, backbone: str, seed: int, overrides: Dict[str, Any], plugin: Optional[str],
              tag: str) -> Dict[str, Any]:
        a = self.args
        ov = {"train.epochs": a.epochs, "train.patience": a.patience, "train.eval_every": a.eval_every,
              "train.topk": [5, 20], "train.metric": "recall@20", "train.checkpoint_every": 0}
        ov.update(overrides)
        if plugin:
            ov.setdefault("plugin.seed", seed)
        t0 = time.perf_counter()
        res = run(backbone, a.dataset, a.root, missing=a.missing, seed=seed, overrides=ov,
                  plugin=plugin)
        rec = {"backbone": backbone, "seed": seed, "tag": tag, "plugin": plugin,
               "overrides": {k: v for k, v in ov.items() if not k.startswith("train.") or k == "train.lr"},
               "missing": a.missing, "best_epoch": res.best_epoch, "epochs": res.epochs,
               "valid": res.valid, "test": res.test, "s_per_epoch": res.seconds_per_epoch,
               "wall": time.perf_counter() - t0,
               "curve": [round(h["valid"]["recall@20"], 4) for h in res.history if h.get("valid")]}
        if self.log:
            self.log.write(json.dumps(rec) + "\n")
            self.log.flush()
        print(f"  {backbone:8s} seed={seed} {tag:28s} valid R@20={res.valid['recall@20']:.4f} "
              f"test R@20={res.test['recall@20']:.4f} ep={res.best_epoch}/{res.epochs} "
              f"{res.seconds_per_epoch:.2f}s/ep", flush=True)
        return rec

    def search(self, backbone: str, seed: int, configs: List[Dict[str, Any]], plugin: Optional[str],
               label: str) -> Dict[str, Any]:
        """Train every configuration; return the one best on validation (plus
        the mean s/epoch of all of them, the arm's cost)."""
        runs = [self.train(backbone, seed, c, plugin, f"{label} {self._short(c)}") for c in configs]
        best = max(runs, key=lambda r: r["valid"]["recall@20"])
        best = dict(best)
        best["s_per_epoch_mean"] = statistics.mean(r["s_per_epoch"] for r in runs)
        return best

    @staticmethod
    def _short(c: Dict[str, Any]) -> str:
        if "plugin.kl_weight" in c and len({c[f"plugin.{w}"] for w in WEIGHTS if f"plugin.{w}" in c}) == 1:
            rest = {k: v for k, v in c.items() if k not in {f"plugin.{w}" for w in WEIGHTS}}
            return f"lambda={c['plugin.kl_weight']:g} " + Runner._short(rest)
        return " ".join(f"{k.split('.')[-1]}={v:g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
                        for k, v in c.items())


def parse_floats(flag: str, text: str) -> List[float]:
    try:
        vals = [float(x) for x in text.split(",")]
    except ValueError:
        raise SystemExit(f"{flag}: expected comma-separated numbers or 'yaml', got {text!r}")
    if not vals or any(not math.isfinite(v) or v <= 0 for v in vals):
        raise SystemExit(f"{flag}: expected positive finite numbers, got {text!r}")
    return vals


def fmt(vals: List[float]) -> str:
    if len(vals) == 1:
        return f"{vals[0]:.4f}"
    return f"{statistics.mean(vals):.4f}±{statistics.stdev(vals):.4f}"


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--dataset", default="ml100k_mm")
    p.add_argument("--backbones", default="vbpr,mmgcn,lattice,freedom,mgcn")
    p.add_argument("--seeds", default="1", help="comma-separated, e.g. 1,2,3")
    p.add_argument("--grid-size", type=int, default=3, help="trainings per arm and seed (1..5)")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--patience", type=int, default=10, help="in validations")
    p.add_argument("--eval-every", type=int, default=1)
    p.add_argument("--missing", default="natural", help="e.g. i3mrec:fm:0.3")
    p.add_argument("--ablation", action="store_true",
                   help="also train w/o MIB / unique / redundant / synergy at the selected config")
    p.add_argument("--ablation-only", default=None,
                   help="comma-separated ablation names (e.g. 'w/o MIB,w/o unique'; 'full' = the "
                        "complete plug-in) to run alone at "
                        "lr = first of --lrs and lambda = first of --lambdas (no search, no main arms)")
    p.add_argument("--lambdas", default=None,
                   help="override the plug-in grid, e.g. 1e-3,1e-2; 'yaml' = the plug-in's YAML "
                        "weights, untied (one training)")
    p.add_argument("--lrs", default=None,
                   help="override the backbone lr grid; 'yaml' = each backbone's YAML lr (one training)")
    p.add_argument("--lr", type=float, default=None,
                   help="fixed learning rate of both arms; the backbone arm then searches reg_weight")
    p.add_argument("--red-ratio", type=float, default=1.0,
                   help="redundant_weight = lambda * this (default 1: all four weights tied)")
    p.add_argument("--set", nargs="*", default=[], help="extra plug-in settings, e.g. latent_dim=32")
    p.add_argument("--out", default=None, help="append one JSON line per training here")
    p.add_argument("--report", default=None, metavar="JSONL",
                   help="only print the tables of the runs logged in this --out file")
    a = p.parse_args(argv)
    if a.report:
        report_from_log(a.report)
        return
    if not 1 <= a.grid_size <= 5:
        p.error("--grid-size: expected 1..5")
    torch.set_num_threads(1)
    seeds = [int(s) for s in a.seeds.split(",")]
    global RED_RATIO
    RED_RATIO = a.red_ratio
    if a.lr is not None and a.lrs:
        p.error("--lr and --lrs exclude each other")
    lrs = ([a.lr] if a.lr is not None else [None] if a.lrs == "yaml" else
           parse_floats("--lrs", a.lrs) if a.lrs else
           LR_GRID[: a.grid_size])
    lams = ([None] if a.lambdas == "yaml" else
            parse_floats("--lambdas", a.lambdas) if a.lambdas else LAMBDA_GRID[: a.grid_size])
    if a.lr is not None:
        from pyg_mmrec.config import model_defaults
        base_grid = {bb: [{"train.lr": a.lr, "model.reg_weight": model_defaults(bb)[0]["reg_weight"] * s}
                          for s in REG_SCALES[: len(lams)]] for bb in a.backbones.split(",")}
    else:
        if len(lrs) != len(lams):
            p.error(f"the two arms need the same budget: {len(lrs)} lrs vs {len(lams)} lambdas")
        base_grid = {bb: [lr_setting(lr) for lr in lrs] for bb in a.backbones.split(",")}
    from pyg_mmrec.config import parse_assignments
    extra = {f"plugin.{k}": v for k, v in parse_assignments(a.set).items()}
    r = Runner(a)
    budget = len(lams) if a.lr is not None else len(lrs)  # with --lr the backbone searches reg_weight
    searched = (f"reg_weight x {REG_SCALES[:budget]}" if a.lr is not None else f"lr grid={lrs}")
    print(f"# {a.dataset}, missing={a.missing}, seeds={seeds}, budget={budget} per arm, "
          f"{searched}, lambda grid={lams}, redundant ratio={a.red_ratio}, epochs<={a.epochs}, "
          f"patience={a.patience}", flush=True)

    if a.ablation_only:
        names = [x.strip() for x in a.ablation_only.split(",")]
        bad = [x for x in names if x not in ABLATIONS and x != "full"]
        if bad:
            p.error(f"--ablation-only: unknown {bad}; expected some of {list(ABLATIONS)}")
        for bb in a.backbones.split(","):
            for seed in seeds:
                for name in names:
                    ov = {**lr_setting(lrs[0]), **tied(lams[0]), **extra}
                    ov.update({f"plugin.{k}": v for k, v in ABLATIONS.get(name, {}).items()})
                    r.train(bb, seed, ov, "mrdib", f"+MRdIB {name}")
        return

    table: Dict[str, Dict[str, List[Dict[str, Any]]]] = {}
    for bb in a.backbones.split(","):
        rows = table.setdefault(bb, {"backbone": [], "mrdib": []})
        for k in ABLATIONS:
            rows.setdefault(k, [])
        for seed in seeds:
            base = r.search(bb, seed, base_grid[bb], None, "backbone")
            sel = {k: v for k, v in base["overrides"].items() if k in ("train.lr", "model.reg_weight")}
            plug = r.search(bb, seed, [dict(sel, **tied(lam), **extra) for lam in lams],
                            "mrdib", "+MRdIB")
            rows["backbone"].append(base)
            rows["mrdib"].append(plug)
            if a.ablation:
                sel = {k: v for k, v in plug["overrides"].items()
                       if k.startswith(("plugin.", "train.lr", "model.reg_weight"))}
                for name, off in ABLATIONS.items():
                    ov = dict(sel, **{f"plugin.{k}": v for k, v in off.items()})
                    rows[name].append(r.train(bb, seed, ov, "mrdib", f"+MRdIB {name}"))

    report(table, a.dataset, a.missing, len(seeds), a.ablation)


def report(table: Dict[str, Dict[str, List[Dict[str, Any]]]], dataset: str, missing: str,
           n_seeds: int, ablation: bool) -> None:
    print(f"\n## {dataset} ({missing}), test metrics at the validation-selected config, "
          f"{n_seeds} seed(s)")
    head = "| backbone | arm | " + " | ".join(METRICS) + " | gain R@20 | s/epoch |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    gains, overheads, wins, names = [], [], 0, []
    for bb, rows in table.items():
        if not rows["backbone"] or not rows["mrdib"]:
            continue
        b20 = statistics.mean(x["test"]["recall@20"] for x in rows["backbone"])
        bsp = statistics.mean(x["s_per_epoch_mean"] for x in rows["backbone"])
        for arm in ["backbone", "mrdib"] + ([k for k in ABLATIONS] if ablation else []):
            xs = rows.get(arm, [])
            if not xs:
                continue
            cells = [fmt([x["test"][m] for x in xs]) for m in METRICS]
            r20 = statistics.mean(x["test"]["recall@20"] for x in xs)
            gain = "" if arm == "backbone" else f"{100 * (r20 / b20 - 1):+.1f}%"
            sp = statistics.mean(x.get("s_per_epoch_mean", x["s_per_epoch"]) for x in xs)
            name = {"backbone": bb, "mrdib": "+ MRdIB"}.get(arm, f"+ MRdIB {arm}")
            print(f"| {bb} | {name} | " + " | ".join(cells) + f" | {gain} | {sp:.2f} |")
        m20 = statistics.mean(x["test"]["recall@20"] for x in rows["mrdib"])
        msp = statistics.mean(x["s_per_epoch_mean"] for x in rows["mrdib"])
        gains.append(100 * (m20 / b20 - 1))
        overheads.append(100 * (msp / bsp - 1))
        wins += m20 > b20
        names.append(bb)
    if gains:
        print(f"\nMRdIB improves test Recall@20 on {wins}/{len(gains)} backbones; mean gain "
              f"{statistics.mean(gains):+.2f}%; mean per-epoch overhead {statistics.mean(overheads):+.1f}% "
              f"(per backbone: " + ", ".join(f"{bb} {o:+.1f}%" for bb, o in zip(names, overheads)) + ")")
        sel = {bb: [x["overrides"] for x in rows["mrdib"]] for bb, rows in table.items() if rows["mrdib"]}
        print("selected plug-in settings:", json.dumps(
            {bb: [{k.split('.')[-1]: v for k, v in o.items()
                   if k in ('train.lr', 'model.reg_weight', 'plugin.kl_weight')}
                  for o in os] for bb, os in sel.items()}))


def report_from_log(path: str) -> None:
    """Rebuild the tables from ``--out`` JSON lines (e.g. of runs split over
    several processes): per (missing, backbone, seed) each arm's selected run
    is its best on validation Recall@20; ablation runs keep their tag."""
    groups: Dict[str, Dict[str, Dict[int, Dict[str, List[Dict[str, Any]]]]]] = {}
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            arm = ("backbone" if not r["plugin"] else
                   next((k for k in ABLATIONS if r["tag"].endswith(k)), "mrdib"))
            (groups.setdefault(r["missing"], {}).setdefault(r["backbone"], {})
             .setdefault(r["seed"], {}).setdefault(arm, []).append(r))
    for missing, bbs in groups.items():
        table: Dict[str, Dict[str, List[Dict[str, Any]]]] = {}
        seeds = set()
        for bb, per_seed in bbs.items():
            rows = table.setdefault(bb, {"backbone": [], "mrdib": [], **{k: [] for k in ABLATIONS}})
            for seed, arms in sorted(per_seed.items()):
                seeds.add(seed)
                for arm, runs in arms.items():
                    best = dict(max(runs, key=lambda x: x["valid"]["recall@20"]))
                    best["s_per_epoch_mean"] = statistics.mean(x["s_per_epoch"] for x in runs)
                    rows[arm].append(best)
        report(table, "(from " + path + ")", missing, len(seeds),
               any(rows[k] for rows in table.values() for k in ABLATIONS))


if __name__ == "__main__":
    main()
