import json

import pytest

from pyg_mmrec.cli import main




BASE = ["train", "--model", "LightGCN", "--dataset", "tiny", "--epochs", "2", "--topk", "5,10",
        "--metric", "recall@10", "--batch-size", "64", "--quiet"]


def results_of(out):
    return sorted(out.rglob("result.json"))


def test_train_seeds_then_refuse_overwrite_then_resume(tiny_root, tmp_path, capsys):
    out = tmp_path / "runs"
    args = BASE + ["--root", str(tiny_root), "--seeds", "0,1", "--out", str(out),
                   "--missing", "i3mrec:fm:0.3"]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "| tiny | lightgcn | i3mrec:fm:0.3 |" in table and " ± " in table
    files = results_of(out)
    assert len(files) == 2
    for f in files:
        run_dir = f.parent
        assert {p.name for p in run_dir.iterdir()} >= {"config.yaml", "metrics.jsonl",
                                                       "result.json", "checkpoint.pt"}
        r = json.loads(f.read_text())
        assert r["test"]["recall@10"] >= 0 and r["config"]["train"]["epochs"] == 2
        assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2
    before = [f.read_text() for f in files]

    assert main(args) == 2  # never overwrite a previous run silently
    assert "already holds a run" in capsys.readouterr().err
    assert [f.read_text() for f in files] == before

    assert main(args + ["--resume"]) == 0  # finished runs are reused
    after = [json.loads(f.read_text()) for f in files]
    assert [a["test"] for a in after] == [json.loads(b)["test"] for b in before]


def test_grid_selects_on_validation_and_tests_only_the_selected(tiny_root, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(BASE + ["--root", str(tiny_root), "--out", str(out), "--seeds", "3",
                        "--grid", "n_layers=1,2", "--grid", "lr=0.01,0.001"]) == 0
    sel = json.loads(next(out.rglob("selection.json")).read_text())
    assert len(sel["settings"]) == 4
    best = max(sel["settings"], key=lambda s: s["score"])
    assert sel["selected"] == best["setting"]
    runs = [json.loads(f.read_text()) for f in results_of(out)]
    assert len(runs) == 4
    tested = [r for r in runs if r["test"] is not None]
    assert len(tested) == 1
    chosen = tested[0]["config"]
    assert chosen["hparams"]["n_layers"] == best["setting"]["n_layers"]
    assert chosen["train"]["lr"] == best["setting"]["lr"]
    assert "lr=" in capsys.readouterr().out


def test_grid_seeds_select_on_a_subset_then_train_the_rest(tiny_root, tmp_path):
    out = tmp_path / "runs"
    assert main(BASE + ["--root", str(tiny_root), "--out", str(out), "--seeds", "3,4",
                        "--grid", "n_layers=1,2", "--grid-seeds", "3"]) == 0
    sel = json.loads(next(out.rglob("selection.json")).read_text())
    assert "[3]" in sel["metric"] and len(sel["settings"]) == 2
    runs = [json.loads(f.read_text()) for f in results_of(out)]
    by_seed = {}
    for r in runs:
        by_seed.setdefault(r["config"]["seed"], []).append(r)
    assert len(by_seed[3]) == 2 and len(by_seed[4]) == 1  # seed 4: the selected setting only
    chosen = sel["selected"]["n_layers"]
    assert by_seed[4][0]["config"]["hparams"]["n_layers"] == chosen
    assert by_seed[4][0]["test"] is not None
    tested3 = [r for r in by_seed[3] if r["test"] is not None]
    assert [r["config"]["hparams"]["n_layers"] for r in tested3] == [chosen]
    # each seed's grid score is its validation metric: the selection used seed 3 only
    scores = {s["setting"]["n_layers"]: s["score"] for s in sel["settings"]}
    for r in by_seed[3]:
        assert scores[r["config"]["hparams"]["n_layers"]] == r["valid"]["recall@10"]


def test_tied_grid_keys_take_one_value_per_setting(tiny_root, tmp_path):
    out = tmp_path / "runs"
    assert main(BASE + ["--root", str(tiny_root), "--out", str(out), "--seeds", "3",
                        "--grid", "lr+weight_decay=0.01,0.001"]) == 0
    sel = json.loads(next(out.rglob("selection.json")).read_text())
    assert [s["setting"] for s in sel["settings"]] == [
        {"lr": 0.01, "weight_decay": 0.01}, {"lr": 0.001, "weight_decay": 0.001}]
    runs = [json.loads(f.read_text()) for f in results_of(out)]
    assert sorted((r["config"]["train"]["lr"], r["config"]["train"]["weight_decay"])
                  for r in runs) == [(0.001, 0.001), (0.01, 0.01)]


@pytest.mark.parametrize("extra, message", [
    (["--grid-seeds", "1"], "only meaningful with --grid"),
    (["--grid", "n_layers=1,2", "--grid-seeds", "1"], "not among --seeds"),

    (["--lr", "-1"], "train.lr: expected a positive number"),
    (["--model", "NoSuchNet"], "unknown model 'NoSuchNet'"),
    (["--set", "depth=3"], "unknown configuration key 'depth'"),
    (["--set", "n_layers=two"], "model.n_layers"),
    (["--missing", "bogus:0.3"], "--missing"),
    (["--topk", "10,50"], "K=50 is larger than the number of items (30)"),
    (["--fill", "median"], None),  # argparse rejects it
    (["--grid", "metric=recall@5,recall@10"], "cannot be searched"),
    (["--set", "lr_decay=[0.96]"], "train.lr_decay: expected [factor, every]"),
    (["--lr", "0.01", "--grid", "weight_decay+lr=0,1e-4"], "--grid lr: also set"),
])
def test_bad_config_fails_before_training(tiny_root, tmp_path, capsys, extra, message):
    out = tmp_path / "runs"
    args = BASE + ["--root", str(tiny_root), "--out", str(out)] + extra
    if message is None:
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 2
        return
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err
    assert not results_of(out) and not list(out.rglob("metrics.jsonl"))


def test_results_table_and_plot(tiny_root, tmp_path, capsys):
    out = tmp_path / "runs"
    for spec in ("natural", "entry:0.3"):
        assert main(BASE + ["--root", str(tiny_root), "--out", str(out), "--seeds", "0,1",
                            "--missing", spec]) == 0
    capsys.readouterr()
    assert main(["results", str(out)]) == 0
    text = capsys.readouterr().out
    rows = [line for line in text.splitlines() if line.startswith("| tiny")]
    assert len(rows) == 2 and all(" ± " in r for r in rows)
    assert "4 run(s), 2 group(s)" in text
    # mean over the two seeds
    runs = [json.loads(f.read_text()) for f in results_of(out) if "natural" in str(f)]
    mean = sum(r["test"]["recall@10"] for r in runs) / 2
    assert f"{mean:.4f} ± " in rows[0] or f"{mean:.4f} ± " in rows[1]

    png = tmp_path / "plot.png"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert main(["results", str(out), "--plot", str(png), "--metric", "recall@10"]) == 2
        assert "needs matplotlib" in capsys.readouterr().err
    else:
        assert main(["results", str(out), "--plot", str(png), "--metric", "recall@10"]) == 0
        assert png.stat().st_size > 0


def test_compare_pairs_two_models_seed_by_seed(tiny_root, tmp_path, capsys):
    out = tmp_path / "runs"
    for model, seeds in (("LightGCN", "0,1,2"), ("BPR", "0,1")):
        args = BASE + ["--root", str(tiny_root), "--out", str(out / model), "--seeds", seeds,
                       "--missing", "i3mrec:fm:0.3"]
        args[args.index("LightGCN")] = model
        assert main(args) == 0
    capsys.readouterr()
    assert main(["compare", str(out / "LightGCN"), str(out / "BPR"),
                 "--metrics", "recall@10,ndcg@5"]) == 0
    text = capsys.readouterr().out
    assert "A = lightgcn [" in text and "B = bpr [" in text
    rows = [line for line in text.splitlines() if line.startswith("| tiny")]
    assert len(rows) == 2 and "| recall@10 (test) | 2 |" in rows[0]
    runs = {(r["config"]["model"], r["config"]["seed"]): r["test"]["recall@10"]
            for r in (json.loads(f.read_text()) for f in results_of(out))}
    diff = [runs["lightgcn", s] - runs["bpr", s] for s in (0, 1)]
    assert f"| {sum(diff) / 2:+.4f} ± " in rows[0]
    assert "unpaired: tiny i3mrec:fm:0.3: seeds [2] only in A" in text
    assert main(["compare", str(out / "LightGCN"), str(out / "BPR"), "--json",
                 "--metrics", "recall@10"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["seeds"] == [0, 1] and row["diff"][0] == pytest.approx(sum(diff) / 2)
    assert row["p_value"] in (0.5, 1.0)  # 2 pairs: 2 or 4 of the 4 sign assignments
    # the default metrics include recall@20, which these runs (topk 5,10) lack
    assert main(["compare", str(out / "LightGCN"), str(out / "BPR")]) == 2
    assert "has no test metric 'recall@20'" in capsys.readouterr().err
    # both models in one folder: side A would mix two settings under one protocol
    assert main(["compare", str(out), str(out / "BPR"), "--metrics", "recall@10"]) == 2
    assert "side A holds two settings" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "none"), str(out / "BPR")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_results_missing_dir(tmp_path, capsys):
    assert main(["results", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_build_dataset_subcommand_is_wired():
    with pytest.raises(SystemExit) as e:
        main(["build-dataset", "--help"])
    assert e.value.code == 0


def test_config_file_and_set_precedence(tiny_root, tmp_path, capsys):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("n_layers: 1\ntrain:\n  lr: 0.02\n  patience: 3\n")
    out = tmp_path / "runs"
    assert main(BASE + ["--root", str(tiny_root), "--out", str(out), "--config", str(cfg),
                        "--set", "train.patience=4"]) == 0
    r = json.loads(results_of(out)[0].read_text())
    assert r["config"]["hparams"]["n_layers"] == 1
    assert r["config"]["train"]["lr"] == 0.02 and r["config"]["train"]["patience"] == 4
    cfg.write_text("train:\n  lr: -1\n")
    assert main(BASE + ["--root", str(tiny_root), "--out", str(tmp_path / "r2"),
                        "--config", str(cfg)]) == 2
    assert "train.lr" in capsys.readouterr().err


def test_each_configuration_gets_its_own_run_folder(tiny_root, tmp_path, capsys):
    out = tmp_path / "runs"
    base = BASE + ["--root", str(tiny_root), "--out", str(out), "--seeds", "0"]
    assert main(base + ["--set", "n_layers=1"]) == 0
    assert main(base + ["--set", "n_layers=2"]) == 0  # no clash with the first configuration
    folders = sorted(f.parent.parent.name for f in results_of(out))
    assert len(folders) == 2 and folders[0] != folders[1]
    assert all("n_layers=" in f and "epochs=2" in f for f in folders)
    layers = sorted(json.loads(f.read_text())["config"]["hparams"]["n_layers"]
                    for f in results_of(out))
    assert layers == [1, 2]
    # the same command again still refuses to overwrite its own run
    assert main(base + ["--set", "n_layers=2"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    # a long configuration gets a short, stable folder name
    from pyg_mmrec.cli import _run_folder
    long = {f"model.k{i}": i for i in range(40)}
    assert _run_folder(long) == _run_folder(dict(reversed(list(long.items()))))
    assert _run_folder(long).startswith("cfg-") and len(_run_folder(long)) == 16
    assert _run_folder({}) == "default"


def test_evaluate_rescores_selected_runs_at_new_cutoffs(tiny_root, tmp_path, capsys):
    out = tmp_path / "runs"
    args = ["train", "--model", "VBPR", "--plugin", "mrdib", "--dataset", "tiny", "--root",
            str(tiny_root), "--epochs", "2", "--topk", "5,10", "--metric", "recall@10",
            "--batch-size", "64", "--quiet", "--out", str(out), "--seeds", "0,1",
            "--grid-seeds", "0", "--grid", "reg_weight=0.0,0.1"]
    assert main(args) == 0
    trained = capsys.readouterr().out
    assert trained.count("| tiny | vbpr+mrdib |") == 1  # one row: the seeds form one group
    files = results_of(out)
    before = {f: f.read_bytes() for f in files}
    assert main(["evaluate", str(out), "--root", str(tiny_root), "--topk", "3,10",
                 "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "recall@3 (test)" in table and "ndcg@10 (test)" in table
    row = next(line for line in table.splitlines() if "| vbpr+mrdib |" in line)
    assert "| 2 |" in row  # seeds 0 and 1 of the selected setting
    tested = [json.loads(f.read_text()) for f in files]
    tested = [r["test"]["recall@10"] for r in tested if r["test"]]
    mean = sum(tested) / len(tested)
    assert f"{mean:.4f} ± " in row  # recall@10 re-scored = the logged one
    assert "1 run(s) skipped: their test split was never read" in table
    assert {f: f.read_bytes() for f in files} == before  # nothing written

    assert main(["evaluate", str(out), "--root", str(tiny_root), "--split", "valid",
                 "--metrics", "recall@10", "--quiet"]) == 0
    assert capsys.readouterr().out.count("| vbpr+mrdib |") == 2  # both grid settings
    assert main(["evaluate", str(tmp_path / "nope"), "--root", str(tiny_root)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["evaluate", str(out), "--root", str(tiny_root), "--topk", "0"]) == 2
    assert "topk" in capsys.readouterr().err
