import numpy as np
import pytest
import torch
from torch_geometric.data import HeteroData

from pyg_mmrec.data.missing import (MaskSet, MissingSpec, fill_features, make_masks,
                                    masked_inputs, parse_missing_spec)

E = ("user", "rates", "item")


def toy_data(I=120, U=50, mods=("image", "text"), seed=0, natural_missing=(3, 7)):
    g = torch.Generator().manual_seed(seed)
    data = HeteroData()
    data["user"].num_nodes = U
    data["item"].num_nodes = I
    # every item has a training interaction; items >= I//2 appear in test,
    # items in [I//4, I//2) appear in valid only
    train = torch.stack([torch.randint(0, U, (3 * I,), generator=g), torch.arange(3 * I) % I])
    data[E].edge_index = train
    data[E].valid_edge_index = torch.stack([torch.zeros(I // 4, dtype=torch.long),
                                            torch.arange(I // 4, I // 2)])
    data[E].test_edge_index = torch.stack([torch.zeros(I - I // 2, dtype=torch.long),
                                           torch.arange(I // 2, I)])
    for j, m in enumerate(mods):
        data["item"][f"{m}_feat"] = torch.randn(I, 4 + j, generator=g)
        mk = torch.ones(I, dtype=torch.bool)
        if j == 0:
            mk[list(natural_missing)] = False
        data["item"][f"{m}_mask"] = mk
    data.modalities = list(mods)
    return data


def nat(data, m):
    return data["item"][f"{m}_mask"]


# ------------------------------------------------------------------ parsing
def test_parse_specs():
    assert parse_missing_spec("natural") == MissingSpec("natural")
    s = parse_missing_spec("i3mrec:FM:0.3")
    assert (s.protocol, s.mode, s.rate, s.test_share, s.drop) == ("i3mrec", "fm", 0.3, 0.5, 1)
    s = parse_missing_spec("i3mrec:mm:0.2:test_share=0.25:drop=2:eval_items=test")
    assert (s.test_share, s.drop, s.eval_items) == (0.25, 2, "test")
    assert parse_missing_spec(str(s)) == s
    assert parse_missing_spec("dgmrec").rate == pytest.approx(2 / 3)
    assert parse_missing_spec("dgmrec:0.5").rate == 0.5
    assert parse_missing_spec("entry:0.3") == MissingSpec("entry", rate=0.3)


@pytest.mark.parametrize("spec,match", [
    ("foo:0.3", "unknown protocol 'foo'"),
    ("i3mrec:xx:0.3", "unknown i3mrec mode 'xx'"),
    ("i3mrec:fm", "expected 'i3mrec:<ff|fm|mm>:<rate>'"),
    ("i3mrec:fm:abc", "rate must be a number"),
    ("i3mrec:fm:1.5", r"rate must be in \[0, 1\]"),
    ("i3mrec:fm:0.3:bogus=1", r"unknown parameter\(s\) \['bogus'\]"),
    ("i3mrec:fm:0.3:eval_items=some", "eval_items must be one of"),
    ("entry", "expected 'entry:<rate>'"),
    ("entry:0.3:drop=1", "unknown parameter"),
    ("natural:0.2", "takes no arguments"),
    ("", "expected a string"),
])
def test_parse_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_missing_spec(spec)


# ---------------------------------------------------------------- protocols
def test_natural():
    d = toy_data()
    ms = make_masks("natural", d)
    for m in d.modalities:
        assert torch.equal(ms.train[m], nat(d, m)) and torch.equal(ms.eval[m], nat(d, m))


def _lost(ms, which, mods):
    return torch.stack([~getattr(ms, which)[m] for m in mods], 1)


def test_i3mrec_modes():
    d = toy_data(natural_missing=())
    I, mods = 120, d.modalities
    ff, fm, mm = (make_masks(f"i3mrec:{x}:0.3", d, seed=5) for x in ("ff", "fm", "mm"))
    assert not _lost(ff, "train", mods).any() and not _lost(ff, "eval", mods).any()
    assert not _lost(fm, "train", mods).any()
    ev = _lost(fm, "eval", mods)
    # half of the eval items (valid+test = items 30..119, 90 items) lose exactly one modality
    assert int(ev.any(1).sum()) == 45 and int(ev.sum(1).max()) == 1
    assert not ev[:30].any()
    # fm and mm share the eval mask; mm also drops 30% of the training items
    assert torch.equal(ev, _lost(mm, "eval", mods))
    tr = _lost(mm, "train", mods)
    assert int(tr.any(1).sum()) == round(0.3 * I) and int(tr.sum(1).max()) == 1
    assert not torch.equal(tr, ev[:, :])


def test_i3mrec_parameters_and_eval_items():
    d = toy_data(natural_missing=())
    ms = make_masks("i3mrec:fm:0.3:test_share=1:eval_items=test", d)
    ev = _lost(ms, "eval", d.modalities)
    assert bool(ev[60:].any(1).all()) and not ev[:60].any()
    ms = make_masks("i3mrec:mm:1.0:drop=2", d)
    assert not any(bool(ms.train[m].any()) for m in d.modalities)
    with pytest.raises(ValueError, match="cannot drop 3 modalities"):
        make_masks("i3mrec:mm:0.5:drop=3", d)


def test_dgmrec_shares():
    d = toy_data(I=1200, natural_missing=())
    ms = make_masks("dgmrec", d, seed=1)
    lost = _lost(ms, "train", ["image", "text"])
    n = lost.sum(1)
    assert [int((n == k).sum()) for k in range(3)] == [400, 400, 400]
    assert int((lost[:, 0] & ~lost[:, 1]).sum()) == 200  # image only: 1/4 of missing
    assert int((lost[:, 1] & ~lost[:, 0]).sum()) == 200
    assert all(torch.equal(ms.train[m], ms.eval[m]) for m in d.modalities)


def test_dgmrec_three_modalities():
    d = toy_data(I=900, mods=("audio", "image", "text"), natural_missing=())
    ms = make_masks("dgmrec:0.6", d)
    n = _lost(ms, "train", d.modalities).sum(1)
    # 540 missing items spread evenly over 1, 2, 3 lost modalities
    assert [int((n == k).sum()) for k in range(4)] == [360, 180, 180, 180]


def test_entry_protocol():
    d = toy_data(I=200, natural_missing=())
    ms = make_masks("entry:0.4", d, seed=2)
    lost = _lost(ms, "train", d.modalities)
    assert int(lost.sum()) == round(0.4 * 200 * 2)
    assert not bool(lost.all(1).any())  # one protected modality per item
    with pytest.raises(ValueError, match="exceeds 0.5"):
        make_masks("entry:0.6", d)


def test_entry_protects_a_naturally_present_modality():
    d = toy_data(I=100, natural_missing=range(50))  # image naturally missing for half
    ms = make_masks("entry:0.5", d)
    present = torch.stack([ms.train[m] for m in d.modalities], 1)
    assert bool(present.any(1).all())  # text protected where image is naturally missing


def test_masks_and_natural_and_seeded():
    d = toy_data(natural_missing=(3, 7))
    for spec in ("i3mrec:mm:0.5", "dgmrec:0.5", "entry:0.3"):
        a, b, c = make_masks(spec, d, 0), make_masks(spec, d, 0), make_masks(spec, d, 1)
        for w in ("train", "eval"):
            assert not a.train["image"][[3, 7]].any() and not a.eval["image"][[3, 7]].any()
            assert all(torch.equal(getattr(a, w)[m], getattr(b, w)[m]) for m in d.modalities)
        assert any(not torch.equal(a.train[m], c.train[m]) for m in d.modalities)


def test_no_modalities_dataset():
    d = toy_data(mods=())
    ms = make_masks("dgmrec", d)
    assert ms.train == {} and ms.eval == {}


def test_save_load_roundtrip(tmp_path):
    d = toy_data()
    ms = make_masks("i3mrec:mm:0.3", d, seed=3)
    ms.save(str(tmp_path / "m"))
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert files == ["eval_image.npy", "eval_text.npy", "masks.json", "train_image.npy",
                     "train_text.npy"]
    back = MaskSet.load(str(tmp_path / "m"))
    assert (back.spec, back.seed) == ("i3mrec:mm:0.3", 3)
    for w in ("train", "eval"):
        assert all(torch.equal(getattr(back, w)[m], getattr(ms, w)[m]) for m in d.modalities)
    np.save(tmp_path / "m" / "eval_text.npy", np.ones(5, bool))
    with pytest.raises(ValueError, match="eval_text.npy"):
        MaskSet.load(str(tmp_path / "m"))
    with pytest.raises(FileNotFoundError, match="masks.json"):
        MaskSet.load(str(tmp_path / "nothing"))


def test_maskset_validation():
    with pytest.raises(ValueError, match="differ from eval"):
        MaskSet({"a": torch.ones(3, dtype=torch.bool)}, {})
    with pytest.raises(ValueError, match="bool"):
        MaskSet({"a": torch.ones(3)}, {"a": torch.ones(3)})


# -------------------------------------------------------------------- fills
def test_fill_zero_and_mean_never_leak():
    x = torch.arange(12, dtype=torch.float).view(4, 3)
    mk = torch.tensor([True, False, True, False])
    z = fill_features({"t": x}, {"t": mk}, "zero")["t"]
    assert torch.equal(z[[1, 3]], torch.zeros(2, 3)) and torch.equal(z[[0, 2]], x[[0, 2]])
    m = fill_features({"t": x}, {"t": mk}, "mean")["t"]
    assert torch.allclose(m[1], (x[0] + x[2]) / 2) and torch.equal(m[3], m[1])
    assert z.data_ptr() != x.data_ptr() and x[1, 0] == 3  # input untouched
    # no present item: mean fill gives zeros
    assert not fill_features({"t": x}, {"t": torch.zeros(4, dtype=torch.bool)},
                             "mean")["t"].any()
    x2 = x.clone()
    x2[1] = float("nan")  # whatever sits in a missing row is never read
    assert torch.isfinite(fill_features({"t": x2}, {"t": mk}, "mean")["t"]).all()


def test_fill_propagate_user_item_two_hop():
    # users: u0 -> {i0, i1}, u1 -> {i1, i2}, u2 -> {i3}; i1 and i3 missing
    x = torch.tensor([[1.0, 0], [100, 100], [3, 2], [50, 50]])
    mk = torch.tensor([True, False, True, False])
    ei = torch.tensor([[0, 0, 1, 1, 2], [0, 1, 1, 2, 3]])
    out = fill_features({"t": x}, {"t": mk}, "propagate", edge_index=ei, num_users=3)["t"]
    # h_u0 = x0, h_u1 = x2 (present neighbours only); i1 = mean(h_u0, h_u1)
    assert torch.allclose(out[1], (x[0] + x[2]) / 2)
    # i3's only user has no present item -> fallback to the mean of present items
    assert torch.allclose(out[3], (x[0] + x[2]) / 2)
    assert torch.equal(out[[0, 2]], x[[0, 2]])


def test_fill_propagate_item_item():
    x = torch.tensor([[1.0], [100.0], [3.0], [7.0]])
    mk = torch.tensor([True, False, True, True])
    ei = torch.tensor([[0, 2, 3, 1], [1, 1, 0, 0]])  # 0->1, 2->1, 3->0, 1->0
    out = fill_features({"t": x}, {"t": mk}, "propagate", edge_index=ei)["t"]
    assert out[1].item() == pytest.approx(2.0) and out[0].item() == 1.0


def test_fill_errors():
    x, mk = torch.zeros(4, 2), torch.ones(4, dtype=torch.bool)
    with pytest.raises(ValueError, match="unknown strategy 'median'"):
        fill_features({"t": x}, {"t": mk}, "median")
    with pytest.raises(ValueError, match="needs edge_index"):
        fill_features({"t": x}, {"t": mk}, "propagate")
    with pytest.raises(ValueError, match="masks have"):
        fill_features({"t": x}, {"s": mk}, "zero")
    with pytest.raises(ValueError, match=r"masks\['t'\] bool \[I\]"):
        fill_features({"t": x}, {"t": torch.ones(3, dtype=torch.bool)}, "zero")


def test_masked_inputs():
    d = toy_data()
    ms = make_masks("i3mrec:fm:0.5", d)
    for which in ("train", "eval"):
        feats, masks = masked_inputs(d, ms, which, "propagate")
        for m in d.modalities:
            assert torch.equal(masks[m], getattr(ms, which)[m])
            x = d["item"][f"{m}_feat"]
            assert torch.equal(feats[m][masks[m]], x[masks[m]])
            assert not torch.isclose(feats[m][~masks[m]], x[~masks[m]]).all(1).any()


@pytest.mark.realdata
def test_real_data_masks(data_root, tmp_path):
    from pyg_mmrec.data import MMRecDataset
    ds = MMRecDataset(data_root, "ml100k_mm", cache_dir=str(tmp_path))
    ms = make_masks("i3mrec:mm:0.3", ds, seed=0)
    assert int((~ms.train["image"]).sum()) >= 41 and int((~ms.eval["image"]).sum()) >= 41
    assert ms.modalities == ["image", "text"]
