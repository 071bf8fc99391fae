"""I3-MRec's option groups: flat keys, validation where each group is defined,
and the configuration's view of them."""
import dataclasses
from pathlib import Path

import pytest
import torch
import yaml
from conftest import random_batch, random_modal_data

from pyg_mmrec.config import ConfigError, build_config
from pyg_mmrec.models.i3mrec import I3MRec
from pyg_mmrec.models.i3mrec_options import (
    BottleneckOptions,
    CollaborativeOptions,
    FusionOptions,
    I3MRecOptions,
    PropagationOptions,
    RiskOptions,
    flat_defaults,
)

U, I = 40, 60
YAML = Path(__file__).resolve().parents[2] / "pyg_mmrec" / "configs" / "i3mrec.yaml"


def yaml_keys():
    cfg = yaml.safe_load(YAML.read_text())
    cfg.pop("train", None)
    return cfg


def test_every_yaml_key_is_one_field_and_the_defaults_agree():
    cfg, defaults = yaml_keys(), flat_defaults()
    assert set(cfg) == set(defaults)
    assert cfg == defaults  # the YAML documents the dataclass defaults, value for value
    groups = [PropagationOptions, RiskOptions, BottleneckOptions, FusionOptions,
              CollaborativeOptions]
    fields = [f.name for g in groups for f in dataclasses.fields(g)]
    assert len(fields) == len(set(fields)) == len(defaults)


def test_flat_keys_go_to_their_groups_and_back():
    opts = I3MRecOptions.from_flat({"penalty_coeff": 10, "fanout": [5, 5, 5],
                                    "id_branch": "lightgcn", "mask_prob": 0.25})
    assert opts.risk.penalty_coeff == 10.0 and isinstance(opts.risk.penalty_coeff, float)
    assert opts.propagation.fanout == [5, 5, 5]
    assert opts.collaborative.id_branch == "lightgcn" and opts.fusion.mask_prob == 0.25
    assert opts.bottleneck == BottleneckOptions()  # untouched group
    flat = opts.to_flat()
    assert I3MRecOptions.from_flat(flat) == opts
    # a base keeps what the flat keys do not replace
    again = I3MRecOptions.from_flat({"penalty_coeff": 0.0}, base=opts)
    assert again.risk.penalty_coeff == 0.0 and again.propagation.fanout == [5, 5, 5]
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.risk.penalty_coeff = 1.0


@pytest.mark.parametrize("key,value,message", [
    ("embedding_size", 0, "embedding_size: expected an integer >= 1"),
    ("embedding_size", 8.5, "embedding_size"),
    ("n_layers", -1, "n_layers: expected an integer >= 0"),
    ("fanout", [5, 5], "fanout: expected one entry per layer"),
    ("penalty", "dro", "penalty: expected one of"),
    ("penalty_coeff", -1.0, "penalty_coeff: expected >= 0"),
    ("modal_bpr_coeff", "a", "modal_bpr_coeff: expected a number"),
    ("reg_coeff", float("nan"), "reg_coeff: expected >= 0"),
    ("temperature", 0.0, "temperature: expected > 0"),
    ("min_info", "mine", "min_info: expected one of"),
    ("max_info_coeff", -1e-3, "max_info_coeff"),
    ("club_batch", 1, "club_batch: expected an integer >= 2"),
    ("club_hidden", 0, "club_hidden"),
    ("fusion_mode", "max", "fusion_mode: expected one of"),
    ("fusion_transform", "relu", "fusion_transform: expected one of"),
    ("fusion_dropout", 1.0, "fusion_dropout: expected a fraction in"),
    ("mask_prob", 1.0, "mask_prob: expected a probability in"),
    ("num_masked_views", 0, "num_masked_views: expected an integer >= 1"),
    ("id_branch", "mlp", "id_branch: expected one of"),
    ("item_graph", "knn", "needs id_branch"),
    ("knn_k", 2.5, "knn_k: expected an integer >= 1"),
    ("knn_method", "hnsw", "knn_method: expected one of"),
    ("item_graph_layers", 0, "item_graph_layers"),
    ("edge_dropout", -0.1, "edge_dropout: expected a fraction in"),
])
def test_each_group_names_the_bad_key(key, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        I3MRecOptions.from_flat({key: value})
    # the model reports the same, before building anything
    ei, feats, masks = random_modal_data(U, I, 0)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        I3MRec(U, I, ei, feats, masks, **{key: value})


def test_unknown_key_and_wrong_options_type():
    with pytest.raises(ValueError, match=r"unknown hyper-parameter\(s\) \['penalty_cof'\]"):
        I3MRecOptions.from_flat({"penalty_cof": 1.0})
    with pytest.raises(ValueError, match="risk: expected a RiskOptions"):
        I3MRecOptions(risk=FusionOptions())
    ei, feats, masks = random_modal_data(U, I, 0)
    with pytest.raises(ValueError, match="options: expected an I3MRecOptions"):
        I3MRec(U, I, ei, feats, masks, options={"penalty_coeff": 1.0})


def test_options_object_and_flat_keys_build_the_same_model():
    ei, feats, masks = random_modal_data(U, I, 0)
    flat = {"embedding_size": 16, "n_layers": 2, "id_branch": "embedding",
            "penalty_coeff": 10.0, "fusion_transform": "linear"}
    torch.manual_seed(0)
    a = I3MRec(U, I, ei, feats, masks, **flat)
    torch.manual_seed(0)
    opts = I3MRecOptions(propagation=PropagationOptions(embedding_size=16, n_layers=2),
                         risk=RiskOptions(penalty_coeff=10.0),
                         fusion=FusionOptions(fusion_transform="linear"),
                         collaborative=CollaborativeOptions(id_branch="embedding"))
    b = I3MRec(U, I, ei, feats, masks, options=opts)
    assert a.options == b.options and a.penalty_coeff == 10.0
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    # flat keys given with an options object replace its fields
    torch.manual_seed(0)
    c = I3MRec(U, I, ei, feats, masks, options=opts, penalty_coeff=0.0, use_ib=False)
    assert c.options.risk.penalty_coeff == 0.0 and not c.options.bottleneck.use_ib
    assert c.options.propagation == opts.propagation
    terms = c.loss(*random_batch(U, I))
    assert "vrex" not in terms and "infonce" not in terms


def test_configuration_reads_the_flat_keys_from_the_model():
    cfg = build_config("I3MRec", {"penalty_coeff": 1, "id_branch": "lightgcn"})
    assert cfg["hparams"]["penalty_coeff"] == 1.0 and cfg["hparams"]["id_branch"] == "lightgcn"
    with pytest.raises(ConfigError, match="'model.penalty_coeff': expected a value of type float"):
        build_config("I3MRec", {"penalty_coeff": "high"})
    with pytest.raises(ConfigError, match="unknown configuration key 'options'"):
        build_config("I3MRec", {"options": None})
    # the class itself (not its registry name) knows the same keys and defaults
    cfg = build_config(I3MRec, {"model.knn_k": 5})
    assert cfg["hparams"] == {"knn_k": 5}
    with pytest.raises(ConfigError, match="unknown key 'depth'"):
        build_config(I3MRec, {"model.depth": 2})
