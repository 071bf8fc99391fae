"""When the CUDA kernels are built (setup.py) and what a user is told when CUDA tensors would
run the reference instead (pyg_mmrec.ops)."""
import subprocess
import sys
from pathlib import Path

import pytest

from pyg_mmrec.ops import EXT_DEVICES
from pyg_mmrec.ops.masked_spmm import _cuda_fallback_message
from conftest import load_script

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def plan():
    return load_script("setup.py", "pyg_mmrec_setup").cuda_build_plan


def test_cuda_built_without_a_visible_gpu(plan):
    # A CUDA torch and a toolkit suffice; the architectures default when no GPU is visible.
    assert plan({}, "12.8", "/usr/local/cuda", gpu_visible=False) == (True, "8.0;9.0+PTX")
    assert plan({}, "12.8", "/usr/local/cuda", gpu_visible=True) == (True, None)
    # The user's list wins.
    env = {"TORCH_CUDA_ARCH_LIST": "8.6"}
    assert plan(env, "12.8", "/usr/local/cuda", gpu_visible=False) == (True, None)
    # FORCE_CUDA=1 on a GPU-less host builds too (it crashed inside torch before).
    assert plan({"FORCE_CUDA": "1"}, "12.8", "/usr/local/cuda", False) == (True, "8.0;9.0+PTX")


def test_cpu_only_builds(plan):
    assert plan({}, None, "/usr/local/cuda", gpu_visible=False) == (False, None)
    assert plan({}, "12.8", None, gpu_visible=True) == (False, None)
    assert plan({"FORCE_ONLY_CPU": "1"}, "12.8", "/usr/local/cuda", True) == (False, None)


def test_force_cuda_that_cannot_be_honoured_is_an_error(plan):
    with pytest.raises(RuntimeError, match="FORCE_CUDA=1 needs a CUDA build of torch"):
        plan({"FORCE_CUDA": "1"}, None, "/usr/local/cuda", False)
    with pytest.raises(RuntimeError, match="CUDA_HOME is None"):
        plan({"FORCE_CUDA": "1"}, "12.8", None, False)
    with pytest.raises(RuntimeError, match="contradict"):
        plan({"FORCE_CUDA": "1", "FORCE_ONLY_CPU": "1"}, "12.8", "/usr/local/cuda", False)


def test_fallback_message():
    assert _cuda_fallback_message(False, True, {"cpu"}) is None
    assert _cuda_fallback_message(True, True, {"cpu", "cuda"}) is None
    assert "built without its CUDA kernels" in _cuda_fallback_message(True, True, {"cpu"})
    assert "is not loaded" in _cuda_fallback_message(True, False, frozenset())


def test_import_warns_when_cuda_tensors_would_fall_back():
    # A process that sees a GPU: the warning is given at import exactly when this build has
    # no CUDA kernels.
    code = ("import warnings, torch; torch.cuda.is_available = lambda: True\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    import pyg_mmrec.ops\n"
            "print(sum('slow pure-PyTorch reference' in str(x.message) for x in w))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ("0" if "cuda" in EXT_DEVICES else "1")
