"""The MMRec driver of bench_train.py: data folder and compatibility shims (no MMRec needed)."""
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import load_script, write_inter

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name):
    return load_script(f"benchmarks/{name}.py", f"_bench_{name}")


def test_random_features_match_bench_train(tmp_path):
    driver = _load("mmrec_driver")
    bench = _load("bench_train")
    assert driver.BABY_DIMS == bench.BABY_DIMS
    write_inter(tmp_path / "toy", "toy", [(0, 0, 0), (0, 4, 0), (1, 2, 1), (1, 3, 2)])
    out = Path(driver._make_data_dir(str(tmp_path), "toy", need_features=True))
    try:
        assert (out / "toy" / "toy.inter").is_symlink()
        g = torch.Generator().manual_seed(0)
        for m, d in bench.BABY_DIMS.items():
            x = np.load(out / "toy" / f"{m}_feat.npy")
            assert x.shape == (5, d) and x.dtype == np.float32
            np.testing.assert_array_equal(x, torch.randn(5, d, generator=g).numpy())
    finally:
        shutil.rmtree(out)


def test_existing_features_are_linked_not_copied(tmp_path):
    driver = _load("mmrec_driver")
    write_inter(tmp_path / "toy", "toy", [(0, 0, 0), (1, 1, 0)])
    np.save(tmp_path / "toy" / "text_feat.npy", np.ones((2, 3), dtype=np.float32))
    out = Path(driver._make_data_dir(str(tmp_path), "toy", need_features=True))
    try:
        assert (out / "toy" / "text_feat.npy").is_symlink()
        assert not (out / "toy" / "image_feat.npy").exists()
    finally:
        shutil.rmtree(out)


def test_dok_update_shim():
    sp = pytest.importorskip("scipy.sparse")
    driver = _load("mmrec_driver")
    # The shims import (or stub) these packages; the real ones pull in submodules
    # (matplotlib.artist, ...) that must go too, or a later import of the package
    # finds them orphaned in sys.modules.
    stubbed = ("torchvision", "lmdb", "matplotlib")
    before = {k: v for k, v in sys.modules.items() if k.split(".")[0] in stubbed}
    had_update = "_update" in vars(sp.dok_matrix)
    try:
        driver._apply_shims()
        a = sp.dok_matrix((3, 3), dtype=np.float32)
        a._update({(0, 1): 1, (2, 0): 1})
        assert a.nnz == 2 and a.toarray()[0, 1] == 1 and a.toarray()[2, 0] == 1
    finally:
        for k in [k for k in sys.modules if k.split(".")[0] in stubbed]:
            if k not in before:
                del sys.modules[k]
        sys.modules.update(before)
        if not had_update and "_update" in vars(sp.dok_matrix):
            del sp.dok_matrix._update


def test_model_names_any_case_and_bad_names_rejected(monkeypatch, capsys):
    import subprocess
    bench = _load("bench_train")
    # bench_train hands the driver the lower-case name it validated
    monkeypatch.setattr(sys, "argv", ["bench_train.py", "--models", "LightGCN,nope"])
    with pytest.raises(SystemExit):
        bench.main()
    assert "--models" in capsys.readouterr().err
    # the driver takes the name in any case: the run gets past argument parsing
    out = subprocess.run([sys.executable, str(BENCH / "mmrec_driver.py"), "--mmrec",
                          str(BENCH / "no_checkout"), "--dataset", "x", "--model", "LightGCN"],
                         capture_output=True, text=True)
    assert out.returncode != 0 and "does not look like an MMRec checkout" in out.stderr
    out = subprocess.run([sys.executable, str(BENCH / "mmrec_driver.py"), "--mmrec", ".",
                          "--dataset", "x", "--model", "nope"], capture_output=True, text=True)
    assert out.returncode == 2 and "--model" in out.stderr


# A minimal stand-in for an MMRec checkout, with the two traits a pristine clone has:
# `Config` reads configs/ relative to the working directory (the real configs live in src/),
# and the metrics use `np.float` (removed in NumPy 1.24).
FAKE_MMREC = {
    "src/configs/overall.yaml": "valid_metric: Recall@20\nseed: [999]\n",
    "src/utils/__init__.py": "",
    "src/utils/configurator.py": '''
import os


class Config:
    def __init__(self, model, dataset, config_dict):
        self.final = {}
        path = os.path.join(os.getcwd(), "configs", "overall.yaml")
        if os.path.isfile(path):  # as MMRec: a missing YAML is skipped silently
            for line in open(path):
                key, value = line.split(":", 1)
                self.final[key.strip()] = value.strip()
        self.final.update(config_dict, model=model, dataset=dataset)
        self.final["valid_metric"].split("@")  # KeyError without configs/overall.yaml

    def __getitem__(self, key):
        return self.final[key]
''',
    "src/utils/metrics.py": '''
import numpy as np


def recall(hits, n_pos):
    out = np.zeros(len(hits), dtype=np.float)
    for i, (h, n) in enumerate(zip(hits, n_pos)):
        out[i] = h / n
    return float(out.mean())
''',
    "src/utils/quick_start.py": '''
import logging
import os

from utils.configurator import Config
from utils.metrics import recall


def init_logger(config):
    logging.getLogger().setLevel(logging.INFO)


def quick_start(model, dataset, config_dict, save_model=True):
    config = Config(model, dataset, config_dict)
    init_logger(config)
    log = logging.getLogger()
    inter = os.path.join(config["data_path"], dataset, config["inter_file_name"])
    n_rows = sum(1 for _ in open(inter)) - 1
    metric = config["valid_metric"].lower()
    log.info("epoch 0 evaluating [time: 0.01s, valid_score: 0.5]")
    log.info("Best validation results updated!!!")
    log.info(f"best valid result: {metric}: {recall([1, n_rows], [2, 4]):.4f}")
    log.info(f"test result: {metric}: {recall([1], [4]):.4f}")
''',
}


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts and p.parts[-2:-1] != ("log",)}


def test_driver_runs_a_pristine_checkout_from_its_src_folder(tmp_path):
    """Fit mode on a fake clone: passes only when the driver runs from src/ (else Config
    raises KeyError: 'valid_metric') and shims np.float (else AttributeError on NumPy >= 1.24);
    the clone's files are left as they were."""
    import json
    import subprocess
    checkout = tmp_path / "MMRec"
    for rel, text in FAKE_MMREC.items():
        (checkout / rel).parent.mkdir(parents=True, exist_ok=True)
        (checkout / rel).write_text(text)
    before = _tree(checkout)
    write_inter(tmp_path / "data" / "toy", "toy", [(0, 0, 0), (0, 1, 1), (1, 2, 2)])
    out = subprocess.run([sys.executable, str(BENCH / "mmrec_driver.py"), "--mmrec", "MMRec",
                          "--root", "data", "--dataset", "toy", "--model", "lightgcn", "--fit"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (line,) = [s for s in out.stdout.splitlines() if s.startswith("RESULT ")]
    result = json.loads(line[len("RESULT "):])
    assert result["valid"] == {"recall@20": 0.625}  # mean(1/2, 3 rows/4)
    assert result["test"] == {"recall@20": 0.25}
    assert result["best_epoch"] == 0 and result["epochs_run"] == 1
    if "float" not in vars(np):
        assert "np.float" in result["shims"]
    assert _tree(checkout) == before
    # a checkout without src/configs/overall.yaml is named, not a KeyError deep in MMRec
    (checkout / "src" / "configs" / "overall.yaml").unlink()
    out = subprocess.run([sys.executable, str(BENCH / "mmrec_driver.py"), "--mmrec",
                          str(checkout), "--dataset", "toy", "--model", "lightgcn", "--fit"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "overall.yaml is missing" in out.stderr


def test_numpy_alias_shim_adds_only_what_is_missing(monkeypatch):
    driver = _load("mmrec_driver")
    for name in driver.NUMPY_REMOVED_ALIASES:
        # setattr first, so that the monkeypatch also removes the alias afterwards
        monkeypatch.setattr(np, name, None, raising=False)
        monkeypatch.delattr(np, name)
    monkeypatch.setattr(np, "bool", np.bool_, raising=False)  # as NumPy 2 defines it
    applied = driver._shim_numpy_aliases()
    assert np.float is float and np.int is int and np.object is object
    assert np.bool is np.bool_ and "np.bool" not in applied
    assert sorted(applied) == sorted(f"np.{n}" for n in driver.NUMPY_REMOVED_ALIASES if n != "bool")
