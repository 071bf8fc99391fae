import pytest
import torch

from pyg_mmrec.train.optim import LazyAdam, has_sparse_parameters, dense_adam


def test_dense_matches_torch_adam():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(5, 3))
    b = torch.nn.Parameter(a.detach().clone())
    oa = torch.optim.Adam([a], lr=1e-2, weight_decay=0.1)
    ob = LazyAdam([b], lr=1e-2, weight_decay=0.1)
    for _ in range(4):
        g = torch.randn(5, 3)
        a.grad, b.grad = g.clone(), g.clone()
        oa.step(), ob.step()
    assert torch.allclose(a, b, atol=1e-6)


def test_sparse_updates_only_batch_rows_like_adam_on_them():
    torch.manual_seed(0)
    emb = torch.nn.Embedding(6, 4, sparse=True)
    ref = torch.nn.Parameter(emb.weight.detach().clone())
    before = emb.weight.detach().clone()
    opt, ref_opt = LazyAdam(emb.parameters(), lr=0.1), torch.optim.Adam([ref], lr=0.1)
    idx = torch.tensor([1, 4, 1])  # duplicate row: gradients add up
    emb(idx).pow(2).sum().backward()
    assert emb.weight.grad.is_sparse
    ref.grad = emb.weight.grad.to_dense()
    opt.step(), ref_opt.step()
    touched = torch.tensor([1, 4])
    assert torch.allclose(emb.weight[touched], ref[touched], atol=1e-6)
    untouched = torch.tensor([0, 2, 3, 5])
    assert torch.equal(emb.weight[untouched], before[untouched])  # lazy: no decay there
    assert (opt.state[emb.weight]["exp_avg"][untouched] == 0).all()
    assert has_sparse_parameters(emb) and not has_sparse_parameters(torch.nn.Embedding(2, 2))


def test_state_dict_round_trip():
    emb = torch.nn.Embedding(4, 2, sparse=True)
    opt = LazyAdam(emb.parameters(), lr=0.1)
    emb(torch.tensor([0, 2])).sum().backward()
    opt.step()
    opt2 = LazyAdam(emb.parameters(), lr=0.1)
    opt2.load_state_dict(opt.state_dict())
    assert torch.equal(opt2.state[emb.weight]["exp_avg"], opt.state[emb.weight]["exp_avg"])


@pytest.mark.parametrize("kw,match", [({"lr": 0}, "lr"), ({"betas": (1.0, 0.9)}, "betas"),
                                      ({"eps": -1}, "eps"), ({"weight_decay": -1},
                                                             "weight_decay")])
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        LazyAdam([torch.nn.Parameter(torch.zeros(1))], **kw)


def test_dense_adam_is_fused_adam_with_the_same_updates():
    torch.manual_seed(0)
    w = torch.randn(50, 8)
    a, b = torch.nn.Parameter(w.clone()), torch.nn.Parameter(w.clone())
    fused = dense_adam([a], lr=1e-2, weight_decay=1e-4)
    plain = torch.optim.Adam([b], lr=1e-2, weight_decay=1e-4, foreach=False)
    assert fused.param_groups[0]["fused"] is True
    for _ in range(20):
        g = torch.randn_like(w)
        a.grad, b.grad = g.clone(), g.clone()
        fused.step()
        plain.step()
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # parameters on other devices (here: meta) keep the default implementation
    c = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64, device="meta"))
    assert not dense_adam([c], lr=1e-3).param_groups[0]["fused"]
