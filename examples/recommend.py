r"""From a trained model to recommendations, and a movie it has never seen.

1. Holds one real movie out of ``ml100k_mm`` entirely: a copy of the dataset
   without it (no interaction, no ID row, no feature row) is written under
   ``--run``, so the model cannot know it exists.
2. Trains a quick content model on that copy (VBPR by default; validation
   early stopping, the test split read once) — or reuses the finished run of
   an earlier call with the same ``--run``.
3. Loads it with :func:`pyg_mmrec.load` and prints the top-10 of a few users
   with movie titles.
4. Adds the held-out movie from its poster and plot features alone
   (:meth:`~pyg_mmrec.inference.TrainedRecommender.add_items`) and shows
   where it ranks for the users who did watch it, against the size of their
   unseen catalog (a random ranking puts it in the middle).

Usage::

    python examples/recommend.py                          # Toy Story held out, VBPR
    python examples/recommend.py --movie "Fargo (1996)"   # another movie
    python examples/recommend.py --model FREEDOM --epochs 40
    python examples/recommend.py --run runs/rec_demo      # rerun: reuses the trained model
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(REPO / ".." / "shared" / "data"),
                   help="data directory holding ml100k_mm/ (default: ../shared/data)")
    p.add_argument("--movie", default="Toy Story (1995)",
                   help="title (as in items.tsv) of the movie to hold out (default: %(default)s)")
    p.add_argument("--model", default="VBPR", help="a content model (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=15, help="at most this many epochs "
                   "(default: %(default)s)")
    p.add_argument("--users", default="0,1,2", help="users whose top-10 is shown")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--run", default=str(REPO / "runs" / "recommend_example"),
                   help="folder of the held-out dataset and the run; a finished run there is "
                        "reused (default: runs/recommend_example)")
    return p.parse_args(argv)


def _titles(items_tsv: Path):
    csv.field_size_limit(1 << 24)
    with open(items_tsv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return rows


def _title(text: str) -> str:
    return text.split(". Genres:")[0].strip('"')


def write_holdout_dataset(src: Path, dst: Path, movie: int) -> None:
    """``src`` (ml100k_mm) without item ``movie``: ids above it shift down by one."""
    import numpy as np
    dst.mkdir(parents=True, exist_ok=True)
    lines = (src / "ml100k_mm.inter").read_text().splitlines()
    out = [lines[0]]
    for line in lines[1:]:
        u, i, *rest = line.split("\t")
        i = int(i)
        if i == movie:
            continue
        out.append("\t".join([u, str(i - (i > movie)), *rest]))
    (dst / "ml100k_holdout.inter").write_text("\n".join(out) + "\n")
    for f in ("image_feat.npy", "text_feat.npy", "image_mask.npy"):
        a = np.load(src / f)
        np.save(dst / f, np.delete(a, movie, axis=0))
    rows = _titles(src / "items.tsv")
    with open(dst / "items.tsv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        w.writeheader()
        for r in rows:
            i = int(r["itemID"])
            if i != movie:
                w.writerow({**r, "itemID": i - (i > movie)})


def main(argv=None) -> int:
    args = parse_args(argv)
    src = Path(args.root) / "ml100k_mm"
    if not (src / "ml100k_mm.inter").is_file():
        print(f"error: --root: no ml100k_mm/ml100k_mm.inter under {args.root}", file=sys.stderr)
        return 2
    rows = _titles(src / "items.tsv")
    match = [int(r["itemID"]) for r in rows if _title(r["text"]) == args.movie]
    if not match:
        print(f"error: --movie: no movie titled {args.movie!r} in {src / 'items.tsv'}",
              file=sys.stderr)
        return 2
    movie = match[0]
    import numpy as np
    import torch

    import pyg_mmrec
    from pyg_mmrec.train import run

    base = Path(args.run)
    data_root, run_dir = base / "data", base / "run"
    info = base / "holdout.json"
    if (run_dir / "result.json").is_file():
        held = json.loads(info.read_text())
        if held["movie"] != movie:
            print(f"error: --run: {base} held out item {held['movie']}, not {args.movie!r}; "
                  "choose another --run", file=sys.stderr)
            return 2
        print(f"reusing the finished run in {run_dir}")
    else:
        write_holdout_dataset(src, data_root / "ml100k_holdout", movie)
        info.write_text(json.dumps({"movie": movie, "title": args.movie}))
        print(f"training {args.model} on ml100k_mm without {args.movie!r} "
              f"(at most {args.epochs} epochs) ...")
        res = run(args.model, "ml100k_holdout", data_root, seed=args.seed, out_dir=run_dir,
                  resume=(run_dir / "checkpoint.pt").exists(),
                  overrides={"epochs": args.epochs, "lr": 5e-3, "patience": 5,
                             "eval_every": 3, "topk": [10, 20]})
        print(f"selected epoch {res.best_epoch}: test recall@20 {res.test['recall@20']:.4f}")

    rec = pyg_mmrec.load(run_dir, root=data_root)
    titles = {int(r["itemID"]): _title(r["text"])
              for r in _titles(data_root / "ml100k_holdout" / "items.tsv")}
    users = [int(u) for u in args.users.split(",")]
    items, scores = rec.recommend(users, k=10)
    for row, u in enumerate(users):
        print(f"\nuser {u}: top-10 (training items excluded)")
        for j, (i, s) in enumerate(zip(items[row].tolist(), scores[row].tolist()), 1):
            print(f"  {j:2d}. {titles[i]:<60s} {s:7.3f}")

    # the held-out movie, placed from its poster and plot only
    feats = {m: torch.from_numpy(np.load(src / f"{m}_feat.npy")[[movie]]) for m in rec.modalities}
    has_poster = bool(np.load(src / "image_mask.npy")[movie])
    masks = {"image": torch.tensor([has_poster])} if "image" in feats else None
    new = rec.add_items(feats, masks)
    inter = np.loadtxt(src / "ml100k_mm.inter", dtype=np.int64, skiprows=1, usecols=(0, 1))
    watched = np.unique(inter[inter[:, 1] == movie, 0])
    train = rec._rb.built.data.train_edge_index
    all_scores = rec.score(torch.from_numpy(watched), torch.arange(rec.num_items))
    ranks, sizes = [], []
    seen = torch.zeros(len(watched), rec.num_items, dtype=torch.bool)
    pos = {int(u): j for j, u in enumerate(watched)}
    for u, i in train.t().tolist():
        if u in pos:
            seen[pos[u], i] = True
    for j in range(len(watched)):
        s = all_scores[j][~seen[j]]
        target = all_scores[j, int(new)]
        ranks.append(int((s > target).sum()) + 1)
        sizes.append(int((~seen[j]).sum()))
    print(f"\n{args.movie!r} added as item {int(new)} from its "
          f"{'poster and ' if has_poster else ''}plot features; {len(watched)} users watched it.")
    print("Its rank among each user's unseen movies (1 = recommended first):")
    for j in range(min(8, len(watched))):
        print(f"  user {int(watched[j]):4d}: rank {ranks[j]:5d} of {sizes[j]}")
    med, half = statistics.median(ranks), statistics.median(sizes) / 2
    print(f"median rank {med:.0f} (a random ranking: about {half:.0f}); in the top-10 for "
          f"{sum(r <= 10 for r in ranks)} and in the top-100 for {sum(r <= 100 for r in ranks)} "
          f"of the {len(watched)} users")
    return 0


if __name__ == "__main__":
    sys.exit(main())
