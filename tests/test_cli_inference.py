"""Command line: train --cold-items, results with new-item columns, recommend, export."""
import json

import numpy as np
import pytest

from pyg_mmrec.cli import main

TRAIN = ["train", "--dataset", "tiny", "--epochs", "2", "--topk", "5,10", "--metric",
         "recall@10", "--batch-size", "64", "--quiet", "--seeds", "1"]


@pytest.fixture
def trained(tiny_root, tmp_path, capsys):
    out = tmp_path / "runs"
    (tiny_root / "tiny" / "items.tsv").write_text(
        "itemID\tml100k_id\ttext\n" + "".join(
            f"{j}\t{j + 1}\tMovie {j} ({1990 + j}). Genres: Drama. A plot.\n" for j in range(30)))
    assert main(TRAIN + ["--model", "VBPR", "--root", str(tiny_root), "--out", str(out),
                         "--cold-items", "0.4"]) == 0
    table = capsys.readouterr().out
    assert "new-item recall@10 (test)" in table and "| 0.4 |" in table
    (run_dir,) = [p.parent for p in (out / "vbpr-tiny-natural-cold0.4").rglob("result.json")]
    assert run_dir.name == "seed1"
    return tiny_root, out, run_dir


def test_results_show_new_item_columns(trained, capsys):
    _, out, _ = trained
    assert main(["results", str(out)]) == 0
    table = capsys.readouterr().out
    head = table.splitlines()[0]
    assert "new items" in head and "new-item recall@20 (test)" in head
    assert head.index("new-item recall@10") < head.index("| recall@10")


def test_recommend_formats(trained, capsys):
    root, _, run_dir = trained
    base = ["recommend", str(run_dir), "--users", "0,5", "--k", "3", "--root", str(root)]
    assert main(base) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| user | rank | item | score | title |" and len(lines) == 2 + 6
    assert "Movie " in lines[2] and "(19" in lines[2] and "Genres" not in lines[2]
    assert main(base + ["--format", "json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in records] == [1, 2, 3, 1, 2, 3]
    assert {r["user"] for r in records} == {0, 5}
    assert main(base + ["--format", "csv"]) == 0
    csv_lines = capsys.readouterr().out.splitlines()
    assert csv_lines[0] == "user,rank,item,score,title" and len(csv_lines) == 7
    # the same items as the Python API
    import pyg_mmrec
    items, _ = pyg_mmrec.load(run_dir, root=root).recommend([0, 5], k=3)
    assert [r["item"] for r in records] == items.reshape(-1).tolist()


@pytest.mark.parametrize("extra,message", [
    (["--users", "0,999"], "users: unknown user id 999"),
    (["--users", "a"], "--users: expected integer user ids"),
    (["--users", "0", "--k", "0"], "k: expected an integer in 1.."),
    (["--users", "0", "--ids", "original"], "no u_id_mapping.csv"),
])
def test_recommend_errors_are_one_line(trained, capsys, extra, message):
    root, _, run_dir = trained
    assert main(["recommend", str(run_dir), "--root", str(root)] + extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_recommend_unfinished_and_damaged_runs(trained, tmp_path, capsys):
    import shutil
    root, _, run_dir = trained
    bad = tmp_path / "bad"
    shutil.copytree(run_dir, bad)
    (bad / "result.json").unlink()
    assert main(["recommend", str(bad), "--users", "0", "--root", str(root)]) == 2
    assert "--resume" in capsys.readouterr().err
    shutil.rmtree(bad)
    shutil.copytree(run_dir, bad)
    (bad / "checkpoint.pt").write_bytes(b"\x00" * 10)
    assert main(["recommend", str(bad), "--users", "0", "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert "checkpoint.pt: cannot be read" in err and "Traceback" not in err


def test_export_writes_embeddings_and_refuses_to_overwrite(trained, tmp_path, capsys):
    root, _, run_dir = trained
    out = tmp_path / "export"
    assert main(["export", str(run_dir), "--out", str(out), "--root", str(root)]) == 0
    user = np.load(out / "user_embeddings.npy")
    item = np.load(out / "item_embeddings.npy")
    meta = json.loads((out / "export.json").read_text())
    assert user.shape[0] == meta["num_users"] == 20 and item.shape[0] == meta["num_items"] == 30
    assert user.shape[1] == item.shape[1] == meta["dim"]
    assert (out / "items.tsv").read_text().splitlines()[0] == "itemID"
    import pyg_mmrec
    rec = pyg_mmrec.load(run_dir, root=root)
    assert np.allclose(user @ item.T, rec.score(range(20), range(30)).numpy(), atol=1e-5)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(["export", str(run_dir), "--out", str(out), "--root", str(root)]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert main(["export", str(run_dir), "--out", str(out), "--root", str(root),
                 "--force"]) == 0
    assert not list(out.glob(".*.tmp"))


def test_train_rejects_a_bad_share(tiny_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(TRAIN + ["--model", "VBPR", "--root", str(tiny_root), "--cold-items", "1.5"])
    assert e.value.code == 2
    assert "--cold-items: expected a share in (0, 1)" in capsys.readouterr().err


def test_recommend_with_original_ids(trained, capsys):
    root, _, run_dir = trained
    folder = root / "tiny"
    (folder / "u_id_mapping.csv").write_text(
        "raw_id\tuserID\n" + "".join(f"alice{j}\t{j}\n" for j in range(20)))
    (folder / "i_id_mapping.csv").write_text(
        "raw_id\titemID\n" + "".join(f"sku{j}\t{j}\n" for j in range(30)))
    assert main(["recommend", str(run_dir), "--root", str(root), "--users", "alice3",
                 "--ids", "original", "--k", "4", "--format", "json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert main(["recommend", str(run_dir), "--root", str(root), "--users", "3", "--k", "4",
                 "--format", "json"]) == 0
    internal = json.loads(capsys.readouterr().out)
    assert [r["item"] for r in records] == [f"sku{r['item']}" for r in internal]
    assert [r["title"] for r in records] == [r["title"] for r in internal]
    assert {r["user"] for r in records} == {"alice3"}
