import json

import pytest

from pyg_mmrec.results import (aggregate, load_results, markdown_table, missing_rate,
                               plot_metric_vs_missing, protocol_family, setting_label)


def fake_run(tmp_path, name, seed, recall, missing="natural", overrides=None, test=True,
             plugin_seed=None):
    cfg = {"model": "lightgcn", "plugin": None, "dataset": "d", "missing": missing,
           "fill": "zero", "seed": seed, "overrides": overrides or {}, "train": {"lr": 1e-3}}
    if plugin_seed is not None:
        cfg.update(plugin="mrdib", plugin_hparams={"kl_weight": 1e-3, "seed": plugin_seed})
    r = {"config": cfg, "valid": {"recall@20": recall}, "best_epoch": 3,
         "test": {"recall@20": recall, "ndcg@20": recall / 2} if test else None,
         "seconds_per_epoch": 1.5}
    d = tmp_path / name / f"seed{seed}"
    d.mkdir(parents=True)
    (d / "result.json").write_text(json.dumps(r))


def test_missing_rate_and_family():
    assert missing_rate("natural") == 0.0 and protocol_family("natural") == "natural"
    assert missing_rate("i3mrec:fm:0.3") == 0.3 and protocol_family("i3mrec:fm:0.3") == "i3mrec:fm"
    assert missing_rate("dgmrec:0.667") == 0.667 and missing_rate("entry:0.5") == 0.5
    assert setting_label({"train.lr": 0.01, "n_layers": 2}) == "lr=0.01,n_layers=2"
    assert setting_label({}) == "default"


def test_aggregate_mean_and_sample_std(tmp_path):
    fake_run(tmp_path, "a", 0, 0.10)
    fake_run(tmp_path, "a", 1, 0.20)
    fake_run(tmp_path, "b", 0, 0.05, missing="i3mrec:fm:0.3")
    fake_run(tmp_path, "c", 0, 0.99, overrides={"lr": 1.0}, test=False)  # unselected grid run
    rows = aggregate(load_results(tmp_path))
    assert len(rows) == 2
    nat = next(r for r in rows if r["missing"] == "natural")
    m, s = nat["metrics"]["recall@20"]
    assert m == pytest.approx(0.15) and s == pytest.approx(0.0707107, rel=1e-5)
    assert nat["seeds"] == [0, 1]
    table = markdown_table(rows, metrics=("recall@20", "ndcg@20"))
    assert "| d | lightgcn | natural | zero | default | 2 | 0.1500 ± 0.0707 | 0.0750 ± 0.0354 |" \
        in table
    assert "0.9900" not in table
    assert len(aggregate(load_results(tmp_path), split="valid")) == 3


def test_plugin_runs_of_several_seeds_form_one_group(tmp_path):
    # the plug-in's own seed follows the run's seed: seeds 0 and 1 are one setting
    fake_run(tmp_path, "p", 0, 0.10, plugin_seed=0)
    fake_run(tmp_path, "p", 1, 0.20, plugin_seed=1)
    rows = aggregate(load_results(tmp_path))
    assert len(rows) == 1 and rows[0]["seeds"] == [0, 1]
    assert rows[0]["metrics"]["recall@20"][0] == pytest.approx(0.15)
    # a plug-in seed set by hand is a setting of its own
    fake_run(tmp_path, "q", 0, 0.30, overrides={"plugin.seed": 7}, plugin_seed=7)
    fake_run(tmp_path, "r", 0, 0.40, overrides={"plugin.seed": 8}, plugin_seed=8)
    assert len(aggregate(load_results(tmp_path))) == 3


def test_load_results_rejects_foreign_json(tmp_path):
    (tmp_path / "result.json").write_text("{}")
    with pytest.raises(ValueError, match="not a pyg_mmrec result.json"):
        load_results(tmp_path)


def test_plot(tmp_path):
    fake_run(tmp_path, "a", 0, 0.10)
    fake_run(tmp_path, "b", 0, 0.05, missing="i3mrec:fm:0.3")
    rows = aggregate(load_results(tmp_path))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="needs matplotlib"):
            plot_metric_vs_missing(rows, tmp_path / "p.png")
    else:
        assert plot_metric_vs_missing(rows, tmp_path / "p.png").stat().st_size > 0
