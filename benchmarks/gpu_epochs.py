r"""Seconds per training epoch and per evaluation of LightGCN, FREEDOM and I3-MRec on one device.

Trains each (dataset, model) for two epochs with the library's trainer (:func:`pyg_mmrec.train.run`,
natural missing modalities, seed 0, default hyper-parameters) and evaluates the validation
split once; reports the second epoch (the first builds caches and, on CUDA, loads kernels) and
the evaluation. Datasets without features (``baby`` in the shared data) get random features of
MMRec's Baby dimensions (as ``benchmarks/bench_train.py``). Datasets that are not found are
skipped and listed.

Run: ``python benchmarks/gpu_epochs.py --device cuda`` (part of ``benchmarks/gpu_check.sh``).
"""
import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["LightGCN", "FREEDOM", "I3-MRec"]


def load_data(root: Path, name: str, need_features: bool):
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_train", ROOT / "benchmarks" /
                                                  "bench_train.py")
    bench_train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_train)
    return bench_train.load_data(str(root), name, need_features)


def time_one(data, model: str, device: str, epochs: int, topk=None) -> dict:
    from pyg_mmrec.train import run
    overrides = {"epochs": epochs, "eval_every": epochs, "patience": 10 ** 6}
    if topk:
        overrides["topk"] = topk
    t0 = time.perf_counter()
    res = run(model, data, missing="natural", seed=0, quiet=True, test=False, device=device,
              overrides=overrides)
    secs = [h["seconds"] for h in res.history]
    return {"s_epoch": secs[-1], "s_eval": res.seconds_per_eval,
            "recall@20": res.valid.get("recall@20", float("nan")),
            "s_total": time.perf_counter() - t0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", help="cuda or cpu (default: %(default)s)")
    p.add_argument("--root", type=Path, default=ROOT / ".." / "shared" / "data")
    p.add_argument("--datasets", default="ml100k_mm,baby")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--epochs", type=int, default=2, help="epochs trained; the last is reported")
    p.add_argument("--topk", default=None, help="evaluation cut-offs, e.g. 10,20 (default: the "
                   "models' configuration)")
    args = p.parse_args(argv)
    import torch
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: no CUDA GPU is visible to torch")
    if args.epochs < 1:
        p.error("--epochs must be >= 1")

    rows, skipped = [], []
    for ds in [d for d in args.datasets.split(",") if d]:
        if not (args.root / ds / f"{ds}.inter").exists():
            skipped.append(f"{ds}: {args.root / ds / (ds + '.inter')} not found")
            continue
        for model in [m for m in args.models.split(",") if m]:
            data = load_data(args.root, ds, need_features=model.lower() != "lightgcn")
            topk = [int(k) for k in args.topk.split(",")] if args.topk else None
            r = time_one(data, model, args.device, args.epochs, topk)
            print(f"  [{ds} {model}] {r['s_epoch']:.2f} s/epoch, {r['s_eval']:.2f} s/eval",
                  flush=True)
            rows.append((ds, model, r))

    name = torch.cuda.get_device_name() if torch.device(args.device).type == "cuda" else "CPU"
    print(f"\nOne epoch (the last of {args.epochs}) and one validation evaluation on "
          f"{args.device} ({name}), torch {torch.__version__}\n")
    print("| dataset | model | s/epoch | s/eval | valid R@20 | s total |")
    print("|---|---|---:|---:|---:|---:|")
    for ds, model, r in rows:
        print(f"| {ds} | {model} | {r['s_epoch']:.3f} | {r['s_eval']:.3f} | "
              f"{r['recall@20']:.4f} | {r['s_total']:.1f} |")
    for s in skipped:
        print(f"skipped: {s}")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
