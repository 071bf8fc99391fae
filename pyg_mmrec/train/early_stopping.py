r"""Early stopping that can only ever see *validation* metrics.

Model selection on test data inflates reported numbers; here it is impossible
by construction: :meth:`EarlyStopping.step` accepts only a
:class:`pyg_mmrec.metrics.Metrics` whose ``split`` is ``"valid"`` and refuses
plain dictionaries (which carry no split) and test metrics.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

from ..metrics import Metrics


class EarlyStopping:
    r"""Tracks the best validation score and says when to stop.

    Training stops once ``patience`` consecutive evaluations bring no
    improvement of ``metric`` (by more than ``min_delta``).

    Args:
        metric (str): key of the monitored metric, e.g. ``"recall@20"``.
        patience (int): evaluations without improvement before stopping.
        mode (str): ``"max"`` (higher is better) or ``"min"``.
        min_delta (float): minimum change that counts as an improvement.
    """

    def __init__(self, metric: str = "recall@20", patience: int = 20, mode: str = "max",
                 min_delta: float = 0.0) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode: expected 'max' or 'min', got {mode!r}")
        if patience < 0:
            raise ValueError(f"patience: expected >= 0, got {patience}")
        self.metric = metric
        self.patience = int(patience)
        self.mode = mode
        self.min_delta = float(min_delta)
        self.best_score: Optional[float] = None
        self.best_epoch: Optional[int] = None
        self.best_metrics: Optional[Dict[str, float]] = None
        self.num_bad = 0
        self.should_stop = False

    def _improves(self, score: float) -> bool:
        if self.best_score is None:
            return True
        if self.mode == "max":
            return score > self.best_score + self.min_delta
        return score < self.best_score - self.min_delta

    def step(self, epoch: int, metrics: Metrics) -> bool:
        r"""Records the validation metrics of ``epoch``.

        Returns:
            ``True`` if this epoch is the new best (save a checkpoint now).

        Raises:
            ValueError: ``metrics`` is not a validation :class:`Metrics`, or
                lacks the monitored key, or the score is NaN.
        """
        if not isinstance(metrics, Metrics):
            raise ValueError(
                f"EarlyStopping.step: expected pyg_mmrec.metrics.Metrics with split='valid', "
                f"got {type(metrics).__name__}; model selection must use validation metrics "
                f"from evaluate_full_ranking(..., split='valid')")
        if metrics.split != "valid":
            raise ValueError(f"EarlyStopping.step: got metrics of split {metrics.split!r}; "
                             f"model selection on anything but validation is not allowed")
        if self.metric not in metrics:
            raise ValueError(f"EarlyStopping: metric {self.metric!r} not in the given metrics "
                             f"(keys: {sorted(metrics)})")
        score = float(metrics[self.metric])
        if math.isnan(score):
            raise ValueError(f"EarlyStopping: {self.metric} is NaN at epoch {epoch}")
        if self._improves(score):
            self.best_score, self.best_epoch = score, int(epoch)
            self.best_metrics = metrics.to_dict()
            self.num_bad = 0
            return True
        self.num_bad += 1
        if self.num_bad >= self.patience:
            self.should_stop = True
        return False

    def state_dict(self) -> Dict[str, Any]:
        return {"metric": self.metric, "patience": self.patience, "mode": self.mode,
                "min_delta": self.min_delta, "best_score": self.best_score,
                "best_epoch": self.best_epoch, "best_metrics": self.best_metrics,
                "num_bad": self.num_bad, "should_stop": self.should_stop}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state.get("metric", self.metric) != self.metric or \
                state.get("mode", self.mode) != self.mode:
            raise ValueError(f"EarlyStopping.load_state_dict: state monitors "
                             f"{state.get('mode')} {state.get('metric')!r}, this instance "
                             f"{self.mode} {self.metric!r}")
        for k in ("patience", "min_delta", "best_score", "best_epoch", "best_metrics",
                  "num_bad", "should_stop"):
            if k in state:
                setattr(self, k, state[k])

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.mode} {self.metric}, patience="
                f"{self.patience}, best={self.best_score} @ epoch {self.best_epoch})")


__all__ = ["EarlyStopping"]
