r"""Train I3-MRec on real data with missing modalities and print a results table.

Trains on ``ml100k_mm`` (MovieLens-100K with poster images and plot text; 41
items have no poster: that natural missingness is always applied) under the
I3-MRec protocol with missing rate ``--rate`` in the three modes

* ``ff``: full modalities at training and at test,
* ``fm``: full at training, missing at test (``rate`` of the evaluation items
  lose one modality),
* ``mm``: missing at training and at test,

and prints test Recall@10/20 and NDCG@10/20 (mean ± std over ``--seeds``).
Model selection and early stopping use the validation split only; the test
split is read once, at the selected epoch.

I3-MRec uses ``examples/configs/i3mrec_ml100k.yaml`` by default on
``ml100k_mm``: the reference's hyper-parameters plus the changes selected on
ml100k_mm validation (a propagated ID branch, a linear fusion map, lr 5e-3,
patience 30); ``--config none`` gives the reference's Baby defaults
(``pyg_mmrec/configs/i3mrec.yaml``). Other models use their YAML defaults.

Usage::

    python examples/train_i3mrec.py                        # 1 seed, ff/fm/mm
    python examples/train_i3mrec.py --seeds 1,2,3          # the full table
    python examples/train_i3mrec.py --quick                # a smoke run
    python examples/train_i3mrec.py --set use_irm=false    # an ablation
    python examples/train_i3mrec.py --model lightgcn       # a baseline, same protocol
    python examples/train_i3mrec.py --out runs/demo        # keep the runs; rerun resumes
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(REPO / ".." / "shared" / "data"),
                   help="data directory holding <dataset>/ (default: ../shared/data)")
    p.add_argument("--dataset", default="ml100k_mm", help="dataset name (default: %(default)s)")
    p.add_argument("--model", default="i3mrec", help="registry name (default: %(default)s)")
    p.add_argument("--protocol", default="i3mrec", choices=["i3mrec"],
                   help="missing-modality protocol (default: %(default)s)")
    p.add_argument("--modes", default="ff,fm,mm", help="comma-separated modes (default: %(default)s)")
    p.add_argument("--rate", type=float, default=0.3, help="missing rate (default: %(default)s)")
    p.add_argument("--seeds", default="1", help="comma-separated seeds (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    p.add_argument("--config", default=None, metavar="YAML",
                   help="YAML of overrides (flat model keys, optional train: section); default "
                        "for i3mrec on ml100k_mm: examples/configs/i3mrec_ml100k.yaml; 'none' = "
                        "the model's YAML defaults only")
    p.add_argument("--epochs", type=int, default=None,
                   help="maximum epochs (default: the configuration's, or 3 with --quick)")
    p.add_argument("--patience", type=int, default=None,
                   help="early-stopping patience in validations (default: the configuration's)")
    p.add_argument("--lr", type=float, default=None,
                   help="Adam learning rate (default: the configuration's)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="keep every run under DIR/<mode>/seed<k> (config, metrics, checkpoint); "
                        "an existing run there is resumed or reused (default: nothing written)")
    p.add_argument("--quick", action="store_true", help="a few epochs only (smoke test)")
    p.add_argument("--fill", default=None, choices=["zero", "mean", "propagate"],
                   help="fill of missing feature rows given to the model (default: zero)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="hyper-parameter / training override, repeatable (e.g. penalty=irm)")
    p.add_argument("--json", default=None, metavar="FILE",
                   help="also write every run's result and the table to this JSON file")
    p.add_argument("--verbose", action="store_true", help="per-epoch progress lines")
    return p.parse_args(argv)


def results_table(results, modes, seeds):
    """``{mode: {metric: {"mean", "std", "values"}}}`` over the seeds of each mode."""
    table = {}
    for mode in modes:
        row = {}
        for metric in METRICS:
            vals = [results[(mode, s)].test[metric] for s in seeds]
            row[metric] = {"mean": statistics.fmean(vals),
                           "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                           "values": vals}
        table[mode] = row
    return table


def format_table(table) -> str:
    """One line per mode: mean ± std of every metric."""
    header = f"{'mode':<5}" + "".join(f"{m:>20}" for m in METRICS)
    lines = [header, "-" * len(header)]
    for mode, row in table.items():
        lines.append(f"{mode:<5}" + "".join(
            f"{row[m]['mean']:.4f} ± {row[m]['std']:.4f}".rjust(20) for m in METRICS))
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    from pyg_mmrec.config import ConfigError, config_overrides, parse_assignments
    from pyg_mmrec.errors import UserInputError
    from pyg_mmrec.train import run

    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    root = Path(args.root).resolve()
    if not (root / args.dataset).is_dir():
        print(f"--root: no dataset folder {root / args.dataset}", file=sys.stderr)
        return 2
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in ("ff", "fm", "mm")]
    if bad or not modes:
        print(f"--modes: expected a comma-separated subset of ff,fm,mm, got {args.modes!r}",
              file=sys.stderr)
        return 2
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        print(f"--seeds: expected comma-separated integers, got {args.seeds!r}", file=sys.stderr)
        return 2
    config = args.config
    if config is None and args.model.lower().replace("-", "") == "i3mrec" \
            and args.dataset == "ml100k_mm":
        config = str(REPO / "examples" / "configs" / "i3mrec_ml100k.yaml")
    overrides = {}
    if config is not None and config.lower() != "none":
        try:
            overrides.update(config_overrides(config))
        except ConfigError as exc:
            print(f"--config: {exc}", file=sys.stderr)
            return 2
    if args.quick:
        overrides.update({"train.epochs": 3, "train.patience": 3})
    if args.epochs is not None:
        overrides["train.epochs"] = args.epochs
    if args.patience is not None:
        overrides["train.patience"] = args.patience
    if args.lr is not None:
        overrides["train.lr"] = args.lr
    overrides.update(parse_assignments(args.set))

    results = {}
    t_start = time.time()
    title = (f"{args.model} on {args.dataset}, protocol {args.protocol} rate {args.rate:g}, "
             f"seeds {','.join(map(str, seeds))} (test split, selection on validation)")
    for j, mode in enumerate(modes, start=1):
        spec = f"{args.protocol}:{mode}:{args.rate:g}"
        print(f"\n== mode {mode} ({j}/{len(modes)}): {spec}, {len(seeds)} seed(s), "
              f"{time.time() - t_start:.0f} s so far", flush=True)
        for seed in seeds:
            t0 = time.time()
            out_dir = None if args.out is None else Path(args.out) / mode / f"seed{seed}"
            try:
                res = run(args.model, args.dataset, root=root, missing=spec, seed=seed,
                          overrides=overrides, fill=args.fill, device=args.device,
                          quiet=not args.verbose, out_dir=out_dir, resume=out_dir is not None)
            except UserInputError as exc:  # bad values or files: say which, in one line
                print(f"error: {exc}", file=sys.stderr)
                return 2
            results[(mode, seed)] = res
            test = res.test or {}
            print(f"[{args.model} {spec} seed {seed}] best epoch {res.best_epoch} of "
                  f"{res.epochs}, valid recall@20 {res.valid.get('recall@20', float('nan')):.4f}, "
                  f"test recall@20 {test.get('recall@20', float('nan')):.4f}, "
                  f"{res.seconds_per_epoch:.2f} s/epoch, {time.time() - t0:.0f} s", flush=True)
        # the table so far: every finished mode (the last one printed is the full table)
        done = modes[:j]
        print(f"\n{title}" + ("" if j == len(modes) else f" -- {j} of {len(modes)} modes done"))
        table = results_table(results, done, seeds)
        print(format_table(table), flush=True)
    print(f"\ntotal {time.time() - t_start:.0f} s")
    if args.json:
        out = {"title": title, "args": vars(args), "overrides": overrides, "table": table,
               "runs": [{"mode": m, "seed": s, **results[(m, s)].to_dict()} for (m, s) in results]}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
