"""Trainer support for large graphs: sampled (``fanout``) training with
:class:`LazyAdam`, and ``eval_max_users``."""
import pytest
import torch

from conftest import stop_after, tiny_splits
from pyg_mmrec.config import ConfigError, build_config, train_defaults, validate_train
from pyg_mmrec.models.i3mrec import I3MRec
from pyg_mmrec.models.lightgcn import LightGCN
from pyg_mmrec.train import TrainData, Trainer, TrainingInterrupted
from pyg_mmrec.train.optim import LazyAdam

U, I = 30, 40


def tiny_data(seed=0, per_user=7):
    g = torch.Generator().manual_seed(seed)
    ei = tiny_splits(U, I, per_user, g)
    feats = {"image": torch.randn(I, 6, generator=g), "text": torch.randn(I, 4, generator=g)}
    masks = {m: torch.rand(I, generator=g) > 0.3 for m in feats}
    return TrainData(U, I, ei["train"], ei["valid"], ei["test"], feats, masks)


def cfg(**kw):
    t = train_defaults()
    t.update(dict(epochs=3, batch_size=32, lr=0.01, topk=[5, 10], metric="recall@10"))
    t.update(kw)
    return validate_train(t)


def lightgcn(data, fanout=(3, 3)):
    torch.manual_seed(0)
    return LightGCN(U, I, data.train_edge_index, embedding_size=8, n_layers=2,
                    fanout=list(fanout))


def test_sampled_lightgcn_uses_lazy_adam_and_resumes_bit_for_bit(tmp_path):
    data = tiny_data()
    full_model = lightgcn(data)
    tr = Trainer(full_model, data, cfg(), out_dir=tmp_path / "full")
    assert isinstance(tr.optimizer, LazyAdam)
    full = tr.fit()
    assert full.epochs == 3 and full.valid["recall@10"] >= 0
    m1 = lightgcn(data)
    with pytest.raises(TrainingInterrupted):
        stop_after(Trainer(m1, data, cfg(), out_dir=tmp_path / "cut"), 4).fit()  # mid-epoch 0
    m2 = lightgcn(data)
    with torch.no_grad():
        m2.user_embedding.weight.zero_()  # everything must come from the checkpoint
    resumed = Trainer(m2, data, cfg(), out_dir=tmp_path / "cut").fit(resume=True)
    for k, v in full_model.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]), k
    assert resumed.valid == full.valid and resumed.test == full.test


def test_sampled_i3mrec_fits():
    data = tiny_data()
    torch.manual_seed(0)
    model = I3MRec(U, I, data.train_edge_index, data.train_features, data.train_masks,
                   embedding_size=8, n_layers=2, fanout=[3, 2])
    tr = Trainer(model, data, cfg(epochs=2))
    assert isinstance(tr.optimizer, LazyAdam)
    res = tr.fit()
    assert res.epochs == 2 and "loss/club" in res.history[0] and "loss/aux" in res.history[0]


def test_full_graph_models_keep_torch_adam():
    data = tiny_data()
    torch.manual_seed(0)
    model = LightGCN(U, I, data.train_edge_index, embedding_size=8)
    assert type(Trainer(model, data, cfg()).optimizer) is torch.optim.Adam


def test_eval_max_users_ranks_a_fixed_seeded_subset():
    data = tiny_data()
    model = LightGCN(U, I, data.train_edge_index, embedding_size=8)
    capped = Trainer(model, data, cfg(eval_max_users=7), seed=3)
    state = torch.get_rng_state()
    a = capped.evaluate("valid")
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is not touched
    assert capped._last_metrics_obj.count == 7
    assert capped.evaluate("valid") == a  # the same users every time
    capped.evaluate("test")
    assert capped._last_metrics_obj.count == 7
    other = Trainer(model, data, cfg(eval_max_users=7), seed=4)
    other.evaluate("valid")
    assert not torch.equal(capped._eval_targets["valid"], other._eval_targets["valid"])
    everyone = Trainer(model, data, cfg())
    everyone.evaluate("valid")
    assert everyone._last_metrics_obj.count == U
    big = Trainer(model, data, cfg(eval_max_users=10 * U))
    assert big.evaluate("valid") == everyone.evaluate("valid")


@pytest.mark.parametrize("value", [0, -3, 2.5, "all"])
def test_eval_max_users_validation(value):
    with pytest.raises(ConfigError, match="eval_max_users"):
        build_config("LightGCN", {"eval_max_users": value})


def test_lazy_embeddings_false_steps_dense_adam_on_the_same_gradients():
    """``lazy_embeddings: false``: the sampled model's ID embeddings get dense
    gradients, equal to the lazy model's sparse ones, and plain Adam."""
    data = tiny_data()
    lazy, dense = lightgcn(data), lightgcn(data)
    tr = Trainer(dense, data, cfg(lazy_embeddings=False))
    assert type(tr.optimizer) is torch.optim.Adam
    assert not dense.user_embedding.sparse and not dense.item_embedding.sparse
    assert isinstance(Trainer(lazy, data, cfg()).optimizer, LazyAdam)
    u, p, n = (torch.tensor(v) for v in ([0, 3, 3, 7], [1, 2, 5, 9], [11, 4, 0, 20]))
    grads = []
    for model in (lazy, dense):
        torch.manual_seed(5)  # the same neighbour sample
        sum(model.loss(u, p, n).values()).backward()
        grads.append(model.item_embedding.weight.grad)
    assert grads[0].is_sparse and not grads[1].is_sparse
    assert torch.allclose(grads[0].to_dense(), grads[1], atol=1e-6)
    assert grads[1].abs().sum() > 0


@pytest.mark.parametrize("value", ["no", 1, None])
def test_lazy_embeddings_validation(value):
    with pytest.raises(ConfigError, match="lazy_embeddings"):
        build_config("LightGCN", {"lazy_embeddings": value})
