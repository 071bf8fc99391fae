import argparse
import json
import os
import os.path as osp

import numpy as np
import pytest

from pyg_mmrec.data import build_dataset as B

from conftest import RawImageEncoder, char_encoder


def write(path, text):
    path.write_text(text)
    return str(path)


@pytest.fixture
def catalog(tmp_path):
    """6 users x 5 items, each user rates 3-5 items; 'u9' has 1 rating (k-core drops it),
    one repeated pair; item 'i5' has no text, 'i3' a corrupt image, 'i4' no image."""
    rows = ["user_id,item_id,overall,unixReviewTime"]
    t = 0
    for u in range(6):
        for i in range(1, 6):
            if (u + i) % 6 == 0:
                continue
            t += 1
            rows.append(f"u{u},i{i},{1 + (u + i) % 5},{1000 + 7 * t % 50}")
    rows.append("u0,i1,5,5000")  # repeated pair (the earliest is kept)
    rows.append("u9,i1,4,10")  # user with a single interaction
    inter = write(tmp_path / "ratings.csv", "\n".join(rows) + "\n")
    items = write(tmp_path / "items.tsv",
                  "asin\ttitle\tdescription\n"
                  "i1\tRed shoe\tA shoe.\n"
                  "i2\tBlue hat\t\n"
                  "i3\tGreen bag\tRoomy\n"
                  "i4\tLamp\tBright\n"
                  "i5\t\t\n"
                  "i99\tNever rated\tx\n")
    img = tmp_path / "img"
    img.mkdir()
    for i in (1, 2, 5):
        (img / f"i{i}.png").write_bytes(bytes([i * 10] * 12))
    (img / "i3.jpg").write_bytes(b"\xff\xd8\xff corrupt")
    return {"inter": inter, "items": items, "images": str(img), "root": tmp_path}


def test_build_end_to_end(catalog):
    out = str(catalog["root"] / "out" / "toy")
    info = B.build_dataset(catalog["inter"], out, catalog["items"], catalog["images"],
                           text_encoder=char_encoder, image_encoder=RawImageEncoder(), k=3,
                           batch_size=2, progress=False)
    assert info["num_users"] == 6 and info["num_items"] == 5
    assert info["split"] == "temporal"
    assert sorted(os.listdir(out)) == sorted([
        "toy.inter", "u_id_mapping.csv", "i_id_mapping.csv", "text_feat.npy", "text_mask.npy",
        "image_feat.npy", "image_mask.npy", "build_info.json"])  # cache removed
    lines = open(osp.join(out, "toy.inter")).read().splitlines()
    assert lines[0] == "userID\titemID\trating\ttimestamp\tx_label"
    inter = np.array([ln.split("\t") for ln in lines[1:]], dtype=np.int64)
    assert len(inter) == info["num_interactions"] == 25
    pairs = {(u, i) for u, i in inter[:, :2].tolist()}
    assert len(pairs) == len(inter)  # repeated pair dropped
    assert inter[:, 0].max() == 5 and inter[:, 1].max() == 4
    mapping = open(osp.join(out, "i_id_mapping.csv")).read().splitlines()
    assert mapping[0] == "raw_id\titemID"
    items = [ln.split("\t") for ln in mapping[1:]]
    assert items == [["i1", "0"], ["i2", "1"], ["i3", "2"], ["i4", "3"], ["i5", "4"]]
    # the kept u0-i1 row is the earliest one, not the repeat at t=5000
    assert 5000 not in inter[:, 3]

    tmask = np.load(osp.join(out, "text_mask.npy"))
    imask = np.load(osp.join(out, "image_mask.npy"))
    assert tmask.tolist() == [True, True, True, True, False]
    assert imask.tolist() == [True, True, False, False, True]
    tfeat = np.load(osp.join(out, "text_feat.npy"))
    np.testing.assert_allclose(tfeat[0], char_encoder(["Red shoe A shoe."])[0])
    np.testing.assert_allclose(tfeat[1], char_encoder(["Blue hat"])[0])
    ifeat = np.load(osp.join(out, "image_feat.npy"))
    assert ifeat.dtype == np.float32 and ifeat.shape == (5, 3)
    np.testing.assert_allclose(ifeat[4], [50.0] * 3)
    np.testing.assert_allclose(ifeat[2], ifeat[imask].mean(0))
    saved = json.load(open(osp.join(out, "build_info.json")))
    assert saved["modalities"]["image"] == {"dim": 3, "present": 3, "missing": 2,
                                            "no_file": 1, "unreadable": 1}


def test_output_loads_as_mmrec_dataset(catalog, tmp_path):
    from pyg_mmrec.data import MMRecDataset
    out = str(catalog["root"] / "out" / "toy")
    B.build_dataset(catalog["inter"], out, catalog["items"], catalog["images"],
                    text_encoder=char_encoder, image_encoder=RawImageEncoder(), k=3,
                    progress=False)
    ds = MMRecDataset(str(catalog["root"] / "out"), "toy", cache_dir=str(tmp_path / "c"))
    data = ds[0]
    assert data["item"].num_nodes == 5 and data["user"].num_nodes == 6
    assert sorted(data.modalities) == ["image", "text"]
    assert data["item"]["image_mask"].tolist() == [True, True, False, False, True]


def test_resume_after_interrupted_encoding(catalog):
    out = str(catalog["root"] / "out" / "toy")
    calls = []

    def flaky(texts):
        calls.append(len(texts))
        if len(calls) == 2:
            raise KeyboardInterrupt  # the user pressed Ctrl-C during batch 2
        return char_encoder(texts)

    with pytest.raises(KeyboardInterrupt):
        B.build_dataset(catalog["inter"], out, catalog["items"], None, text_encoder=flaky,
                        k=3, batch_size=2, progress=False)
    assert not osp.exists(osp.join(out, "text_feat.npy"))
    assert osp.exists(osp.join(out, ".build_cache", "text", "0000000000.npz"))
    calls.clear()
    B.build_dataset(catalog["inter"], out, catalog["items"], None, text_encoder=flaky, k=3,
                    batch_size=2, progress=False)
    # batch 1 came from the cache; batch 3 holds only 'i5', which has no text
    assert calls == [2]
    assert not osp.exists(osp.join(out, ".build_cache"))


def test_read_interactions_auto_detect(tmp_path):
    a = B.read_interactions(write(tmp_path / "a.csv", "reviewerID,asin,overall,unixReviewTime\n"
                                                     "x,p,5,10\ny,q,4,20\n"))
    assert a.columns == {"user": "reviewerID", "item": "asin", "rating": "overall",
                         "timestamp": "unixReviewTime"}
    np.testing.assert_array_equal(a.rating, [5.0, 4.0])
    # headerless MovieLens u.data: user item rating timestamp, tab-separated
    b = B.read_interactions(write(tmp_path / "u.data", "196\t242\t3\t881250949\n"
                                                       "186\t302\t3\t891717742\n"))
    assert b.user.tolist() == ["196", "186"] and b.timestamp.tolist() == [881250949, 891717742]
    # MovieLens-1M '::' and ISO dates; no rating column
    c = B.read_interactions(write(tmp_path / "r.dat", "user::item::date\n"
                                                      "1::9::2014-03-01\n2::9::2014-03-02\n"))
    assert c.rating is None and c.timestamp[1] - c.timestamp[0] == 86400
    d = B.read_interactions(write(tmp_path / "d.csv", "who,what\n1,2\n"), user_column="who",
                            item_column="what")
    assert d.rating is None and d.timestamp is None


def test_read_interactions_errors(tmp_path):
    with pytest.raises(ValueError, match="cannot find the item column"):
        B.read_interactions(write(tmp_path / "a.csv", "userID,thing\n1,2\n"))
    with pytest.raises(ValueError, match="column 'stamp' not found"):
        B.read_interactions(write(tmp_path / "b.csv", "userID,itemID\n1,2\n"),
                            timestamp_column="stamp")
    with pytest.raises(ValueError, match=r"line 3: rating \(column 3\) is 'five'"):
        B.read_interactions(write(tmp_path / "c.csv", "userID,itemID,rating\n1,2,3\n1,3,five\n"))
    with pytest.raises(ValueError, match="line 2: 2 fields"):
        B.read_interactions(write(tmp_path / "e.csv", "userID,itemID,rating\n1,2\n"))
    with pytest.raises(ValueError, match="no header row recognised"):
        B.read_interactions(write(tmp_path / "f.csv", "a,b,c,d,e\n1,2,3,4,5\n"))
    with pytest.raises(FileNotFoundError):
        B.read_interactions(str(tmp_path / "missing.csv"))


def test_k_core_is_iterative():
    # item 2 has 2 ratings, one from user 2 who has only 1 -> removing user 2 leaves item 2
    # with one rating, which in turn must go, which leaves user 1 with one rating.
    user = np.array([0, 0, 1, 1, 2, 3, 3])
    item = np.array([0, 1, 0, 2, 2, 0, 1])
    keep = B.k_core(user, item, 2)
    assert keep.tolist() == [True, True, False, False, False, True, True]
    assert B.k_core(user, item, 0).all()


def test_split_per_user_temporal_rule():
    n = 23
    user = np.zeros(n, dtype=np.int64)
    ts = np.arange(n)[::-1].astype(float)  # file order is newest first
    lab = B.split_per_user(user, (0.8, 0.1, 0.1), ts)
    # round(0.8 * 23) = 18 oldest train, round(2.3) = 2 valid, 3 newest test
    assert np.bincount(lab).tolist() == [18, 2, 3]
    assert (ts[lab == 0].max() < ts[lab == 1].min()) and (ts[lab == 1].max() < ts[lab == 2].min())
    with pytest.raises(ValueError, match="ratios"):
        B.split_per_user(user, (0.8, 0.1, 0.2), ts)


def test_split_per_user_random_is_seeded():
    user = np.repeat(np.arange(5), 10)
    a = B.split_per_user(user, seed=1)
    assert (a == B.split_per_user(user, seed=1)).all()
    assert (a != B.split_per_user(user, seed=2)).any()
    for u in range(5):
        assert np.bincount(a[user == u]).tolist() == [8, 1, 1]


def test_temporal_split_needs_timestamps(tmp_path):
    inter = write(tmp_path / "a.csv", "userID,itemID\n1,2\n")
    with pytest.raises(ValueError, match="needs timestamps"):
        B.build_dataset(inter, str(tmp_path / "o" / "x"), split="temporal", k=0)
    with pytest.raises(ValueError, match="is empty"):
        B.build_dataset(inter, str(tmp_path / "o" / "x"), k=5)


def test_cli_main_interactions_only(catalog, capsys):
    parser = B.add_arguments(argparse.ArgumentParser())
    out = str(catalog["root"] / "cli" / "toy")
    args = parser.parse_args(["--interactions", catalog["inter"], "--out", out, "--k-core", "3",
                              "--split", "random", "--seed", "3", "--no-progress"])
    info = B.main(args)
    assert info["split"] == "random" and info["num_items"] == 5
    assert json.loads(capsys.readouterr().out)["num_users"] == 6
    assert not osp.exists(osp.join(out, "text_feat.npy"))


def test_split_small_users_get_valid_and_test():
    user = np.repeat(np.arange(4), [2, 3, 5, 10])
    lab = B.split_per_user(user, (0.8, 0.1, 0.1), np.arange(len(user), dtype=float))
    counts = [np.bincount(lab[user == u], minlength=3).tolist() for u in range(4)]
    assert counts == [[2, 0, 0], [1, 1, 1], [3, 1, 1], [8, 1, 1]]
