"""The training step stays on the device: no host synchronisation per step
(value reads, data-dependent output sizes), counted on the CPU with
:mod:`pyg_mmrec.utils.sync_debug`, for full-graph and sampled training."""
import pytest
import torch
from test_trainer import cfg, tiny_data

from pyg_mmrec.models import get_model_class
from pyg_mmrec.models.mrdib import MRdIB
from pyg_mmrec.train import Trainer
from pyg_mmrec.utils import SyncMonitor, assert_no_sync


@pytest.fixture(autouse=True)
def _static_shapes(monkeypatch):
    # the accelerator path: on the CPU the sampler compacts each hop by default
    # (one free host read of the count per hop)
    from pyg_mmrec.nn.neighbor_sampling import LayerwiseSampler
    monkeypatch.setattr(LayerwiseSampler, "static_shapes", True)
    # and lazy Adam's static-shape reference (the compiled row update is a CPU kernel
    # that groups the indices on the host; the detector counts it)
    monkeypatch.setattr("pyg_mmrec.ops.lazy_adam.LAZY_ADAM_DEVICES", frozenset())


def test_the_cpu_lazy_adam_kernel_is_counted():
    from pyg_mmrec.ops.masked_spmm import kernel_devices
    if "cpu" not in kernel_devices("_lazy_adam_rows_kernel"):
        pytest.skip("pyg_mmrec._C has no lazy_adam_rows_ kernel")
    p, m, v = torch.zeros(4, 2), torch.zeros(4, 2), torch.zeros(4, 2)
    with SyncMonitor() as mon:
        torch.ops.pyg_mmrec.lazy_adam_rows_(p, m, v, torch.tensor([1, 1]), torch.ones(2, 2),
                                            0.1, 0.9, 0.99, 1e-8, 0.0, 1.0)
    assert any("lazy_adam_rows_" in e.kind for e in mon.events), mon.events


# ------------------------------------------------------------ the detector itself
class _ReadsInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, g):
        g.sum().item()  # planted: a host read in the backward pass
        return g * 2


def test_monitor_counts_every_kind_of_sync():
    x = torch.randn(6, requires_grad=True)
    with SyncMonitor() as mon:
        s = x.sum()
        s.item()
        bool(s > 0)
        int(s.detach())
        float(s)
        x.tolist()
        x.nonzero()
        torch.unique(x)
        x[x > 0]
        x.masked_select(x > 0)
        x.detach().cpu()
        x.detach().numpy()
        torch.repeat_interleave(torch.arange(3), torch.tensor([1, 2, 3]))
    kinds = [e.kind for e in mon.events]
    assert mon.count == 12, mon.report()
    assert kinds[:4] == ["item", "__bool__", "__int__", "__float__"]
    assert all("test_sync_free_step.py" in e.where for e in mon.events)


def test_monitor_ignores_static_shape_code():
    x = torch.randn(6, 3, requires_grad=True)
    idx = torch.tensor([0, 2, 2])
    with assert_no_sync():
        y = x[idx] * torch.where(x[idx] > 0, 1.0, 0.5)
        torch.repeat_interleave(torch.arange(3), torch.tensor([1, 2, 3]), output_size=6)
        s, order = torch.sort(idx)
        torch.cumsum(s, 0)
        y.sum().backward()


def test_monitor_sees_the_backward_pass_and_raises():
    x = torch.randn(4, requires_grad=True)
    with pytest.raises(AssertionError, match="_local_scalar_dense"):
        with assert_no_sync():
            _ReadsInBackward.apply(x).sum().backward()


# ------------------------------------------------------------ training steps
def _trainer(model, data, **kw):
    return Trainer(model, data, cfg(epochs=1, batch_size=16, **kw))


def _batches(tr, n=2):
    users, pos, neg = tr.sampler.sample(0)
    return [(users[k * 16:(k + 1) * 16], pos[k * 16:(k + 1) * 16], neg[k * 16:(k + 1) * 16])
            for k in range(n)]


_HP = {
    "freedom": dict(embedding_size=8, feat_embed_dim=8, knn_k=3, n_mm_layers=1, dropout=0.3),
    "lattice": dict(embedding_size=8, feat_embed_dim=8, knn_k=3, n_layers=2),
    "mgcn": dict(embedding_size=8, knn_k=3, n_layers=2, cl_loss=0.1),
    "lgmrec": dict(embedding_size=8, feat_embed_dim=8, keep_rate=0.5, hyper_sample=None,
                   cl_weight=0.1, reg_weight=1e-3),
    "mmgcn": dict(embedding_size=8, dim_latent=8),
    "i3mrec": dict(embedding_size=8, n_layers=2),
    "lightgcn": dict(embedding_size=8, n_layers=2),
    "bpr": dict(embedding_size=8),
    "vbpr": dict(embedding_size=8, drop_missing=True),
}
_LAYERS = {"bpr": 1, "vbpr": 1}


def _model(name, data):
    torch.manual_seed(0)
    ei, U, I = data.train_edge_index, data.num_users, data.num_items
    feats, masks = data.train_features, data.train_masks
    full = name.endswith("_full")
    base = name[:-len("_full")] if full else name
    plugin = base.startswith("mrdib_")
    base = base[len("mrdib_"):] if plugin else base
    hp = dict(_HP[base])
    if not full:
        hp["fanout"] = [3] * _LAYERS.get(base, 2)
    model = get_model_class(base)(U, I, ei, feats, masks, **hp)
    return MRdIB(model, latent_dim=8, mi_hidden=8, seed=1) if plugin else model


def _step_syncs(name, plant=False):
    data = tiny_data(modalities=("image", "text"))
    model = _model(name, data)
    tr = _trainer(model, data)
    model.train()
    model.on_epoch_start(0)
    (u0, p0, q0), (u1, p1, q1) = _batches(tr)
    tr.train_step(u0, p0, q0, 0, 0)  # first step: optimiser state, per-graph caches
    if plant:
        loss = model.loss

        def planted(*a, **kw):
            terms = loss(*a, **kw)
            terms["bpr"].item()  # e.g. a debugging print left in the step
            return terms
        model.loss = planted
    with SyncMonitor() as mon:
        out = tr.train_step(u1, p1, q1, 0, 1)
    assert all(isinstance(v, torch.Tensor) for v in out.values())
    return mon


SAMPLED = ["lightgcn", "i3mrec", "freedom", "lattice", "mgcn", "lgmrec", "mmgcn",
           "mrdib_freedom", "bpr", "vbpr"]
FULL = [f"{name}_full" for name in SAMPLED]


@pytest.mark.parametrize("name", SAMPLED + FULL)
def test_training_step_makes_no_host_sync(name):
    mon = _step_syncs(name)
    assert mon.count == 0, f"{name}:\n{mon.report()}"


def test_planted_item_in_the_step_is_caught():
    mon = _step_syncs("lightgcn", plant=True)
    assert mon.count == 1 and mon.events[0].kind == "item", mon.report()


def test_sampler_draws_on_the_training_device():
    data = tiny_data(modalities=("image", "text"))
    tr = _trainer(_model("lightgcn", data), data)
    assert tr.sampler.device == tr.device
    users, pos, neg = tr.sampler.sample(0)
    assert users.device == pos.device == neg.device == tr.device
    with assert_no_sync():  # a step's batch: a slice, no copy
        users[:16], pos[:16], neg[:16]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_sync_debug_mode_is_set_inside():
    with SyncMonitor():
        assert torch.cuda.get_sync_debug_mode() == 1
