import json

import pytest

from pyg_mmrec.results import (aggregate, comparison_table, load_results, markdown_table,
                               missing_rate, paired_comparison, plot_metric_vs_missing,
                               protocol_family, setting_label, sign_flip_p_value)


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
        with pytest.raises(ImportError, match="needs matplotlib"):
            plot_metric_vs_missing(rows, tmp_path / "p.png")
    else:
        assert plot_metric_vs_missing(rows, tmp_path / "p.png").stat().st_size > 0


def test_sign_flip_p_value_exact_and_sampled():
    # all five differences positive: only the observed and the all-negative
    # assignment are as extreme, 2 of 32
    assert sign_flip_p_value([0.1, 0.2, 0.3, 0.4, 0.5]) == pytest.approx(2 / 32)
    # one negative among five: checked against a brute-force count
    d = [0.1, 0.2, 0.3, 0.4, -0.1]
    import itertools
    obs = abs(sum(d))
    brute = sum(abs(sum(s * x for s, x in zip(signs, d))) >= obs - 1e-12
                for signs in itertools.product((1, -1), repeat=5)) / 32
    assert sign_flip_p_value(d) == pytest.approx(brute) and brute > 2 / 32
    assert sign_flip_p_value([0.0, 0.0]) == 1.0  # no difference at all
    # 2^16 assignments, counted over several blocks
    assert sign_flip_p_value([0.01] * 16) == pytest.approx(2 / 2 ** 16)
    # 0.1 + 0.2 rounds differently from 0.3: the equal assignment still counts
    assert sign_flip_p_value([0.1, 0.2, -0.3]) == 1.0
    # beyond 20 pairs: a seeded estimate that never reports 0
    p = sign_flip_p_value([0.01] * 25, samples=1000)
    assert 0 < p <= 2 / 1001 and p == sign_flip_p_value([0.01] * 25, samples=1000)
    with pytest.raises(ValueError, match="no differences"):
        sign_flip_p_value([])


def test_paired_comparison_pairs_by_protocol_and_seed(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for seed, (ra, rb) in enumerate([(0.30, 0.20), (0.32, 0.25), (0.29, 0.29)]):
        fake_run(a, "m", seed, ra, missing="i3mrec:fm:0.3", overrides={"lr": 0.1})
        fake_run(b, "m", seed, rb, missing="i3mrec:fm:0.3")
    fake_run(a, "m", 7, 0.50, missing="i3mrec:fm:0.3", overrides={"lr": 0.1})  # only in A
    fake_run(b, "n", 0, 0.10)  # a protocol only B has
    fake_run(b, "o", 5, 0.90, missing="i3mrec:fm:0.3", test=False)  # unselected: ignored
    rows = paired_comparison(load_results(a), load_results(b), metrics=("recall@20", "ndcg@20"))
    assert [r["metric"] for r in rows] == ["recall@20", "ndcg@20"]
    r = rows[0]
    assert r["missing"] == "i3mrec:fm:0.3" and r["seeds"] == [0, 1, 2]
    assert r["a"] == "lightgcn [lr=0.1]" and r["b"] == "lightgcn"
    assert r["mean_a"][0] == pytest.approx(0.30333, abs=1e-5)
    assert r["mean_b"][0] == pytest.approx(0.24667, abs=1e-5)
    assert r["diff"][0] == pytest.approx(0.05667, abs=1e-5)
    assert r["diff"][1] == pytest.approx(0.05132, abs=1e-5)  # sample std of .10, .07, 0
    assert (r["wins"], r["ties"], r["losses"]) == (2, 1, 0)
    # |sum| >= .17 for signs ++ and -- on (.10, .07), whatever the sign of 0: 4 of 8
    assert r["p_value"] == pytest.approx(0.5)
    assert r["unpaired"] == {"A": [7], "B": []}
    assert rows[1]["diff"][0] == pytest.approx(0.05667 / 2, abs=1e-5)
    table = comparison_table(rows)
    assert "| d | i3mrec:fm:0.3 | recall@20 (test) | 3 | 0.3033 ± 0.0153 | 0.2467 ± 0.0451 | " \
           "+0.0567 ± 0.0513 | 2/1/0 | 0.500 |" in table


def test_paired_comparison_refuses_what_it_cannot_pair(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    fake_run(a, "x", 0, 0.3)
    fake_run(a, "y", 1, 0.3, overrides={"lr": 0.1})  # a second setting, same protocol
    fake_run(b, "x", 0, 0.2)
    with pytest.raises(ValueError, match="side A holds two settings"):
        paired_comparison(load_results(a), load_results(b))
    fake_run(c, "x", 3, 0.2)
    fake_run(c, "copy", 3, 0.2)  # the same run twice
    with pytest.raises(ValueError, match="side A has seed 3 twice"):
        paired_comparison(load_results(c), load_results(b))
    with pytest.raises(ValueError, match="no run of A shares dataset, protocol and seed"):
        paired_comparison(load_results(c / "x"), load_results(b))
    with pytest.raises(ValueError, match="has no test metric 'hit@5'"):
        paired_comparison(load_results(b), load_results(b), metrics=("hit@5",))
    with pytest.raises(ValueError, match="side B has no run with valid metrics"):
        paired_comparison(load_results(b), [], split="valid")
