"""pyg_mmrec.ops.lazy_adam: the compiled row update of lazy Adam against its torch-op reference
and against torch.optim.Adam on the touched rows."""
import pytest
import torch

from pyg_mmrec.ops.lazy_adam import (
    LAZY_ADAM_DEVICES,
    lazy_adam_rows_,
    lazy_adam_rows_reference,
)

requires_kernel = pytest.mark.skipif("cpu" not in LAZY_ADAM_DEVICES,
                                     reason="pyg_mmrec._C has no lazy_adam_rows_ kernel")
KW = dict(step_size=0.05, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.01, bc2_sqrt=0.3)


def tables(n_rows=40, f=7, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n_rows, f, generator=g, dtype=torch.float64).to(dtype),
            torch.randn(n_rows, f, generator=g, dtype=torch.float64).to(dtype),
            torch.rand(n_rows, f, generator=g, dtype=torch.float64).to(dtype)]


def gradient(n_rows=40, n=60, f=7, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    # rows 0..n_rows/2 only, with repeats: half of the table must stay untouched
    idx = torch.randint(0, n_rows // 2, (n,), generator=g)
    return idx, torch.randn(n, f, generator=g, dtype=torch.float64).to(dtype)


def by_hand(p, m, v, idx, val, step_size, beta1, beta2, eps, weight_decay, bc2_sqrt):
    """Row by row in float64 (the contract of csrc/lazy_adam.cpp)."""
    p, m, v = p.double().clone(), m.double().clone(), v.double().clone()
    for r in idx.unique().tolist():
        g = val.double()[idx == r].sum(0) + weight_decay * p[r]
        m[r] = m[r] + (1 - beta1) * (g - m[r])
        v[r] = beta2 * v[r] + (1 - beta2) * g * g
        p[r] = p[r] - step_size * m[r] / (v[r].sqrt() / bc2_sqrt + eps)
    return p, m, v


@pytest.mark.parametrize("impl", ["op", "reference"])
def test_rows_match_the_contract_and_others_stay(impl, device):
    # "op" is what LazyAdam calls: the kernel where one exists, else the reference
    fn = lazy_adam_rows_ if impl == "op" else lazy_adam_rows_reference
    p, m, v = [t.to(device) for t in tables()]
    before = [t.clone() for t in (p, m, v)]
    idx, val = [t.to(device) for t in gradient()]
    expected = by_hand(p, m, v, idx, val, **KW)
    fn(p, m, v, idx, val, **KW)
    for got, want, old in zip((p, m, v), expected, before, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        untouched = torch.ones(p.size(0), dtype=torch.bool, device=device)
        untouched[idx] = False
        assert untouched.sum() >= p.size(0) // 2
        assert torch.equal(got[untouched], old[untouched])


@requires_kernel
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12),
                                       (torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("f", [0, 1, 7, 33, 130])
def test_kernel_equals_reference(dtype, tol, f):
    p, m, v = tables(f=f, dtype=dtype)
    idx, val = gradient(f=f, dtype=dtype)
    a, b = [t.clone() for t in (p, m, v)], [t.clone() for t in (p, m, v)]
    lazy_adam_rows_(*a, idx, val, **KW)
    lazy_adam_rows_reference(*b, idx, val, **KW)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x.double(), y.double(), rtol=tol, atol=tol)


@requires_kernel
def test_kernel_is_used_on_cpu(monkeypatch):
    called = []
    monkeypatch.setattr("pyg_mmrec.ops.lazy_adam.lazy_adam_rows_reference",
                        lambda *a, **k: called.append(1))
    p, m, v = tables()
    idx, val = gradient()
    lazy_adam_rows_(p, m, v, idx, val, **KW)
    assert not called
    lazy_adam_rows_(p.t().contiguous().t(), m, v, idx, val, **KW)  # not contiguous: reference
    assert called == [1]


@requires_kernel
def test_empty_gradient_changes_nothing():
    p, m, v = tables()
    before = [t.clone() for t in (p, m, v)]
    lazy_adam_rows_(p, m, v, torch.empty(0, dtype=torch.long), torch.empty(0, 7,
                    dtype=torch.float64), **KW)
    assert all(torch.equal(a, b) for a, b in zip((p, m, v), before, strict=True))


@requires_kernel
def test_opcheck():
    p, m, v = tables(dtype=torch.float32)
    idx, val = gradient(dtype=torch.float32)
    torch.library.opcheck(torch.ops.pyg_mmrec.lazy_adam_rows_,
                          (p, m, v, idx, val, 0.05, 0.9, 0.99, 1e-8, 0.01, 0.3))


@requires_kernel
@pytest.mark.parametrize("case,match", [
    ("range", r"`indices` must index the rows \[0, 40\)"),
    ("index_dtype", r"`indices` must be a 1-D int64"),
    ("values_shape", r"`values` must have shape \[60, 7\]"),
    ("values_dtype", r"`values` must have the dtype of `param`"),
    ("moment_shape", r"`exp_avg` must have the shape of `param`"),
    ("not_contiguous", r"`exp_avg_sq` must be contiguous"),
    ("betas", r"betas must be in \[0, 1\)"),
])
def test_bad_input_is_refused_before_the_kernel(case, match):
    p, m, v = tables()
    idx, val = gradient()
    args = dict(p=p, m=m, v=v, idx=idx, val=val, b1=0.9)
    if case == "range":
        args["idx"] = idx.clone().index_fill_(0, torch.tensor([3]), 40)
    elif case == "index_dtype":
        args["idx"] = idx.int()
    elif case == "values_shape":
        args["val"] = val[:, :5]
    elif case == "values_dtype":
        args["val"] = val.float()
    elif case == "moment_shape":
        args["m"] = m[:-1]
    elif case == "not_contiguous":
        args["v"] = torch.rand(7, 40, dtype=torch.float64).t()
    elif case == "betas":
        args["b1"] = 1.0
    before = p.clone()
    with pytest.raises(ValueError, match=match):
        torch.ops.pyg_mmrec.lazy_adam_rows_(args["p"], args["m"], args["v"], args["idx"],
                                            args["val"], 0.05, args["b1"], 0.99, 1e-8, 0.0, 0.3)
    assert torch.equal(p, before)


def test_lazy_adam_over_an_embedding_equals_adam_on_the_touched_rows():
    """Through the optimiser: a sparse Embedding stepped twice with LazyAdam equals
    torch.optim.Adam on a dense copy where every row is touched each step."""
    from pyg_mmrec.train.optim import LazyAdam
    torch.manual_seed(0)
    emb = torch.nn.Embedding(12, 5, sparse=True, dtype=torch.float64)
    ref = torch.nn.Parameter(emb.weight.detach().clone())
    opt, ref_opt = LazyAdam(emb.parameters(), lr=0.1), torch.optim.Adam([ref], lr=0.1)
    rows = torch.tensor([0, 3, 3, 11, 5, 0, 1, 2, 4, 6, 7, 8, 9, 10])  # every row, repeats
    for _ in range(2):
        opt.zero_grad(), ref_opt.zero_grad()
        target = torch.randn(rows.numel(), 5, dtype=torch.float64)
        (emb(rows) * target).sum().backward()
        (ref[rows] * target).sum().backward()
        opt.step(), ref_opt.step()
    torch.testing.assert_close(emb.weight.detach(), ref.detach(), rtol=1e-10, atol=1e-12)
