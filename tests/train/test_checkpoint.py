import os
import random

import numpy as np
import pytest
import torch

from pyg_mmrec.train.checkpoint import (atomic_write, atomic_write_json, atomic_write_text,
                                        clone_state_dict, get_rng_state, load_checkpoint,
                                        save_checkpoint, set_rng_state)


def test_save_load_roundtrip(tmp_path):
    m = torch.nn.Linear(3, 2)
    path = save_checkpoint(tmp_path / "sub" / "ck.pt", {"model": m.state_dict(), "epoch": 4})
    ck = load_checkpoint(path)
    assert ck["epoch"] == 4 and torch.equal(ck["model"]["weight"], m.weight)
    assert sorted(os.listdir(path.parent)) == ["ck.pt"]  # no temporary file left


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    p = tmp_path / "x.json"
    atomic_write_json(p, {"a": 1})

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(p, boom)
    assert p.read_text().strip().replace(" ", "").replace("\n", "") == '{"a":1}'
    assert sorted(os.listdir(tmp_path)) == ["x.json"]
    atomic_write_text(p, "new")
    assert p.read_text() == "new"


def test_load_rejects_missing_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(RuntimeError, match="not a pyg_mmrec checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_rng_state_roundtrip():
    state = get_rng_state()
    a = (random.random(), np.random.rand(), torch.rand(3))
    set_rng_state(state)
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def test_clone_state_dict_is_detached_copy():
    m = torch.nn.Linear(2, 2)
    s = clone_state_dict(m)
    with torch.no_grad():
        m.weight.add_(1.0)
    assert not torch.equal(s["weight"], m.weight)
