r"""Command line: ``python -m pyg_mmrec train | results | compare | evaluate | build-dataset``.

The parser and the ``cmd_*`` functions live here; ``pyg_mmrec/__main__.py`` only
calls :func:`main`, and nothing in the library imports this module.

Examples::

    python -m pyg_mmrec train --model FREEDOM --dataset ml100k_mm --root ../shared/data \
        --missing i3mrec:fm:0.3 --seeds 1,2,3 --out runs/freedom
    python -m pyg_mmrec train --model LightGCN --dataset baby --root ../shared/data \
        --grid n_layers=1,2,3 --grid reg_weight=1e-4,1e-3 --seeds 1,2
    python -m pyg_mmrec results runs/ --plot recall_vs_missing.png
    python -m pyg_mmrec compare runs/i3mrec runs/lightgcn --metrics recall@20,ndcg@20
    python -m pyg_mmrec evaluate runs/freedom --root ../shared/data --topk 5,10,20

Grid search trains every setting (for every seed, or for the ``--grid-seeds``
only) without looking at the test split, selects the setting with the best
mean *validation* metric over those seeds, then trains the selected setting on
the remaining ``--seeds`` and only then evaluates the test split of its runs.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

EXIT_CONFIG, EXIT_INTERRUPTED = 2, 130

# dedicated flags -> training keys
_TRAIN_FLAGS = {"epochs": int, "lr": float, "batch_size": int, "patience": int,
                "eval_every": int, "weight_decay": float, "metric": str}


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=,+_-]+", "_", str(text)).strip("_") or "x"


def _run_folder(overrides) -> str:
    """The folder of one configuration under its experiment: ``default``, or its
    settings (``lr=0.001,n_layers=3``), or ``cfg-<hash>`` when those are long, so
    runs of different ``--set``/``--grid``/flag values never share a directory."""
    from pyg_mmrec.results import setting_label
    label = setting_label(overrides)
    if len(label) <= 100:
        return _safe(label)
    import hashlib
    return "cfg-" + hashlib.sha1(label.encode()).hexdigest()[:12]


def _parse_seeds(text: str) -> List[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--seeds: expected comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds: expected distinct integers, got {text!r}")
    return seeds


def _parse_topk(text: str) -> List[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--topk: expected comma-separated integers, got {text!r}")


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model name (e.g. LightGCN, FREEDOM)")
    p.add_argument("--dataset", required=True, help="dataset folder name under --root")
    p.add_argument("--root", default="../shared/data", help="data directory (default: %(default)s)")
    p.add_argument("--missing", action="append", default=None, metavar="SPEC",
                   help="missing-modality protocol, e.g. natural, i3mrec:fm:0.3, dgmrec:0.667, "
                        "entry:0.3; may be repeated (default: natural)")
    p.add_argument("--seeds", type=_parse_seeds, default=[0],
                   help="comma-separated seeds (default: 0)")
    p.add_argument("--plugin", default=None, help="plug-in wrapping the backbone (mrdib)")
    p.add_argument("--fill", default=None, choices=["zero", "mean", "propagate"],
                   help="how missing feature rows are filled (default: zero)")
    p.add_argument("--out", default="runs", help="output directory (default: %(default)s)")
    p.add_argument("--resume", action="store_true",
                   help="continue runs from their checkpoints (finished runs are reused)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    p.add_argument("--config", default=None, metavar="YAML",
                   help="YAML of overrides (flat model keys, optional train:/plugin: sections), "
                        "or the name of a shipped one (e.g. 'reference' for "
                        "configs/<model>_reference.yaml); --set and flags win over it")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a configuration key (YAML-typed); may be repeated")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="grid-search values of a key (selected on validation); may be repeated; "
                        "KEY1+KEY2=... ties keys to one value per setting")
    p.add_argument("--grid-seeds", type=_parse_seeds, default=None, metavar="S1,S2,...",
                   help="seeds the grid selects on (a subset of --seeds; default: all of them); "
                        "the selected setting is then trained on every --seeds")
    for flag, typ in _TRAIN_FLAGS.items():
        p.add_argument("--" + flag.replace("_", "-"), type=typ, default=None, dest=flag,
                       help=f"shorthand for --set {flag}=...")
    p.add_argument("--topk", type=_parse_topk, default=None, help="cut-offs, e.g. 10,20,50")
    # distributed data-parallel training (pyg_mmrec.train.distributed)
    p.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="train on N local ranks (127.0.0.1; gloo on CPU, nccl with --device "
                        "cuda); under torchrun leave it unset (RANK/WORLD_SIZE come from it)")
    p.add_argument("--dist-timeout", type=float, default=600.0, metavar="SECONDS",
                   help="a rank waiting longer than this on another rank fails instead of "
                        "hanging (default: %(default)s)")


def _experiment_name(args, missing: str) -> str:
    name = args.model.lower() + (f"+{args.plugin.lower()}" if args.plugin else "")
    name += f"-{args.dataset}-{missing}"
    if args.fill:
        name += f"-fill_{args.fill}"
    return _safe(name)


def cmd_train(args: argparse.Namespace) -> int:
    from pyg_mmrec.config import (ConfigError, build_config, config_overrides,
                                  grid_settings, parse_assignments, parse_grid)
    from pyg_mmrec.results import aggregate, markdown_table, setting_label
    from pyg_mmrec.train import TrainingInterrupted, run

    # ---- validate everything before any training
    overrides = config_overrides(args.config, args.model) if args.config else {}
    overrides.update(parse_assignments(args.set))
    for flag in list(_TRAIN_FLAGS) + ["topk"]:
        v = getattr(args, flag)
        if v is not None:
            overrides[f"train.{flag}"] = v
    grid = parse_grid(args.grid)
    settings = grid_settings(grid)
    for k in settings[0]:
        if k in ("metric", "train.metric"):
            raise ConfigError("--grid metric: the selection metric cannot be searched over")
        if k in overrides or f"train.{k}" in overrides:
            raise ConfigError(f"--grid {k}: also set by --set/flag; give it in one place")
    grid_seeds = args.seeds
    if args.grid_seeds is not None:
        if not grid:
            raise ConfigError("--grid-seeds: only meaningful with --grid")
        extra = [s for s in args.grid_seeds if s not in args.seeds]
        if extra:
            raise ConfigError(f"--grid-seeds: {extra} not among --seeds {args.seeds}; "
                              "the grid's seeds must be a subset of the reported seeds")
        grid_seeds = args.grid_seeds
    for s in settings:
        build_config(args.model, {**overrides, **s}, args.plugin)
    metric = build_config(args.model, overrides, args.plugin)["train"]["metric"]
    missing_specs = args.missing or ["natural"]
    from pyg_mmrec.data.missing import parse_missing_spec
    for spec in missing_specs:
        try:
            parse_missing_spec(spec)
        except ValueError as e:
            raise ConfigError(f"--missing: {e}") from e

    rc = _launch_ranks(args)  # --nproc N: this process only watches N local ranks
    if rc is not None:
        return rc
    _join_ranks(args)  # a rank of torchrun / --nproc: join the process group

    out_root = Path(args.out)
    common = dict(root=args.root, plugin=args.plugin, fill=args.fill, device=args.device,
                  quiet=args.quiet, resume=args.resume)
    selected_results: List[Dict[str, Any]] = []
    try:
        for spec in missing_specs:
            exp_dir = out_root / _experiment_name(args, spec)
            if len(settings) == 1:
                chosen = settings[0]
            else:
                scores = []
                for s in settings:
                    vals = []
                    for seed in grid_seeds:
                        r = run(args.model, args.dataset, missing=spec, seed=seed,
                                overrides={**overrides, **s},
                                out_dir=exp_dir / _run_folder({**overrides, **s}) / f"seed{seed}",
                                test=False, **common)
                        vals.append(r.valid[metric])
                    scores.append(sum(vals) / len(vals))
                    _print(args, f"[grid] {spec} {setting_label(s)}: valid {metric} "
                                 f"{scores[-1]:.4f} (mean of {len(vals)} seed(s))")
                best = max(range(len(settings)), key=lambda i: scores[i])
                chosen = settings[best]
                from pyg_mmrec.train.checkpoint import atomic_write_json
                atomic_write_json(exp_dir / "selection.json", {
                    "metric": f"valid {metric} (mean over seeds {grid_seeds})",
                    "settings": [{"setting": s, "score": sc} for s, sc in zip(settings, scores)],
                    "selected": chosen})
                _print(args, f"[grid] {spec}: selected {setting_label(chosen)} on validation")
            for seed in args.seeds:
                # the selected setting's runs are finished: this only evaluates the test split
                r = run(args.model, args.dataset, missing=spec, seed=seed,
                        overrides={**overrides, **chosen},
                        out_dir=exp_dir / _run_folder({**overrides, **chosen}) / f"seed{seed}",
                        test=True, **{**common, "resume": common["resume"] or len(settings) > 1})
                selected_results.append(r.to_dict())
    except TrainingInterrupted as e:
        print(f"interrupted: {e}. Continue with the same command plus --resume.", file=sys.stderr)
        return EXIT_INTERRUPTED

    rows = aggregate(selected_results, split="test")
    print(markdown_table(rows))
    return 0


def _print(args, msg: str) -> None:
    if not args.quiet:
        print(msg, file=sys.stderr)


def add_results_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+",
                   help="run directories or result.json files (searched recursively)")
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="also plot test Recall@20 vs missing rate")
    p.add_argument("--metric", default="recall@20",
                   help="metric of the plot (default: %(default)s)")
    p.add_argument("--metrics", default=None,
                   help="comma-separated table columns "
                        "(default: recall@10,recall@20,ndcg@10,ndcg@20)")
    p.add_argument("--split", default="test", choices=["valid", "test"])
    p.add_argument("--json", action="store_true", help="print the aggregated rows as JSON")


def cmd_results(args: argparse.Namespace) -> int:
    from pyg_mmrec.results import (DEFAULT_METRICS, aggregate, load_results, markdown_table,
                                   plot_metric_vs_missing)
    results = load_results(args.paths)
    if not results:
        print(f"no result.json found under {args.paths}", file=sys.stderr)
        return 1
    rows = aggregate(results, split=args.split)
    skipped = sum(1 for r in results if not r.get(args.split))
    metrics = args.metrics.split(",") if args.metrics else DEFAULT_METRICS
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    else:
        print(markdown_table(rows, metrics=metrics, split=args.split))
        print(f"\n{len(results)} run(s), {len(rows)} group(s) (mean ± sample std over seeds)"
              + (f"; {skipped} run(s) without {args.split} metrics skipped "
                 "(unselected grid settings)" if skipped else ""))
    if args.plot:
        try:
            path = plot_metric_vs_missing(rows, args.plot, metric=args.metric)
        except (RuntimeError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"plot written to {path}")
    return 0


def add_compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("a", help="runs of model A: a run directory, a result.json, or a folder "
                             "searched recursively (one configuration per protocol)")
    p.add_argument("b", help="runs of model B, the same way")
    p.add_argument("--metrics", default="recall@20,ndcg@20",
                   help="comma-separated metrics (default: %(default)s)")
    p.add_argument("--split", default="test", choices=["valid", "test"])
    p.add_argument("--json", action="store_true", help="print the rows as JSON")


def cmd_compare(args: argparse.Namespace) -> int:
    """Seed-by-seed comparison of two sets of finished runs (reads result.json only)."""
    from pyg_mmrec.results import comparison_table, load_results, paired_comparison
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if not metrics:
        print(f"error: --metrics: expected comma-separated metric names, got {args.metrics!r}",
              file=sys.stderr)
        return EXIT_CONFIG
    runs = {}
    try:
        for side, path in (("A", args.a), ("B", args.b)):
            runs[side] = load_results(path)
            if not runs[side]:
                raise FileNotFoundError(f"compare: no result.json under {path} (side {side})")
        rows = paired_comparison(runs["A"], runs["B"], metrics=metrics, split=args.split)
    except ValueError as e:  # unreadable result.json, mixed settings, nothing to pair
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    print(f"A = {rows[0]['a']} ({args.a})\nB = {rows[0]['b']} ({args.b})\n")
    print(comparison_table(rows))
    notes = sorted({f"{r['dataset']} {r['missing']}: seeds {r['unpaired'][s]} only in {s}"
                    for r in rows for s in ("A", "B") if r["unpaired"][s]})
    print("\nPairs share dataset, protocol and seed; A − B is the mean ± sample std of the "
          "per-seed differences; p is the two-sided sign-flip test (exact up to 20 pairs; "
          "at least 2/2^pairs).")
    for note in notes:
        print(f"unpaired: {note}")
    return 0


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+",
                   help="finished run directories, or folders searched recursively for them")
    p.add_argument("--root", default="../shared/data",
                   help="data directory holding the runs' dataset (default: %(default)s)")
    p.add_argument("--topk", type=_parse_topk, default=None,
                   help="cut-offs to report, e.g. 5,10,20 (default: each run's own)")
    p.add_argument("--split", default="test", choices=["valid", "test"])
    p.add_argument("--metrics", default=None,
                   help="comma-separated table columns (default: recall and ndcg at every "
                        "--topk cut-off, else recall@10,recall@20,ndcg@10,ndcg@20)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the aggregated rows as JSON")
    p.add_argument("--quiet", action="store_true", help="no per-run progress lines")


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Re-score finished runs at their validation-selected epoch (no training, no writes)."""
    from pyg_mmrec.results import DEFAULT_METRICS, aggregate, load_results, markdown_table
    from pyg_mmrec.train import evaluate_run
    logged_runs: List[Dict[str, Any]] = []
    for p in args.paths:
        found = load_results(p)  # a run's result.json, or every one below a folder
        if not found:
            raise FileNotFoundError(f"evaluate: no finished run (result.json) under {p}")
        logged_runs += found
    results, skipped = [], 0
    for logged in logged_runs:
        d = Path(logged["_path"]).parent
        if args.split == "test" and not logged.get("test"):
            skipped += 1  # an unselected grid candidate: its test split stays unread
            continue
        try:
            results.append(evaluate_run(d, root=args.root, topk=args.topk,
                                        splits=(args.split,), device=args.device))
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_CONFIG
        _print(args, f"[evaluate] {d}")
    note = (f"; {skipped} run(s) skipped: their test split was never read (grid settings "
            "not selected on validation)" if skipped else "")
    if not results:
        print(f"no run to evaluate under {args.paths}{note}", file=sys.stderr)
        return 1
    rows = aggregate(results, split=args.split)
    if args.metrics:
        metrics = args.metrics.split(",")
    elif args.topk:
        metrics = [f"{m}@{k}" for m in ("recall", "ndcg") for k in args.topk]
    else:
        metrics = list(DEFAULT_METRICS)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    else:
        print(markdown_table(rows, metrics=metrics, split=args.split))
        print(f"\n{len(results)} run(s) re-scored at their selected epoch, {len(rows)} "
              f"group(s) (mean ± sample std over seeds){note}")
    return 0


# ----------------------------------------------------------------------------- distributed
def _rank_main(namespace: Dict[str, Any]) -> int:
    """What each local rank runs under ``--nproc N``: ``train`` with the same arguments."""
    return cmd_train(argparse.Namespace(**namespace))


def _launch_ranks(args: argparse.Namespace) -> Optional[int]:
    r"""``--nproc N`` (N > 1) outside a distributed job: run ``cmd_train`` on N
    local ranks and return the exit code; ``None`` when this process should
    train itself (no ``--nproc``, ``--nproc 1``, or already a rank)."""
    from pyg_mmrec.config import ConfigError
    from pyg_mmrec.train import distributed
    nproc = getattr(args, "nproc", None)
    if nproc is None:
        return None
    if nproc < 1:
        raise ConfigError(f"--nproc: expected a positive integer, got {nproc}")
    timeout = getattr(args, "dist_timeout", distributed.DEFAULT_TIMEOUT)
    if timeout is None or timeout <= 0:
        raise ConfigError(f"--dist-timeout: expected a positive number of seconds, got {timeout}")
    ws = distributed.env_world_size()
    if "WORLD_SIZE" in os.environ:
        if ws != nproc:
            raise ConfigError(f"--nproc {nproc} conflicts with WORLD_SIZE={ws} set by the "
                              "launcher (torchrun); drop --nproc under torchrun")
        return None
    if nproc == 1:
        return None
    import torch
    if str(args.device).startswith("cuda") and torch.cuda.device_count() < nproc:
        raise ConfigError(f"--nproc {nproc} with --device cuda needs {nproc} GPUs, found "
                          f"{torch.cuda.device_count()}")
    ns = {k: v for k, v in vars(args).items() if k != "func"}
    try:
        return distributed.launch(_rank_main, nproc, (ns,), timeout=timeout)
    except distributed.RankFailedError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exitcode if e.exitcode > 0 else 1


def _join_ranks(args: argparse.Namespace) -> None:
    r"""In a rank of a distributed job (``torchrun`` or ``--nproc``): join the
    process group, pin ``--device cuda`` to ``cuda:LOCAL_RANK``, and silence
    ranks > 0 (only rank 0 prints the results table and progress)."""
    from pyg_mmrec.train import distributed
    timeout = getattr(args, "dist_timeout", None) or distributed.DEFAULT_TIMEOUT
    ctx = distributed.init_from_env(args.device, timeout=timeout)
    if ctx.world_size > 1:
        os.environ.setdefault("PYG_MMREC_DIST_TIMEOUT", str(float(timeout)))
        if ctx.device.type == "cuda":
            args.device = str(ctx.device)
        if ctx.rank != 0:
            args.quiet = True
            sys.stdout = open(os.devnull, "w")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pyg_mmrec",
        description="Multimodal recommendation with missing modalities.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train and evaluate a model (grid search, several seeds)")
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("results", help="Markdown table (and plot) from run directories")
    add_results_arguments(p)
    p.set_defaults(func=cmd_results)
    p = sub.add_parser("compare", help="seed-by-seed comparison of two sets of runs "
                                       "(paired differences, sign-flip test)")
    add_compare_arguments(p)
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("evaluate", help="re-score finished runs at their selected epoch "
                                        "(other cut-offs; nothing is trained or written)")
    add_evaluate_arguments(p)
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("build-dataset", help="build an MMRec-format dataset with modality features",
                       add_help=True)
    try:  # implemented in pyg_mmrec.data.build_dataset; optional at import time
        from pyg_mmrec.data import build_dataset
        build_dataset.add_arguments(p)
        p.set_defaults(func=build_dataset.main)
    except Exception as e:  # noqa: BLE001 - any import failure means "unavailable"
        err = f"{type(e).__name__}: {e}"
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=lambda a: _unavailable(err))
    return parser


def _unavailable(err: str) -> int:
    print(f"build-dataset is not available: pyg_mmrec.data.build_dataset could not be "
          f"imported ({err})", file=sys.stderr)
    return 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    from pyg_mmrec.config import ConfigError
    args = build_parser().parse_args(argv)
    try:
        rc = args.func(args)
    except (ConfigError, FileExistsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return int(rc or 0)
