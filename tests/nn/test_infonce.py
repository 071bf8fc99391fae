import math

import pytest
import torch

from pyg_mmrec.nn.infonce import InfoNCE


def hand_loss(a, b, tau):
    """Row-by-row InfoNCE with cosine similarity, in plain Python."""
    def cos(u, v):
        return sum(x * y for x, y in zip(u, v)) / math.sqrt(
            sum(x * x for x in u) * sum(y * y for y in v))
    total = 0.0
    for i, ai in enumerate(a):
        sims = [cos(ai, bj) / tau for bj in b]
        total += -(sims[i] - math.log(sum(math.exp(s) for s in sims)))
    return total / len(a)


A = [[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]
B = [[1.0, 1.0], [0.0, 1.0], [-1.0, 2.0]]
C = [[3.0, -1.0], [1.0, 0.5], [0.2, 1.0]]


def test_matches_hand_computation(device):
    tau = 0.5
    got = InfoNCE(temperature=tau)(torch.tensor(A, device=device), torch.tensor(B, device=device))
    assert got.item() == pytest.approx(hand_loss(A, B, tau), rel=1e-5)
    # identity views, tau = 1: every row gives log(1 + e^-1)
    eye = torch.eye(2, device=device)
    assert InfoNCE(temperature=1.0)(eye, eye).item() == pytest.approx(math.log(1 + math.exp(-1)))


def test_symmetric_and_multi_view_averaging():
    tau = 0.3
    a, b, c = map(torch.tensor, (A, B, C))
    sym = InfoNCE(temperature=tau, symmetric=True)(a, b)
    assert sym.item() == pytest.approx(0.5 * (hand_loss(A, B, tau) + hand_loss(B, A, tau)), rel=1e-5)
    views = (A, B, C)
    pairs = [hand_loss(views[i], views[j], tau) for i in range(3) for j in range(3) if i != j]
    nce = InfoNCE(temperature=tau)
    assert nce.multi_view([a, b, c]).item() == pytest.approx(sum(pairs) / 6, rel=1e-5)
    assert nce.multi_view(torch.stack([a, b, c])).item() == pytest.approx(sum(pairs) / 6, rel=1e-5)
    # two views: multi_view is the symmetric loss
    assert nce.multi_view([a, b]).item() == pytest.approx(
        InfoNCE(temperature=tau, symmetric=True)(a, b).item(), rel=1e-6)


def test_dot_product_variant_and_scale():
    a, b = torch.randn(6, 4), torch.randn(6, 4)
    cos = InfoNCE(temperature=1.0)
    assert torch.allclose(cos(a, b), cos(3 * a, 0.5 * b), atol=1e-6)  # cosine: scale-free
    dot = InfoNCE(temperature=1.0, normalize=False)
    expected = torch.nn.functional.cross_entropy(a @ b.t(), torch.arange(6))
    assert torch.allclose(dot(a, b), expected, atol=1e-6)


def test_aligned_views_score_lower_than_shuffled():
    a = torch.randn(32, 8)
    nce = InfoNCE(temperature=0.2)
    assert nce(a, a + 0.01 * torch.randn_like(a)) < nce(a, a[torch.randperm(32)])


def test_errors():
    with pytest.raises(ValueError, match="temperature"):
        InfoNCE(temperature=0.0)
    with pytest.raises(ValueError, match="same shape"):
        InfoNCE()(torch.randn(3, 2), torch.randn(4, 2))
    with pytest.raises(ValueError, match=r"\[N, d\]"):
        InfoNCE()(torch.randn(3), torch.randn(3))
    with pytest.raises(ValueError, match="at least 2 views"):
        InfoNCE().multi_view([torch.randn(3, 2)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("weighted", [False, True])
def test_fused_pair_equals_two_logsumexp(dtype, weighted, device):
    """The fused pair (one exponential for both directions, its own backward) against
    the plain-autograd pair: values and the gradients of a weighted sum of both."""
    torch.manual_seed(0)
    nce = InfoNCE(temperature=0.3)
    a = torch.nn.functional.normalize(torch.randn(40, 6, dtype=dtype, device=device), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(40, 6, dtype=dtype, device=device), dim=-1)
    weight = (torch.rand(40, device=device) > 0.3) if weighted else None
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    out, grads = [], []
    for fn in (nce._both_ways, nce._both_ways_autograd):
        x, y = a.clone().requires_grad_(), b.clone().requires_grad_()
        ab, ba = fn(x, y, weight)
        (0.7 * ab - 1.3 * ba).backward()
        out.append(torch.stack([ab, ba]).detach())
        grads.append((x.grad, y.grad))
    torch.testing.assert_close(out[0], out[1], **tol)
    for g, h in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(g, h, **tol)


def test_fused_pair_gradcheck_and_when_it_is_used(monkeypatch):
    from pyg_mmrec.nn import infonce
    a = torch.nn.functional.normalize(torch.randn(9, 3, dtype=torch.float64), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(9, 3, dtype=torch.float64), dim=-1)
    keep = (torch.arange(9) % 3 != 0).double()
    assert torch.autograd.gradcheck(
        lambda x, y: torch.stack(infonce._PairLoss.apply(x / 0.5, y, keep)),
        (a.clone().requires_grad_(), b.clone().requires_grad_()))
    calls = []
    monkeypatch.setattr(infonce._PairLoss, "apply", lambda *args: calls.append(1) or (
        torch.zeros(()), torch.zeros(())))
    InfoNCE(temperature=0.5)(a, b)
    assert calls == [1]
    InfoNCE(temperature=0.5, normalize=False)(a, b)  # unbounded similarities: plain autograd
    InfoNCE(temperature=0.01)(a, b)  # exp(S - max S) could underflow a whole row
    assert calls == [1]


def test_fused_pair_with_every_row_left_out_is_finite():
    a = torch.nn.functional.normalize(torch.randn(5, 3), dim=-1).requires_grad_()
    ab, ba = InfoNCE(temperature=0.5)._both_ways(a, a.detach(), torch.zeros(5, dtype=torch.bool))
    (ab + ba).backward()
    assert float(ab) == 0.0 and float(ba) == 0.0 and torch.isfinite(a.grad).all()
