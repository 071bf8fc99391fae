"""The CUDA kernels of masked_spmm run without a GPU: csrc/cuda/masked_spmm_kernel.cu is compiled
by g++ against tests/ops/cuda_emulator (each warp = 32 coroutines meeting at every shuffle) and
compared with the pure-PyTorch reference on graphs with hub rows split into many chunks, F from 0
to > 128, NaN in masked rows, zero weight sums and every dtype the CUDA glue dispatches."""
import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from pyg_mmrec.ops import masked_spmm_reference
from pyg_mmrec.ops.masked_spmm import _csr_transpose_reference

ROOT = Path(__file__).resolve().parents[2]
KERNEL = ROOT / "csrc" / "cuda" / "masked_spmm_kernel.cu"
EMULATOR = Path(__file__).resolve().parent / "cuda_emulator"
DEFAULT_CHUNK = 256  # kDefaultChunk of masked_spmm_kernel.h

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or shutil.which("g++") is None,
    reason="the CUDA emulator needs Linux (ucontext) and g++")

def C(v) -> ctypes.c_int:
    """A C `int` argument (dtype code, index bits, flags)."""
    return ctypes.c_int(int(v))


DTYPE_CODE = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}


def build_emulator(kernel_source: str, opt: str = "-O1") -> Path:
    """Compiles the kernel file's text with the emulator into a shared library, cached by the
    hash of every input (a rebuild only when the kernels or the emulator change)."""
    sources = [kernel_source.encode(), opt.encode()] + [
        p.read_bytes() for p in sorted(EMULATOR.iterdir()) if p.suffix in (".h", ".cpp")]
    sources.append((KERNEL.with_name("masked_spmm_kernel.h")).read_bytes())
    key = hashlib.sha256(b"\0".join(sources)).hexdigest()[:16]
    default_cache = Path(tempfile.gettempdir()) / f"pyg_mmrec_cuda_emulator_{os.getuid()}"
    cache = Path(os.environ.get("PYG_MMREC_EMULATOR_CACHE", default_cache))
    lib = cache / f"emu_{key}.so"
    if lib.exists():
        return lib
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        # The shim includes the kernel file by relative path: compile a copy of the shim
        # placed where that path resolves to the (possibly mutated) kernel text.
        work = Path(tmp)
        (work / "csrc" / "cuda").mkdir(parents=True)
        (work / "csrc" / "cuda" / "masked_spmm_kernel.cu").write_text(kernel_source)
        shutil.copy(KERNEL.with_name("masked_spmm_kernel.h"), work / "csrc" / "cuda")
        shim_dir = work / "tests" / "ops" / "cuda_emulator"
        shutil.copytree(EMULATOR, shim_dir)
        out = work / "emu.so"
        cmd = ["g++", "-std=c++17", opt, "-shared", "-fPIC", "-Wall", "-Werror",
               "-Wno-unknown-pragmas", f"-I{shim_dir}", str(shim_dir / "shim.cpp"), "-o",
               str(out)]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
        os.replace(out, lib)  # atomic: concurrent test runs never load a half-written file
    return lib


class Emulated:
    r"""The kernel launchers of masked_spmm_kernel.h on host tensors (what the ATen glue does
    on CUDA: contiguous inputs, extra-chunk prefix sum, workspace, launch)."""

    def __init__(self, lib_path: Path):
        self.lib = ctypes.CDLL(str(lib_path))
        self.lib.emu_last_error.restype = ctypes.c_char_p
        self.lib.emu_intrinsics.restype = ctypes.c_int64

    def _call(self, name, *args):
        conv = []
        for a in args:
            if isinstance(a, torch.Tensor):
                conv.append(ctypes.c_void_p(a.data_ptr()))
            elif a is None:
                conv.append(ctypes.c_void_p(None))
            elif isinstance(a, ctypes.c_int):
                conv.append(a)
            else:
                conv.append(ctypes.c_int64(int(a)))
        rc = getattr(self.lib, name)(*conv)
        if rc != 0:
            raise RuntimeError(f"{name}: {self.lib.emu_last_error().decode()}")

    def extra_ptr(self, ptr, chunk):
        counts = torch.empty(ptr.numel(), dtype=torch.long)
        self._call("emu_count_extra_chunks", C(ptr.element_size() * 8), ptr, counts,
                   ptr.numel() - 1, chunk)
        return counts.cumsum(0)

    @staticmethod
    def _workspace(n_edges, F, dtype, chunk):
        acc = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        # NaN-filled: a row read before it is written shows up in the results.
        return torch.full((n_edges // chunk, F + 1), float("nan"), dtype=acc)

    def forward(self, rowptr, col, x, mask, value, mean, chunk=DEFAULT_CHUNK):
        n_dst, F = rowptr.numel() - 1, x.size(1)
        out = torch.full((n_dst, F), float("nan"), dtype=x.dtype)
        wsum = torch.full((n_dst,), float("nan"), dtype=x.dtype)
        self._call("emu_forward", C(DTYPE_CODE[x.dtype]), C(rowptr.element_size() * 8), rowptr, col,
                   x, mask, value, self.extra_ptr(rowptr, chunk),
                   self._workspace(col.numel(), F, x.dtype, chunk), out, wsum, n_dst,
                   col.numel(), F, C(mean), chunk)
        return out, wsum

    def backward_x(self, rowptr, col, grad_out, mask, value, wsum, mean, n_src,
                   chunk=DEFAULT_CHUNK):
        colptr, row_t, perm = _csr_transpose_reference(rowptr, col, n_src)
        F = grad_out.size(1)
        grad_x = torch.full((n_src, F), float("nan"), dtype=grad_out.dtype)
        if F == 0:
            return grad_x
        self._call("emu_backward_x", C(DTYPE_CODE[grad_out.dtype]), C(rowptr.element_size() * 8),
                   colptr, row_t, perm, grad_out, mask, value, wsum if mean else None,
                   self.extra_ptr(colptr, chunk),
                   self._workspace(col.numel(), F, grad_out.dtype, chunk), grad_x, n_src,
                   col.numel(), F, C(mean), chunk)
        return grad_x

    def backward_value(self, rowptr, col, x, grad_out, grad_wsum, mask, out, wsum, mean,
                       chunk=DEFAULT_CHUNK):
        grad_value = torch.full((col.numel(),), float("nan"), dtype=x.dtype)
        self._call("emu_backward_value", C(DTYPE_CODE[x.dtype]), C(rowptr.element_size() * 8), rowptr,
                   col, x, grad_out, grad_wsum, mask, out, wsum, self.extra_ptr(rowptr, chunk),
                   grad_value, rowptr.numel() - 1, col.numel(), x.size(1), C(mean), chunk)
        return grad_value


@pytest.fixture(scope="module")
def emu():
    return Emulated(build_emulator(KERNEL.read_text()))


def hub_graph(degrees, n_src, index_dtype=torch.long, seed=0):
    """CSR graph whose row i has degrees[i] edges (duplicates allowed)."""
    gen = torch.Generator().manual_seed(seed)
    deg = torch.tensor(degrees, dtype=torch.long)
    rowptr = torch.zeros(len(degrees) + 1, dtype=torch.long)
    rowptr[1:] = deg.cumsum(0)
    col = torch.randint(0, n_src, (int(deg.sum()),), generator=gen)
    return rowptr.to(index_dtype), col.to(index_dtype)


# Empty rows, 1 edge, one warp batch (31, 32, 33 edges), several chunks at small chunk sizes
# and a hub row longer than the default chunk.
DEGREES = [0, 1, 31, 32, 33, 5, 0, 70, 2, 300]


def reference_with_grads(rowptr, col, x, mask, value, reduce, g_out, g_ws):
    x = x.detach().double().requires_grad_()
    value = value.detach().double().requires_grad_() if value is not None else None
    out, wsum = masked_spmm_reference(rowptr, col, x, mask, value, reduce)
    ((out * g_out.double()).sum() + (wsum * g_ws.double()).sum()).backward()
    return out, wsum, x.grad, (value.grad if value is not None else None)


def run_emulated(emu, rowptr, col, x, mask, value, reduce, g_out, g_ws, chunk):
    mean = reduce == "mean"
    out, wsum = emu.forward(rowptr, col, x, mask, value, mean, chunk)
    grad_x = emu.backward_x(rowptr, col, g_out, mask, value, wsum, mean, x.size(0), chunk)
    grad_value = None
    if value is not None:
        grad_value = emu.backward_value(rowptr, col, x, g_out, g_ws, mask, out, wsum, mean,
                                        chunk)
    return out, wsum, grad_x, grad_value


def tolerances(dtype):
    return {torch.float64: dict(rtol=1e-9, atol=1e-9), torch.float32: dict(rtol=1e-4, atol=1e-4),
            torch.float16: dict(rtol=2e-2, atol=2e-2),
            torch.bfloat16: dict(rtol=6e-2, atol=6e-2)}[dtype]


def compare(emu, rowptr, col, x, mask, value, reduce, chunk, dtype, x_ref=None):
    gen = torch.Generator().manual_seed(3)
    g_out = torch.randn(rowptr.numel() - 1, x.size(1), generator=gen).to(dtype)
    g_ws = torch.randn(rowptr.numel() - 1, generator=gen).to(dtype)
    got = run_emulated(emu, rowptr, col, x, mask, value, reduce, g_out, g_ws, chunk)
    # The reference reads the rows of masked sources (and differentiates through them): give
    # it the same graph with those rows zeroed when the test planted NaN there.
    want = reference_with_grads(rowptr, col, x if x_ref is None else x_ref, mask, value, reduce,
                                g_out, g_ws)
    for name, g, w in zip(("out", "weight_sum", "grad_x", "grad_value"), got, want):
        if w is None:
            assert g is None
            continue
        assert not g.isnan().any(), f"{name}: NaN (a result left unwritten or a masked row read)"
        torch.testing.assert_close(g.double(), w, **tolerances(dtype),
                                   msg=lambda m, name=name: f"{name}: {m}")
    return got


@pytest.mark.parametrize("F", [0, 1, 7, 33, 64, 129, 200])
@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_features_and_chunks(emu, F, reduce):
    rowptr, col = hub_graph(DEGREES, n_src=40)
    x = torch.randn(40, F, dtype=torch.float32)
    mask = torch.rand(40) < 0.7
    value = torch.rand(col.numel()) + 0.1
    # chunk 16: every row longer than 16 edges is split; 256: only the hub row.
    for chunk in (16, DEFAULT_CHUNK):
        compare(emu, rowptr, col, x, mask, value, reduce, chunk, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_dtypes(emu, dtype, index_dtype):
    rowptr, col = hub_graph(DEGREES, n_src=30, index_dtype=index_dtype, seed=1)
    x = torch.randn(30, 40).to(dtype)
    mask = torch.rand(30) < 0.7
    value = (torch.rand(col.numel()) + 0.1).to(dtype)
    compare(emu, rowptr, col, x, mask, value, "mean", 8, dtype)


@pytest.mark.parametrize("with_mask", [False, True])
def test_without_value(emu, with_mask):
    rowptr, col = hub_graph(DEGREES, n_src=30, seed=2)
    x = torch.randn(30, 9, dtype=torch.float64)
    mask = (torch.rand(30) < 0.5) if with_mask else None
    for reduce in ("sum", "mean"):
        compare(emu, rowptr, col, x, mask, None, reduce, 16, torch.float64)


def test_nan_in_masked_rows_is_never_read(emu):
    rowptr, col = hub_graph(DEGREES, n_src=30, seed=4)
    mask = torch.rand(30) < 0.5
    x_ref = torch.randn(30, 35, dtype=torch.float64)
    x_ref[~mask] = 0
    x = x_ref.clone()
    x[~mask] = float("nan")
    value = torch.rand(col.numel(), dtype=torch.float64) + 0.1
    for reduce in ("sum", "mean"):
        _, _, grad_x, _ = compare(emu, rowptr, col, x, mask, value, reduce, 16, torch.float64,
                                  x_ref=x_ref)
        assert (grad_x[~mask] == 0).all()


def test_zero_weight_sum_is_exactly_zero(emu):
    # Row 0: present sources with weights summing to 0, one of them inf. Row 1: all weights 0.
    # Row 2 (40 edges, split at chunk 16): weights +-1 cancelling across chunks.
    # Row 3: an ordinary row. "mean" must output exactly 0 on rows 0-2 (not inf * 0 = NaN),
    # pass them no x-gradient, and give their weights only the weight-sum gradient.
    n_src, F = 8, 5
    cols = [[0, 1, 2], [3, 4], [1, 2] * 20, [1, 3, 5]]
    weights = [[1.0, -0.5, -0.5], [0.0, 0.0], [1.0, -1.0] * 20, [0.5, 1.0, 2.0]]
    rowptr = torch.tensor([0] + list(torch.tensor([len(c) for c in cols]).cumsum(0)))
    col = torch.tensor(sum(cols, []))
    value = torch.tensor(sum(weights, []), dtype=torch.float64)
    x = torch.randn(n_src, F, dtype=torch.float64)
    x[0] = float("inf")
    gen = torch.Generator().manual_seed(5)
    g_out = torch.randn(4, F, generator=gen, dtype=torch.float64)
    g_out[0] = float("inf")  # no gradient may flow from a zero row, whatever its grad_out
    g_ws = torch.randn(4, generator=gen, dtype=torch.float64)
    out, wsum, grad_x, grad_value = run_emulated(emu, rowptr, col, x, None, value, "mean",
                                                 g_out, g_ws, chunk=16)
    assert (wsum[:3] == 0).all()
    assert (out[:3] == 0).all() and torch.isfinite(out).all()
    ref_out, _ = masked_spmm_reference(rowptr, col, x, None, value, "mean")
    torch.testing.assert_close(out, ref_out)
    zero_rows = rowptr[3]  # edges of rows 0-2
    torch.testing.assert_close(grad_value[:zero_rows],
                               g_ws.repeat_interleave(rowptr.diff())[:zero_rows])
    # grad_x only from row 3: x_j gets value * g_out[3] / wsum[3] per edge.
    want = torch.zeros_like(x)
    want.index_add_(0, col[rowptr[3]:], value[rowptr[3]:, None] * g_out[3] / wsum[3])
    torch.testing.assert_close(grad_x, want)
    # The CPU kernel agrees (the definition does not depend on the device).
    from pyg_mmrec.ops import WITH_EXT, masked_spmm
    if WITH_EXT:
        cpu_out, _ = masked_spmm(rowptr, col, x, None, value, "mean")
        assert (cpu_out[:3] == 0).all()
        xg = x.clone().requires_grad_()
        vg = value.clone().requires_grad_()
        o, w = masked_spmm(rowptr, col, xg, None, vg, "mean")
        ((o * g_out).sum() + (w * g_ws).sum()).backward()
        torch.testing.assert_close(xg.grad, want)
        torch.testing.assert_close(vg.grad, grad_value)


def test_hub_rows_are_spread_over_warps(emu):
    # A power-law graph: a few rows hold most edges. Exact agreement needs the partial sums of
    # every chunk; the number of warp exchanges shows the extra chunks were launched as warps.
    gen = torch.Generator().manual_seed(6)
    degrees = [0] * 5 + [3] * 20 + [600, 1200]
    rowptr, col = hub_graph(degrees, n_src=50, seed=6)
    x = torch.randn(50, 16, dtype=torch.float64, generator=gen)
    value = torch.rand(col.numel(), dtype=torch.float64, generator=gen)
    extra = emu.extra_ptr(rowptr, DEFAULT_CHUNK)
    assert extra[-1].item() == (600 - 1) // 256 + (1200 - 1) // 256
    compare(emu, rowptr, col, x, None, value, "mean", DEFAULT_CHUNK, torch.float64)


def test_divergent_shuffle_fails_the_launch(emu, tmp_path):
    # The emulator itself: a kernel whose lanes return while others shuffle must be reported.
    source = KERNEL.read_text().replace(
        "if (e < b) edges(e, src, w);", "if (e < b) edges(e, src, w);\n    if (lane == 3) return;")
    assert source != KERNEL.read_text()
    bad = Emulated(build_emulator(source, opt="-O0"))  # tiny run: compile fast instead
    rowptr, col = hub_graph([5, 40], n_src=10)
    with pytest.raises(RuntimeError, match="divergence"):
        bad.forward(rowptr, col, torch.randn(10, 4), None, None, True, 16)


def test_planted_bug_is_caught(emu):
    # Reading every extra chunk one chunk too early double-counts the first chunk of split rows:
    # the comparison above must fail on it.
    good = KERNEL.read_text()
    source = good.replace("(w - extra_ptr[r] + 1) * chunk", "(w - extra_ptr[r]) * chunk")
    assert source != good
    bad = Emulated(build_emulator(source, opt="-O0"))
    rowptr, col = hub_graph(DEGREES, n_src=40)
    x = torch.randn(40, 7)
    value = torch.rand(col.numel()) + 0.1
    with pytest.raises(AssertionError):
        compare(bad, rowptr, col, x, None, value, "sum", 16, torch.float32)
