r"""Training and evaluation cost of LightGCN and FREEDOM: pyg_mmrec vs an MMRec-style loop.

Question: how long does one training epoch and one full-ranking evaluation take,
and how much memory does it need, with ``pyg_mmrec``'s trainer and models,
compared with the way MMRec (https://github.com/enoche/MMRec) runs the same models?

MMRec itself is not installable (it is a research repository, not a package,
and needs its own data loader and pandas pipeline), so the default yardstick is a
*re-implementation of MMRec's hot path*; with ``--mmrec PATH`` the real MMRec code of
a checkout is timed as well (see below). The re-implementation was written for this benchmark after
reading MMRec's ``common/trainer.py``, ``utils/dataloader.py``,
``models/lightgcn.py`` and ``models/freedom.py``:

* negatives drawn per interaction in a Python loop with rejection against the
  user's item set (MMRec's ``TrainDataLoader._sample_neg_ids``);
* a full-graph forward per mini-batch with ``torch.sparse.mm`` on a COO
  :math:`(U+I)^2` normalised adjacency; FREEDOM re-samples its degree-sensitive
  pruned adjacency every epoch and trains the raw modality features as free
  embeddings (``nn.Embedding.from_pretrained(..., freeze=False)``), as MMRec does;
* evaluation in user batches of 4096 that recompute the full forward per batch,
  mask training items with ``-1e10``, take ``topk`` at max K and compute the
  metrics per user with NumPy (MMRec's ``Trainer.evaluate`` and ``TopKEvaluator``). MMRec additionally evaluates the *test* split at every
  validation step; the table times one split for both, so MMRec's real cost per
  validation step is about twice the reference's eval column.

It omits MMRec's pandas slicing per batch and computes fewer metric variants,
so it was expected to be, if anything, faster than MMRec. Checked against the real
MMRec (``--mmrec``, 2 epochs, 1 thread, two runs on a machine shared with two other
jobs): its *evaluation* is always faster than MMRec's (MMRec 1.39-2.45x slower), but
its *training epoch* is not: on Baby LightGCN it was slower than MMRec in both runs
(MMRec took 0.87x and 0.75x of its time) and on ml100k_mm FREEDOM in one of the two
(0.78x; 1.27x in the other). For training, quote the "epoch speed-up vs MMRec" column
of a ``--mmrec`` run rather than the re-implementation's. Recall is not compared here (a few epochs
say nothing about converged quality); see the README table of backbones for
converged Recall@20.

Every (dataset, model, implementation) runs in its own subprocess with the same
thread count, so peak RSS is per configuration. Baby has no features in
``../shared/data``; random features of MMRec's Baby dimensions (image 4096,
text 384) are attached for FREEDOM.

Real MMRec as a second yardstick (``--mmrec PATH``)
---------------------------------------------------
Given a checkout of MMRec (``git clone https://github.com/enoche/MMRec``; its
dependencies pandas, scipy and pyyaml must be importable, lmdb/torchvision/matplotlib
are stubbed if missing), every (dataset, model) additionally runs *MMRec's own code*
in a subprocess through ``benchmarks/mmrec_driver.py``: it builds MMRec's
``RecDataset``/``TrainDataLoader``/``EvalDataLoader``, model and ``Trainer`` in the order
MMRec's ``quick_start`` does (CPU, MMRec defaults: embedding 64, batch 2048, Adam
lr 1e-3; one point of MMRec's hyper-parameter grid, the one our configs use), times
``Trainer._train_epoch`` (with ``pre_epoch_processing`` and the LR-scheduler step, as in
``Trainer.fit``) for ``--epochs`` epochs and one ``Trainer.evaluate`` of the validation
split, and reports its peak RSS. The table then gains the columns "MMRec s/epoch",
"MMRec s/eval", "MMRec peak RSS" and the speed-ups against real MMRec, next to the
speed-ups against the re-implementation. See ``mmrec_driver.py`` for the data folder it
builds and the compatibility shims it applies for current SciPy. Without ``--mmrec``
nothing changes. MMRec also validates *and tests* after every epoch, so its real cost
per validation step is about twice its s/eval column.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_train.py [--root ../shared/data]
        [--datasets ml100k_mm,baby] [--models lightgcn,freedom] [--epochs 3] [--threads 1]
        [--mmrec PATH/TO/MMRec]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BABY_DIMS = {"image": 4096, "text": 384}


# ----------------------------------------------------------------------------- data
def load_data(root: str, name: str, need_features: bool):
    import torch
    from pyg_mmrec.data import MMRecDataset
    data = MMRecDataset(root, name)[0]
    if need_features and not list(getattr(data, "modalities", []) or []):
        g = torch.Generator().manual_seed(0)
        n = int(data["item"].num_nodes)
        for m, d in BABY_DIMS.items():
            data["item"][f"{m}_feat"] = torch.randn(n, d, generator=g)
            data["item"][f"{m}_mask"] = torch.ones(n, dtype=torch.bool)
        data.modalities = sorted(BABY_DIMS)
    return data


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ------------------------------------------------------------------------ pyg_mmrec
def bench_ours(data, model: str, epochs: int) -> dict:
    from pyg_mmrec.train import run
    res = run(model, data, missing="natural", seed=0, quiet=True, test=False,
              overrides={"epochs": epochs, "eval_every": epochs, "patience": 10 ** 6,
                         "topk": [10, 20, 50]})
    secs = [h["seconds"] for h in res.history]
    steady = secs[1:] if len(secs) > 1 else secs  # the first epoch builds caches
    return {"s_epoch": sum(steady) / len(steady), "s_eval": res.seconds_per_eval,
            "recall@20": res.valid["recall@20"]}


# ------------------------------------------------------------------ MMRec-style loop
def _norm_adj(user, item, num_users, num_items):
    """Symmetric D^-1/2 A D^-1/2 of the (U+I)^2 bipartite graph, COO (as MMRec)."""
    import torch
    n = num_users + num_items
    row = torch.cat([user, item + num_users])
    col = torch.cat([item + num_users, user])
    deg = torch.bincount(row, minlength=n).float() + 1e-7
    val = deg.pow(-0.5)[row] * deg.pow(-0.5)[col]
    return torch.sparse_coo_tensor(torch.stack([row, col]), val, (n, n),
                                   check_invariants=False).coalesce()


def _bpr(u, p, n):
    import torch.nn.functional as F
    return -F.logsigmoid((u * p).sum(1) - (u * n).sum(1)).mean()


class _RefLightGCN:
    def __init__(self, U, I, user, item, d=64, layers=2, reg=1e-4):
        import torch
        self.U, self.I, self.layers, self.reg = U, I, layers, reg
        self.user_emb = torch.nn.Parameter(torch.nn.init.xavier_uniform_(torch.empty(U, d)))
        self.item_emb = torch.nn.Parameter(torch.nn.init.xavier_uniform_(torch.empty(I, d)))
        self.adj = _norm_adj(user, item, U, I)
        self.params = [self.user_emb, self.item_emb]

    def pre_epoch(self):
        pass

    def forward(self, adj=None):
        import torch
        x = torch.cat([self.user_emb, self.item_emb])
        outs = [x]
        for _ in range(self.layers):
            x = torch.sparse.mm(self.adj, x)
            outs.append(x)
        x = torch.stack(outs, 1).mean(1)
        return x[:self.U], x[self.U:]

    def loss(self, u, p, n):
        ue, ie = self.forward()
        reg = (self.user_emb[u].norm() ** 2 + self.item_emb[p].norm() ** 2
               + self.item_emb[n].norm() ** 2) / u.numel()
        return _bpr(ue[u], ie[p], ie[n]) + self.reg * reg


class _RefFREEDOM:
    def __init__(self, U, I, user, item, feats, d=64, k=10, mm_layers=1, ui_layers=2,
                 dropout=0.8, reg=1e-3, image_weight=0.1):
        import torch
        self.U, self.I, self.mm_layers, self.ui_layers = U, I, mm_layers, ui_layers
        self.dropout, self.reg = dropout, reg
        self.user_emb = torch.nn.Embedding(U, d)
        self.item_emb = torch.nn.Embedding(I, d)
        torch.nn.init.xavier_uniform_(self.user_emb.weight)
        torch.nn.init.xavier_uniform_(self.item_emb.weight)
        self.norm_adj = _norm_adj(user, item, U, I)
        self.edges = torch.stack([user, item])
        self.edge_values = self._bi_norm(self.edges)
        # raw features are trainable embeddings, as in MMRec's FREEDOM
        self.feat = {m: torch.nn.Embedding.from_pretrained(x.clone(), freeze=False)
                     for m, x in feats.items()}
        self.trs = {m: torch.nn.Linear(x.size(1), d) for m, x in feats.items()}
        adjs = {m: self._knn(x, k) for m, x in feats.items()}
        w = {m: (image_weight if m == "image" else (1 - image_weight)) for m in adjs}
        terms = [adjs[m] * w[m] for m in adjs]
        mm_adj = terms[0]
        for t in terms[1:]:
            mm_adj = mm_adj + t
        self.mm_adj = mm_adj.coalesce()
        self.params = [self.user_emb.weight, self.item_emb.weight]
        for m in feats:
            self.params += [self.feat[m].weight] + list(self.trs[m].parameters())
        self.masked_adj = self.norm_adj

    def _bi_norm(self, edges):
        import torch
        du = torch.bincount(edges[0], minlength=self.U).float() + 1e-7
        di = torch.bincount(edges[1], minlength=self.I).float() + 1e-7
        return du.pow(-0.5)[edges[0]] * di.pow(-0.5)[edges[1]]

    def _knn(self, x, k):
        import torch
        xn = x / x.norm(dim=1, keepdim=True)
        sim = xn @ xn.t()  # dense I x I, as MMRec does
        _, nb = sim.topk(k, dim=1)
        del sim
        row = torch.arange(self.I).unsqueeze(1).expand(-1, k).reshape(-1)
        col = nb.reshape(-1)
        deg = torch.bincount(row, minlength=self.I).float() + 1e-7
        val = deg.pow(-0.5)[row] * deg.pow(-0.5)[col]
        return torch.sparse_coo_tensor(torch.stack([row, col]), val, (self.I, self.I))

    def pre_epoch(self):
        import torch
        keep = int(self.edge_values.numel() * (1 - self.dropout))
        idx = torch.multinomial(self.edge_values, keep)
        e = self.edges[:, idx]
        v = self._bi_norm(e)
        row = torch.cat([e[0], e[1] + self.U])
        col = torch.cat([e[1] + self.U, e[0]])
        n = self.U + self.I
        self.masked_adj = torch.sparse_coo_tensor(torch.stack([row, col]), torch.cat([v, v]),
                                                  (n, n), check_invariants=False)

    def forward(self, adj=None):
        import torch
        adj = self.masked_adj if adj is None else adj
        h = self.item_emb.weight
        for _ in range(self.mm_layers):
            h = torch.sparse.mm(self.mm_adj, h)
        x = torch.cat([self.user_emb.weight, self.item_emb.weight])
        outs = [x]
        for _ in range(self.ui_layers):
            x = torch.sparse.mm(adj, x)
            outs.append(x)
        x = torch.stack(outs, 1).mean(1)
        return x[:self.U], x[self.U:] + h

    def loss(self, u, p, n):
        ue, ie = self.forward()
        out = _bpr(ue[u], ie[p], ie[n])
        for m in self.feat:
            f = self.trs[m](self.feat[m].weight)
            out = out + self.reg * _bpr(ue[u], f[p], f[n])
        return out


def bench_reference(data, model: str, epochs: int) -> dict:
    import numpy as np
    import torch
    store = data["user", "rates", "item"]
    U, I = int(data["user"].num_nodes), int(data["item"].num_nodes)
    user, item = store.edge_index[0], store.edge_index[1]
    if model == "lightgcn":
        net = _RefLightGCN(U, I, user, item)
    else:
        feats = {m: data["item"][f"{m}_feat"] for m in data.modalities}
        net = _RefFREEDOM(U, I, user, item, feats)
    opt = torch.optim.Adam(net.params, lr=1e-3)
    users_np, items_np = user.numpy(), item.numpy()
    history = {}
    for u, i in zip(users_np.tolist(), items_np.tolist()):
        history.setdefault(u, set()).add(i)
    all_items = list(range(I))
    rng = random.Random(0)
    secs = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        net.pre_epoch()
        perm = np.random.permutation(len(users_np))
        for s in range(0, len(perm), 2048):
            idx = perm[s:s + 2048]
            bu = users_np[idx]
            neg = []
            for uu in bu.tolist():  # MMRec: one Python draw (plus rejections) per interaction
                j = rng.sample(all_items, 1)[0]
                while j in history[uu]:
                    j = rng.sample(all_items, 1)[0]
                neg.append(j)
            u_t = torch.from_numpy(bu)
            p_t = torch.from_numpy(items_np[idx])
            n_t = torch.tensor(neg, dtype=torch.long)
            opt.zero_grad()
            loss = net.loss(u_t, p_t, n_t)
            loss.backward()
            opt.step()
        secs.append(time.perf_counter() - t0)
    # one full-ranking evaluation of the validation split, MMRec style
    t0 = time.perf_counter()
    with torch.no_grad():
        valid = store.valid_edge_index
        eval_users = torch.unique(valid[0])
        local = torch.full((U,), -1, dtype=torch.long)
        targets = {}
        for uu, ii in zip(valid[0].tolist(), valid[1].tolist()):
            targets.setdefault(uu, []).append(ii)
        recall_sum = 0.0
        hits = 0.0
        for s in range(0, eval_users.numel(), 4096):
            bu = eval_users[s:s + 4096]
            ue, ie = net.forward(getattr(net, "norm_adj", None) if model != "lightgcn" else None)
            scores = ue[bu] @ ie.t()
            local[bu] = torch.arange(bu.numel())
            sel = local[user] >= 0  # training pairs of this batch's users
            scores[local[user[sel]], item[sel]] = -1e10
            local[bu] = -1
            _, top = scores.topk(50, dim=1)
            # MMRec's TopKEvaluator: a per-user isin over the top-K list, then
            # cumulative sums per cut-off (Recall@K shown; NDCG/Precision/MAP alike)
            top_np = top.numpy()
            for row, uu in zip(top_np, bu.tolist()):
                t = targets[uu]
                hit = np.isin(row, t)
                cum = np.cumsum(hit)
                for k in (10, 20, 50):
                    recall_sum += cum[k - 1] / len(t)
                    disc = 1.0 / np.log2(np.arange(2, k + 2))
                    hits += float((hit[:k] * disc).sum())
    s_eval = time.perf_counter() - t0
    steady = secs[1:] if len(secs) > 1 else secs
    return {"s_epoch": sum(steady) / len(steady), "s_eval": s_eval, "recall@20": math.nan}


# --------------------------------------------------------------------------- driver
def child(args) -> None:
    import torch
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    np_seed = 0
    import numpy as np
    np.random.seed(np_seed)
    data = load_data(args.root, args.dataset, need_features=args.model != "lightgcn")
    fn = bench_ours if args.impl == "pyg_mmrec" else bench_reference
    out = fn(data, args.model, args.epochs)
    out["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(out), flush=True)


def run_mmrec(args, ds: str, model: str, env: dict) -> dict | None:
    """Time the real MMRec code of the checkout ``args.mmrec`` in its own subprocess."""
    cmd = [sys.executable, str(Path(__file__).with_name("mmrec_driver.py")),
           "--mmrec", args.mmrec, "--root", str(Path(args.root).resolve()), "--dataset", ds,
           "--model", model, "--epochs", str(args.epochs), "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        print(f"{ds} {model} mmrec: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    r = json.loads(line[0][7:])
    print(f"done: {ds} {model} mmrec: {r}", file=sys.stderr, flush=True)
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", default=str(ROOT / ".." / "shared" / "data"))
    p.add_argument("--datasets", default="ml100k_mm,baby")
    p.add_argument("--models", default="lightgcn,freedom")
    p.add_argument("--impls", default="pyg_mmrec,mmrec_style")
    p.add_argument("--epochs", type=int, default=3, help="epochs timed (the first is a warm-up)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--mmrec", default=None, metavar="PATH",
                   help="checkout of https://github.com/enoche/MMRec: also time the real MMRec")
    p.add_argument("--child", nargs=3, metavar=("DATASET", "MODEL", "IMPL"), default=None)
    args = p.parse_args()
    if args.child:
        args.dataset, args.model, args.impl = args.child
        return child(args)

    models = [m.strip().lower() for m in args.models.split(",") if m.strip()]
    if not models or not set(models) <= {"lightgcn", "freedom"}:
        p.error(f"--models: expected some of lightgcn,freedom (any case), got {args.models!r}")
    impls = [x.strip() for x in args.impls.split(",") if x.strip()]
    if not impls or not set(impls) <= {"pyg_mmrec", "mmrec_style"}:
        p.error(f"--impls: expected some of pyg_mmrec,mmrec_style, got {args.impls!r}")
    rows = []
    real = {}  # (dataset, model) -> result of the real MMRec (--mmrec)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for ds in args.datasets.split(","):
        for model in models:
            for impl in impls:
                cmd = [sys.executable, __file__, "--child", ds, model, impl, "--root", args.root,
                       "--epochs", str(args.epochs), "--threads", str(args.threads)]
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
                if proc.returncode != 0 or not line:
                    print(f"{ds} {model} {impl}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                    continue
                r = json.loads(line[0][7:])
                r.update(dataset=ds, model=model, impl=impl)
                rows.append(r)
                print(f"done: {ds} {model} {impl}: {r}", file=sys.stderr, flush=True)
            if args.mmrec:
                r = run_mmrec(args, ds, model, env)
                if r is not None:
                    real[(ds, model)] = r

    print(f"\nLightGCN / FREEDOM, batch 2048, {args.threads} thread(s), {args.epochs} epochs "
          "(mean of epochs 2..), one full-ranking evaluation of the validation split\n")
    if args.mmrec:
        print(f"MMRec = the real MMRec code from {args.mmrec} (benchmarks/mmrec_driver.py); "
              "epoch/eval speed-up = against the MMRec-style re-implementation\n")
    head = ("| dataset | model | implementation | s/epoch | s/eval | peak RSS (MB) "
            "| epoch speed-up | eval speed-up |")
    rule = "|---|---|---|---|---|---|---|---|"
    if args.mmrec:
        head += (" MMRec s/epoch | MMRec s/eval | MMRec peak RSS (MB) "
                 "| epoch speed-up vs MMRec | eval speed-up vs MMRec |")
        rule += "---|---|---|---|---|"
    print(head)
    print(rule)
    by = {(r["dataset"], r["model"], r["impl"]): r for r in rows}
    for r in rows:
        ref = by.get((r["dataset"], r["model"], "mmrec_style"))
        su_e = f"{ref['s_epoch'] / r['s_epoch']:.2f}x" if ref else "–"
        su_v = f"{ref['s_eval'] / r['s_eval']:.2f}x" if ref and r["s_eval"] > 0 else "–"
        if r["impl"] == "mmrec_style":
            su_e = su_v = "1.00x"
        line = (f"| {r['dataset']} | {r['model']} | {r['impl']} | {r['s_epoch']:.3f} | "
                f"{r['s_eval']:.3f} | {r['peak_rss_mb']:.0f} | {su_e} | {su_v} |")
        if args.mmrec:
            m = real.get((r["dataset"], r["model"]))
            if m is None:
                line += " failed | failed | failed | – | – |"
            else:
                line += (f" {m['s_epoch']:.3f} | {m['s_eval']:.3f} | {m['peak_rss_mb']:.0f} | "
                         f"{m['s_epoch'] / r['s_epoch']:.2f}x | "
                         f"{m['s_eval'] / r['s_eval']:.2f}x |")
        print(line)


if __name__ == "__main__":
    main()
