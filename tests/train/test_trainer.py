import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from conftest import stop_after, tiny_splits
from pyg_mmrec.config import train_defaults, validate_train
from pyg_mmrec.models.base import Recommender, RecOutput
from pyg_mmrec.train import TrainData, Trainer, TrainingInterrupted, load_checkpoint

REPO = Path(__file__).resolve().parents[2]


class TinyMF(Recommender):
    """MF + one modality projection, with dropout (consumes the torch RNG) and a
    side estimator trained by the auxiliary optimiser."""

    def __init__(self, num_users, num_items, train_edge_index, features=None, masks=None,
                 dim=8, dropout=0.2):
        super().__init__(num_users, num_items, train_edge_index, features, masks)
        self.user_emb = torch.nn.Embedding(num_users, dim)
        self.item_emb = torch.nn.Embedding(num_items, dim)
        self.proj = torch.nn.ModuleDict({m: torch.nn.Linear(features[m].size(1), dim)
                                         for m in self.modalities})
        self.drop = torch.nn.Dropout(dropout)
        self.est = torch.nn.Linear(dim, dim)
        self.epochs_seen = []

    def forward(self):
        item = self.item_emb.weight
        for m in self.modalities:
            item = item + self.proj[m](self.feature(m)) * self.mask(m).unsqueeze(1)
        return RecOutput(user=self.drop(self.user_emb.weight), item=item)

    def loss(self, users, pos, neg, out=None):
        terms = super().loss(users, pos, neg, out)
        terms["reg"] = 1e-3 * self.user_emb.weight[users].pow(2).mean()
        return terms

    def auxiliary_parameters(self):
        return list(self.est.parameters())

    def auxiliary_loss(self, users, pos, neg):
        u = self.user_emb.weight[users].detach()
        return (self.est(u) - self.item_emb.weight[pos].detach()).pow(2).mean()

    def on_epoch_start(self, epoch):
        self.epochs_seen.append(epoch)


def tiny_data(num_users=30, num_items=40, per_user=7, seed=0, eval_masks_differ=True,
              modalities=("image",)):
    g = torch.Generator().manual_seed(seed)
    ei = tiny_splits(num_users, num_items, per_user, g)
    feat = {m: torch.randn(num_items, 6, generator=g) for m in modalities}
    masks = {m: torch.rand(num_items, generator=g) > 0.3 for m in modalities}
    eval_masks = {m: masks[m] & (torch.rand(num_items, generator=g) > 0.3) for m in modalities}
    eval_feat = {m: feat[m] * eval_masks[m].unsqueeze(1) for m in modalities}
    return TrainData(num_users, num_items, ei["train"], ei["valid"], ei["test"],
                     {m: feat[m] * masks[m].unsqueeze(1) for m in modalities}, masks,
                     eval_feat if eval_masks_differ else None,
                     eval_masks if eval_masks_differ else None)


def cfg(**kw):
    t = train_defaults()
    t.update(dict(epochs=6, batch_size=32, lr=0.01, eval_every=2, patience=10, topk=[5, 10],
                  metric="recall@10"))
    t.update(kw)
    return validate_train(t)


def make_model(data, seed=0, plugin=False):
    torch.manual_seed(seed)
    if not plugin:
        return TinyMF(data.num_users, data.num_items, data.train_edge_index,
                      data.train_features, data.train_masks)
    from pyg_mmrec.models import get_model_class
    from pyg_mmrec.models.mrdib import MRdIB
    backbone = get_model_class("vbpr")(data.num_users, data.num_items, data.train_edge_index,
                                       data.train_features, data.train_masks, embedding_size=8)
    # every=2: the estimator learns on the codes cached at the previous plug-in step
    return MRdIB(backbone, latent_dim=4, mi_hidden=8, every=2, redundant_weight=0.1)


def same(a, b):
    """Exact equality of state-dict values, extra state (nested containers) included."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    return a == b


def strip_times(history):
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in history]


def test_fit_trains_validates_and_tests_once(tmp_path):
    data = tiny_data()
    model = make_model(data)
    tr = Trainer(model, data, cfg(), out_dir=tmp_path)
    calls = []
    orig = tr.evaluate
    tr.evaluate = lambda split="valid": calls.append(split) or orig(split)
    res = tr.fit()
    assert calls.count("test") == 1 and calls[-1] == "test"
    assert calls.count("valid") == 3  # epochs 1, 3, 5 (eval_every=2)
    assert res.epochs == 6 and res.best_epoch in (1, 3, 5)
    assert set(res.valid) >= {"recall@10", "ndcg@5"} and set(res.test) == set(res.valid)
    assert model.epochs_seen == list(range(6))
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == list(range(6))
    assert {"loss", "loss/bpr", "loss/reg", "loss/aux", "seconds"} <= set(lines[0])
    assert "valid" in lines[1] and "valid" not in lines[0]
    # the model ends in the best state
    ck = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ck["finished"] and ck["best_epoch"] == res.best_epoch
    for k, v in model.state_dict().items():
        assert torch.equal(v, ck["best_state"][k])


@pytest.mark.parametrize("stop_at,plugin,lr_decay", [
    (3, False, None), (5, False, None), (9, False, None),  # mid-epoch, end of epoch 0, mid-epoch 1
    (7, True, None),  # MRdIB over VBPR, cut between a plug-in step and the next one
    (12, False, [0.5, 2])])  # a decaying learning rate, cut in epoch 2
def test_resume_is_bit_for_bit(tmp_path, stop_at, plugin, lr_decay):
    data = tiny_data(modalities=("image", "text") if plugin else ("image",))
    full_model = make_model(data, plugin=plugin)
    full = Trainer(full_model, data, cfg(lr_decay=lr_decay), out_dir=tmp_path / "full").fit()

    m1 = make_model(data, plugin=plugin)
    with pytest.raises(TrainingInterrupted):
        stop_after(Trainer(m1, data, cfg(lr_decay=lr_decay), out_dir=tmp_path / "cut"),
                   stop_at).fit()
    ck = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert (ck["epoch"], ck["batch"]) == divmod(stop_at, 5)  # 150 train pairs / 32 -> 5 batches

    m2 = make_model(data, seed=123, plugin=plugin)  # everything must come from the checkpoint
    resumed = Trainer(m2, data, cfg(lr_decay=lr_decay), out_dir=tmp_path / "cut").fit(resume=True)
    for k, v in full_model.state_dict().items():
        assert same(v, m2.state_dict()[k]), k
    assert resumed.best_epoch == full.best_epoch
    assert resumed.valid == full.valid and resumed.test == full.test
    assert strip_times(resumed.history) == strip_times(full.history)
    def log(d):
        return strip_times([json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()])
    assert log(tmp_path / "cut") == log(tmp_path / "full")


@pytest.mark.parametrize("lr_decay", [None, [0.5, 2]])
def test_resume_with_a_larger_budget_continues_a_run_that_hit_its_cap(tmp_path, lr_decay):
    # 4 epochs, then 4 more on resume == 8 epochs in one go (eval_every 2 divides 4)
    data = tiny_data()
    fresh_model = make_model(data)
    fresh = Trainer(fresh_model, data, cfg(epochs=8, lr_decay=lr_decay),
                    out_dir=tmp_path / "fresh").fit()
    capped = Trainer(make_model(data), data, cfg(epochs=4, lr_decay=lr_decay),
                     out_dir=tmp_path / "ext").fit()
    assert capped.epochs == 4 and not capped.stopped_early
    (tmp_path / "ext" / "result.json").write_text("{}")  # what run() writes at the end
    # the same budget: the finished run is reused, its summary kept
    Trainer(make_model(data), data, cfg(epochs=4, lr_decay=lr_decay),
            out_dir=tmp_path / "ext").fit(resume=True)
    assert (tmp_path / "ext" / "result.json").exists()
    m = make_model(data, seed=123)
    extended = Trainer(m, data, cfg(epochs=8, lr_decay=lr_decay),
                       out_dir=tmp_path / "ext").fit(resume=True)
    assert extended.epochs == 8
    assert not (tmp_path / "ext" / "result.json").exists()  # it described the 4-epoch run
    for k, v in fresh_model.state_dict().items():
        assert same(v, m.state_dict()[k]), k
    assert (extended.best_epoch, extended.valid, extended.test) == \
        (fresh.best_epoch, fresh.valid, fresh.test)
    assert strip_times(extended.history) == strip_times(fresh.history)
    ck = load_checkpoint(tmp_path / "ext" / "checkpoint.pt")
    assert ck["finished"] and ck["epoch"] == 8

    # fewer epochs than already trained: refused, the checkpoint untouched
    before = (tmp_path / "ext" / "checkpoint.pt").read_bytes()
    with pytest.raises(ValueError, match=r"already trained 8 epoch\(s\).*fewer \(5\)"):
        Trainer(make_model(data), data, cfg(epochs=5, lr_decay=lr_decay),
                out_dir=tmp_path / "ext").fit(resume=True)
    assert (tmp_path / "ext" / "checkpoint.pt").read_bytes() == before


def test_resume_with_more_patience_lifts_an_early_stop(tmp_path):
    data = tiny_data()
    kw = dict(epochs=200, eval_every=1, lr=0.3)
    fresh_model = make_model(data)
    fresh = Trainer(fresh_model, data, cfg(patience=5, **kw), out_dir=tmp_path / "fresh").fit()
    short = Trainer(make_model(data), data, cfg(patience=2, **kw), out_dir=tmp_path / "ext").fit()
    assert short.stopped_early and short.epochs < fresh.epochs  # patience 5 goes further
    # more epochs alone: the patience that ran out still stops it, nothing is trained
    again = Trainer(make_model(data), data, cfg(patience=2, **{**kw, "epochs": 400}),
                    out_dir=tmp_path / "ext").fit(resume=True)
    assert (again.epochs, again.best_epoch, again.test) == (short.epochs, short.best_epoch,
                                                            short.test)
    # more patience: trains on exactly as the fresh run with that patience
    m = make_model(data, seed=123)
    longer = Trainer(m, data, cfg(patience=5, **kw), out_dir=tmp_path / "ext").fit(resume=True)
    assert longer.stopped_early
    assert (longer.epochs, longer.best_epoch, longer.valid, longer.test) == \
        (fresh.epochs, fresh.best_epoch, fresh.valid, fresh.test)
    for k, v in fresh_model.state_dict().items():
        assert same(v, m.state_dict()[k]), k
    assert strip_times(longer.history) == strip_times(fresh.history)
    # less patience than the run was trained with: refused
    with pytest.raises(ValueError, match=r"patience 5; a resumed run cannot be given less \(3\)"):
        Trainer(make_model(data), data, cfg(patience=3, **kw),
                out_dir=tmp_path / "ext").fit(resume=True)


def test_more_patience_does_not_revive_a_run_a_hook_stopped(tmp_path):
    class Pruned(Trainer):  # as a search prunes a hopeless trial
        def on_validation(self, epoch, valid):
            return epoch == 1

    data = tiny_data()
    res = Pruned(make_model(data), data, cfg(eval_every=1, patience=2), out_dir=tmp_path).fit()
    assert res.stopped_early and res.epochs == 2
    again = Trainer(make_model(data), data, cfg(eval_every=1, patience=9),
                    out_dir=tmp_path).fit(resume=True)
    assert again.stopped_early and again.epochs == 2


def test_early_stopping_and_eval_inputs(tmp_path):
    data = tiny_data()
    model = make_model(data)
    seen = []
    orig = model.set_modality_inputs
    model.set_modality_inputs = lambda f, m=None: seen.append(m["image"].sum().item()) or orig(f, m)
    res = Trainer(model, data, cfg(epochs=200, eval_every=1, patience=2, lr=0.3)).fit()
    assert res.stopped_early and res.epochs < 200
    assert res.epochs - 1 - res.best_epoch == 2
    # validation switches to the eval masks and back to the train masks
    assert seen[:2] == [data.eval_masks["image"].sum().item(),
                        data.train_masks["image"].sum().item()]

    # with identical train/eval inputs, no switching at all
    data2 = tiny_data(eval_masks_differ=False)
    model2 = make_model(data2)
    model2.set_modality_inputs = lambda *a: pytest.fail("inputs should not be switched")
    Trainer(model2, data2, cfg(epochs=2)).fit()


def test_grad_clip_and_nonfinite_loss():
    data = tiny_data()
    model = make_model(data)
    tr = Trainer(model, data, cfg(epochs=1, grad_clip=1e-6))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tr.fit(test=False)
    assert not torch.equal(before["user_emb.weight"], model.user_emb.weight)

    model.loss = lambda u, p, n, out=None: {"bpr": torch.tensor(float("nan"), requires_grad=True)}
    with pytest.raises(RuntimeError, match="non-finite loss at epoch 0, batch 0"):
        Trainer(model, data, cfg(epochs=1)).fit()


def test_lr_decay_follows_mmrecs_schedule():
    class RecordLR(Trainer):
        def on_batch_end(self, epoch, batch):
            self.lrs = getattr(self, "lrs", {})
            self.lrs[epoch] = self.optimizer.param_groups[0]["lr"]

    data = tiny_data()
    tr = RecordLR(make_model(data), data, cfg(lr_decay=[0.96, 2]))
    tr.fit(test=False)
    assert tr.lrs == pytest.approx({e: 0.01 * 0.96 ** (e / 2) for e in range(6)}, rel=1e-12)
    assert tr.aux_optimizer.param_groups[0]["lr"] == 0.01  # the estimators keep their rate
    # factor 1: the constant rate, the same run as with lr_decay null
    a = make_model(data)
    Trainer(a, data, cfg(epochs=2)).fit(test=False)
    b = make_model(data)
    Trainer(b, data, cfg(epochs=2, lr_decay=[1.0, 50])).fit(test=False)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_resume_without_checkpoint_fails(tmp_path):
    data = tiny_data()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Trainer(make_model(data), data, cfg(), out_dir=tmp_path).fit(resume=True)


SIGINT_SCRIPT = textwrap.dedent("""
    import sys, time, torch
    from pathlib import Path
    from pyg_mmrec.config import train_defaults, validate_train
    from pyg_mmrec.models.bpr import BPR
    from pyg_mmrec.train import Trainer, TrainData, TrainingInterrupted
    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    g = torch.Generator().manual_seed(0)
    U, I = 50, 60
    items = torch.stack([torch.randperm(I, generator=g)[:8] for _ in range(U)])
    users = torch.arange(U).repeat_interleave(8).view(U, 8)
    ei = lambda sl: torch.stack([users[:, sl].reshape(-1), items[:, sl].reshape(-1)])
    data = TrainData(U, I, ei(slice(2, 8)), ei(slice(0, 1)), ei(slice(1, 2)))
    t = train_defaults(); t.update(epochs=10**6, batch_size=16, patience=10**6, topk=[5])
    class Slow(Trainer):
        def on_batch_end(self, epoch, batch):
            (out / "started").touch()
            time.sleep(0.005)
    torch.manual_seed(0)
    tr = Slow(BPR(U, I, data.train_edge_index), data, validate_train(t), out_dir=out)
    try:
        tr.fit()
    except TrainingInterrupted as e:
        print("INTERRUPTED", e.epoch, e.batch, flush=True)
        sys.exit(130)
    sys.exit(1)
""")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigint_writes_loadable_checkpoint(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SIGINT_SCRIPT)
    out = tmp_path / "run"
    out.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, str(script), str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, text=True)
    try:
        deadline = time.monotonic() + 600  # a hang guard; imports are slow on a loaded machine
        while not (out / "started").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "training never started"
            time.sleep(0.05)
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "INTERRUPTED" in stdout
    ck = load_checkpoint(out / "checkpoint.pt")
    assert ck["epoch"] * 19 + ck["batch"] > 0  # 300 pairs / 16 -> 19 batches per epoch
    assert not ck["finished"] and "model" in ck and "optimizer" in ck
    assert not list(out.glob(".*.tmp"))  # no temporary file left behind
