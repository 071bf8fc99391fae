r"""Command line: ``python -m pyg_mmrec train | results | compare | evaluate | recommend |
export | tune | build-dataset``.

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
    python -m pyg_mmrec tune --model LightGCN --dataset ml100k_mm --budget 45m --seeds 1,2,3
    python -m pyg_mmrec train --model VBPR --dataset ml100k_mm --cold-items 0.2 --seeds 1,2,3
    python -m pyg_mmrec recommend runs/vbpr-ml100k_mm-natural/default/seed1 --users 0,5,7 --k 10
    python -m pyg_mmrec export runs/vbpr-ml100k_mm-natural/default/seed1 --out emb/

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


def _parse_share(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"--cold-items: expected a share in (0, 1), got {text!r}")
    return v


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
    p.add_argument("--cold-items", type=_parse_share, default=None, metavar="SHARE",
                   help="new-item protocol: this share of the items (drawn with each seed) "
                        "loses every training interaction and is placed from its content at "
                        "evaluation; adds cold/<metric> columns (e.g. --metric cold/recall@20 "
                        "selects on them)")
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
    if getattr(args, "cold_items", None) is not None:
        name += f"-cold{args.cold_items:g}"
    return _safe(name)


def cmd_train(args: argparse.Namespace) -> int:
    # Everything a user can get wrong is checked here, before PyTorch, PyG or a
    # model is imported, so that a mistake is reported within a second.
    from pyg_mmrec.config import (ConfigError, build_config, config_overrides,
                                  grid_settings, parse_assignments, parse_grid)
    from pyg_mmrec.errors import check_output_dir
    from pyg_mmrec.results import setting_label

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
    from pyg_mmrec.data.missing_spec import parse_missing_spec
    for spec in missing_specs:
        try:
            parse_missing_spec(spec)
        except ValueError as e:
            raise ConfigError(f"--missing: {e}") from e
    check_output_dir(args.out, "--out")
    from pyg_mmrec.data.raw import check_dataset
    check_dataset(args.root, args.dataset)  # NumPy only; skipped when its cache is current

    rc = _launch_ranks(args)  # --nproc N: this process only watches N local ranks
    if rc is not None:
        return rc
    _join_ranks(args)  # a rank of torchrun / --nproc: join the process group

    from pyg_mmrec.results import aggregate, markdown_table
    from pyg_mmrec.train import TrainingInterrupted, run
    out_root = Path(args.out)
    common = dict(root=args.root, plugin=args.plugin, fill=args.fill, device=args.device,
                  quiet=args.quiet, resume=args.resume,
                  cold_items=getattr(args, "cold_items", None))
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
    from pyg_mmrec.errors import OutputError, RunStateError, check_output_dir, require_extra
    if args.plot:  # before reading anything; the path first, then the optional extra
        if Path(args.plot).is_dir():
            raise OutputError(f"--plot {args.plot}: is a folder; expected a file name such "
                              "as plot.png")
        check_output_dir(Path(args.plot).absolute().parent, "--plot")
        require_extra("matplotlib", "plot", "--plot")
    from pyg_mmrec.results import (DEFAULT_METRICS, aggregate, load_results, markdown_table,
                                   plot_metric_vs_missing, unfinished_runs)
    results = load_results(args.paths)
    unfinished = unfinished_runs(args.paths)
    if unfinished:
        note = (f"{len(unfinished)} run(s) have not finished (a checkpoint.pt but no "
                f"result.json), e.g. {unfinished[0]}; finish them with the same train command "
                "plus --resume")
        if not results:
            raise RunStateError(f"no finished run under {' '.join(args.paths)}: {note}")
        print(f"note: {note}", file=sys.stderr)
    if not results:
        raise RunStateError(f"no result.json under {' '.join(args.paths)} (expected run "
                            "directories written by `train`)")
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
        path = plot_metric_vs_missing(rows, args.plot, metric=args.metric)
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
    from pyg_mmrec.errors import RunStateError
    from pyg_mmrec.results import (DEFAULT_METRICS, aggregate, load_results, markdown_table,
                                   unfinished_runs)
    logged_runs: List[Dict[str, Any]] = []
    for p in args.paths:
        found = load_results(p)  # a run's result.json, or every one below a folder
        if not found:
            unfinished = unfinished_runs(p)
            if unfinished:
                raise RunStateError(f"evaluate: no finished run under {p}: {unfinished[0]} has "
                                    "not finished (a checkpoint.pt but no result.json); finish "
                                    "it with the same train command plus --resume")
            raise FileNotFoundError(f"evaluate: no finished run (result.json) under {p}")
        logged_runs += found
    from pyg_mmrec.train import evaluate_run
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


# ----------------------------------------------------------------------------- inference
def add_recommend_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a finished run directory (checkpoint.pt and result.json)")
    p.add_argument("--users", required=True,
                   help="comma-separated user ids (dataset ids, or raw ids with --ids original)")
    p.add_argument("--k", type=int, default=10, help="items per user (default: %(default)s)")
    p.add_argument("--format", default="table", choices=["table", "csv", "json"])
    p.add_argument("--root", default=None,
                   help="data directory holding the run's dataset (default: the one the run "
                        "recorded, else ../shared/data)")
    p.add_argument("--ids", default="internal", choices=["internal", "original"],
                   help="dataset ids, or the raw ids of u_id_mapping.csv / i_id_mapping.csv")
    p.add_argument("--exclude-valid", action="store_true",
                   help="also exclude the users' validation items (seen items always are)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")


def _item_titles(folder: Path) -> Dict[int, str]:
    """``itemID -> title`` from the dataset's ``items.tsv`` (a ``title`` column, else
    the head of ``text`` up to the year or the first sentence); empty when absent."""
    path = folder / "items.tsv"
    if not path.is_file():
        return {}
    import csv
    csv.field_size_limit(1 << 24)
    titles: Dict[int, str] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t")
        fields = reader.fieldnames or []
        if "itemID" not in fields or not ({"title", "text"} & set(fields)):
            return {}
        for row in reader:
            try:
                item = int(row["itemID"])
            except (TypeError, ValueError):
                continue
            text = (row.get("title") or row.get("text") or "").strip()
            if "title" not in fields:
                m = re.match(r"(.*?\(\d{4}\))", text) or re.match(r"(.*?)\. ", text)
                text = m.group(1) if m else text[:60]
            titles[item] = text
    return titles


def cmd_recommend(args: argparse.Namespace) -> int:
    """Top-k items of some users from a finished run (reads the run only)."""
    users = [u.strip() for u in args.users.split(",") if u.strip()]
    if not users:
        print(f"error: --users: expected comma-separated user ids, got {args.users!r}",
              file=sys.stderr)
        return EXIT_CONFIG
    if args.ids == "internal":
        try:
            users = [int(u) for u in users]
        except ValueError:
            print(f"error: --users: expected integer user ids, got {args.users!r} (raw ids "
                  "need --ids original)", file=sys.stderr)
            return EXIT_CONFIG
    from pyg_mmrec.inference import load
    try:
        rec = load(args.run_dir, root=args.root, device=args.device)
        # dataset ids inside (titles are keyed by them); raw ids only in and out
        internal_users = rec.user_ids(users, ids=args.ids)
        items, scores = rec.recommend(internal_users, k=args.k,
                                      exclude_valid=args.exclude_valid)
        shown = rec.original_item_ids(items) if args.ids == "original" else items.numpy()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    titles = _item_titles(rec.data_root / rec.dataset)
    records = []
    for row, user in enumerate(users):
        for rank in range(items.size(1)):
            item = int(items[row, rank])
            if item < 0:  # fewer than k unseen items
                continue
            records.append({"user": user, "rank": rank + 1,
                            "item": (str(shown[row, rank]) if args.ids == "original"
                                     else int(shown[row, rank])),
                            "score": float(scores[row, rank]),
                            "title": titles.get(item, "")})
    if args.format == "json":
        print(json.dumps(records, indent=1))
    elif args.format == "csv":
        import csv
        w = csv.DictWriter(sys.stdout, fieldnames=["user", "rank", "item", "score", "title"],
                           lineterminator="\n")
        w.writeheader()
        w.writerows(records)
    else:
        print("| user | rank | item | score | title |\n|---|---|---|---|---|")
        for r in records:
            title = r["title"].replace("|", "\\|")
            print(f"| {r['user']} | {r['rank']} | {r['item']} | {r['score']:.4f} | {title} |")
    return 0


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a finished run directory (checkpoint.pt and result.json)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--force", action="store_true",
                   help="write into an existing non-empty --out (its files are replaced)")
    p.add_argument("--root", default=None,
                   help="data directory holding the run's dataset (default: the one the run "
                        "recorded, else ../shared/data)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")


def cmd_export(args: argparse.Namespace) -> int:
    r"""Writes ``user_embeddings.npy`` ``[U, d]``, ``item_embeddings.npy`` ``[I, d]``
    (row = dataset id; scores are their dot products), ``users.tsv`` /
    ``items.tsv`` (dataset id, raw id when the dataset has the mapping files)
    and ``export.json`` (run, model, sizes), each atomically."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        print(f"error: --out: {out} exists and is not a directory", file=sys.stderr)
        return EXIT_CONFIG
    if out.is_dir() and any(out.iterdir()) and not args.force:
        print(f"error: --out: {out} is not empty; choose another directory or pass --force "
              "to replace its files", file=sys.stderr)
        return EXIT_CONFIG
    import io

    import numpy as np

    from pyg_mmrec.inference import load
    from pyg_mmrec.train.checkpoint import atomic_write, atomic_write_json, atomic_write_text
    try:
        rec = load(args.run_dir, root=args.root, device=args.device)
        user, item = rec.user_embeddings().numpy(), rec.item_embeddings().numpy()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG

    def npy(arr):
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        data = buf.getvalue()
        return lambda f: f.write(data)

    def id_table(kind: str, n: int) -> str:
        import torch
        try:
            raw = (rec.original_user_ids if kind == "user" else rec.original_item_ids)(
                torch.arange(n))
        except ValueError:  # no mapping file: dataset ids only
            return f"{kind}ID\n" + "".join(f"{j}\n" for j in range(n))
        return f"{kind}ID\traw_id\n" + "".join(f"{j}\t{r}\n" for j, r in enumerate(raw))

    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "user_embeddings.npy", npy(user))
    atomic_write(out / "item_embeddings.npy", npy(item))
    atomic_write_text(out / "users.tsv", id_table("user", user.shape[0]))
    atomic_write_text(out / "items.tsv", id_table("item", item.shape[0]))
    atomic_write_json(out / "export.json", {
        "run_dir": str(Path(args.run_dir).resolve()), "model": rec.config["model"],
        "plugin": rec.config.get("plugin"), "dataset": rec.dataset,
        "missing": rec.config["missing"], "cold_items": rec.config.get("cold_items"),
        "num_users": int(user.shape[0]), "num_items": int(item.shape[0]),
        "dim": int(user.shape[1]),
        "score": "user_embeddings[u] @ item_embeddings[i] (row = dataset id)"})
    print(f"exported {user.shape[0]} users and {item.shape[0]} items (d={user.shape[1]}) "
          f"to {out}")
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
    nproc = getattr(args, "nproc", None)
    if nproc is None:
        return None
    if nproc < 1:
        raise ConfigError(f"--nproc: expected a positive integer, got {nproc}")
    from pyg_mmrec.train import distributed  # imports PyTorch: after the checks above
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


def _add_build_dataset(p: argparse.ArgumentParser) -> None:
    try:  # implemented in pyg_mmrec.data.build_dataset; optional at import time
        from pyg_mmrec.data import build_dataset
        build_dataset.add_arguments(p)
        p.set_defaults(func=build_dataset.main)
    except Exception as e:  # noqa: BLE001 - any import failure means "unavailable"
        err = f"{type(e).__name__}: {e}"
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=lambda a: _unavailable(err))


def build_parser(argv: Optional[Sequence[str]] = None) -> argparse.ArgumentParser:
    r"""The command line's parser.

    Args:
        argv: the arguments about to be parsed, if known: then a subcommand
            whose options cost heavy imports (``build-dataset`` imports
            PyTorch for its encoders) gets them only when it is the one asked
            for, so that every other command starts quickly.
    """
    parser = argparse.ArgumentParser(
        prog="python -m pyg_mmrec",
        description="Multimodal recommendation with missing modalities.")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error instead of one line")
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
    # ---- tune (pyg_mmrec/tune/; Optuna is imported only when the command runs)
    from pyg_mmrec import tune
    p = sub.add_parser("tune", help="budgeted hyper-parameter search on validation (Optuna): "
                                    "resumable, parallel, then the best setting on --seeds")
    tune.add_arguments(p)
    p.set_defaults(func=tune.cmd_tune)
    p = sub.add_parser("recommend", help="top-k items of some users from a finished run")
    add_recommend_arguments(p)
    p.set_defaults(func=cmd_recommend)
    p = sub.add_parser("export", help="user/item embeddings (.npy) and id maps of a finished run")
    add_export_arguments(p)
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("build-dataset", help="build an MMRec-format dataset with modality features",
                       add_help=True)
    if argv is None or "build-dataset" in argv:
        _add_build_dataset(p)
    else:  # not asked for: its options are never parsed
        p.set_defaults(func=lambda a: _unavailable("not loaded"))
    for command in sub.choices.values():  # `--debug` also after the subcommand
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help=argparse.SUPPRESS)
    return parser


def _unavailable(err: str) -> int:
    print(f"build-dataset is not available: pyg_mmrec.data.build_dataset could not be "
          f"imported ({err})", file=sys.stderr)
    return 1


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) if str(error).strip() else type(error).__name__
    return f"error: {text}"


#: errors the user caused (a path that does not exist or is taken, ...) besides
#: the library's own UserInputError family; anything else is a bug
_USER_OS_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
                   PermissionError)


def main(argv: Optional[Sequence[str]] = None) -> int:
    r"""Run the command line; returns the exit status.

    A mistake in the input (configuration, data file, output folder,
    checkpoint, missing optional package) prints one line, ``error: ...``, and
    returns 2 (``--debug``: the traceback instead). Any other exception is a bug
    and propagates with its traceback.
    """
    from pyg_mmrec.errors import UserInputError
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    try:
        rc = args.func(args)
    except (UserInputError,) + _USER_OS_ERRORS as e:
        if getattr(args, "debug", False):
            raise
        print(_one_line(e), file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        if getattr(args, "debug", False):
            raise
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return int(rc or 0)
