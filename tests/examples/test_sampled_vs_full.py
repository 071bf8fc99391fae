"""``examples/sampled_vs_full.py``: the commands it hands to the CLI and its verdicts."""
import json

import pytest
from conftest import load_script

from pyg_mmrec.cli import build_parser
from pyg_mmrec.config import build_config


@pytest.fixture
def example():
    return load_script("examples/sampled_vs_full.py", "sampled_vs_full")


def test_commands_are_cli_commands_with_one_fanout_per_layer(example, monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(example.subprocess, "run", lambda cmd, **kw: seen.append(cmd[3:]))
    monkeypatch.setattr(example, "table", lambda pairs, **kw: "")
    example.main(["--models", ",".join(example.LAYERS), "--out", str(tmp_path)])
    assert len(seen) == 2 * len(example.LAYERS)
    for cmd in seen:
        ns = build_parser().parse_args(cmd)
        assert ns.command == "train" and ns.seeds == [1, 2, 3] and ns.resume
        sets = dict(s.split("=", 1) for s in (ns.set or []))
        name = ns.model + ("+MRdIB" if ns.plugin == "mrdib" else "")
        if "fanout" not in sets:
            assert "full" in ns.out
            continue
        fanout = json.loads(sets["fanout"])
        assert fanout == [10] * example.LAYERS[name]
        hp = build_config(ns.model, {})["hparams"]
        layers = max(hp.get(k) or 0 for k in ("n_layers", "n_ui_layers", "n_mm_layers"))
        if ns.model in ("FREEDOM", "LATTICE", "MGCN", "LGMRec"):
            layers = hp["n_ui_layers"]  # their item-item / modality layers are not sampled
        if ns.model not in ("VBPR", "BPR"):  # no graph: any list
            assert len(fanout) == layers, (name, fanout, hp)


def test_extra_settings_reach_the_sampled_runs_only(example, monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(example.subprocess, "run", lambda cmd, **kw: seen.append(cmd[3:]))
    monkeypatch.setattr(example, "table", lambda pairs, **kw: "")
    example.main(["--models", "LGMRec", "--fanout", "20", "--set", "hyper_sample=null",
                  "--out", str(tmp_path)])
    full, sampled = (build_parser().parse_args(c) for c in seen)
    assert "hyper_sample=null" not in (full.set or [])
    assert sampled.set == ["fanout=[20,20]", "hyper_sample=null"]
    assert sampled.out.endswith("sampled20,hyper_sample=null") and full.out.endswith("full")
    for bad in (["--set", "fanout=[5,5]"], ["--set", "nokey"]):
        with pytest.raises(SystemExit):
            example.main(["--models", "LGMRec", "--table-only", *bad])


def write_run(root, seed, r20, n20, patience=None):
    d = root / (f"patience={patience}" if patience else "") / f"seed{seed}"
    d.mkdir(parents=True)
    config = {"dataset": "toy", "missing": "natural", "model": "lightgcn", "seed": seed}
    if patience:
        config["train"] = {"epochs": 400, "patience": patience}
    (d / "result.json").write_text(json.dumps({
        "config": config, "valid": {"recall@20": 0.2},
        "test": {"recall@20": r20, "ndcg@20": n20}}))


def test_table_pairs_by_seed_and_calls_a_loss_beyond_one_std(example, tmp_path):
    full, kept, lost = tmp_path / "full", tmp_path / "kept", tmp_path / "lost"
    for seed, r in zip((1, 2, 3), (0.20, 0.21, 0.22), strict=True):  # full-graph std 0.01
        write_run(full, seed, r, r / 2)
        write_run(kept, seed, r - 0.005, r / 2)
        write_run(lost, seed, r - 0.02, r / 2)
    one = tmp_path / "one"
    write_run(one, 1, 0.10, 0.05)
    out = example.table([("LightGCN", 10, full, kept), ("LightGCN", 10, full, lost),
                         ("LightGCN", 10, full, tmp_path / "absent"),
                         ("LightGCN", 10, full, one)])
    rows = out.splitlines()[2:]
    assert "-0.0050 ± 0.0000 (0/0/3)" in rows[0] and rows[0].endswith("| kept |")
    assert "-0.0200 ± 0.0000 (0/0/3)" in rows[1] and rows[1].endswith("| loses |")
    assert "not run" in rows[2]
    assert "-0.1000" in rows[3] and rows[3].endswith("| n/a (1 seed) |")  # one pair only


def test_unknown_model_is_refused(example, capsys):
    with pytest.raises(SystemExit):
        example.main(["--models", "LightGCN,Nope", "--table-only"])
    assert "--models: unknown ['Nope']" in capsys.readouterr().err


def test_table_reads_the_runs_of_its_own_budget(example, tmp_path):
    full, sampled = tmp_path / "full", tmp_path / "sampled"
    for seed, r in zip((1, 2, 3), (0.20, 0.21, 0.22), strict=True):
        for patience, shift in ((50, -0.02), (100, 0.001)):  # both budgets, same directories
            write_run(full, seed, r, r / 2, patience=patience)
            write_run(sampled, seed, r + shift, r / 2, patience=patience)
    rows = {p: example.table([("LGMRec", 10, full, sampled)], epochs=400,
                             patience=p).splitlines()[2] for p in (50, 100)}
    assert "-0.0200 ± 0.0000 (0/0/3)" in rows[50] and rows[50].endswith("| loses |")
    assert "+0.0010 ± 0.0000 (3/0/0)" in rows[100] and rows[100].endswith("| kept |")
    # without a budget both settings are read: refused, not mixed
    row = example.table([("LGMRec", 10, full, sampled)]).splitlines()[2]
    assert "(no comparison: compare: side A holds two settings" in row


def test_a_budget_other_than_the_default_is_passed_on_and_shown(example, monkeypatch, tmp_path):
    seen, tables = [], []
    monkeypatch.setattr(example.subprocess, "run", lambda cmd, **kw: seen.append(cmd[3:]))
    monkeypatch.setattr(example, "table", lambda pairs, **kw: tables.append((pairs, kw)) or "")
    example.main(["--models", "LGMRec", "--patience", "100", "--out", str(tmp_path)])
    assert all(build_parser().parse_args(c).patience == 100 for c in seen)
    (pairs, kw), = tables
    assert kw == {"epochs": 400, "patience": 100} and pairs[0][4] == ["patience=100"]
