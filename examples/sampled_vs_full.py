r"""Does sampled training (``fanout``) keep each model's quality? Every model is
trained twice through the command line on the same seeds, on the full graph
and with its default fan-out, and the test metrics are paired by seed.

Each run is ``python -m pyg_mmrec train`` with the model's YAML defaults,
``--epochs`` / ``--patience`` (validation Recall@20 every epoch, test read
once at the selected epoch); the sampled run adds ``--set fanout=[f, ..., f]``
with one entry per user–item layer (``DEFAULT_FANOUT``) and any ``--set
key=value`` given here. Runs land in ``--out/<model>/{full,sampled<f>[,<sets>]}``
(the CLI keeps each ``--epochs`` / ``--patience`` in a directory of its own
below) and are reused when the script runs again; the table reads the runs
of the given ``--epochs`` and ``--patience`` only.

The table gives, per model, both test Recall@20 and NDCG@20 (mean ± std over
seeds), the paired difference sampled − full (mean ± std of the per-seed
differences) and a verdict: *loses* when the mean difference is below minus
the full-graph runs' seed-to-seed std, else *kept*.

Usage::

    python examples/sampled_vs_full.py                       # every model, seeds 1-3
    python examples/sampled_vs_full.py --models LightGCN,FREEDOM --seeds 1,2,3
    python examples/sampled_vs_full.py --models LightGCN --fanout 20   # another fan-out
    python examples/sampled_vs_full.py --models LGMRec --fanout 20 --set hyper_sample=null
    python examples/sampled_vs_full.py --models LGMRec --patience 100  # another budget, same --out
    python examples/sampled_vs_full.py --models LGMRec --epochs 800 --patience 100 \
        --fanout 20 --set hyper_sample=null   # LGMRec's setting that keeps quality
    python examples/sampled_vs_full.py --table-only          # print what is already there
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: model name (as `--model`, "FREEDOM+MRdIB" = FREEDOM with the MRdIB plug-in) -> the number
#: of user-item layers the fan-out list needs (the YAML defaults).
LAYERS = {"LightGCN": 2, "I3MRec": 3, "FREEDOM": 2, "FREEDOM+MRdIB": 2, "LATTICE": 2,
          "MGCN": 2, "LGMRec": 2, "MMGCN": 2, "VBPR": 2, "BPR": 2}
DEFAULT_FANOUT = 10


def model_args(name: str) -> list[str]:
    if name.endswith("+MRdIB"):
        return ["--model", name.split("+")[0], "--plugin", "mrdib"]
    return ["--model", name]


def sampled_dir(fanout: int, sets) -> str:
    """The sampled run's directory name: the fan-out, then the extra settings."""
    return ",".join([f"sampled{fanout}", *sets]).replace("/", "_")


def run(name: str, mode: str, fanout: int, args) -> Path:
    out = Path(args.out) / name.replace("+", "_") / (
        "full" if mode == "full" else sampled_dir(fanout, args.set))
    cmd = [sys.executable, "-m", "pyg_mmrec", "train", *model_args(name), "--dataset",
           args.dataset, "--root", args.root, "--seeds", args.seeds, "--epochs",
           str(args.epochs), "--patience", str(args.patience), "--out", str(out), "--quiet",
           "--resume"]
    if mode == "sampled":
        cmd += ["--set", "fanout=[" + ",".join([str(fanout)] * LAYERS[name]) + "]"]
        for kv in args.set:
            cmd += ["--set", kv]
    if not args.table_only:
        print("$", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return out


def table(pairs, epochs: int | None = None, patience: int | None = None) -> str:
    """The comparison table; ``epochs`` / ``patience``: only the runs trained
    with them (runs of other budgets can share the directories)."""
    from pyg_mmrec.results import load_results, paired_comparison

    def runs(path):
        out = load_results(path)
        for key, want in (("epochs", epochs), ("patience", patience)):
            if want is not None:
                out = [r for r in out if r["config"].get("train", {}).get(key, want) == want]
        return out

    lines = ["| model | fan-out | seeds | full R@20 | sampled R@20 | sampled − full R@20 | "
             "full N@20 | sampled N@20 | sampled − full N@20 | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, fanout, full, sampled, *sets in pairs:
        sets = f" {' '.join(sets[0])}" if sets and sets[0] else ""
        try:
            rows = paired_comparison(runs(sampled), runs(full))
        except FileNotFoundError as e:
            lines.append(f"| {name} | {fanout}{sets} | - | (not run: {str(e)[:60]}) |||||||")
            continue
        except ValueError as e:  # e.g. one side holds two settings
            lines.append(f"| {name} | {fanout}{sets} | - | (no comparison: {e}) |||||||")
            continue
        by = {r["metric"]: r for r in rows}
        r20, n20 = by["recall@20"], by["ndcg@20"]
        verdict = "kept"
        if len(r20["seeds"]) < 2:  # no seed-to-seed spread to compare with
            verdict = "n/a (1 seed)"
        elif any(r["diff"][0] < -r["mean_b"][1] for r in (r20, n20)):
            verdict = "loses"
        f = lambda ms: f"{ms[0]:.4f} ± {ms[1]:.4f}"  # noqa: E731
        lines.append(
            f"| {name} | [{', '.join([str(fanout)] * LAYERS[name])}]{sets} | "
            f"{len(r20['seeds'])} | "
            f"{f(r20['mean_b'])} | {f(r20['mean_a'])} | {r20['diff'][0]:+.4f} ± "
            f"{r20['diff'][1]:.4f} ({r20['wins']}/{r20['ties']}/{r20['losses']}) | "
            f"{f(n20['mean_b'])} | {f(n20['mean_a'])} | {n20['diff'][0]:+.4f} ± "
            f"{n20['diff'][1]:.4f} ({n20['wins']}/{n20['ties']}/{n20['losses']}) | {verdict} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(LAYERS),
                   help="comma-separated (default: %(default)s)")
    p.add_argument("--dataset", default="ml100k_mm")
    p.add_argument("--root", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--epochs", type=int, default=400)
    p.add_argument("--patience", type=int, default=50)
    p.add_argument("--fanout", type=int, default=DEFAULT_FANOUT,
                   help="fan-out of every layer (default: %(default)s)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="another setting of the sampled runs (repeatable), e.g. "
                        "hyper_sample=null")
    p.add_argument("--out", default="runs/sampled_vs_full")
    p.add_argument("--table-only", action="store_true", help="train nothing, print the table")
    args = p.parse_args(argv)
    names = args.models.split(",")
    unknown = [n for n in names if n not in LAYERS]
    if unknown:
        p.error(f"--models: unknown {unknown}; expected some of {list(LAYERS)}")
    if args.fanout < 1:
        p.error(f"--fanout: expected >= 1, got {args.fanout}")
    bad = [kv for kv in args.set if "=" not in kv or kv.split("=", 1)[0].strip() in ("", "fanout")]
    if bad:
        p.error(f"--set: expected KEY=VALUE with a key other than fanout (use --fanout), got {bad}")
    # the table's setting column: the extra settings, and a budget other than the default
    shown = args.set + [f"{k}={v}" for k, v in (("epochs", args.epochs),
                                                ("patience", args.patience))
                        if v != p.get_default(k)]
    pairs = [(n, args.fanout, run(n, "full", args.fanout, args),
              run(n, "sampled", args.fanout, args), shown) for n in names]
    print(table(pairs, epochs=args.epochs, patience=args.patience))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
