import pytest

from pyg_mmrec.config import (CONFIG_DIR, ConfigError, build_config, check_against_data,
                              eval_ks, grid_settings, load_yaml, parse_assignments, parse_grid,
                              parse_value, train_defaults, validate_train)


def test_train_yaml_is_complete_and_valid():
    t = validate_train(train_defaults())
    assert t["epochs"] == 1000 and t["patience"] == 50 and t["batch_size"] == 2048
    assert t["lr"] == 1e-3 and t["topk"] == [5, 10, 20, 50] and t["metric"] == "recall@20"


def test_layers_model_yaml_then_overrides():
    c = build_config("LightGCN", {"n_layers": 3, "lr": 1e-2, "train.topk": [5, 20]})
    assert c["model"] == "lightgcn"
    assert c["hparams"]["n_layers"] == 3
    yaml_defaults = load_yaml(CONFIG_DIR / "lightgcn.yaml")
    assert c["hparams"]["embedding_size"] == yaml_defaults["embedding_size"]
    assert c["train"]["lr"] == 1e-2 and c["train"]["topk"] == [5, 20]
    assert eval_ks(c["train"]) == [5, 20]
    # int accepted (and widened) where the default is a float
    assert build_config("lightgcn", {"reg_weight": 0})["hparams"]["reg_weight"] == 0.0
    assert build_config("lightgcn", {"model.reg_weight": 1e-3})["hparams"]["reg_weight"] == 1e-3


@pytest.mark.parametrize("overrides, message", [
    ({"lr": -1e-3}, "train.lr: expected a positive number"),
    ({"lr": 0}, "train.lr: expected a positive number"),
    ({"lr": "fast"}, "train.lr: expected a number"),
    ({"epochs": 0}, "train.epochs: expected an integer >= 1"),
    ({"batch_size": 2.5}, "train.batch_size"),
    ({"patience": True}, "train.patience"),
    ({"topk": [0, 10]}, "train.topk"),
    ({"metric": "auc@10"}, "train.metric"),
    ({"grad_clip": -1}, "train.grad_clip"),
    ({"deterministic": "yes"}, "train.deterministic: expected true or false"),
    ({"n_layers": 1.5}, "'model.n_layers': expected a value of type int"),
    ({"n_layers": "two"}, "'model.n_layers'"),
    ({"no_such_key": 1}, "unknown configuration key 'no_such_key'"),
    ({"train.no_such_key": 1}, "unknown key 'no_such_key' for train"),
    ({"model.lr": 1}, "unknown key 'lr' for model"),
    ({"foo.lr": 1}, "unknown section 'foo'"),
    ({"plugin.kl_weight": 1}, "no plug-in selected"),
])
def test_bad_values_fail_with_clear_message(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_config("lightgcn", overrides)


def test_unknown_model_and_plugin():
    with pytest.raises(ConfigError, match="unknown model 'NoSuchNet'"):
        build_config("NoSuchNet")
    with pytest.raises(ConfigError, match="unknown plug-in 'xyz'"):
        build_config("lightgcn", plugin="xyz")
    with pytest.raises(ConfigError, match="expected a registry name or a callable"):
        build_config(42)


def test_k_larger_than_item_count():
    c = build_config("bpr", {"topk": [10, 20, 50]})
    check_against_data(c, num_items=50)
    with pytest.raises(ConfigError, match="K=50 is larger than the number of items \\(40\\)"):
        check_against_data(c, num_items=40)
    c = build_config("bpr", {"topk": [5], "metric": "ndcg@30"})
    with pytest.raises(ConfigError, match="K=30"):
        check_against_data(c, num_items=20)


def test_callable_model_keys_from_signature():
    def net(num_users, num_items, train_edge_index, features, masks, dim=8, tau=0.5):
        raise AssertionError("not built by build_config")
    c = build_config(net, {"dim": 16, "lr": 0.1})
    assert c["model"] == "net" and c["hparams"] == {"dim": 16} and c["train"]["lr"] == 0.1
    with pytest.raises(ConfigError, match="'model.dim': expected a value of type int"):
        build_config(net, {"dim": 1.5})
    with pytest.raises(ConfigError, match="unknown configuration key 'depth'"):
        build_config(net, {"depth": 2})


def test_plugin_keys():
    pytest.importorskip("pyg_mmrec.models.mrdib")
    c = build_config("lightgcn", {"plugin.kl_weight": 0.01, "unique_weight": 0.0}, plugin="mrdib")
    assert c["plugin"] == "mrdib"
    assert c["plugin_hparams"]["kl_weight"] == 0.01 and c["plugin_hparams"]["unique_weight"] == 0.0


def test_parse_value_and_assignments():
    assert parse_value("1e-3") == 1e-3 and parse_value("3") == 3 and parse_value("true") is True
    assert parse_value("[10,20]") == [10, 20] and parse_value("null") is None
    assert parse_value("mean") == "mean"
    assert parse_assignments(["lr=1e-3", "topk=[5, 10]"]) == {"lr": 1e-3, "topk": [5, 10]}
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_assignments(["lr"])


def test_parse_grid():
    g = parse_grid(["lr=1e-3,1e-2", "topk=[10,20],[5]", "n_layers=1"])
    assert g == {"lr": [1e-3, 1e-2], "topk": [[10, 20], [5]], "n_layers": [1]}
    with pytest.raises(ConfigError, match="empty value"):
        parse_grid(["lr=1e-3,"])
    with pytest.raises(ConfigError, match="given twice"):
        parse_grid(["lr=1", "lr=2"])


def test_lr_decay_is_checked():
    t = train_defaults()
    assert validate_train(t)["lr_decay"] is None
    assert validate_train({**t, "lr_decay": [0.96, 50]})["lr_decay"] == [0.96, 50.0]
    for bad in ([0.96], [0, 50], [0.9, -1], "0.96,50", [0.9, "x"]):
        with pytest.raises(ConfigError, match=r"train.lr_decay: expected \[factor, every\]"):
            validate_train({**t, "lr_decay": bad})


def test_tied_grid_keys_are_one_dimension():
    g = parse_grid(["plugin.kl_weight + plugin.unique_weight=1e-3,1e-2", "n_layers=1,2"])
    assert g == {"plugin.kl_weight+plugin.unique_weight": [1e-3, 1e-2], "n_layers": [1, 2]}
    settings = grid_settings(g)
    assert len(settings) == 4  # 2 tied values x 2 layer counts, not 2 x 2 x 2
    assert {"plugin.kl_weight": 1e-2, "plugin.unique_weight": 1e-2, "n_layers": 1} in settings
    assert all(s["plugin.kl_weight"] == s["plugin.unique_weight"] for s in settings)
    assert grid_settings({}) == [{}]
    with pytest.raises(ConfigError, match="given twice"):
        parse_grid(["lr+reg_weight=1,2", "lr=3"])
    with pytest.raises(ConfigError, match="given twice"):
        parse_grid(["lr+lr=1,2"])
    with pytest.raises(ConfigError, match="empty key"):
        parse_grid(["lr+=1,2"])


def test_tensorboard_needs_the_package():
    try:
        import torch.utils.tensorboard  # noqa: F401
    except Exception:
        with pytest.raises(ConfigError, match="needs the `tensorboard` package"):
            build_config("bpr", {"tensorboard": True})
    else:
        assert build_config("bpr", {"tensorboard": True})["train"]["tensorboard"] is True


def test_config_overrides_file(tmp_path):
    from pyg_mmrec.config import config_overrides
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("n_layers: 1\ntrain:\n  lr: 0.02\n")
    assert config_overrides(cfg) == {"model.n_layers": 1, "train.lr": 0.02}
    with pytest.raises(ConfigError, match="not found"):
        config_overrides(tmp_path / "missing.yaml")
    cfg.write_text("train: 3\n")
    with pytest.raises(ConfigError, match="'train' must be a mapping"):
        config_overrides(cfg)


def test_shipped_example_configs_build():
    """Every YAML under examples/configs/ is a valid override set of its model."""
    from pathlib import Path

    from pyg_mmrec.config import config_overrides
    for path in sorted((Path(__file__).resolve().parents[1] / "examples" / "configs").glob("*.yaml")):
        model = path.stem.split("_")[0]
        build_config(model, config_overrides(path))


def test_parameters_read_from_source_match_the_imported_classes():
    """build_config reads a registered model's constructor parameters from its source
    (no PyTorch import); they must be exactly what the imported class declares, or None
    (then it falls back to importing)."""
    import importlib

    from pyg_mmrec import config as C
    from pyg_mmrec.models import MODELS
    entries = [(e, C._MODEL_DATA_ARGS) for e in MODELS.values()]
    entries += [(e, C._PLUGIN_DATA_ARGS) for e in C.PLUGINS.values()]
    for entry, skip in entries:
        module, cls = entry.split(":")
        real = C._constructor_params(getattr(importlib.import_module(module), cls), skip)
        static = C._static_constructor_params(entry, skip)
        assert static is None or static == real, entry
        for k, v in (static or {}).items():
            assert type(v) is type(real[k]), (entry, k)


def test_source_reading_falls_back_when_a_default_is_not_a_literal(tmp_path, monkeypatch):
    from pyg_mmrec import config as C
    (tmp_path / "fake_model_mod.py").write_text(
        "import math\nclass Base:\n    def __init__(self, num_users, *, a: int = 1, b=-2.5,"
        " c=(1, 'x'), d=None):\n        pass\nclass Child(Base):\n    pass\n"
        "class Odd:\n    def __init__(self, num_users, e=math.pi):\n        pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert C._static_constructor_params("fake_model_mod:Child", ("num_users",)) == \
        {"a": 1, "b": -2.5, "c": (1, "x"), "d": None}
    assert C._static_constructor_params("fake_model_mod:Odd", ("num_users",)) is None
    assert C._static_constructor_params("fake_model_mod:Missing", ()) is None
