import pytest
import torch
import torch.nn.functional as F

from pyg_mmrec.nn.invariance import IRMPenalty, VRExPenalty


def test_irm_zero_for_invariant_predictor(device):
    # the predictor is exact (hence optimal under any rescaling) in every environment
    y = [t.to(device) for t in (torch.randn(50), torch.randn(30) * 3, torch.randn(20) + 1)]
    logits = [t.clone().requires_grad_() for t in y]
    for unbiased in (False, True):
        pen = IRMPenalty(risk="mse", unbiased=unbiased)(logits, y)
        assert pen.abs().item() < 1e-10


def test_irm_positive_for_non_invariant_predictor(device):
    y = [torch.randn(50, device=device), torch.randn(50, device=device)]
    logits = [y[0] * 2.0, y[1] * 0.5]  # over-confident in one env, under in the other
    assert IRMPenalty(risk="mse")(logits, y).item() > 0.1


def test_irm_bpr_matches_closed_form():
    # d/dw mean(-log sigma(w x)) at w = 1  =  -mean(x * sigma(-x))
    envs = [torch.randn(64), torch.randn(64) + 1.0]
    expected = torch.stack([(-(x * torch.sigmoid(-x)).mean()).pow(2) for x in envs]).mean()
    assert torch.allclose(IRMPenalty()(envs), expected, atol=1e-6)


def test_irm_unbiased_is_product_of_half_gradients():
    x = torch.randn(10)
    g1 = -(x[:5] * torch.sigmoid(-x[:5])).mean()
    g2 = -(x[5:] * torch.sigmoid(-x[5:])).mean()
    assert torch.allclose(IRMPenalty(unbiased=True)([x]), g1 * g2, atol=1e-6)


def test_irm_is_differentiable():
    x = torch.randn(32, requires_grad=True)
    IRMPenalty()([x, x * 2]).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_irm_custom_risk_and_errors():
    pen = IRMPenalty(risk=lambda f, y: F.mse_loss(f, y))
    y = torch.randn(8)
    assert pen([y.clone().requires_grad_()], [y]).abs().item() < 1e-10
    with pytest.raises(ValueError, match="risk must be one of"):
        IRMPenalty(risk="hinge")
    with pytest.raises(ValueError, match="non-empty sequence"):
        IRMPenalty()([])
    with pytest.raises(ValueError, match="targets are required"):
        IRMPenalty(risk="bce")([torch.randn(3)])
    with pytest.raises(ValueError, match="targets"):
        IRMPenalty(risk="mse")([torch.randn(3)], [torch.randn(3), torch.randn(3)])


def test_vrex_zero_for_equal_risks():
    risks = torch.full((3,), 0.7, requires_grad=True)
    assert VRExPenalty()(risks).item() == 0.0
    assert VRExPenalty(unbiased=False)([torch.tensor(1.5)] * 4).item() == 0.0


def test_vrex_values_and_gradient():
    risks = torch.tensor([1.0, 3.0], requires_grad=True)
    assert VRExPenalty()(risks).item() == pytest.approx(2.0)           # / (E - 1)
    assert VRExPenalty(unbiased=False)(risks).item() == pytest.approx(1.0)  # / E
    VRExPenalty()(risks).backward()
    # the gradient pulls the risks towards each other
    assert risks.grad[0] < 0 < risks.grad[1]


def test_vrex_single_environment_and_errors():
    r = torch.tensor([0.3], requires_grad=True)
    out = VRExPenalty()(r)
    assert out.item() == 0.0 and out.requires_grad
    with pytest.raises(ValueError, match="at least one risk"):
        VRExPenalty()([])
    with pytest.raises(ValueError, match=r"\[num_envs\]"):
        VRExPenalty()(torch.zeros(2, 2))
