"""``examples/reproduce_i3mrec.py``: our split, features and masks in the
reference code's input format, and the commands it runs."""
import json

import numpy as np
import pytest

from conftest import load_script
from pyg_mmrec.data import MMRecDataset
from pyg_mmrec.data.missing import make_masks


@pytest.fixture
def example():
    return load_script("examples/reproduce_i3mrec.py", "reproduce_i3mrec")


def read_split(path):
    pairs = set()
    for line in path.read_text().splitlines():
        ids = [int(v) for v in line.split()]
        pairs |= {(ids[0], i) for i in ids[1:]}
    return pairs


def test_export_writes_the_split_features_and_our_masks(example, tiny_root, tmp_path):
    checkout = tmp_path / "ref"
    spec = "i3mrec:mm:0.5:fixed"
    example.main(["export", "--root", str(tiny_root), "--dataset", "tiny", "--missing", spec,
                  "--seed", "2", "--checkout", str(checkout)])
    data = MMRecDataset(str(tiny_root), "tiny")[0]
    folder = checkout / "Data" / "tiny"
    st = data["user", "rates", "item"]
    for split, name in (("train", "edge_index"), ("val", "valid_edge_index"),
                        ("test", "test_edge_index")):
        assert read_split(folder / f"{split}.txt") == {tuple(e) for e in st[name].t().tolist()}
    for m in data.modalities:
        assert np.array_equal(np.load(folder / f"{m}_feat.npy"), data["item"][f"{m}_feat"].numpy())
    z = np.load(folder / "masks_i3mrec_mm_0.5_fixed_seed2.npz")
    masks = make_masks(spec, data, seed=2)
    for which, src in (("train", masks.train), ("eval", masks.eval)):
        for k, m in enumerate(("image", "text")):
            lost = set(z[f"{which}_items"][z[f"{which}_indicator"] == k].tolist())
            assert lost == set((~src[m]).nonzero().view(-1).tolist())
    # the natural missing posters are lost in training too (the reference runs in mm)
    assert {0, 1, 2} <= set(z["train_items"][z["train_indicator"] == 0].tolist())
    assert (checkout / example.LAUNCHER).read_text() == example.LAUNCHER_TEXT


def test_reference_needs_an_export_first(example, tmp_path):
    with pytest.raises(SystemExit, match="run `export` with the same --dataset"):
        example.main(["reference", "--checkout", str(tmp_path), "--python", "python",
                      "--dataset", "tiny", "--out", str(tmp_path / "out")])


def test_table_reads_both_sides(example, tmp_path, capsys):
    for code in ("reference", "ours"):
        (tmp_path / code).mkdir()
        metrics = {"recall@20": 0.1, "ndcg@20": 0.05, "ndcg@10": 0.04}
        (tmp_path / code / "x.json").write_text(json.dumps(
            {"code": code, "missing": "i3mrec:fm:0.3:fixed", "seed": 1, "best_epoch": 20,
             "epochs": 50, "seconds_per_epoch": 2.5, "peak_memory_mb": 700.0,
             "valid": metrics, "test": metrics}))
    example.main(["table", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "| ours | i3mrec:fm:0.3:fixed | 1 | 0.1000 | 0.0500 | 0.0400 | 20 | 50 | 2.50 | 700 |" in out
    assert "| reference |" in out
