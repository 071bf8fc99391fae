"""Every model of the zoo, full-graph and sampled, resumes bit for bit from a checkpoint
written mid-epoch (a fresh model, seeded differently, gets everything from the file)."""
import pytest
import torch
from conftest import stop_after
from test_sync_free_step import FULL, SAMPLED, _model
from test_trainer import cfg, same, tiny_data

from pyg_mmrec.train import Trainer, TrainingInterrupted


@pytest.mark.parametrize("name", SAMPLED + FULL)
def test_mid_epoch_resume_is_bit_for_bit(tmp_path, name):
    data = tiny_data(modalities=("image", "text"))
    train = cfg(epochs=3, eval_every=1)
    full_model = _model(name, data)
    full = Trainer(full_model, data, train, out_dir=tmp_path / "full").fit()
    with pytest.raises(TrainingInterrupted):
        stop_after(Trainer(_model(name, data), data, train, out_dir=tmp_path / "cut"), 7).fit()
    resumed_model = _model(name, data)
    with torch.no_grad():  # every weight must come from the checkpoint
        for p in resumed_model.parameters():
            p.add_(1.0)
    torch.manual_seed(123)  # and every random draw from its RNG state
    resumed = Trainer(resumed_model, data, train, out_dir=tmp_path / "cut").fit(resume=True)
    for k, v in full_model.state_dict().items():
        assert same(v, resumed_model.state_dict()[k]), k
    assert resumed.valid == full.valid and resumed.test == full.test
