r"""Start-up benchmark: how long until the command line answers?

Question answered: how many seconds of wall time pass, in a fresh process,
before ``python -m pyg_mmrec`` prints its help or reports a configuration or
data mistake — against the floors ``python -c "import torch"`` and
``python -c "import torch_geometric"`` measured in the same run (the target is
at most 1.5 s on a 2-core machine). With ``--baseline-src DIR`` (a checkout of
an older version, e.g. ``git archive <commit> | tar -x -C DIR``) every
command also runs against that source tree and the table gives the ratio
before / now, pair by pair in alternation so that a drifting machine load
affects both alike.

Every command is run ``--runs`` times after one warm-up run (which fills the
file cache); min, median and max wall seconds are printed, quote the median.
The error cases run on a 4-item dataset written to a temporary folder; each
must exit with status 2 and print one line (checked, and flagged otherwise).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_startup.py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_startup.py --runs 9
    git archive <old-commit> | tar -x -C /tmp/old && cp pyg_mmrec/_C*.so /tmp/old/pyg_mmrec/
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_startup.py --baseline-src /tmp/old

Measured on the 2-core development machine under a heavy shared load (load
average 8-13, hence the slow ``import torch``), ``--runs 5`` against the
version before lazy imports (median wall seconds)::

    command                              now   before   before/now
    python -c 'import torch' (floor)   13.74        -
    --help                              0.31    17.88        57x
    train --help                        0.38    19.90        53x
    config error: unknown key           0.79    33.16        42x
    config error: bad --missing         0.33     9.83        30x
    data error: itemID out of range     0.49     9.72        20x
    data error: no dataset folder       0.63    13.07        21x
    output error: --out is a file       0.34    14.30        42x

CPU seconds of whole processes (user + system, less sensitive to the load),
median of 5: ``--help`` 3.40 before -> 0.054 now, ``train --help`` 4.13 ->
0.055, an unknown ``--set`` key 4.00 -> 0.084, a bad ``x_label`` in the
``.inter`` file 3.96 -> 0.19; ``import torch`` alone takes 1.75.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 1.5


def write_toy(root: Path) -> None:
    """``<root>/toy``: 3 users, 4 items, one 4-row feature file; plus ``<root>/bad``,
    the same with an itemID (9) beyond the feature rows on line 14."""
    import numpy as np
    rows = [(u, i, x) for u in range(3) for i, x in zip(range(4), (0, 0, 1, 2))]
    for name, extra in (("toy", ""), ("bad", "2\t9\t1\t0\t0\n")):
        folder = root / name
        folder.mkdir(parents=True)
        text = "userID\titemID\trating\ttimestamp\tx_label\n"
        text += "".join(f"{u}\t{i}\t1\t0\t{x}\n" for u, i, x in rows) + extra
        (folder / f"{name}.inter").write_text(text)
        np.save(folder / "text_feat.npy", np.zeros((4, 3), np.float32))


def cases(tmp: Path) -> List[Tuple[str, List[str], Optional[int]]]:
    """``(label, python arguments, expected exit status or None)``."""
    cli = ["-m", "pyg_mmrec"]
    train = cli + ["train", "--model", "LightGCN", "--root", str(tmp / "data"),
                   "--out", str(tmp / "runs"), "--quiet"]
    (tmp / "a_file").write_text("x")
    return [
        ("python -c pass (interpreter)", ["-c", "pass"], 0),
        ("python -c 'import torch' (floor)", ["-c", "import torch"], 0),
        ("python -c 'import torch_geometric'", ["-c", "import torch_geometric"], 0),
        ("--help", cli + ["--help"], 0),
        ("train --help", cli + ["train", "--help"], 0),
        ("config error: unknown key", train + ["--dataset", "toy", "--set", "n_layer=3"], 2),
        ("config error: bad --missing", train + ["--dataset", "toy", "--missing", "nope"], 2),
        ("data error: itemID out of range", train + ["--dataset", "bad"], 2),
        ("data error: no dataset folder", train + ["--dataset", "nope"], 2),
        ("output error: --out is a file",
         train[:train.index("--out") + 1] + [str(tmp / "a_file"), "--dataset", "toy"], 2),
    ]


def run_once(args: Sequence[str], src: Path, cwd: Path) -> Tuple[float, int, str]:
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1",
               PYG_MMREC_CACHE=str(cwd / "cache"))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True)
    return time.perf_counter() - t0, proc.returncode, proc.stderr


def fmt(xs: List[float]) -> str:
    return f"{min(xs):6.2f} {statistics.median(xs):6.2f} {max(xs):6.2f}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5, help="timed runs per command (default 5)")
    p.add_argument("--baseline-src", type=Path, default=None,
                   help="an older source tree to compare against (ratio before / now)")
    p.add_argument("--only", default=None, help="run only the cases whose label contains this")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs: expected a positive integer")
    if args.baseline_src is not None and not (args.baseline_src / "pyg_mmrec").is_dir():
        p.error(f"--baseline-src {args.baseline_src}: no pyg_mmrec/ package in it")

    with tempfile.TemporaryDirectory(prefix="bench_startup_") as d:
        tmp = Path(d)
        write_toy(tmp / "data")
        chosen = [c for c in cases(tmp) if args.only is None or args.only in c[0]]
        now: Dict[str, List[float]] = {}
        before: Dict[str, List[float]] = {}
        notes: List[str] = []
        for label, cmd, expected in chosen:
            pyg = "pyg_mmrec" in cmd
            srcs = [("now", ROOT)] + ([("before", args.baseline_src)]
                                      if pyg and args.baseline_src is not None else [])
            for _, src in srcs:  # warm-up: file cache, .pyc files
                run_once(cmd, src, tmp)
            for _ in range(args.runs):  # alternate now / before, pair by pair
                for which, src in srcs:
                    sec, rc, err = run_once(cmd, src, tmp)
                    (now if which == "now" else before).setdefault(label, []).append(sec)
                    if which == "now" and expected is not None and rc != expected:
                        notes.append(f"{label}: exit {rc}, expected {expected}")
                    if which == "now" and expected == 2 and (
                            len(err.strip().splitlines()) != 1 or "Traceback" in err):
                        notes.append(f"{label}: stderr is not one line: {err.strip()[:200]!r}")
            print(f"  measured: {label}", file=sys.stderr, flush=True)

    floor = statistics.median(now["python -c 'import torch' (floor)"]) \
        if "python -c 'import torch' (floor)" in now else None
    print(f"\nWall seconds per fresh process, {args.runs} runs each after a warm-up "
          f"(min median max); target <= {TARGET_SECONDS:.1f} s for the pyg_mmrec rows.\n")
    head = f"{'command':<36} {'min':>6} {'median':>6} {'max':>6}  {'/ torch':>7}"
    if before:
        head += f"  {'before (min median max)':>22}  {'before/now':>10}"
    print(head)
    print("-" * len(head))
    for label, _, _ in chosen:
        xs = now[label]
        line = f"{label:<36} {fmt(xs)}  "
        line += f"{statistics.median(xs) / floor:7.2f}" if floor else f"{'-':>7}"
        if label in before:
            ys = before[label]
            line += f"  {fmt(ys):>22}  {statistics.median(ys) / statistics.median(xs):9.1f}x"
        print(line)
    slow = [label for label, cmd, _ in chosen if "pyg_mmrec" in cmd
            and statistics.median(now[label]) > TARGET_SECONDS]
    print(f"\npyg_mmrec rows above {TARGET_SECONDS:.1f} s (median): "
          f"{', '.join(slow) if slow else 'none'}")
    for n in dict.fromkeys(notes):
        print(f"check failed: {n}")
    return 1 if notes else 0


if __name__ == "__main__":
    sys.exit(main())
