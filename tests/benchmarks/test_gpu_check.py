"""The CPU-side parts of benchmarks/gpu_check.sh (the GPU run itself needs a GPU): its plan,
its refusal on a machine without one, and the epoch-timing driver it calls."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import load_script, write_tiny_mmrec

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def run_script(*args):
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_dry_run_prints_every_step():
    result = run_script("--dry-run")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for step in ("[build] FORCE_CUDA=1", "[kernels]", "[tests]", "[op benchmark]", "[epochs]"):
        assert step in out
    assert "bench_masked_spmm.py --device cuda" in out and "gpu_epochs.py --device cuda" in out
    assert "ml100k_mm,baby" in out


def test_unknown_argument_is_refused():
    result = run_script("--fast")
    assert result.returncode == 2 and "unknown argument '--fast'" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: the check would run")
def test_refuses_without_a_gpu_and_runs_nothing(tmp_path):
    before = sorted(p.name for p in (ROOT / "pyg_mmrec").iterdir())
    result = run_script()
    assert result.returncode == 1
    assert "needs a CUDA build of torch and a visible GPU" in result.stderr
    assert "Nothing was run" in result.stderr and "==> [" not in result.stdout
    assert sorted(p.name for p in (ROOT / "pyg_mmrec").iterdir()) == before


def test_epoch_driver_on_cpu(tmp_path, capsys):
    # The driver gpu_check.sh runs on CUDA, here on the CPU with a tiny dataset (one with
    # features, as baby's random ones are added only where none exist) and a missing one.
    write_tiny_mmrec(tmp_path, "tiny")
    driver = load_script("benchmarks/gpu_epochs.py", "gpu_epochs")
    rc = driver.main(["--device", "cpu", "--root", str(tmp_path), "--datasets", "tiny,absent",
                      "--models", "LightGCN,FREEDOM,I3-MRec", "--epochs", "1", "--topk", "10,20"])
    out = capsys.readouterr().out
    assert rc == 0
    rows = [line for line in out.splitlines() if line.startswith("| tiny |")]
    assert [r.split("|")[2].strip() for r in rows] == ["LightGCN", "FREEDOM", "I3-MRec"]
    for r in rows:
        s_epoch, s_eval = (float(c) for c in r.split("|")[3:5])
        assert s_epoch > 0 and s_eval > 0
    assert "skipped: absent:" in out


def test_epoch_driver_refuses_cuda_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_epochs.py"),
                             "--device", "cuda"], capture_output=True, text=True, timeout=120,
                            cwd=ROOT)
    assert result.returncode == 2 and "no CUDA GPU is visible" in result.stderr
