r"""Side-by-side reproduction of I3-MRec: the reference code itself against
``--config reference``, on the same data, split and presence masks.

The reference code (``github.com/cky332/7``) is run from a checkout of it, in
its own virtual environment (numpy < 2, SciPy, numba, faiss-cpu, pandas,
tqdm, tensorboardX and torch); nothing of it is copied here. This script

1. ``export``: writes our dataset (split, features) and *our* presence masks
   (``make_masks(spec, data, seed)``) in the reference's input format under
   ``<checkout>/Data/<name>/``, and a launcher ``_pyg_mmrec_launch.py`` into
   the checkout. The launcher changes two things of the reference at run time
   (the files of the checkout stay as they are): its data loader takes the
   exported masks instead of drawing its own, and its training loop scores
   the *validation* split at every evaluation, keeps the epoch with the best
   validation NDCG at the first cut-off, stops once more than
   ``--early_stop`` epochs have passed without a gain, and reads the test
   split only for that selected epoch (the unchanged loop scores the test
   split for selection). The reference always runs in its ``mm`` mode here:
   with our masks as its "train" and "test" masks, that is every one of our
   protocols (``ff`` masks hold only the natural missing posters).
2. ``reference``: runs the launcher (one seed) under ``/usr/bin/time -v``;
3. ``ours``: runs ``python -m pyg_mmrec train --model i3mrec --config
   reference`` with the same protocol and seed under ``/usr/bin/time -v``;
4. ``table``: one Markdown row per run: test R@20 / N@20, epochs, seconds
   per training epoch, peak resident memory.

Example (fm, seed 1)::

    git clone /path/to/cky332-7 /work/ref_i3mrec
    python -m venv /work/ref_venv && /work/ref_venv/bin/pip install "numpy<2" scipy \
        numba faiss-cpu pandas tqdm tensorboardX torch==2.13.0
    python examples/reproduce_i3mrec.py export --root ../shared/data --dataset ml100k_mm \
        --missing i3mrec:fm:0.3:fixed --seed 1 --checkout /work/ref_i3mrec
    python examples/reproduce_i3mrec.py reference --checkout /work/ref_i3mrec \
        --python /work/ref_venv/bin/python --dataset ml100k_mm --missing i3mrec:fm:0.3:fixed \
        --seed 1 --out runs/repro
    python examples/reproduce_i3mrec.py ours --root ../shared/data --dataset ml100k_mm \
        --missing i3mrec:fm:0.3:fixed --seed 1 --out runs/repro
    python examples/reproduce_i3mrec.py table --out runs/repro
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

# modality order of the reference: indicator 0 = image, 1 = text (2 = audio)
REFERENCE_MODALITIES = ("image", "text", "audio")
LAUNCHER = "_pyg_mmrec_launch.py"

# The launcher, written into the checkout by `export`. It imports the
# reference's modules, replaces the loader's mask draw and the session's
# training loop by ours, then runs the reference's main.py unchanged.
LAUNCHER_TEXT = r'''
import json, os, runpy, sys, time
import numpy as np
import torch

torch.set_num_threads(1)
import dataset_loader
import session

MASKS = os.environ["PYG_MMREC_MASKS"]


def exported_masks(self, fea, seed=0, rate=0.3, exp_mode="fm", path=""):
    # the presence masks exported by pyg_mmrec instead of the reference's own draw
    z = np.load(MASKS)
    self.train_missing_modality_items = {"items": z["train_items"].tolist(),
                                         "indicator": z["train_indicator"]}
    self.test_missing_modality_items = {"items": z["eval_items"].tolist(),
                                        "indicator": z["eval_indicator"]}


def train_selecting_on_validation(self, epochs):
    # evaluate every eva_interval epochs on VALIDATION; keep the best NDCG at
    # the first cut-off; read the test split only for a new best; stop once
    # more than early_stop epochs have passed without a gain
    topk = eval(self.env.args.topk)
    key, best, since, seconds, record = topk[0], -1.0, 0, [], {}
    for epoch in range(self.env.args.ckpt_start_epoch, epochs):
        self.model.train()
        seconds.append(self.train_epoch()[-1])
        if epoch % self.env.args.eva_interval == 0:
            since += self.env.args.eva_interval
            hr, recall, ndcg, _ = self.test(mode="val", top_list=topk)
            print(f"epoch {epoch} valid ndcg@{key} {ndcg[key]:.5f}", flush=True)
            if ndcg[key] > best:
                best, since = ndcg[key], 0
                thr, trecall, tndcg, _ = self.test(mode="test", top_list=topk)
                record = {"best_epoch": epoch,
                          "valid": {f"{n}@{k}": float(v[k]) for n, v in
                                    (("recall", recall), ("ndcg", ndcg)) for k in topk},
                          "test": {f"{n}@{k}": float(v[k]) for n, v in
                                   (("recall", trecall), ("ndcg", tndcg)) for k in topk}}
        if since > self.env.args.early_stop:
            break
    record.update(epochs=len(seconds), seconds_per_epoch=float(np.mean(seconds)))
    print("PYG_MMREC_RESULT " + json.dumps(record), flush=True)


dataset_loader.Loader4MM.set_miss_mutimedia_feature_items = exported_masks
session.MILK_session.train = train_selecting_on_validation
sys.argv = ["main.py"] + sys.argv[1:]
runpy.run_path("main.py", run_name="__main__")
'''

# the reference README's Baby settings (its only published ones for two modalities)
REFERENCE_ARGS = ["--max_info_coeff", "1e-3", "--min_info_coeff", "1e-5", "--reg_coeff", "1e-3",
                  "--penalty_coeff", "300", "--lr", "1e-3", "--batch_size", "2048",
                  "--epoch", "200", "--eva_interval", "10", "--early_stop", "20",
                  "--topk", "[10, 20, 30, 40, 50]", "--exp_mode", "mm", "--use_gpu", "0",
                  "--save", "0", "--log", "0", "--tensorboard", "0"]


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=_-]+", "_", text)


def export(args: argparse.Namespace) -> None:
    import numpy as np

    from pyg_mmrec.data import MMRecDataset
    from pyg_mmrec.data.missing import make_masks

    data = MMRecDataset(str(args.root), args.dataset)[0]
    mods = list(data.modalities)
    if not set(mods) <= set(REFERENCE_MODALITIES[:2]):
        raise SystemExit(f"--dataset: the reference handles image and text (audio only for "
                         f"TikTok), got modalities {mods}")
    folder = Path(args.checkout) / "Data" / args.dataset
    folder.mkdir(parents=True, exist_ok=True)
    st = data["user", "rates", "item"]
    num_items = int(data["item"].num_nodes)
    for split, name in (("train", "edge_index"), ("val", "valid_edge_index"),
                        ("test", "test_edge_index")):
        ei = st[name]
        by_user: Dict[int, List[int]] = {}
        for u, i in ei.t().tolist():
            by_user.setdefault(u, []).append(i)
        lines = [" ".join(map(str, [u] + items)) for u, items in sorted(by_user.items())]
        (folder / f"{split}.txt").write_text("\n".join(lines) + "\n")
    seen = set(st["edge_index"][1].tolist()) | set(st["valid_edge_index"][1].tolist()) \
        | set(st["test_edge_index"][1].tolist())
    if num_items - 1 not in seen:
        raise SystemExit(f"{args.dataset}: the reference sizes its item table by the largest "
                         f"item id it sees in the splits; item {num_items - 1} occurs in none")
    for m in mods:
        np.save(folder / f"{m}_feat.npy", data["item"][f"{m}_feat"].numpy().astype("float32"))
    masks = make_masks(args.missing, data, seed=args.seed)
    out = {}
    for which, src in (("train", masks.train), ("eval", masks.eval)):
        items, indicator = [], []
        for m in mods:
            lost = (~src[m]).nonzero().view(-1).tolist()
            items += lost
            indicator += [REFERENCE_MODALITIES.index(m)] * len(lost)
        out[f"{which}_items"] = np.asarray(items, dtype=np.int64)
        out[f"{which}_indicator"] = np.asarray(indicator, dtype=np.int64)
    mask_file = folder / f"masks_{_safe(args.missing)}_seed{args.seed}.npz"
    np.savez(mask_file, **out)
    (Path(args.checkout) / LAUNCHER).write_text(LAUNCHER_TEXT)
    print(f"exported {args.dataset} to {folder} and masks {masks} to {mask_file}")


def _peak_memory_mb(stderr: str) -> float:
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
    return int(m.group(1)) / 1024 if m else float("nan")


def reference(args: argparse.Namespace) -> None:
    checkout = Path(args.checkout).resolve()
    mask_file = (checkout / "Data" / args.dataset
                 / f"masks_{_safe(args.missing)}_seed{args.seed}.npz")
    if not mask_file.is_file() or not (checkout / LAUNCHER).is_file():
        raise SystemExit(f"{mask_file}: not found; run `export` with the same --dataset, "
                         "--missing and --seed first")
    env = {**os.environ, "PYG_MMREC_MASKS": str(mask_file), "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    cmd = ["/usr/bin/time", "-v", args.python, LAUNCHER, "--dataset", args.dataset,
           "--seed", str(args.seed), "--suffix", f"pyg_mmrec_seed{args.seed}"] + REFERENCE_ARGS
    if args.epochs is not None:
        cmd += ["--epoch", str(args.epochs)]  # argparse keeps the last value
    out_dir = Path(args.out) / "reference"
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{_safe(args.missing)}_seed{args.seed}"
    # stream the run to its log, so that a long run can be followed (and an
    # interrupted one keeps its validation lines)
    with open(out_dir / f"{stem}.log", "w") as log:
        proc = subprocess.run(cmd, cwd=checkout, env=env, stdout=log, stderr=subprocess.STDOUT,
                              text=True)
    text = (out_dir / f"{stem}.log").read_text()
    lines = [ln for ln in text.splitlines() if ln.startswith("PYG_MMREC_RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"the reference run failed (exit {proc.returncode}); see "
                         f"{out_dir / (stem + '.log')}")
    record = json.loads(lines[-1][len("PYG_MMREC_RESULT "):])
    record.update(code="reference", missing=args.missing, seed=args.seed,
                  peak_memory_mb=_peak_memory_mb(text))
    (out_dir / f"{stem}.json").write_text(json.dumps(record, indent=1))
    print(json.dumps(record))


def ours(args: argparse.Namespace) -> None:
    run_root = Path(args.out) / "ours"
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "pyg_mmrec", "train", "--model", "i3mrec",
           "--config", "reference", "--dataset", args.dataset, "--root", str(args.root),
           "--missing", args.missing, "--seeds", str(args.seed), "--out", str(run_root),
           "--quiet"] + ([] if args.epochs is None else ["--epochs", str(args.epochs)])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    stem = f"{_safe(args.missing)}_seed{args.seed}"
    (run_root / f"{stem}.log").parent.mkdir(parents=True, exist_ok=True)
    (run_root / f"{stem}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"our run failed (exit {proc.returncode}); see {run_root / stem}.log")
    found = None
    for path in run_root.rglob("result.json"):
        r = json.loads(path.read_text())
        if r.get("missing") == args.missing and int(r.get("seed", -1)) == args.seed:
            found = r
    if found is None:
        raise SystemExit(f"no result.json for {args.missing} seed {args.seed} under {run_root}")
    record = {"code": "ours", "missing": args.missing, "seed": args.seed,
              "best_epoch": found["best_epoch"], "epochs": found.get("epochs"),
              "seconds_per_epoch": found["seconds_per_epoch"],
              "valid": found["valid"], "test": found["test"],
              "peak_memory_mb": _peak_memory_mb(proc.stderr)}
    (run_root / f"{stem}.json").write_text(json.dumps(record, indent=1))
    print(json.dumps(record))


def table(args: argparse.Namespace) -> None:
    rows = ["| code | protocol | seed | test R@20 | test N@20 | valid N@10 | best epoch | "
            "epochs | s / epoch | peak MB |", "|" + "---|" * 10]
    for p in sorted(Path(args.out).glob("*/*.json")):
        r = json.loads(p.read_text())
        rows.append(f"| {r['code']} | {r['missing']} | {r['seed']} | "
                    f"{r['test']['recall@20']:.4f} | {r['test']['ndcg@20']:.4f} | "
                    f"{r['valid']['ndcg@10']:.4f} | {r['best_epoch']} | {r['epochs']} | "
                    f"{r['seconds_per_epoch']:.2f} | {r['peak_memory_mb']:.0f} |")
    print("\n".join(rows))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("export", "reference", "ours", "table"):
        s = sub.add_parser(name)
        s.add_argument("--out", default="runs/reproduce_i3mrec")
        if name == "table":
            continue
        s.add_argument("--dataset", default="ml100k_mm")
        s.add_argument("--missing", default="i3mrec:fm:0.3:fixed")
        s.add_argument("--seed", type=int, default=1)
        if name in ("export", "ours"):
            s.add_argument("--root", required=True, help="our data root (../shared/data)")
        if name in ("export", "reference"):
            s.add_argument("--checkout", required=True, help="a checkout of the reference code")
        if name == "reference":
            s.add_argument("--python", required=True, help="the reference's virtual env python")
        if name in ("reference", "ours"):
            s.add_argument("--epochs", type=int, default=None,
                           help="cap the epochs (a timing run; default: the reference's 200)")
    args = p.parse_args(argv)
    {"export": export, "reference": reference, "ours": ours, "table": table}[args.cmd](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
