"""static_linear: x W + b of a constant input, computed from a power-of-two scaled copy."""
import pytest
import torch

from pyg_mmrec.models._static_linear import StaticInputCache, input_scale, static_linear


def _inputs(tiny):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 12, generator=g)
    if tiny:  # numerically-zero entries whose products with small numbers are subnormal
        x[x.abs() < 0.4] = 1e-37
    w = torch.randn(12, 5, generator=g).requires_grad_()
    b = torch.randn(5, generator=g).requires_grad_()
    return x, w, b


@pytest.mark.parametrize("tiny", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_plain_product_and_gradients(tiny, with_bias):
    x, w, b = _inputs(tiny)
    b = b if with_bias else None
    grad = torch.randn(50, 5) * 1e-9
    y = static_linear(x, w, b, StaticInputCache(), "x")
    ref = x @ w if b is None else torch.addmm(b, x, w)
    torch.testing.assert_close(y, ref)
    params = [w] if b is None else [w, b]
    for a, r in zip(torch.autograd.grad(y, params, grad), torch.autograd.grad(ref, params, grad)):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-20)


def test_gradcheck_float64():
    x, w, b = _inputs(True)
    w64, b64 = w.detach().double().requires_grad_(), b.detach().double().requires_grad_()
    assert torch.autograd.gradcheck(lambda w_, b_: static_linear(x.double(), w_, b_),
                                    (w64, b64))


def test_scale_is_a_bounded_power_of_two():
    assert input_scale(torch.zeros(3, 3)) == 1.0
    assert input_scale(torch.full((2, 2), 1e30)) == 1.0  # large inputs are not scaled
    assert input_scale(torch.tensor([[0.25, -1e-37]])) == 2.0 ** 62
    assert input_scale(torch.tensor([[2.0 ** -10]])) == 2.0 ** 64  # capped
    s = input_scale(torch.tensor([[4.0]]))
    assert s == 2.0 ** 58 and 4.0 * s <= 2.0 ** 60


def test_cache_rebuilds_on_new_or_modified_input():
    cache = StaticInputCache()
    x, w, _ = _inputs(False)
    first = cache.get("k", x)[0]
    assert cache.get("k", x)[0] is first  # hit
    x.mul_(2.0)  # in-place change bumps the version
    second = cache.get("k", x)[0]
    assert second is not first
    torch.testing.assert_close(static_linear(x, w, None, cache, "k"), x @ w)
    assert cache.get("k", x.clone())[0] is not second  # another tensor


def test_input_requiring_grad_uses_plain_product():
    x, w, b = _inputs(False)
    x.requires_grad_()
    y = static_linear(x, w, b)
    (gx,) = torch.autograd.grad(y.sum(), [x])
    torch.testing.assert_close(gx, w.sum(1).expand(50, 12).detach())


def test_dtype_mismatch_raises():
    x, w, _ = _inputs(False)
    with pytest.raises(ValueError, match="dtype"):
        static_linear(x.double(), w)
