"""The MMRec driver of bench_train.py: data folder and compatibility shims (no MMRec needed)."""
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import load_script

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name):
    return load_script(f"benchmarks/{name}.py", f"_bench_{name}")


def _write_inter(folder: Path, name: str, rows):
    folder.mkdir(parents=True)
    with open(folder / f"{name}.inter", "w") as f:
        f.write("userID\titemID\trating\ttimestamp\tx_label\n")
        for u, i, x in rows:
            f.write(f"{u}\t{i}\t1\t0\t{x}\n")


def test_random_features_match_bench_train(tmp_path):
    driver = _load("mmrec_driver")
    bench = _load("bench_train")
    assert driver.BABY_DIMS == bench.BABY_DIMS
    _write_inter(tmp_path / "toy", "toy", [(0, 0, 0), (0, 4, 0), (1, 2, 1), (1, 3, 2)])
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
    _write_inter(tmp_path / "toy", "toy", [(0, 0, 0), (1, 1, 0)])
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
