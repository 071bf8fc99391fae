r"""Run the real MMRec code (a checkout of https://github.com/enoche/MMRec) for ``bench_train.py``.

MMRec is a research repository, not a package: it is run as ``cd src; python main.py``,
its modules import each other as top-level ``utils.*`` / ``common.*`` / ``models.*`` and
its ``Config`` reads ``configs/overall.yaml`` (and the dataset and model YAMLs) relative to
the working directory, i.e. from ``<checkout>/src/configs``. This driver therefore

* changes into ``<checkout>/src`` and puts it on ``sys.path``, as MMRec expects (from the
  checkout root ``Config`` finds no YAML and fails with ``KeyError: 'valid_metric'``);
  ``--root`` is resolved before, so a relative data path still works;
* builds a throw-away data folder (``<dataset>/<dataset>.inter`` and the feature files
  symlinked from ``--root``; for a dataset without features, FREEDOM gets the same
  random features ``bench_train.load_data`` attaches, written as ``.npy``), so nothing
  is written into the shared data folder or the checkout's ``data/``;
* passes the dataset fields (``userID``/``itemID``/``x_label``) and ``use_gpu: False``
  through MMRec's ``config_dict``, so a pristine clone needs no extra YAML;
* applies compatibility shims for current libraries, only where needed and without
  touching MMRec's files: the NumPy aliases of builtin types removed in NumPy 1.24
  (``np.float``, ``np.int``, ... ; MMRec's metrics use ``np.float``) are re-added as the
  builtins they stood for; ``scipy.sparse.dok_matrix._update`` (removed in SciPy 1.12;
  MMRec's LightGCN/FREEDOM build their adjacency with it) is re-added as a plain dict
  update; and modules MMRec imports but never uses for LightGCN/FREEDOM with
  pre-extracted features (``torchvision``, ``lmdb``, ``matplotlib``) are replaced by
  empty stubs when they are not installed.

Two modes::

    # timing (used by bench_train.py --mmrec): N epochs of MMRec's Trainer._train_epoch,
    # then one Trainer.evaluate of the validation split
    python benchmarks/mmrec_driver.py --mmrec PATH --dataset ml100k_mm --model lightgcn --epochs 3

    # quality: MMRec's own quick_start loop (train, validate + test every epoch,
    # early stopping on valid Recall@20) to convergence
    python benchmarks/mmrec_driver.py --mmrec PATH --dataset ml100k_mm --model lightgcn \
        --fit --lr 1e-3 --stopping-step 50 --max-epochs 400 [--also-mask-valid]

MMRec ranks the test split with only the training items excluded; ``--also-mask-valid``
additionally reports every test evaluation with training and validation items excluded
(``pyg_mmrec``'s protocol) as ``tv_<metric>@K``, without changing training or selection.

Both print one ``RESULT {json}`` line on stdout.

Hyper-parameters: MMRec's model YAMLs list grids (LightGCN ``n_layers`` x ``reg_weight``,
FREEDOM ``dropout`` x ``reg_weight``) that ``quick_start`` sweeps; here one grid point
is fixed, the one ``pyg_mmrec``'s configs use (LightGCN 2 layers, reg 1e-4; FREEDOM
dropout 0.8, reg 1e-3). Everything else is MMRec's default (embedding 64, batch 2048,
Adam lr 1e-3, eval batch 4096, seed 999, metrics Recall/NDCG/Precision/MAP @ 5/10/20/50).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import resource
import shutil
import sys
import tempfile
import time
import types
from pathlib import Path

BABY_DIMS = {"image": 4096, "text": 384}  # keep in sync with bench_train.BABY_DIMS
MODEL_NAMES = {"lightgcn": "LightGCN", "freedom": "FREEDOM"}
FIXED_HPARAMS = {
    "lightgcn": {"n_layers": 2, "reg_weight": 1e-4},
    "freedom": {"dropout": 0.8, "reg_weight": 1e-3},
}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ----------------------------------------------------------------------------- shims
#: NumPy aliases of builtin types removed in NumPy 1.24, and what they stood for
NUMPY_REMOVED_ALIASES = {"float": float, "int": int, "bool": bool, "object": object,
                         "str": str, "complex": complex}


def _shim_numpy_aliases() -> list[str]:
    """Re-add the removed NumPy aliases that are missing; returns them as ``np.<name>``."""
    import numpy as np
    applied = []
    for name, builtin in NUMPY_REMOVED_ALIASES.items():
        if name not in vars(np):  # not hasattr: NumPy 1.20-1.23 warn on every lookup
            setattr(np, name, builtin)
            applied.append(f"np.{name}")
    return applied


def _apply_shims() -> list[str]:
    applied = _shim_numpy_aliases()
    try:
        import scipy.sparse as sp
    except ImportError:  # MMRec needs SciPy: its own import says so
        sp = None
    if sp is not None and not hasattr(sp.dok_matrix, "_update"):
        def _update(self, data):  # SciPy >= 1.12 keeps the entries in ``self._dict``
            self._dict.update(data)
        sp.dok_matrix._update = _update
        applied.append("dok_matrix._update")
    import importlib
    stubs = {"torchvision": ["torchvision", "torchvision.transforms",
                             "torchvision.transforms.functional"],
             "lmdb": ["lmdb"], "matplotlib": ["matplotlib", "matplotlib.pyplot"]}
    for top, names in stubs.items():
        try:
            importlib.import_module(names[-1])
        except ImportError:
            for name in names:
                mod = types.ModuleType(name)
                mod.__getattr__ = _stub_attr(name)  # any attribute is a callable that raises
                sys.modules[name] = mod
            applied.append(f"stub:{top}")
    return applied


def _stub_attr(modname):
    def getattr_(attr):
        if attr.startswith("__"):
            raise AttributeError(attr)

        def unavailable(*a, **k):
            raise RuntimeError(f"{modname}.{attr} is a stub (not installed)")
        return unavailable
    return getattr_


# ------------------------------------------------------------------------------ data
def _make_data_dir(root: str, dataset: str, need_features: bool) -> str:
    tmp = tempfile.mkdtemp(prefix="mmrec_data_")
    src = Path(root).resolve() / dataset
    dst = Path(tmp) / dataset
    dst.mkdir()
    os.symlink(src / f"{dataset}.inter", dst / f"{dataset}.inter")
    have = [m for m in ("image", "text") if (src / f"{m}_feat.npy").exists()]
    for m in have:
        os.symlink(src / f"{m}_feat.npy", dst / f"{m}_feat.npy")
    if need_features and not have:
        # the same random features as bench_train.load_data (one generator, seed 0,
        # image then text, one row per item of the .inter file)
        import numpy as np
        import torch
        n_items = 0
        with open(src / f"{dataset}.inter") as f:
            header = f.readline().rstrip("\n").split("\t")
            col = header.index("itemID")
            for line in f:
                n_items = max(n_items, int(line.split("\t")[col]) + 1)
        g = torch.Generator().manual_seed(0)
        for m, d in BABY_DIMS.items():
            np.save(dst / f"{m}_feat.npy", torch.randn(n_items, d, generator=g).numpy())
    return tmp


def _config_dict(args, data_dir: str) -> dict:
    cfg = {
        "gpu_id": 0,
        "use_gpu": False,
        "data_path": data_dir + os.sep,  # MMRec concatenates data_path + dataset
        "USER_ID_FIELD": "userID",
        "ITEM_ID_FIELD": "itemID",
        "TIME_FIELD": "timestamp",
        "inter_file_name": f"{args.dataset}.inter",
        "inter_splitting_label": "x_label",
        "vision_feature_file": "image_feat.npy",
        "text_feature_file": "text_feat.npy",
        "field_separator": "\t",
    }
    if args.lr is not None:
        cfg["learning_rate"] = args.lr
    return cfg


def _enter_checkout(path: str) -> list[str]:
    """Run from ``<checkout>/src`` as MMRec's ``main.py`` does (its ``Config`` reads
    ``configs/`` relative to the working directory); returns the shims applied."""
    src = Path(path).resolve() / "src"
    if not (src / "utils" / "quick_start.py").exists():
        raise SystemExit(f"{Path(path).resolve()} does not look like an MMRec checkout "
                         "(src/utils/quick_start.py missing)")
    if not (src / "configs" / "overall.yaml").exists():
        raise SystemExit(f"{src / 'configs' / 'overall.yaml'} is missing: MMRec's Config "
                         "reads its defaults from there")
    os.chdir(src)
    sys.path.insert(0, str(src))
    return _apply_shims()


# ---------------------------------------------------------------------------- timing
def bench(args) -> dict:
    import torch
    torch.set_num_threads(args.threads)
    shims = _enter_checkout(args.mmrec)
    data_dir = _make_data_dir(args.root, args.dataset, need_features=args.model != "lightgcn")
    from utils.configurator import Config
    from utils.dataset import RecDataset
    from utils.dataloader import TrainDataLoader, EvalDataLoader
    from utils.utils import init_seed, get_model, get_trainer

    name = MODEL_NAMES[args.model]
    cfg = _config_dict(args, data_dir)
    cfg.update(epochs=args.epochs, **FIXED_HPARAMS[args.model])
    config = Config(name, args.dataset, cfg)
    config["seed"] = 999 if isinstance(config["seed"], list) else config["seed"]

    # the same sequence as MMRec's utils/quick_start.py (str() sets ``inter_num``,
    # which the data loaders read)
    dataset = RecDataset(config)
    str(dataset)
    train_ds, valid_ds, test_ds = dataset.split()
    for d in (train_ds, valid_ds, test_ds):
        str(d)
    train_data = TrainDataLoader(config, train_ds, batch_size=config["train_batch_size"],
                                 shuffle=True)
    valid_data = EvalDataLoader(config, valid_ds, additional_dataset=train_ds,
                                batch_size=config["eval_batch_size"])
    # built but not used, as MMRec's quick_start builds it (counts in the peak RSS)
    test_data = EvalDataLoader(config, test_ds, additional_dataset=train_ds,  # noqa: F841
                               batch_size=config["eval_batch_size"])
    init_seed(config["seed"])
    train_data.pretrain_setup()
    model = get_model(name)(config, train_data).to(config["device"])
    try:
        trainer = get_trainer()(config, model, False)
    except TypeError:  # MMRec versions before Mirror Gradient: Trainer(config, model)
        trainer = get_trainer()(config, model)

    # the body of Trainer.fit's epoch loop, minus logging and evaluation
    secs = []
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        model.pre_epoch_processing()
        trainer._train_epoch(train_data, epoch)
        trainer.lr_scheduler.step()
        secs.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    valid = trainer.evaluate(valid_data)
    s_eval = time.perf_counter() - t0
    shutil.rmtree(data_dir, ignore_errors=True)
    steady = secs[1:] if len(secs) > 1 else secs  # same convention as bench_train
    return {"s_epoch": sum(steady) / len(steady), "s_eval": s_eval,
            "recall@20": valid.get("recall@20"), "epoch_seconds": secs,
            "device": str(config["device"]), "shims": shims, "peak_rss_mb": peak_rss_mb()}


# ----------------------------------------------------------------------------- fit
class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _add_train_valid_masked_test(qs) -> None:
    """Also score the test split with training *and validation* items excluded.

    MMRec excludes only training items when ranking for the test split (its test
    ``EvalDataLoader`` gets ``additional_dataset=train``), so validation items can
    take top-K slots; ``pyg_mmrec`` excludes both. This wraps ``quick_start``'s
    ``EvalDataLoader`` and ``Trainer`` so that every test evaluation is also run with
    ``train + valid`` as the excluded set and reported as ``tv_<metric>@K`` next to
    MMRec's own numbers. Model selection (on validation) and training are unchanged.
    """
    import pandas as pd
    base_loader = qs.EvalDataLoader
    made, extra = [], {}

    def eval_loader(config, dataset, additional_dataset=None, batch_size=1, shuffle=False):
        loader = base_loader(config, dataset, additional_dataset=additional_dataset,
                             batch_size=batch_size, shuffle=shuffle)
        made.append(dataset)
        if len(made) == 2:  # quick_start builds the validation loader, then the test loader
            valid_ds = made[0]
            seen = additional_dataset.copy(pd.concat([additional_dataset.df, valid_ds.df]))
            str(seen)  # sets inter_num, as quick_start's logging does for its datasets
            extra[id(loader)] = base_loader(config, dataset, additional_dataset=seen,
                                            batch_size=batch_size, shuffle=shuffle)
        return loader
    qs.EvalDataLoader = eval_loader

    base_get_trainer = qs.get_trainer

    def get_trainer():
        base = base_get_trainer()

        class TrainerAlsoMaskValid(base):
            def _valid_epoch(self, data):
                score, result = super()._valid_epoch(data)
                tv = extra.get(id(data))
                if tv is not None:
                    _, tv_result = super()._valid_epoch(tv)
                    result = dict(result, **{f"tv_{k}": v for k, v in tv_result.items()})
                return score, result
        return TrainerAlsoMaskValid
    qs.get_trainer = get_trainer


def fit(args) -> dict:
    import torch
    torch.set_num_threads(args.threads)
    shims = _enter_checkout(args.mmrec)
    data_dir = _make_data_dir(args.root, args.dataset, need_features=args.model != "lightgcn")
    import utils.quick_start as qs

    cap = _Capture()
    original_init_logger = qs.init_logger

    def init_logger(config):  # MMRec's logger (file under ./log/ + stderr), plus our capture
        original_init_logger(config)
        logging.getLogger().addHandler(cap)
    qs.init_logger = init_logger

    if args.also_mask_valid:
        _add_train_valid_masked_test(qs)

    name = MODEL_NAMES[args.model]
    cfg = _config_dict(args, data_dir)
    # one grid point, written as one-element lists as quick_start sweeps them
    cfg.update({k: [v] for k, v in FIXED_HPARAMS[args.model].items()})
    cfg.update(seed=[args.seed], epochs=args.max_epochs, stopping_step=args.stopping_step)
    t0 = time.perf_counter()
    qs.quick_start(model=name, dataset=args.dataset, config_dict=cfg, save_model=False)
    seconds = time.perf_counter() - t0
    shutil.rmtree(data_dir, ignore_errors=True)

    # selected epoch = the last epoch whose validation score updated the best one
    epoch, best_epoch, n_epochs = None, None, 0
    for msg in cap.messages:
        m = re.match(r"epoch (\d+) evaluating", msg)
        if m:
            epoch = int(m.group(1))
            n_epochs = epoch + 1
        elif "Best validation results updated" in msg:
            best_epoch = epoch

    def parse(prefix):
        for msg in reversed(cap.messages):
            if msg.startswith(prefix):
                return {k: float(v) for k, v in re.findall(r"(\S+@\d+): ([0-9.]+)", msg)}
        return {}
    return {"model": name, "dataset": args.dataset, "lr": args.lr if args.lr is not None else 1e-3,
            "hparams": FIXED_HPARAMS[args.model], "seed": args.seed,
            "stopping_step": args.stopping_step, "max_epochs": args.max_epochs,
            "selected_on": "valid recall@20 (MMRec valid_metric)",
            "test_excludes": "train (MMRec)"
            + (" and train+valid (tv_*)" if args.also_mask_valid else ""),
            "best_epoch": best_epoch, "epochs_run": n_epochs,
            "valid": parse("best valid result:"), "test": parse("test result:"),
            "seconds": seconds, "shims": shims, "peak_rss_mb": peak_rss_mb()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mmrec", required=True, help="path of an MMRec checkout")
    p.add_argument("--root",
                   default=str(Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
    p.add_argument("--dataset", required=True)
    p.add_argument("--model", required=True, type=str.lower, choices=sorted(MODEL_NAMES))
    p.add_argument("--epochs", type=int, default=3, help="timing mode: epochs timed")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fit", action="store_true", help="run MMRec's quick_start to convergence")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: MMRec's 1e-3)")
    p.add_argument("--stopping-step", type=int, default=20, help="fit mode: MMRec stopping_step")
    p.add_argument("--max-epochs", type=int, default=1000, help="fit mode: MMRec epochs")
    p.add_argument("--seed", type=int, default=999, help="fit mode: MMRec seed")
    p.add_argument("--also-mask-valid", action="store_true",
                   help="fit mode: also report test metrics with train+valid items excluded "
                        "(pyg_mmrec's protocol) as tv_<metric>@K")
    args = p.parse_args(argv)
    args.root = str(Path(args.root).resolve())  # before _enter_checkout changes directory
    out = fit(args) if args.fit else bench(args)
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
