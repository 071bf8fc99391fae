"""``examples/backbone_table.py``: the commands it hands to the CLI."""
import pytest

from conftest import load_script
from pyg_mmrec.cli import build_parser


@pytest.fixture
def example():
    return load_script("examples/backbone_table.py", "backbone_table")


def commands(example, monkeypatch, argv):
    seen = []
    monkeypatch.setattr(example.subprocess, "run", lambda cmd, **kw: seen.append(cmd[3:]))
    args = example.parse_args(argv)
    for model in args.models.split(","):
        example.train(model, args)
    return seen


def grid_of(cmd):
    return [cmd[i + 1] for i, a in enumerate(cmd) if a == "--grid"]


def test_mmrec_search_passes_each_models_grid(example, monkeypatch):
    cmds = commands(example, monkeypatch, ["--models", "lightgcn,FREEDOM,LGMRec",
                                           "--search", "mmrec", "--grid-seeds", "1"])
    assert grid_of(cmds[0]) == ["n_layers=1,2,3,4", "reg_weight=1e-2,1e-3,1e-4,1e-5,1e-6"]
    assert grid_of(cmds[1]) == ["dropout=0.8,0.9", "reg_weight=0.0,1e-5,1e-4,1e-3"]
    assert grid_of(cmds[2]) == []  # MMRec's LGMRec lists one value per key
    assert "--grid-seeds" in cmds[0] and "--grid-seeds" not in cmds[2]
    for cmd in cmds:  # every command is one the CLI accepts
        ns = build_parser().parse_args(cmd)
        assert ns.command == "train" and ns.grid_seeds in (None, [1])


def test_no_search_by_default_and_lr_grid_kept(example, monkeypatch):
    cmds = commands(example, monkeypatch, ["--models", "LATTICE", "--lr", "1e-3,5e-3",
                                           "--grid-seeds", "1"])
    assert grid_of(cmds[0]) == ["lr=1e-3,5e-3"] and "--grid-seeds" in cmds[0]
    cmds = commands(example, monkeypatch, ["--models", "LATTICE", "--grid-seeds", "1"])
    assert grid_of(cmds[0]) == [] and "--grid-seeds" not in cmds[0]


def test_mmrec_search_includes_mmrecs_learning_rates_unless_lr_is_given(example, monkeypatch):
    cmds = commands(example, monkeypatch, ["--models", "LATTICE,MMGCN", "--search", "mmrec"])
    assert grid_of(cmds[0]) == ["reg_weight=0.0,1e-5,1e-4,1e-3", "lr=1e-4,5e-4,1e-3,5e-3"]
    assert grid_of(cmds[1])[1] == "lr=1e-4,5e-4,1e-3,5e-3,1e-2"
    cmds = commands(example, monkeypatch, ["--models", "LATTICE", "--search", "mmrec",
                                           "--lr", "5e-3"])
    assert grid_of(cmds[0]) == ["reg_weight=0.0,1e-5,1e-4,1e-3"]
    assert cmds[0][cmds[0].index("--lr") + 1] == "5e-3"
