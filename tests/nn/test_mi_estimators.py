import math

import pytest
import torch

from pyg_mmrec.nn.mi_estimators import CLUB, MINE


def gaussian_pair(n: int, d: int, rho: float, gen: torch.Generator):
    """x ~ N(0, I), y = rho x + sqrt(1 - rho^2) e: I(x; y) = -d/2 log(1 - rho^2)."""
    x = torch.randn(n, d, generator=gen)
    y = rho * x + math.sqrt(1 - rho ** 2) * torch.randn(n, d, generator=gen)
    return x, y


def fit(est, rho, d, steps, lr, gen, batch=256):
    opt = torch.optim.Adam(est.parameters(), lr=lr)
    for _ in range(steps):
        x, y = gaussian_pair(batch, d, rho, gen)
        loss = est.learning_loss(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return est


@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_club_upper_bounds_gaussian_mi(rho):
    gen = torch.Generator().manual_seed(1)
    d = 2
    true_mi = -0.5 * math.log(1 - rho ** 2) * d
    club = fit(CLUB(d, d, hidden_dim=32), rho, d, steps=150, lr=2e-2, gen=gen)
    x, y = gaussian_pair(4000, d, rho, gen)
    est = club.mi_upper_bound(x, y).item()
    assert est >= true_mi
    # with the exact conditional, vCLUB = d * rho^2 / (1 - rho^2): the fit gets there
    assert est == pytest.approx(d * rho ** 2 / (1 - rho ** 2), rel=0.1)


def test_club_near_zero_for_independent_variables():
    gen = torch.Generator().manual_seed(2)
    club = fit(CLUB(3, 3, hidden_dim=16), 0.0, 3, steps=100, lr=1e-2, gen=gen)
    x, y = gaussian_pair(4000, 3, 0.0, gen)
    assert abs(club.mi_upper_bound(x, y).item()) < 0.05


def test_club_closed_form_matches_all_pairs(device):
    club = CLUB(4, 3, hidden_dim=8).to(device)
    x, y = torch.randn(17, 4, device=device), torch.randn(17, 3, device=device)
    mu, log_var = club._moments(x, frozen=False)
    # log q(y_j | x_i) for all (i, j), without constants
    logq = -0.5 * ((y.unsqueeze(0) - mu.unsqueeze(1)).pow(2) / log_var.exp().unsqueeze(1)
                   + log_var.unsqueeze(1)).sum(-1)
    expected = logq.diagonal().mean() - logq.mean()
    assert torch.allclose(club.mi_upper_bound(x, y), expected, atol=1e-5)


def test_club_sampled_variant_is_unbiased_for_the_exact_one():
    club = CLUB(2, 2, hidden_dim=8, sample=True)
    exact = CLUB(2, 2, hidden_dim=8)
    exact.load_state_dict(club.state_dict())
    x, y = torch.randn(64, 2), torch.randn(64, 2)
    samples = torch.stack([club.mi_upper_bound(x, y) for _ in range(200)])
    # the all-pairs mean includes j = i, a random permutation has that weight too
    assert samples.mean().item() == pytest.approx(exact.mi_upper_bound(x, y).item(), abs=0.05)
    assert samples.std() > 0


def test_club_gradient_routing():
    club = CLUB(3, 2)
    x = torch.randn(10, 3, requires_grad=True)
    y = torch.randn(10, 2, requires_grad=True)
    club.mi_upper_bound(x, y).backward()
    assert x.grad is not None and y.grad is not None
    assert all(p.grad is None for p in club.parameters())  # estimator is a constant here

    x.grad = y.grad = None
    club.learning_loss(x, y).backward()
    assert x.grad is None and y.grad is None  # training the estimator never moves x, y
    assert all(p.grad is not None for p in club.parameters())


def test_club_learning_loss_is_gaussian_nll():
    club = CLUB(2, 2)
    x, y = torch.randn(5, 2), torch.randn(5, 2)
    mu, log_var = club._moments(x, frozen=False)
    dist = torch.distributions.Normal(mu, (0.5 * log_var).exp())
    assert torch.allclose(club.learning_loss(x, y), -dist.log_prob(y).sum(-1).mean(), atol=1e-5)


@pytest.mark.parametrize("cls", [CLUB, MINE])
def test_bad_inputs(cls):
    est = cls(3, 2)
    with pytest.raises(ValueError, match="x of shape"):
        est.learning_loss(torch.randn(4, 5), torch.randn(4, 2))
    with pytest.raises(ValueError, match="y of shape"):
        est.learning_loss(torch.randn(4, 3), torch.randn(4, 3))
    with pytest.raises(ValueError, match="same number of rows"):
        est.learning_loss(torch.randn(4, 3), torch.randn(5, 2))
    with pytest.raises(ValueError, match="at least 2"):
        est.learning_loss(torch.randn(1, 3), torch.randn(1, 2))
    with pytest.raises(ValueError, match="positive"):
        cls(0, 2)


def test_mine_lower_bounds_gaussian_mi():
    gen = torch.Generator().manual_seed(3)
    d, rho = 2, 0.8
    true_mi = -0.5 * math.log(1 - rho ** 2) * d
    mine = fit(MINE(d, d, hidden_dim=32), rho, d, steps=300, lr=3e-3, gen=gen)
    x, y = gaussian_pair(4000, d, rho, gen)
    est = mine.mi_lower_bound(x, y).item()
    assert 0.6 * true_mi < est < true_mi + 0.1


def test_mine_learning_loss_value_and_routing():
    mine = MINE(3, 2, ema_decay=0.9)
    x = torch.randn(32, 3, requires_grad=True)
    y = torch.randn(32, 2, requires_grad=True)
    torch.manual_seed(5)
    loss = mine.learning_loss(x, y)
    torch.manual_seed(5)
    bound = mine.mi_lower_bound(x, y)
    # same permutation -> the reported value is exactly minus the DV bound
    assert torch.allclose(loss, -bound, atol=1e-5)
    loss.backward()
    assert x.grad is None and all(p.grad is not None for p in mine.parameters())
    assert bool(mine.ema_ready)
    bound.backward()
    assert x.grad is not None and y.grad is not None
