import subprocess
import sys

import pytest
import torch

from pyg_mmrec.ops import (
    EXT_DEVICES,
    WITH_EXT,
    csr_transpose,
    masked_spmm,
    masked_spmm_reference,
)
from pyg_mmrec.ops.masked_spmm import _csr_transpose_reference

requires_ext = pytest.mark.skipif(not WITH_EXT, reason="pyg_mmrec._C is not built")


@pytest.fixture(autouse=True)
def _cuda_needs_kernels(request):
    # On CUDA the compiled kernels are under test, not the reference fallback.
    device = request.node.funcargs.get("device")
    if device is not None and device.type == "cuda" and "cuda" not in EXT_DEVICES:
        pytest.fail("CUDA is available but pyg_mmrec._C has no CUDA kernels (rebuild it)")


def random_csr(n_dst, n_src, num_edges, index_dtype=torch.long, empty_rows=True, device="cpu"):
    """Random CSR graph with duplicate edges and (optionally) some rows without edges."""
    row = torch.randint(0, n_dst, (num_edges,))
    if empty_rows:  # rows 0 and n_dst // 2 never receive edges
        row = row[(row != 0) & (row != n_dst // 2)]
    col = torch.randint(0, n_src, (row.numel(),))
    row, order = row.sort(stable=True)
    col = col[order]
    rowptr = torch.zeros(n_dst + 1, dtype=torch.long)
    rowptr[1:] = torch.bincount(row, minlength=n_dst).cumsum(0)
    return rowptr.to(index_dtype).to(device), col.to(index_dtype).to(device)


def make_inputs(dtype=torch.float64, index_dtype=torch.long, n_dst=30, n_src=25, num_edges=200,
                feat=7, with_mask=True, with_value=True, device="cpu"):
    rowptr, col = random_csr(n_dst, n_src, num_edges, index_dtype, device=device)
    x = torch.randn(n_src, feat, dtype=dtype, device=device)
    mask = (torch.rand(n_src, device=device) < 0.6) if with_mask else None
    value = (torch.rand(col.numel(), dtype=dtype, device=device) + 0.1) if with_value else None
    return rowptr, col, x, mask, value


def run_with_grads(fn, rowptr, col, x, mask, value, reduce, **kwargs):
    x = x.detach().clone().requires_grad_()
    value = value.detach().clone().requires_grad_() if value is not None else None
    out, wsum = fn(rowptr, col, x, mask, value, reduce, **kwargs)
    gen = torch.Generator(device="cpu").manual_seed(1)
    g_out = torch.randn(out.shape, generator=gen, dtype=out.dtype).to(out.device)
    g_ws = torch.randn(wsum.shape, generator=gen, dtype=wsum.dtype).to(wsum.device)
    ((out * g_out).sum() + (wsum * g_ws).sum()).backward()
    return out, wsum, x.grad, (value.grad if value is not None else None)


def assert_close_all(a, b, **tol):
    for p, q in zip(a, b):
        if p is None or q is None:
            assert p is None and q is None
        else:
            torch.testing.assert_close(p, q, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("reduce", ["sum", "mean"])
@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("with_value", [False, True])
def test_matches_reference(device, dtype, index_dtype, reduce, with_mask, with_value):
    inputs = make_inputs(dtype, index_dtype, with_mask=with_mask, with_value=with_value,
                         device=device)
    got = run_with_grads(masked_spmm, *inputs, reduce)
    want = run_with_grads(masked_spmm_reference, *inputs, reduce)
    assert got[0].shape == (30, 7) and got[1].shape == (30,)
    assert_close_all(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("feat", [0, 1, 32, 64, 70, 130])
def test_feature_widths(device, dtype, feat):
    # The CPU kernels work on 256-byte feature blocks plus a tail, the CUDA ones on blocks of
    # 32, 64 or 128 features: cover both and F == 0.
    inputs = make_inputs(dtype, feat=feat, device=device)
    got = run_with_grads(masked_spmm, *inputs, "mean")
    want = run_with_grads(masked_spmm_reference, *inputs, "mean")
    assert_close_all(got, want)


ISA_SCRIPT = """
import torch
from pyg_mmrec.ops import masked_spmm, masked_spmm_reference
torch.manual_seed(0)
for dtype in (torch.float32, torch.float64):
    for feat in (7, 70):
        rowptr = torch.tensor([0, 3, 3, 7, 12])
        col = torch.tensor([0, 1, 5, 2, 2, 3, 4, 0, 1, 2, 3, 5])
        x = torch.randn(6, feat, dtype=dtype, requires_grad=True)
        v = torch.rand(12, dtype=dtype, requires_grad=True)
        m = torch.tensor([True, False, True, True, False, True])
        res = []
        for fn in (masked_spmm, masked_spmm_reference):
            out, ws = fn(rowptr, col, x, m, v, "mean")
            res.append((out, ws, *torch.autograd.grad(out.square().sum() + ws.sum(), (x, v))))
        for a, b in zip(*res):
            torch.testing.assert_close(a, b)
"""


@requires_ext
def test_baseline_cpu_code_path():
    # The CPU kernels are compiled for several instruction sets (baseline x86-64, AVX2,
    # AVX-512) and picked at run time; the other tests run the best one, this the portable one.
    env = {"PYG_MMREC_CPU_ISA": "baseline", "OMP_NUM_THREADS": "2", "PATH": ""}
    subprocess.run([sys.executable, "-c", ISA_SCRIPT], check=True, env=env, timeout=120)


@requires_ext
def test_multithreaded_equals_single_threaded():
    # Rows are split into edge-balanced chunks handed out dynamically; each row is still
    # computed by one thread in the same order, so the results are bitwise equal.
    inputs = make_inputs(torch.float32, n_dst=3000, n_src=2000, num_edges=30000, feat=16)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run_with_grads(masked_spmm, *inputs, "mean")
        torch.set_num_threads(2)
        two = run_with_grads(masked_spmm, *inputs, "mean")
    finally:
        torch.set_num_threads(threads)
    assert_close_all(one, two, rtol=0, atol=0)


@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_cached_transpose_gives_same_gradients(device, reduce):
    rowptr, col, x, mask, value = make_inputs(device=device)
    csc = csr_transpose(rowptr, col, x.size(0))
    got = run_with_grads(masked_spmm, rowptr, col, x, mask, value, reduce, csc=csc)
    want = run_with_grads(masked_spmm, rowptr, col, x, mask, value, reduce)
    assert_close_all(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_csr_transpose(device, index_dtype):
    rowptr, col = random_csr(40, 33, 300, index_dtype, device=device)
    colptr, row_t, perm = csr_transpose(rowptr, col, 35)  # two sources without edges
    assert colptr.dtype == row_t.dtype == perm.dtype == index_dtype
    assert colptr.numel() == 36 and int(colptr[-1]) == col.numel()
    # Every CSC entry is the CSR edge perm[k]: same endpoints, sorted by source, stable.
    row = torch.repeat_interleave(torch.arange(40, device=device), rowptr.long().diff())
    assert torch.equal(row[perm.long()], row_t.long())
    src = torch.repeat_interleave(torch.arange(35, device=device), colptr.long().diff())
    assert torch.equal(col.long()[perm.long()], src)
    for a, b in zip((colptr, row_t, perm), _csr_transpose_reference(rowptr, col, 35)):
        assert torch.equal(a, b)


def test_empty_rows_all_masked_rows_and_duplicates(device):
    # row 0: no edge; row 1: only masked sources; row 2: duplicate edge 1->2 twice plus source 0
    rowptr = torch.tensor([0, 0, 2, 5], device=device)
    col = torch.tensor([1, 3, 2, 2, 0], device=device)
    x = torch.arange(12, dtype=torch.float64, device=device).view(4, 3)
    mask = torch.tensor([True, False, True, False], device=device)
    value = torch.tensor([1.0, 2.0, 0.5, 0.25, 1.0], dtype=torch.float64, device=device)
    out, wsum = masked_spmm(rowptr, col, x, mask, value, "sum")
    torch.testing.assert_close(wsum, torch.tensor([0.0, 0.0, 1.75], dtype=torch.float64,
                                                  device=device))
    torch.testing.assert_close(out[2], 0.75 * x[2] + x[0])
    assert out[:2].abs().sum() == 0
    out_mean, _ = masked_spmm(rowptr, col, x, mask, value, "mean")
    torch.testing.assert_close(out_mean[2], (0.75 * x[2] + x[0]) / 1.75)
    assert out_mean[:2].abs().sum() == 0


@pytest.mark.parametrize("fn", [masked_spmm, masked_spmm_reference])
def test_missing_rows_never_leak(device, fn):
    rowptr, col, x, mask, value = make_inputs(torch.float32, device=device)
    x[~mask] = float("nan")  # a missing modality may hold garbage
    x.requires_grad_()
    out, _ = fn(rowptr, col, x, mask, value, "mean")
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad[~mask] == 0).all()


def test_mean_of_weights_summing_to_zero_is_zero(device):
    # Row 0: weights cancelling, with an inf source row; row 1: an ordinary row. Row 0 outputs
    # exactly 0 (not inf * 0 = NaN), passes no x-gradient and its weights get only the
    # weight-sum gradient, as in the reference.
    rowptr = torch.tensor([0, 2, 4], device=device)
    col = torch.tensor([0, 1, 1, 2], device=device)
    x = torch.randn(3, 4, dtype=torch.float64, device=device)
    x[0] = float("inf")
    value = torch.tensor([1.0, -1.0, 0.5, 2.0], dtype=torch.float64, device=device)
    g_out = torch.randn(2, 4, dtype=torch.float64, device=device)
    g_out[0] = float("inf")
    g_ws = torch.randn(2, dtype=torch.float64, device=device)
    for fn in (masked_spmm, masked_spmm_reference):
        xg, vg = x.clone().requires_grad_(), value.clone().requires_grad_()
        out, wsum = fn(rowptr, col, xg, None, vg, "mean")
        assert wsum[0].item() == 0 and (out[0] == 0).all() and torch.isfinite(out).all()
        ((out * g_out).sum() + (wsum * g_ws).sum()).backward()
        want_x = torch.zeros_like(x)
        want_x[1] = 0.5 * g_out[1] / 2.5
        want_x[2] = 2.0 * g_out[1] / 2.5
        torch.testing.assert_close(xg.grad, want_x)
        if fn is masked_spmm:  # autograd through the reference's inf * 0 message gives NaN
            assert (vg.grad[:2] == g_ws[0]).all() and torch.isfinite(vg.grad).all()


@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_non_contiguous_inputs(device, reduce):
    rowptr, col, x, mask, value = make_inputs(n_src=25, feat=6, device=device)
    x_nc = torch.randn(6, 25, dtype=torch.float64, device=device).t()  # column-major view
    x_nc.copy_(x)
    col_nc = torch.stack([col, col], dim=1)[:, 0]  # stride 2
    value_nc = torch.stack([value, value], dim=1)[:, 1]
    mask_nc = torch.stack([mask, mask], dim=1)[:, 0]
    rowptr_nc = torch.stack([rowptr, rowptr], dim=1)[:, 0]
    assert not (x_nc.is_contiguous() or col_nc.is_contiguous() or value_nc.is_contiguous())
    got = run_with_grads(masked_spmm, rowptr_nc, col_nc, x_nc, mask_nc, value_nc, reduce)
    want = run_with_grads(masked_spmm_reference, rowptr, col, x, mask, value, reduce)
    assert_close_all(got, want)


def test_zero_edges_and_zero_rows(device):
    x = torch.randn(4, 3, device=device, requires_grad=True)
    empty = torch.zeros(0, dtype=torch.long, device=device)
    out, wsum = masked_spmm(torch.zeros(3, dtype=torch.long, device=device), empty, x)
    assert out.shape == (2, 3) and (out == 0).all() and (wsum == 0).all()
    out.sum().backward()
    assert (x.grad == 0).all()
    out, wsum = masked_spmm(torch.zeros(1, dtype=torch.long, device=device), empty, x)
    assert out.shape == (0, 3) and wsum.shape == (0,)


@requires_ext
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16bit_close_to_float32(device, dtype):
    # Accumulated in float by both backends: the error is the rounding of inputs and outputs.
    rowptr, col, x, mask, value = make_inputs(torch.float32, feat=40, num_edges=600,
                                              device=device)
    x, value = x.to(dtype).float(), value.to(dtype).float()  # the same rounded inputs
    g_out = torch.randn(rowptr.numel() - 1, 40, device=device).to(dtype)
    g_ws = torch.randn(rowptr.numel() - 1, device=device).to(dtype)
    results = []
    for fn, t in ((masked_spmm, dtype), (masked_spmm_reference, torch.float32)):
        xg, vg = x.to(t).requires_grad_(), value.to(t).requires_grad_()
        out, wsum = fn(rowptr, col, xg, mask, vg, "mean")
        assert out.dtype == t
        ((out * g_out.to(t)).sum() + (wsum * g_ws.to(t)).sum()).backward()
        results.append((out, wsum, xg.grad, vg.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a.float(), b, atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_hub_rows_and_long_columns(device, reduce):
    # Rows and sources with hundreds of edges (split into several chunks by the CUDA kernels)
    # next to empty and one-edge rows.
    gen = torch.Generator().manual_seed(7)
    degrees = torch.tensor([0, 1, 33, 700, 0, 3, 1500, 2])
    rowptr = torch.zeros(9, dtype=torch.long)
    rowptr[1:] = degrees.cumsum(0)
    # Half the edges point at source 0: a source hub for the backward pass w.r.t. x.
    col = torch.where(torch.rand(int(degrees.sum()), generator=gen) < 0.5, 0,
                      torch.randint(0, 60, (int(degrees.sum()),), generator=gen))
    x = torch.randn(60, 150, dtype=torch.float64, generator=gen)
    mask = torch.rand(60, generator=gen) < 0.8
    mask[0] = True
    value = torch.rand(col.numel(), dtype=torch.float64, generator=gen) + 0.1
    inputs = [t.to(device) for t in (rowptr, col, x, mask, value)]
    got = run_with_grads(masked_spmm, *inputs, reduce)
    want = run_with_grads(masked_spmm_reference, *inputs, reduce)
    assert_close_all(got, want)


@pytest.mark.parametrize("reduce", ["sum", "mean"])
@pytest.mark.parametrize("fn", [masked_spmm, masked_spmm_reference])
def test_gradcheck(device, reduce, fn):
    rowptr, col, x, mask, value = make_inputs(n_dst=8, n_src=7, num_edges=30, feat=3,
                                              device=device)
    x.requires_grad_()
    value.requires_grad_()
    assert torch.autograd.gradcheck(lambda x, v: fn(rowptr, col, x, mask, v, reduce), (x, value))


@requires_ext
@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_opcheck(device, reduce):
    rowptr, col, x, mask, value = make_inputs(n_dst=8, n_src=7, num_edges=30, feat=3,
                                              device=device)
    csc = csr_transpose(rowptr, col, x.size(0))
    op = torch.ops.pyg_mmrec.masked_spmm
    samples = [
        (rowptr, col, x.requires_grad_(), mask, value.requires_grad_(), reduce, *csc),
        (rowptr, col, x, None, None, reduce, None, None, None),
    ]
    for args in samples:
        torch.library.opcheck(op, args)
    torch.library.opcheck(torch.ops.pyg_mmrec.csr_transpose, (rowptr, col, x.size(0)))


def test_torch_compile_fullgraph():
    rowptr, col, x, mask, value = make_inputs(torch.float32)
    csc = csr_transpose(rowptr, col, x.size(0))

    def layer(x, value):
        h, _ = masked_spmm(rowptr, col, x, mask, value, "mean", csc=csc)
        return torch.tanh(h).sum()

    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    x1 = x.clone().requires_grad_()
    v1 = value.clone().requires_grad_()
    loss = compiled(x1, v1)
    loss.backward()
    x2 = x.clone().requires_grad_()
    v2 = value.clone().requires_grad_()
    ref = layer(x2, v2)
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(x1.grad, x2.grad)
    torch.testing.assert_close(v1.grad, v2.grad)


def test_import_without_extension():
    code = ("import torch; import pyg_mmrec.ops as o; assert not o.WITH_EXT; "
            "out, w = o.masked_spmm(torch.tensor([0, 1]), torch.tensor([0]), torch.ones(1, 2)); "
            "assert out.tolist() == [[1.0, 1.0]]")
    env = {"PYG_MMREC_DISABLE_EXT": "1", "OMP_NUM_THREADS": "1", "PATH": ""}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


# ------------------------------------------------------------------------------------------
# Bad input: the public function (Python checks, also guarding the fallback), the reference,
# and the compiled ops called directly (C++ TORCH_CHECK_VALUE) all raise a ValueError naming
# the argument.

def _bad_cases():
    rowptr, col, x, mask, value = make_inputs(torch.float32)
    n = x.size(0)
    return {
        "mask_length": (dict(mask=torch.ones(n + 1, dtype=torch.bool)), "mask"),
        "float_mask": (dict(mask=torch.ones(n)), "mask"),
        "value_length": (dict(value=torch.ones(col.numel() - 1)), "value"),
        "value_dtype": (dict(value=torch.ones(col.numel(), dtype=torch.float64)), "value"),
        "rowptr_not_monotone": (dict(rowptr=rowptr.flip(0)), "rowptr"),
        "rowptr_bad_end": (dict(rowptr=torch.cat([rowptr[:-1], rowptr[-1:] - 1])), "rowptr"),
        "col_out_of_range": (dict(col=col + n), "col"),
        "col_negative": (dict(col=col - n), "col"),
        "index_dtype_mismatch": (dict(col=col.int()), "col"),
        "float_rowptr": (dict(rowptr=rowptr.float()), "rowptr"),
        "x_1d": (dict(x=x[:, 0]), "x"),
        "x_integer": (dict(x=x.long()), "x"),
        "device_mismatch": (dict(x=x.to("meta")), "x"),
    }, dict(rowptr=rowptr, col=col, x=x, mask=mask, value=value)


BAD = list(_bad_cases()[0])


@pytest.mark.parametrize("case", BAD)
@pytest.mark.parametrize("fn", ["masked_spmm", "reference", "cpp"])
def test_bad_input_names_argument(case, fn):
    cases, good = _bad_cases()
    override, name = cases[case]
    args = {**good, **override}
    if fn == "cpp":
        if not WITH_EXT:
            pytest.skip("pyg_mmrec._C is not built")
        if case == "device_mismatch":
            pytest.skip("the dispatcher routes by device before the checks run")
        call = lambda: torch.ops.pyg_mmrec.masked_spmm(  # noqa: E731
            args["rowptr"], args["col"], args["x"], args["mask"], args["value"], "mean")
    else:
        f = masked_spmm if fn == "masked_spmm" else masked_spmm_reference
        call = lambda: f(**args)  # noqa: E731
    with pytest.raises(ValueError, match=f"`{name}`"):
        call()


def test_bad_reduce_and_csc():
    rowptr, col, x, mask, value = make_inputs(torch.float32)
    with pytest.raises(ValueError, match="`reduce`"):
        masked_spmm(rowptr, col, x, mask, value, reduce="max")
    colptr, row_t, perm = csr_transpose(rowptr, col, x.size(0))
    with pytest.raises(ValueError, match="`colptr`"):
        masked_spmm(rowptr, col, x, csc=(colptr[:-1], row_t, perm))
    with pytest.raises(ValueError, match="`csc`"):
        masked_spmm(rowptr, col, x, csc=(colptr, row_t))


@requires_ext
def test_cpp_backward_checks():
    rowptr, col, x, mask, value = make_inputs(torch.float32)
    colptr, row_t, perm = csr_transpose(rowptr, col, x.size(0))
    g = torch.randn(rowptr.numel() - 1, x.size(1))
    bwd_x = torch.ops.pyg_mmrec.masked_spmm_backward_x
    with pytest.raises(ValueError, match="`row_t`"):
        bwd_x(colptr, row_t + 1000, perm, g, mask, value, None, False)
    with pytest.raises(ValueError, match="`weight_sum`"):
        bwd_x(colptr, row_t, perm, g, mask, value, None, True)
    with pytest.raises(ValueError, match="`num_src`"):
        torch.ops.pyg_mmrec.csr_transpose(rowptr, col, -1)
    out, wsum = masked_spmm(rowptr, col, x, mask, value, "sum")
    with pytest.raises(ValueError, match="`grad_out`"):
        torch.ops.pyg_mmrec.masked_spmm_backward_value(rowptr, col, x, g[1:], None, mask, out,
                                                       wsum, False)


# ------------------------------------------------------------------------------------------
# The trusted path: graphs validated once (to_csr) skip the data checks, forward and backward.

class _RecordOps(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the pyg_mmrec ops called (with their arguments)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.name())
        if name.startswith("pyg_mmrec::"):
            self.calls.append((name.split("::")[1], args))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("reduce", ["sum", "mean"])
@pytest.mark.parametrize("with_csc", [False, True])
def test_trusted_gives_the_same_values_and_gradients(device, reduce, with_csc):
    rowptr, col, x, mask, value = make_inputs(torch.float32, device=device)
    kw = {"csc": csr_transpose(rowptr, col, x.size(0))} if with_csc else {}
    checked = run_with_grads(masked_spmm, rowptr, col, x, mask, value, reduce, **kw)
    trusted = run_with_grads(masked_spmm, rowptr, col, x, mask, value, reduce, trusted=True, **kw)
    for a, b in zip(checked, trusted):
        assert torch.equal(a, b)


@requires_ext
def test_trusted_calls_the_kernels_without_data_checks():
    rowptr, col, x, mask, value = make_inputs(torch.float32)
    names = {}
    for trusted in (False, True):
        xg = x.clone().requires_grad_()
        vg = value.clone().requires_grad_()
        with _RecordOps() as rec:
            out, _ = masked_spmm(rowptr, col, xg, mask, vg, "mean", trusted=trusted)
            out.sum().backward()
        names[trusted] = [n for n, _ in rec.calls]
    assert names[False] == ["masked_spmm", "csr_transpose", "masked_spmm_backward_x",
                            "masked_spmm_backward_value"]
    # the public forward (shape checks only), then the backward kernels directly
    assert names[True] == ["masked_spmm", "_csr_transpose_kernel",
                           "_masked_spmm_backward_x_kernel", "_masked_spmm_backward_value_kernel"]
    # the value checks are skipped (a pointer not starting at 0 but within bounds runs) ...
    shifted = torch.tensor([1, 2, 3]), torch.tensor([0, 1, 1])
    x2 = torch.randn(2, 3)
    with pytest.raises(ValueError, match="`rowptr` must start at 0"):
        masked_spmm(*shifted, x2, reduce="sum")
    out, _ = masked_spmm(*shifted, x2, reduce="sum", trusted=True)
    assert torch.equal(out, x2[[1, 1]])
    # ... the shape, dtype and device checks are not
    with pytest.raises(ValueError, match="`mask`"):
        torch.ops.pyg_mmrec.masked_spmm(*shifted, x2, torch.ones(3, dtype=torch.bool), None,
                                        "sum", None, None, None, True)
    with pytest.raises(ValueError, match="`col`"):
        torch.ops.pyg_mmrec.masked_spmm(shifted[0], shifted[1].int(), x2, None, None, "sum",
                                        None, None, None, True)


@requires_ext
def test_opcheck_trusted():
    rowptr, col, x, mask, value = make_inputs(n_dst=8, n_src=7, num_edges=30, feat=3)
    csc = csr_transpose(rowptr, col, x.size(0))
    torch.library.opcheck(torch.ops.pyg_mmrec.masked_spmm,
                          (rowptr, col, x.requires_grad_(), mask, value.requires_grad_(), "mean",
                           *csc, True))
    torch.library.opcheck(torch.ops.pyg_mmrec._masked_spmm_kernel,
                          (rowptr, col, x.detach(), mask, value.detach(), True))
