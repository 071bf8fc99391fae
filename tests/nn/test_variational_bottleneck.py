import pytest
import torch
from torch.distributions import Normal, kl_divergence

from pyg_mmrec.nn import VariationalBottleneck


def test_kl_matches_closed_form_of_torch_distributions():
    mu = torch.randn(7, 5)
    logvar = torch.randn(7, 5)
    ref = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(-1).mean()
    out = VariationalBottleneck.kl_divergence(mu, logvar)
    assert torch.allclose(out, ref, atol=1e-6)
    # the standard normal itself has KL 0
    assert VariationalBottleneck.kl_divergence(torch.zeros(3, 4), torch.zeros(3, 4)).item() == 0.0


def test_kl_mask_ignores_missing_rows(device):
    mu, logvar = torch.randn(6, 3, device=device), torch.randn(6, 3, device=device)
    mask = torch.tensor([True, False, True, False, False, True], device=device)
    out = VariationalBottleneck.kl_divergence(mu, logvar, mask)
    ref = VariationalBottleneck.kl_divergence(mu[mask], logvar[mask])
    assert torch.allclose(out, ref)
    # changing a missing row changes nothing; no present row gives exactly 0
    mu2 = mu.clone()
    mu2[1] += 100.0
    assert torch.equal(VariationalBottleneck.kl_divergence(mu2, logvar, mask), out)
    none = torch.zeros(6, dtype=torch.bool, device=device)
    assert VariationalBottleneck.kl_divergence(mu, logvar, none).item() == 0.0


def test_encoder_kl_equals_closed_form_on_its_outputs():
    enc = VariationalBottleneck(8, 4, hidden_channels=6)
    h = torch.randn(10, 8)
    _, mu, logvar = enc(h)
    ref = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(-1).mean()
    assert torch.allclose(enc.kl_divergence(mu, logvar), ref, atol=1e-5)


def test_sampling_in_training_mean_at_inference():
    enc = VariationalBottleneck(4, 3)
    torch.nn.init.constant_(enc.lin_logvar.bias, 0.0)  # sigma = 1: visible noise
    h = torch.randn(5, 4)
    enc.train()
    z1, mu, _ = enc(h, generator=torch.Generator().manual_seed(1))
    z2, _, _ = enc(h, generator=torch.Generator().manual_seed(1))
    z3, _, _ = enc(h, generator=torch.Generator().manual_seed(2))
    assert torch.equal(z1, z2) and not torch.allclose(z1, z3)
    assert not torch.allclose(z1, mu)
    enc.eval()
    z, mu, _ = enc(h)
    assert torch.equal(z, mu)
    # explicit sample=False in training mode is deterministic too
    enc.train()
    assert torch.equal(enc(h, sample=False)[0], mu)


def test_private_generator_leaves_global_rng_alone():
    enc = VariationalBottleneck(4, 3).train()
    state = torch.get_rng_state()
    enc(torch.randn(2, 4, generator=torch.Generator().manual_seed(0)),
        generator=torch.Generator().manual_seed(3))
    assert torch.equal(torch.get_rng_state(), state)


def test_reparameterisation_is_differentiable():
    enc = VariationalBottleneck(4, 3).train()
    torch.nn.init.constant_(enc.lin_logvar.bias, 0.0)
    h = torch.randn(5, 4, requires_grad=True)
    z, mu, logvar = enc(h)
    (z.sum() + enc.kl_divergence(mu, logvar)).backward()
    assert h.grad is not None and enc.lin_logvar.weight.grad.abs().sum() > 0


def test_bad_inputs():
    with pytest.raises(ValueError, match="in_channels"):
        VariationalBottleneck(0, 3)
    with pytest.raises(ValueError, match="hidden_channels"):
        VariationalBottleneck(3, 3, hidden_channels=-1)
    enc = VariationalBottleneck(4, 3)
    with pytest.raises(ValueError, match=r"h: expected shape \[N, 4\]"):
        enc(torch.randn(5, 5))
    with pytest.raises(ValueError, match="mask"):
        enc.kl_divergence(torch.zeros(3, 2), torch.zeros(3, 2), torch.ones(3))
    assert "VariationalBottleneck(4, 3" in repr(enc)


@pytest.mark.parametrize("hidden", [None, 5])
def test_stacked_equals_separate_encoders(hidden):
    """The stacked encoder is M independent VariationalBottlenecks in one
    batched op, inputs of different widths included (zero-padded)."""
    from pyg_mmrec.nn.variational_bottleneck import StackedVariationalBottleneck
    torch.manual_seed(0)
    dims, k = [3, 6, 4], 2
    stack = StackedVariationalBottleneck(dims, k, hidden)
    hs = [torch.randn(7, d) for d in dims]
    z, mu, logvar = stack(hs, sample=False)
    assert z.shape == mu.shape == logvar.shape == (7, 3, k)
    assert torch.equal(z, mu)
    for m, d in enumerate(dims):
        enc = VariationalBottleneck(d, k, hidden)
        with torch.no_grad():
            if hidden:
                enc.hidden.weight.copy_(stack.weight_hidden[m, :d].T)
                enc.hidden.bias.copy_(stack.bias_hidden[m])
                w = stack.weight[m]
            else:
                w = stack.weight[m, :d]
            enc.lin_mu.weight.copy_(w[:, :k].T), enc.lin_mu.bias.copy_(stack.bias[m, :k])
            enc.lin_logvar.weight.copy_(w[:, k:].T), enc.lin_logvar.bias.copy_(stack.bias[m, k:])
        _, mu_m, lv_m = enc(hs[m], sample=False)
        assert torch.allclose(mu[:, m], mu_m, atol=1e-6) and torch.allclose(logvar[:, m], lv_m, atol=1e-6)
    # padded weight rows start at 0 and get no gradient, so they stay 0
    if hidden is None:
        z, _, _ = stack(hs, sample=True, generator=torch.Generator().manual_seed(0))
        z.sum().backward()
        assert stack.weight.grad[0, 3:].abs().sum() == 0 and stack.weight[0, 3:].abs().sum() == 0
        assert not torch.equal(z, mu)


def test_stacked_bad_input():
    from pyg_mmrec.nn.variational_bottleneck import StackedVariationalBottleneck
    with pytest.raises(ValueError, match="in_channels"):
        StackedVariationalBottleneck([], 4)
    stack = StackedVariationalBottleneck([3, 4], 2)
    with pytest.raises(ValueError, match="hs"):
        stack([torch.randn(5, 3)])
    with pytest.raises(ValueError, match=r"hs\[1\]"):
        stack([torch.randn(5, 3), torch.randn(5, 3)])
