import pytest

from pyg_mmrec.metrics import Metrics
from pyg_mmrec.train.early_stopping import EarlyStopping


def valid(r):
    return Metrics({"recall@20": r, "ndcg@20": r / 2}, 1, "valid")


def test_tracks_best_and_stops_after_patience():
    es = EarlyStopping("recall@20", patience=2)
    assert es.step(0, valid(0.1)) is True
    assert es.step(1, valid(0.2)) is True
    assert es.step(2, valid(0.2)) is False  # equal is not an improvement
    assert not es.should_stop
    assert es.step(3, valid(0.15)) is False
    assert es.should_stop and es.best_epoch == 1 and es.best_score == 0.2
    assert es.best_metrics == {"recall@20": 0.2, "ndcg@20": 0.1}


def test_min_mode_and_min_delta():
    es = EarlyStopping("recall@20", patience=1, mode="min", min_delta=0.05)
    es.step(0, valid(0.5))
    assert es.step(1, valid(0.47)) is False and es.should_stop
    es = EarlyStopping("recall@20", patience=3, mode="min")
    es.step(0, valid(0.5))
    assert es.step(1, valid(0.4)) is True and es.best_epoch == 1


def test_refuses_test_metrics_and_plain_dicts():
    es = EarlyStopping()
    with pytest.raises(ValueError, match="split 'test'"):
        es.step(0, Metrics({"recall@20": 0.3}, 1, "test"))
    with pytest.raises(ValueError, match="expected pyg_mmrec.metrics.Metrics"):
        es.step(0, {"recall@20": 0.3})
    with pytest.raises(ValueError, match="'hit@5' not in"):
        EarlyStopping("hit@5").step(0, valid(0.1))
    with pytest.raises(ValueError, match="mode"):
        EarlyStopping(mode="best")
    assert es.best_score is None  # nothing was recorded


def test_state_dict_roundtrip():
    es = EarlyStopping(patience=3)
    for e, r in enumerate([0.1, 0.3, 0.2]):
        es.step(e, valid(r))
    es2 = EarlyStopping(patience=3)
    es2.load_state_dict(es.state_dict())
    assert (es2.best_epoch, es2.best_score, es2.num_bad) == (1, 0.3, 1)
    es2.step(3, valid(0.1))
    es2.step(4, valid(0.1))
    assert es2.should_stop
    with pytest.raises(ValueError, match="monitors"):
        EarlyStopping("ndcg@20").load_state_dict(es.state_dict())
