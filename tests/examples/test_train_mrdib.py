"""``examples/train_mrdib.py`` on a tiny dataset: both arms, the JSON-lines log and its report."""
import json

import pytest
import torch

from conftest import load_script


@pytest.fixture
def example():
    mod = load_script("examples/train_mrdib.py", "train_mrdib")
    threads = torch.get_num_threads()
    yield mod
    torch.set_num_threads(threads)  # the script pins one thread


def test_both_arms_with_yaml_settings_and_report(example, tiny_root, tmp_path, capsys):
    log = tmp_path / "runs.jsonl"
    example.main(["--root", str(tiny_root), "--dataset", "tiny", "--backbones", "vbpr",
                  "--lrs", "yaml", "--lambdas", "yaml", "--epochs", "2", "--patience", "2",
                  "--out", str(log)])
    out = capsys.readouterr().out
    runs = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["plugin"] for r in runs] == [None, "mrdib"]
    # 'yaml': neither the learning rate nor the plug-in weights are overridden
    assert all("train.lr" not in r["overrides"] for r in runs)
    assert not any(k.endswith("_weight") for r in runs for k in r["overrides"])
    assert runs[1]["overrides"]["plugin.seed"] == 1
    for r in runs:
        assert set(r["test"]) >= {"recall@5", "recall@20", "ndcg@5", "ndcg@20"}
        assert r["epochs"] == 2 and len(r["curve"]) == 2
    rows = [line for line in out.splitlines() if line.startswith("| vbpr |")]
    assert len(rows) == 2 and "+ MRdIB" in rows[1]
    expected = f"{100 * (runs[1]['test']['recall@20'] / runs[0]['test']['recall@20'] - 1):+.1f}%"
    assert expected in rows[1]
    # the same table, rebuilt from the log alone
    example.main(["--report", str(log)])
    again = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| vbpr |")]
    assert again == rows


def test_tied_grid_and_bad_arguments(example, tiny_root, tmp_path, capsys):
    assert example.tied(None) == {}
    assert example.tied(1e-2) == {"plugin.kl_weight": 1e-2, "plugin.unique_weight": 1e-2,
                                  "plugin.redundant_weight": 1e-2, "plugin.synergy_weight": 1e-2}
    base = ["--root", str(tiny_root), "--dataset", "tiny", "--backbones", "vbpr"]
    with pytest.raises(SystemExit, match="--lrs"):
        example.main(base + ["--lrs", "1e-3,abc"])
    with pytest.raises(SystemExit, match="--lambdas"):
        example.main(base + ["--lambdas", "1e-2,0"])
    with pytest.raises(SystemExit):  # unequal budgets
        example.main(base + ["--lrs", "1e-3,5e-3", "--lambdas", "1e-2"])
    assert "same budget" in capsys.readouterr().err
