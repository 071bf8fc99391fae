r"""Encoding throughput of the default offline feature encoders (items/s).

Question: how fast does ``build-dataset`` turn raw items into features on a
CPU, and how much do threads and batch size matter? Measures, in one run:

* text: all-MiniLM-L6-v2 on the ``ml100k_mm`` item texts (~70 words each);
* image: EfficientNet-Lite0 on the ``ml100k_mm`` posters, end to end (decode +
  bicubic resize + forward), and the decode/resize part alone;

for each thread count and batch size, with the ratio against the first
configuration. Needs the ``[features]`` extra and ``../shared/data`` (falls
back to synthetic text/images without the data).

    python benchmarks/bench_features.py --threads 1 2 --batch-sizes 8 64
"""
import argparse
import os
import os.path as osp
import tempfile
import time

import numpy as np
import torch


def _items(data_root: str, n_text: int, n_img: int):
    src = osp.join(data_root, "ml100k_mm")
    if osp.isdir(src):
        import csv
        with open(osp.join(src, "items.tsv"), newline="") as f:
            texts = [r["text"] for r in csv.DictReader(f, delimiter="\t")][:n_text]
        posters = sorted(os.listdir(osp.join(src, "posters")))[:n_img]
        return texts, [osp.join(src, "posters", p) for p in posters], "ml100k_mm"
    from PIL import Image
    rng = np.random.default_rng(0)
    tmp = tempfile.mkdtemp()
    paths = []
    for i in range(n_img):
        p = osp.join(tmp, f"{i}.jpg")
        Image.fromarray(rng.integers(0, 255, (278, 185, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    words = ["movie", "drama", "a", "the", "story", "of", "love", "war", "city", "night"]
    texts = [" ".join(rng.choice(words, 70)) for _ in range(n_text)]
    return texts, paths, "synthetic"


def _rate(fn, n: int, repeats: int):
    """Best of ``repeats``: (items per wall second, items per CPU second of this
    process). The CPU figure is far less sensitive to other load on a shared
    machine; with T threads it is at most 1/T of the wall rate on an idle one."""
    wall, cpu = float("inf"), float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall = min(wall, time.perf_counter() - t0)
        cpu = min(cpu, time.process_time() - c0)
    return n / wall, n / max(cpu, 1e-9)


def main() -> None:
    here = osp.dirname(osp.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default=os.environ.get(
        "PYG_MMREC_DATA", osp.normpath(osp.join(here, "..", "..", "shared", "data"))))
    p.add_argument("--n-text", type=int, default=256)
    p.add_argument("--n-images", type=int, default=128)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 64])
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args()

    from pyg_mmrec.data import features as F
    texts, paths, origin = _items(args.data_root, args.n_text, args.n_images)
    text_enc = F.resolve_text_encoder(None)
    img_enc = F.resolve_image_encoder(None)
    F.encode_texts(texts[:8], text_enc, progress=False)  # warm-up
    F.encode_images(paths[:4], img_enc, progress=False)

    rows = []
    for th in args.threads:
        torch.set_num_threads(th)
        rows.append(("image decode+resize only", th, "-", _rate(
            lambda: [img_enc.load(q) for q in paths], len(paths), args.repeats)))
        for bs in args.batch_sizes:
            text_enc.encode_batch_size = bs  # forward batch (MiniLM pads to the longest)
            rows.append(("text  all-MiniLM-L6-v2", th, bs, _rate(
                lambda: F.encode_texts(texts, text_enc, bs, progress=False), len(texts),
                args.repeats)))
            rows.append(("image EfficientNet-Lite0", th, bs, _rate(
                lambda: F.encode_images(paths, img_enc, bs, progress=False), len(paths),
                args.repeats)))

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nencoding throughput on {origin} ({len(texts)} texts, {len(paths)} images; "
          f"{os.cpu_count()} CPUs, load average {load:.1f} at the end)")
    print(f"{'encoder':<28} {'threads':>7} {'batch':>5} {'items/s':>9} {'ratio':>6} "
          f"{'items/CPU-s':>11} {'ratio':>6}")
    base: dict = {}
    for name, th, bs, (r, c) in rows:
        b, bc = base.setdefault(name, (r, c))
        print(f"{name:<28} {th:>7} {bs!s:>5} {r:>9.1f} {r / b:>6.2f} {c:>11.1f} {c / bc:>6.2f}")
    print("ratio: against the first configuration of the same encoder")


if __name__ == "__main__":
    main()
