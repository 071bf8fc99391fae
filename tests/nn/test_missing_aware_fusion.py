import pytest
import torch

from pyg_mmrec.nn.missing_aware_fusion import MissingAwareFusion


def test_mean_of_present_modalities(device):
    h = torch.randn(3, 5, 4, device=device)
    mask = torch.tensor([[1, 1, 0, 1, 0],
                         [1, 0, 0, 1, 1],
                         [0, 1, 0, 1, 0]], dtype=torch.bool, device=device)
    fb = torch.randn(5, 4, device=device)
    out = MissingAwareFusion(4, transform="none").to(device)(h, mask, fallback=fb)
    assert torch.allclose(out[0], h[:2, 0].mean(0))
    assert torch.allclose(out[1], (h[0, 1] + h[2, 1]) / 2)
    assert torch.allclose(out[2], fb[2])  # nothing present -> fallback
    assert torch.allclose(out[3], h[:, 3].mean(0))
    assert torch.allclose(out[4], h[1, 4])
    # without a fallback an all-missing item is zero
    assert torch.all(MissingAwareFusion(4, transform="none").to(device)(h, mask)[2] == 0)


def test_missing_rows_are_ignored_not_zero_filled(device):
    fusion = MissingAwareFusion(4, mode="attention", transform="tanh").to(device)
    h = torch.randn(2, 6, 4, device=device, requires_grad=True)
    mask = torch.ones(2, 6, dtype=torch.bool, device=device)
    mask[1, :3] = False
    out = fusion(h, mask)
    h2 = h.detach().clone()
    h2[1, :3] = 1e3 * torch.randn(3, 4, device=device)  # garbage in missing rows changes nothing
    assert torch.allclose(out, fusion(h2, mask))
    out.sum().backward()
    assert torch.all(h.grad[1, :3] == 0) and h.grad[0].abs().sum() > 0


def test_attention_weights_are_masked_softmax():
    fusion = MissingAwareFusion(8, mode="attention")
    h = torch.randn(3, 10, 8)
    mask = torch.rand(3, 10) > 0.4
    mask[:, 0] = False
    alpha = fusion.weights(h, mask)
    assert torch.all(alpha[~mask] == 0)
    has = mask.any(0)
    assert torch.allclose(alpha.sum(0)[has], torch.ones(int(has.sum())))
    assert torch.all(alpha[:, 0] == 0) and not torch.isnan(alpha).any()


def test_identity_initialisation_and_sequence_input():
    h = [torch.randn(4, 3), torch.randn(4, 3)]
    mask = torch.ones(2, 4, dtype=torch.bool)
    mean = (h[0] + h[1]) / 2
    assert torch.allclose(MissingAwareFusion(3, transform="linear")(h, mask), mean)
    assert torch.allclose(MissingAwareFusion(3)(h, mask), torch.tanh(mean))


def test_dropout_only_in_training():
    fusion = MissingAwareFusion(16, dropout=0.5)
    h, mask = torch.randn(2, 8, 16), torch.ones(2, 8, dtype=torch.bool)
    fusion.eval()
    assert torch.allclose(fusion(h, mask), fusion(h, mask))
    fusion.train()
    torch.manual_seed(0)
    a = fusion(h, mask)
    assert (a == 0).any()


def test_errors():
    with pytest.raises(ValueError, match="mode"):
        MissingAwareFusion(4, mode="max")
    with pytest.raises(ValueError, match="transform"):
        MissingAwareFusion(4, transform="relu")
    f = MissingAwareFusion(4)
    with pytest.raises(ValueError, match=r"\[M, N, 4\]"):
        f(torch.randn(2, 3, 5), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool mask"):
        f(torch.randn(2, 3, 4), torch.ones(2, 3))
    with pytest.raises(ValueError, match="fallback"):
        f(torch.randn(2, 3, 4), torch.ones(2, 3, dtype=torch.bool), fallback=torch.zeros(2, 4))
