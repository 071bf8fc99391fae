import logging
import os
import time

import numpy as np
import pytest
import torch

from pyg_mmrec.data import MMRecDataset
from pyg_mmrec.data.dataset import read_inter

from conftest import write_inter

# 3 users, 4 items; every user has train interactions.
ROWS = [
    (0, 0, 0), (0, 1, 0), (0, 2, 1), (0, 3, 2),
    (1, 1, 0), (1, 2, 0), (1, 0, 1), (1, 3, 2),
    (2, 3, 0), (2, 2, 0), (2, 1, 1), (2, 0, 2),
]


def make_toy(tmp_path, name="toy", rows=ROWS, feats=True, **kw):
    folder = tmp_path / "data" / name
    write_inter(folder, name, rows, **kw)
    if feats:
        rng = np.random.default_rng(0)
        np.save(folder / "text_feat.npy", rng.normal(size=(4, 3)).astype(np.float32))
        np.save(folder / "image_feat.npy", rng.normal(size=(4, 5)).astype(np.float64))
        np.save(folder / "image_mask.npy", np.array([True, False, True, True]))
    return tmp_path / "data", folder


def load(tmp_path, root, name="toy", **kw):
    return MMRecDataset(root, name, cache_dir=str(tmp_path / "cache"), **kw)


def test_toy_dataset_contents(tmp_path):
    root, _ = make_toy(tmp_path)
    ds = load(tmp_path, root)
    data = ds[0]
    assert data["user"].num_nodes == 3 and data["item"].num_nodes == 4
    assert data.modalities == ["image", "text"]
    st = data["user", "rates", "item"]
    assert st.edge_index.tolist() == [[0, 0, 1, 1, 2, 2], [0, 1, 1, 2, 2, 3]]
    assert st.valid_edge_index.tolist() == [[0, 1, 2], [2, 0, 1]]
    assert st.test_edge_index.tolist() == [[0, 1, 2], [3, 3, 0]]
    assert st.edge_index.dtype == torch.long
    x = data["item"].image_feat
    assert x.dtype == torch.float32 and x.shape == (4, 5)
    assert data["item"].image_mask.tolist() == [True, False, True, True]
    assert data["item"].text_mask.dtype == torch.bool and bool(data["item"].text_mask.all())
    assert data.num_cold_users == {"valid": 0, "test": 0}
    r = repr(ds)
    assert "3 users" in r and "4 items" in r and "6/3/3" in r and "image[5] (1 missing)" in r
    assert (ds.num_users, ds.num_items, ds.modalities) == (3, 4, ["image", "text"])


def test_no_features_and_column_order(tmp_path):
    folder = tmp_path / "d" / "toy"
    folder.mkdir(parents=True)
    with open(folder / "toy.inter", "w") as f:  # other column order, extra column
        f.write("x_label\titemID\tuserID\tfoo\n")
        for u, i, x in ROWS:
            f.write(f"{x}\t{i}\t{u}\t7.5\n")
    ds = load(tmp_path, tmp_path / "d")
    assert ds[0].modalities == []
    assert ds[0]["user", "rates", "item"].edge_index.size(1) == 6


def test_cache_reuse_and_invalidation(tmp_path, monkeypatch):
    root, folder = make_toy(tmp_path)
    ds = load(tmp_path, root)
    path = ds.processed_paths[0]
    assert os.path.exists(path) and str(tmp_path / "cache") in path
    calls = []
    import pyg_mmrec.data.dataset as mod
    orig = mod.build_hetero_data
    monkeypatch.setattr(mod, "build_hetero_data", lambda *a: calls.append(1) or orig(*a))
    load(tmp_path, root)
    assert calls == []  # cached
    load(tmp_path, root, force_reload=True)
    assert calls == [1]
    # changing a raw file invalidates the cache: (2, 1) moves from valid to train
    time.sleep(0.01)
    write_inter(folder, "toy", rows=[r for r in ROWS if r[:2] != (2, 1)] + [(2, 1, 0)])
    ds2 = load(tmp_path, root)
    assert calls == [1, 1]
    assert ds2[0]["user", "rates", "item"].edge_index.size(1) == 7
    assert not os.path.exists(path)  # stale cache removed
    assert not [f for f in os.listdir(os.path.dirname(path)) if f.startswith(".tmp")]


def test_read_only_root_uses_cache_dir(tmp_path, monkeypatch):
    root, folder = make_toy(tmp_path)
    monkeypatch.setenv("PYG_MMREC_CACHE", str(tmp_path / "envcache"))
    os.chmod(folder, 0o555)
    try:
        ds = MMRecDataset(root, "toy")
        assert ds.processed_dir.startswith(str(tmp_path / "envcache"))
        assert not (folder / "processed").exists()
    finally:
        os.chmod(folder, 0o755)
    ds = MMRecDataset(root, "toy")  # writable: processed next to the raw files
    assert ds.processed_dir == str(folder / "processed")


def _err(tmp_path, root, exc=ValueError):
    with pytest.raises(exc) as e:
        load(tmp_path, root, force_reload=True)
    return str(e.value)


def test_missing_folder_and_file(tmp_path):
    msg = _err(tmp_path, tmp_path / "nowhere", FileNotFoundError)
    assert "nowhere" in msg and "toy" in msg
    (tmp_path / "d" / "toy").mkdir(parents=True)
    msg = _err(tmp_path, tmp_path / "d", FileNotFoundError)
    assert "toy.inter" in msg


def test_wrong_header(tmp_path):
    root, _ = make_toy(tmp_path, header="user\titem\trating\ttimestamp\tx_label\n")
    msg = _err(tmp_path, root)
    assert "toy.inter" in msg and "line 1" in msg and "userID" in msg


@pytest.mark.parametrize("line,lineno", [("1\t2.5\t1\t0\t0\n", 14), ("a\t2\t1\t0\t0\n", 14),
                                         ("1\t2\n", 14)])
def test_non_integer_or_ragged_line(tmp_path, line, lineno):
    root, _ = make_toy(tmp_path, extra_lines=[line])
    msg = _err(tmp_path, root)
    assert "toy.inter" in msg and f"line {lineno}" in msg


def test_non_contiguous_ids(tmp_path):
    rows = [(u, i + (1 if i == 3 else 0), x) for u, i, x in ROWS]  # item 3 -> 4, gap at 3
    root, _ = make_toy(tmp_path, rows=rows, feats=False)
    msg = _err(tmp_path, root)
    assert "itemID" in msg and "not contiguous" in msg and "[3]" in msg
    rows = [(u + (1 if u == 2 else 0), i, x) for u, i, x in ROWS]
    root, _ = make_toy(tmp_path / "b", rows=rows, feats=False)
    msg = _err(tmp_path, root)
    assert "userID" in msg and "[2]" in msg


def test_negative_id(tmp_path):
    root, _ = make_toy(tmp_path, rows=ROWS + [(-1, 0, 0)], feats=False)
    msg = _err(tmp_path, root)
    assert "line 14" in msg and "userID" in msg


def test_bad_x_label(tmp_path):
    root, _ = make_toy(tmp_path, rows=ROWS[:5] + [(1, 2, 3)] + ROWS[6:], feats=False)
    msg = _err(tmp_path, root)
    assert "line 7" in msg and "x_label=3" in msg


def test_duplicate_interaction(tmp_path):
    root, _ = make_toy(tmp_path, rows=ROWS + [(0, 1, 2)], feats=False)
    msg = _err(tmp_path, root)
    assert "duplicate" in msg and "lines 3 and 14" in msg


def test_empty_split(tmp_path):
    rows = [(u, i, 0 if x == 1 else x) for u, i, x in ROWS]
    root, _ = make_toy(tmp_path, rows=rows, feats=False)
    msg = _err(tmp_path, root)
    assert "valid split" in msg and "toy.inter" in msg


def test_feature_errors(tmp_path):
    root, folder = make_toy(tmp_path)
    np.save(folder / "text_feat.npy", np.zeros((5, 3), np.float32))
    msg = _err(tmp_path, root)
    assert "text_feat.npy" in msg and "5 rows" in msg and "4 items" in msg
    bad = np.zeros((4, 3), np.float32)
    bad[2, 1] = np.nan
    np.save(folder / "text_feat.npy", bad)
    msg = _err(tmp_path, root)
    assert "text_feat.npy" in msg and "NaN/Inf" in msg and "[2]" in msg
    bad[2, 1] = np.inf
    np.save(folder / "text_feat.npy", bad)
    assert "NaN/Inf" in _err(tmp_path, root)
    np.save(folder / "text_feat.npy", np.zeros(4, np.float32))
    assert "2-D" in _err(tmp_path, root)
    np.save(folder / "text_feat.npy", np.zeros((4, 3), np.int64))
    assert "floating-point" in _err(tmp_path, root)


def test_mask_errors(tmp_path):
    root, folder = make_toy(tmp_path)
    np.save(folder / "image_mask.npy", np.array([True, False, True]))
    msg = _err(tmp_path, root)
    assert "image_mask.npy" in msg and "(4,)" in msg
    np.save(folder / "image_mask.npy", np.array([0.0, 1.0, 1.0, 1.0]))
    assert "bool" in _err(tmp_path, root)
    np.save(folder / "image_mask.npy", np.array([0, 1, 1, 1]))  # explicit 0/1 ints are fine
    assert load(tmp_path, root, force_reload=True)[0]["item"].image_mask.tolist() == \
        [False, True, True, True]
    np.save(folder / "audio_mask.npy", np.ones(4, bool))
    msg = _err(tmp_path, root)
    assert "audio_mask.npy" in msg and "audio_feat.npy" in msg


def test_cold_start_users_dropped_with_log(tmp_path, caplog):
    # user 3 has only valid/test interactions
    rows = ROWS + [(3, 0, 1), (3, 1, 2), (3, 2, 2)]
    root, _ = make_toy(tmp_path, rows=rows)
    with caplog.at_level(logging.WARNING, logger="pyg_mmrec.data"):
        ds = load(tmp_path, root)
    data = ds[0]
    st = data["user", "rates", "item"]
    assert data["user"].num_nodes == 4
    assert 3 not in st.valid_edge_index[0].tolist() and 3 not in st.test_edge_index[0].tolist()
    assert data.num_cold_users == {"valid": 1, "test": 1}
    assert "1 valid users have no training interaction" in caplog.text
    assert "2 test" in caplog.text


def test_read_inter_returns_int64(tmp_path):
    _, folder = make_toy(tmp_path, feats=False)
    u, i, x = read_inter(str(folder / "toy.inter"))
    assert u.dtype == i.dtype == x.dtype == torch.long and u.numel() == 12


@pytest.mark.realdata
def test_ml100k_mm(data_root, tmp_path):
    ds = MMRecDataset(data_root, "ml100k_mm", cache_dir=str(tmp_path))
    data = ds[0]
    st = data["user", "rates", "item"]
    assert (data["user"].num_nodes, data["item"].num_nodes) == (943, 1682)
    assert (st.edge_index.size(1), st.valid_edge_index.size(1), st.test_edge_index.size(1)) == \
        (80000, 9988, 10012)
    assert data.modalities == ["image", "text"]
    assert int((~data["item"].image_mask).sum()) == 41
    assert bool(data["item"].text_mask.all())
    assert data["item"].image_feat.shape == (1682, 1280)
    assert data["item"].text_feat.shape == (1682, 384)


@pytest.mark.realdata
def test_baby(data_root, tmp_path):
    if not (data_root / "baby" / "baby.inter").exists():
        pytest.skip("baby not available")
    ds = MMRecDataset(data_root, "baby", cache_dir=str(tmp_path))
    data = ds[0]
    st = data["user", "rates", "item"]
    assert (data["user"].num_nodes, data["item"].num_nodes) == (19445, 7050)
    sizes = (st.edge_index.size(1), st.valid_edge_index.size(1), st.test_edge_index.size(1))
    assert sizes == (119674, 20559, 20559) and sum(sizes) == 160792
    assert data.modalities == []
