r"""The training loop: BPR mini-batches, validation with early stopping,
exact resume, and a single test evaluation at the selected epoch.

The loop is written for one process. The epoch's BPR triples come from
``BPRSampler.sample(epoch, rank, world_size)`` (a disjoint shard per rank), and
:class:`Trainer` exposes public hooks that a subclass overrides to train one
rank of a data-parallel job (:class:`~pyg_mmrec.train.distributed.DistributedTrainer`)
or to observe the loop, each a no-op (or the identity) in one process:

=================================  ================================================
hook                               called
=================================  ================================================
:meth:`Trainer.auxiliary_loss`     for the estimator step of every batch
:meth:`Trainer.reduce_gradients`   after every backward, before the optimiser step
:meth:`Trainer.sync_batch`         after every optimiser step, with the loss values
:meth:`Trainer.on_batch_end`       after every batch (its terms are logged)
:meth:`Trainer.should_stop`        after every batch and epoch: honour a stop request?
:meth:`Trainer.on_epoch_end`       after the last batch of every epoch
:meth:`Trainer.on_validation`      after every validation: end training now?
=================================  ================================================

Only rank 0 writes files.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import torch
from torch import Tensor

from .checkpoint import (CHECKPOINT_NAME, atomic_write_text, clone_state_dict, get_rng_state,
                         load_checkpoint, save_checkpoint, set_rng_state)


class TrainingInterrupted(RuntimeError):
    """Training stopped on request (SIGINT); a checkpoint was written."""

    def __init__(self, checkpoint: Optional[Path], epoch: int, batch: int) -> None:
        where = (f"a checkpoint was written to {checkpoint}" if checkpoint
                 else "no output directory, nothing saved")
        super().__init__(f"training interrupted at epoch {epoch}, batch {batch}; {where}")
        self.checkpoint = checkpoint
        self.epoch = epoch
        self.batch = batch


@dataclass
class TrainData:
    r"""Everything the trainer needs besides the model.

    ``train_*`` are the (filled) inputs seen during training, ``eval_*`` the
    ones seen at validation/test time (they differ under the ``fm`` protocols,
    where the test-time masks hide more modalities than the training ones).
    Under the new-item protocol ``num_items`` counts the training (warm) items
    and ``valid``/``test`` pairs use internal ids up to ``cold.num_items``.
    """

    num_users: int
    num_items: int
    train_edge_index: Tensor
    valid_edge_index: Tensor
    test_edge_index: Tensor
    train_features: Dict[str, Tensor] = field(default_factory=dict)
    train_masks: Dict[str, Tensor] = field(default_factory=dict)
    eval_features: Optional[Dict[str, Tensor]] = None
    eval_masks: Optional[Dict[str, Tensor]] = None
    #: new-item protocol: the model trains on ``num_items`` warm items and is evaluated
    #: after the new ones are added (:class:`pyg_mmrec.train.cold.ColdEval`)
    cold: Optional[Any] = None

    def eval_inputs_differ(self) -> bool:
        """Whether validation needs :meth:`Recommender.set_modality_inputs`."""
        if self.eval_features is None and self.eval_masks is None:
            return False
        ef = self.eval_features if self.eval_features is not None else self.train_features
        em = self.eval_masks if self.eval_masks is not None else self.train_masks
        for m in self.train_features:
            x = self.train_features[m]
            if ef[m] is not x and not torch.equal(ef[m], x):
                return True
            a, b = em.get(m), self.train_masks.get(m)
            if (a is None) != (b is None) or (a is not None and not torch.equal(a, b)):
                return True
        return False


@dataclass
class FitResult:
    """Outcome of :meth:`Trainer.fit`. Epochs are counted from 0."""

    best_epoch: int
    valid: Dict[str, float]
    test: Optional[Dict[str, float]]
    seconds_per_epoch: float
    seconds_per_eval: float
    epochs: int
    stopped_early: bool
    history: List[Dict[str, Any]]


class BatchLoss(torch.nn.Module):
    r"""``forward(users, pos, neg) -> model.loss(users, pos, neg)``.

    The trainer computes every batch loss through this module, so that
    distributed training can wrap it in
    :class:`~torch.nn.parallel.DistributedDataParallel` (which hooks ``forward``)
    without touching the models."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, users: Tensor, pos: Tensor, neg: Tensor) -> Dict[str, Tensor]:
        return self.model.loss(users, pos, neg)


def _clock(seconds: float) -> str:
    seconds = int(round(max(0.0, seconds)))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def progress_line(record: Mapping[str, Any], epochs: int, elapsed: float, metric: str,
                  best_epoch: int = -1, best_value: Optional[float] = None) -> str:
    r"""The line printed after each epoch, e.g.::

        epoch 3/50  loss 0.6214  1.20s  elapsed 0:04  ETA <= 1:03  valid recall@20 0.0712
        best 0.0712 (epoch 3)

    (one line on the terminal; wrapped here).

    Epochs count from 1 here. The ETA assumes every remaining epoch (up to
    ``epochs``) runs at the mean pace so far, evaluations included: early
    stopping can only end the run sooner, hence ``<=``.

    Args:
        record (dict): the epoch's log record (``epoch`` from 0, ``loss``,
            ``seconds``, and ``valid`` on evaluated epochs).
        epochs (int): the epoch budget.
        elapsed (float): training and evaluation seconds so far (across resumes).
        metric (str): the selection metric, e.g. ``"recall@20"``.
        best_epoch (int): the best validated epoch so far (from 0; -1: none yet).
        best_value (float, optional): its validation ``metric``.
    """
    done = int(record["epoch"]) + 1
    s = f"epoch {done}/{epochs}  loss {record.get('loss', float('nan')):.4f}  " \
        f"{record.get('seconds', 0.0):.2f}s  elapsed {_clock(elapsed)}"
    if done < epochs:
        s += f"  ETA <= {_clock(elapsed / done * (epochs - done))}"
    if "valid" in record:
        s += f"  valid {metric} {record['valid'].get(metric, float('nan')):.4f}"
    if best_value is not None and best_epoch >= 0:
        s += f"  best {best_value:.4f} (epoch {best_epoch + 1})"
    return s


def metrics_to_dict(metrics: Any) -> Dict[str, float]:
    """A :class:`pyg_mmrec.metrics.Metrics` (or any mapping) -> ``{name: float}``."""
    for attr in ("to_dict", "as_dict"):
        if hasattr(metrics, attr):
            metrics = getattr(metrics, attr)()
            break
    if not isinstance(metrics, Mapping):
        raise TypeError(f"cannot read metrics from {type(metrics).__name__}")
    out = {}
    for k, v in metrics.items():
        if isinstance(v, Tensor):
            v = v.item()
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[str(k)] = float(v)
    return out


class Trainer:
    r"""Trains a :class:`~pyg_mmrec.models.Recommender` with BPR mini-batches.

    Each epoch draws the shuffled BPR triples :math:`(u, i^+, i^-)` of
    ``BPRSampler.sample(epoch)`` and, per mini-batch,

    1. if the model has auxiliary (estimator) parameters, steps them on
       ``model.auxiliary_loss(u, i+, i-)`` with their own Adam optimiser;
    2. steps the model's parameters on :math:`\sum_t \mathcal{L}_t`, the sum of
       the named terms returned by ``model.loss(u, i+, i-)``.

    Every ``eval_every`` epochs the model is validated (full ranking, with the
    evaluation features/masks) and :class:`~pyg_mmrec.train.EarlyStopping`
    watches ``train["metric"]``; the best state is kept. At the end the best
    state is restored and the test split is evaluated **once**.

    Models with sparse embedding gradients (sampled training, ``fanout``) are
    stepped with :class:`~pyg_mmrec.train.optim.LazyAdam` (only the batch's
    rows; ``train["lazy_embeddings"] = False`` switches their embeddings to
    dense gradients and plain Adam, as full-graph training);
    ``train["eval_max_users"]`` caps the users ranked per evaluation (a fixed
    seeded subset, see :meth:`_eval_target`).

    With ``out_dir`` the trainer writes ``metrics.jsonl`` (one JSON line per
    epoch) and an atomic ``checkpoint.pt`` from which :meth:`fit` with
    ``resume=True`` continues bit-for-bit (on CPU), also from the middle of an
    epoch after a ``SIGINT``.

    Args:
        model: the recommender (already on ``device`` or moved there).
        data: the splits and modality inputs (:class:`TrainData`).
        train: validated training settings (see ``configs/train.yaml``).
        seed: seed of the BPR sampler.
        out_dir: run directory for the log and the checkpoint (``None``: in memory only).
        device: ``"cpu"`` or ``"cuda"``.
        quiet: no progress bars and no per-epoch lines.
        config: the full run configuration, stored in the checkpoint.
        rank, world_size: process rank and count (distributed training).
    """

    def __init__(self, model: torch.nn.Module, data: TrainData, train: Mapping[str, Any],
                 seed: int = 0, out_dir: Optional[os.PathLike] = None,
                 device: str | torch.device = "cpu", quiet: bool = True,
                 config: Optional[Mapping[str, Any]] = None, rank: int = 0,
                 world_size: int = 1) -> None:
        from pyg_mmrec.config import eval_ks, metric_key  # lazy: config imports models
        from pyg_mmrec.data import BPRSampler

        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.data = data
        self.train_cfg = dict(train)
        self.seed = int(seed)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.quiet = quiet
        self.config = dict(config) if config is not None else {"train": self.train_cfg}
        self.rank, self.world_size = int(rank), int(world_size)
        self.ks = eval_ks(self.train_cfg)
        self.metric = metric_key(self.train_cfg["metric"])
        if data.cold is None and self.metric.startswith("cold/"):
            raise ValueError(f"train.metric {self.metric!r}: new-item metrics exist only "
                             "under the new-item protocol (cold_items)")
        if data.cold is not None and self.world_size > 1:
            raise RuntimeError("the new-item protocol (cold_items) is not supported with "
                               "several processes yet")
        # the epoch's triples drawn on the training device: a step's batch is a
        # slice there, with no copy between host and device
        self.sampler = BPRSampler(data.train_edge_index, data.num_users, data.num_items,
                                  num_neg=self.train_cfg["num_neg"], seed=self.seed,
                                  device=self.device)
        self._switch_inputs = data.eval_inputs_differ()
        #: (epoch, batch, loss) of the first non-finite loss, kept on the device
        self._first_nonfinite: Optional[Tensor] = None
        #: what computes the batch loss (replace by a DDP-wrapped BatchLoss for multi-process)
        self.loss_module: torch.nn.Module = BatchLoss(self.model)
        if self.device.type != "cpu" and data.train_features:
            # move the modality inputs once instead of on every forward
            self.model.set_modality_inputs(self._to_dev(data.train_features),
                                           self._to_dev(data.train_masks))

        aux = (list(self.model.auxiliary_parameters())
               if hasattr(self.model, "auxiliary_parameters") else [])
        aux_ids = {id(p) for p in aux}
        self.main_params = [p for p in self.model.parameters()
                            if p.requires_grad and id(p) not in aux_ids]
        self.aux_params = [p for p in aux if p.requires_grad]
        t = self.train_cfg
        from .optim import LazyAdam, dense_adam, dense_embedding_gradients, has_sparse_parameters
        # sampled training (models with `fanout`) has sparse embedding gradients:
        # update only the batch's rows, so a step does not cost O(num_users + num_items);
        # lazy_embeddings=False trades that for full-graph training's dense Adam
        if not t.get("lazy_embeddings", True):
            dense_embedding_gradients(self.model)
        sparse = has_sparse_parameters(self.model)
        adam = LazyAdam if sparse else dense_adam
        self.optimizer = adam(self.main_params, lr=t["lr"], weight_decay=t["weight_decay"])
        self.aux_optimizer = (dense_adam(self.aux_params, lr=t["aux_lr"] or t["lr"])
                              if self.aux_params else None)
        self.early_stopping = self._make_early_stopping()

        # run state (all of it goes into the checkpoint)
        self.epoch = 0                 # next epoch to run
        self.batch = 0                 # next batch within self.epoch
        self.best_state: Optional[Dict[str, Tensor]] = None
        self.best_epoch = -1
        self.best_valid: Dict[str, float] = {}
        self.history: List[Dict[str, Any]] = []
        self.train_seconds = 0.0
        self.eval_seconds: List[float] = []
        self.finished = False
        self.stopped_early = False
        self._epoch_sums: Dict[str, float] = {}
        self._epoch_batches = 0
        self._epoch_seconds = 0.0
        self._rng_epoch_start: Optional[Dict[str, Any]] = None
        self._stop_requested = False
        self._tb = None
        self._eval_targets: Dict[str, Tensor] = {}

    # ------------------------------------------------------------------ helpers
    def _make_early_stopping(self):
        from .early_stopping import EarlyStopping
        t = self.train_cfg
        return EarlyStopping(metric=self.metric, patience=t["patience"], min_delta=t["min_delta"])

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def checkpoint_path(self) -> Optional[Path]:
        return self.out_dir / CHECKPOINT_NAME if self.out_dir is not None else None

    @property
    def log_path(self) -> Optional[Path]:
        return self.out_dir / "metrics.jsonl" if self.out_dir is not None else None

    def _progress(self) -> bool:
        return not self.quiet and sys.stderr.isatty() and self.is_main

    def _say(self, msg: str) -> None:
        if not self.quiet and self.is_main:
            from tqdm import tqdm
            tqdm.write(msg, file=sys.stderr)

    def _resume_notice(self) -> str:
        epochs = self.train_cfg["epochs"]
        if self.finished:
            return (f"resume: {self.checkpoint_path} holds a finished run ({self.epoch} epochs, "
                    f"best epoch {self.best_epoch + 1}); reusing it, nothing is trained")
        where = f"epoch {self.epoch + 1}/{epochs}"
        if self.batch > 0:
            where += f", batch {self.batch + 1}"
        return f"resume: {self.checkpoint_path}: continuing at {where}"

    def _apply_budget(self) -> None:
        # A resumed run may be given a larger stopping budget: more epochs, more
        # patience. Its training state (weights, optimiser, RNG) is that of its
        # last epoch and neither budget changes the trajectory, only where it
        # ends; so a run that ended at its cap, or whose patience ran out, goes
        # on exactly as a fresh run with the larger budget would have. A
        # smaller budget than what already happened cannot be undone.
        from pyg_mmrec.errors import ConfigError
        epochs = int(self.train_cfg["epochs"])
        done = self.epoch + (1 if self.batch > 0 else 0)
        if epochs < done:
            raise ConfigError(f"epochs: {self.checkpoint_path} has already trained {done} "
                              f"epoch(s); a resumed run cannot be given fewer ({epochs}). "
                              f"Give at least {done}, or choose another --out")
        es = self.early_stopping
        patience = int(self.train_cfg["patience"])
        if patience < es.patience:
            raise ConfigError(f"patience: {self.checkpoint_path} was trained with patience "
                              f"{es.patience}; a resumed run cannot be given less ({patience}). "
                              f"Give at least {es.patience}, or choose another --out")
        out_of_patience = es.should_stop
        es.patience = patience
        es.should_stop = es.num_bad >= patience
        # a stop by patience is lifted by more patience; one asked for by a hook
        # (a pruned trial) is not
        lifted = out_of_patience and not es.should_stop
        if self.finished and self.epoch < epochs and (not self.stopped_early or lifted):
            self.finished = self.stopped_early = False
            # unfinished again: the summary of the shorter run no longer describes
            # this directory (the folder it was copied from keeps its own)
            if self.out_dir is not None and self.is_main:
                (self.out_dir / "result.json").unlink(missing_ok=True)

    def request_stop(self) -> None:
        """Ask the loop to stop after the current batch and write a checkpoint
        (what ``SIGINT`` does)."""
        self._stop_requested = True

    # ------------------------------------------------------------------ hooks
    # Public extension points (see the module doc); none of them changes the
    # one-process trajectory in its default form.
    def on_batch_end(self, epoch: int, batch: int) -> None:
        """Hook called after every batch, once its terms are counted (subclasses,
        tests; e.g. fault injection in distributed training)."""

    def on_epoch_end(self, epoch: int) -> None:
        """Hook called when the last batch of ``epoch`` has run, before the
        epoch is validated and logged (not called when a stop request ends
        the epoch early). Distributed training checks here that the ranks'
        parameters still agree."""

    def reduce_gradients(self, params: List[torch.nn.Parameter], num_triples: int) -> None:
        r"""Combine the gradients of ``params`` across processes after a backward
        pass; a no-op in one process.

        Args:
            params: :attr:`main_params` or :attr:`aux_params`, the parameters
                the next optimiser step updates.
            num_triples (int): the number of BPR triples of this process's
                batch (the weight of its gradient in an average over ranks).
        """

    def sync_batch(self, terms: Dict[str, Any], num_triples: int) -> Dict[str, Any]:
        r"""Called after every optimiser step with the batch's loss values
        (0-dim tensors on the device); returns the values to log. The place where processes exchange
        per-batch state: distributed training averages the values over the
        global batch and agrees on a pending stop request (see
        :meth:`should_stop`). The default returns ``terms`` unchanged.

        Args:
            terms: ``{"loss": ..., "loss/<term>": ...}`` of this process's batch.
            num_triples (int): the number of BPR triples of that batch.
        """
        return terms

    def should_stop(self) -> bool:
        """Whether a stop request (``SIGINT``, :meth:`request_stop`) takes
        effect now: checkpoint and raise :class:`TrainingInterrupted`. In one
        process, as soon as it is made; with several, once every rank knows
        of it, so that all stop after the same batch."""
        return self._stop_requested

    def on_validation(self, epoch: int, valid: Dict[str, float]) -> bool:
        r"""Hook called after every validation of the training loop, once early
        stopping and the best state have seen it.

        Args:
            epoch: the epoch just validated (from 0).
            valid: its validation metrics ``{name: value}`` (validation only:
                the test split is never read during training).

        Returns:
            ``True`` to end training after this epoch exactly as early stopping
            does (best state restored, ``stopped_early`` set); hyper-parameter
            search prunes hopeless trials here. The default never stops.
        """
        return False

    def auxiliary_loss(self, u: Tensor, p: Tensor, q: Tensor) -> Optional[Tensor]:
        """The model's auxiliary (estimator) loss of a batch, ``None`` to skip the
        estimator step (distributed training makes all ranks agree on that)."""
        return self.model.auxiliary_loss(u, p, q)

    # --------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, split: str = "valid") -> Dict[str, float]:
        r"""Full-ranking metrics on ``split`` (``"valid"`` or ``"test"``) with the
        evaluation features/masks. Training interactions (and, for ``test``,
        validation interactions unless ``train["test_excludes_valid"]`` is
        false) are excluded from the ranking."""
        from pyg_mmrec.metrics import evaluate_full_ranking
        if split not in ("valid", "test"):
            raise ValueError(f"split: expected 'valid' or 'test', got {split!r}")
        d = self.data
        was_training = self.model.training
        self.model.eval()
        if self._switch_inputs:
            self.model.set_modality_inputs(self._to_dev(d.eval_features or d.train_features),
                                           self._to_dev(d.eval_masks or d.train_masks))
        try:
            if split == "valid":
                target, exclude = d.valid_edge_index, [d.train_edge_index]
            else:
                target, exclude = d.test_edge_index, [d.train_edge_index]
                if self.train_cfg.get("test_excludes_valid", True):
                    exclude.append(d.valid_edge_index)
            target = self._eval_target(split, target)
            if d.cold is None:
                user, item = self.model.embeddings_for_eval()
                metrics = evaluate_full_ranking(user, item, target.to(user.device),
                                                [e.to(user.device) for e in exclude],
                                                ks=tuple(self.ks), split=split,
                                                rank=self.rank, world_size=self.world_size)
            else:  # new items are placed on a copy of the model, then ranked
                from .cold import embeddings_with_new_items, evaluate_with_new_items
                user, item = embeddings_with_new_items(self.model, d.cold)
                metrics = evaluate_with_new_items(user, item, target.to(user.device),
                                                  [e.to(user.device) for e in exclude],
                                                  tuple(self.ks), split, d.cold)
            if self.world_size > 1:  # per-rank metric sums -> global means
                metrics = metrics.all_reduce()
        finally:
            if self._switch_inputs:
                self.model.set_modality_inputs(self._to_dev(d.train_features),
                                               self._to_dev(d.train_masks))
            self.model.train(was_training)
        self._last_metrics_obj = metrics
        return metrics_to_dict(metrics)

    def _eval_target(self, split: str, target: Tensor) -> Tensor:
        r"""``target`` restricted to at most ``train["eval_max_users"]`` of its
        users: a fixed subset per split, drawn once from a generator seeded
        with the trainer's seed (the global RNG is not touched, so resuming
        stays exact). The metrics are then an estimate of the full-ranking
        metrics over all users, for graphs where ranking every item for every
        user (:math:`O(U \cdot I)`) is too slow."""
        cap = self.train_cfg.get("eval_max_users")
        if cap is None:
            return target
        if split not in self._eval_targets:
            users = torch.unique(target[0])
            if users.numel() > cap:
                g = torch.Generator().manual_seed(self.seed)
                keep = users[torch.randperm(users.numel(), generator=g)[:cap]]
                target = target[:, torch.isin(target[0], keep.to(target.device))]
            self._eval_targets[split] = target
        return self._eval_targets[split]

    def _to_dev(self, tensors: Dict[str, Tensor]) -> Dict[str, Tensor]:
        return {k: v.to(self.device) for k, v in tensors.items()}

    # ------------------------------------------------------------------- epochs
    def _train_epoch(self, epoch: int, resume_rng: Optional[Dict[str, Any]] = None) -> None:
        """Run the batches ``self.batch ..`` of ``epoch``; updates the running sums."""
        from tqdm import tqdm

        model, t = self.model, self.train_cfg
        model.train()
        if self.batch == 0:
            self._rng_epoch_start = get_rng_state()
            self._epoch_sums, self._epoch_batches, self._epoch_seconds = {}, 0, 0.0
        else:
            # Mid-epoch resume: replay the epoch's start (hooks, sampling) from its
            # RNG state, then continue from the state saved after the last batch.
            set_rng_state(self._rng_epoch_start)
        if t["lr_decay"] is not None:
            # a function of the epoch alone, so a resumed run sets the same rate
            factor, every = t["lr_decay"]
            for group in self.optimizer.param_groups:
                group["lr"] = t["lr"] * factor ** (epoch / every)
        if hasattr(model, "on_epoch_start"):
            model.on_epoch_start(epoch)
        users, pos, neg = self.sampler.sample(epoch, self.rank, self.world_size)
        if resume_rng is not None:
            set_rng_state(resume_rng)
        n = users.numel()
        bs = t["batch_size"]
        num_batches = max(1, math.ceil(n / bs))
        bar = tqdm(total=num_batches, initial=self.batch, desc=f"epoch {epoch}", leave=False,
                   disable=not self._progress(), dynamic_ncols=True)
        t0 = time.perf_counter()
        try:
            while self.batch < num_batches:
                b = self.batch
                sl = slice(b * bs, min(n, (b + 1) * bs))
                u = users[sl].to(self.device)
                p = pos[sl].to(self.device)
                q = neg[sl].to(self.device)
                terms = self.train_step(u, p, q, epoch, b)
                for k, v in terms.items():
                    # float64 sums on the device (the values stay there): the same
                    # numbers as summing Python floats, read once per epoch
                    if isinstance(v, Tensor):
                        v = v.detach().to(torch.float64)
                    self._epoch_sums[k] = self._epoch_sums.get(k, 0.0) + v
                self._epoch_batches += 1
                self.batch += 1
                bar.update(1)
                if bar.n % 10 == 0 and not bar.disable:  # a host read per refresh only
                    self._check_finite()
                    bar.set_postfix(loss=f"{float(terms['loss']):.4f}")
                self.on_batch_end(epoch, b)
                if self.should_stop() and self.batch < num_batches:
                    self._check_finite()
                    self._epoch_seconds += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    self._interrupt(epoch)
            self._check_finite()
        finally:
            self._epoch_seconds += time.perf_counter() - t0
            bar.close()
        self.on_epoch_end(epoch)

    def _check_finite(self) -> None:
        """Raises if a step of this epoch had a non-finite loss (one host read of the
        flag the steps keep on the device; see :meth:`train_step`)."""
        bad = self._first_nonfinite
        if bad is None:
            return
        self._first_nonfinite = None
        epoch, batch, loss = (float(v) for v in bad.tolist())
        if epoch >= 0:
            raise RuntimeError(f"non-finite loss at epoch {int(epoch)}, batch {int(batch)}: "
                               f"loss {loss} (try a lower lr or grad_clip)")

    def train_step(self, u: Tensor, p: Tensor, q: Tensor, epoch: int, b: int
                   ) -> Dict[str, Any]:
        r"""One training step on the batch of triples ``(u[k], p[k], q[k])``:
        the estimator step (if the model has auxiliary parameters), then the
        main step; returns the loss values to log (after :meth:`sync_batch`):
        0-dim tensors on the device (the step never waits for the device: the
        loop sums them there and reads the sums once per epoch; with several
        processes they are the global batch's, reduced on the device by
        :class:`~pyg_mmrec.train.distributed.DistributedTrainer`). A non-finite loss is
        noted on the device and raised at the next host read (progress
        refresh, checkpoint, end of the epoch), naming its epoch and batch.
        Subclasses may wrap it (e.g. to time it); the hooks are the place to
        change what it does.

        Args:
            u, p, q (Tensor): users, positive and negative items :math:`[B]`.
            epoch (int), b (int): where in the run this batch is.
        """
        model, t = self.model, self.train_cfg
        n = int(u.numel())
        if self.aux_optimizer is not None:
            # the estimator first (its own optimiser), then the main loss
            self.aux_optimizer.zero_grad(set_to_none=True)
            aux = self.auxiliary_loss(u, p, q)
            if aux is not None:
                aux.backward()
                self.reduce_gradients(self.aux_params, n)
                self.aux_optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        terms = self.loss_module(u, p, q)
        if not isinstance(terms, Mapping) or not terms:
            raise RuntimeError(f"{type(model).__name__}.loss must return a non-empty dict of "
                               f"loss terms, got {type(terms).__name__}")
        loss = sum(terms.values())
        if not isinstance(loss, Tensor) or not loss.requires_grad:
            raise RuntimeError(f"{type(model).__name__}.loss: the terms {sorted(terms)} do not "
                               "depend on any trainable parameter")
        self._note_finite(loss.detach(), epoch, b)
        loss.backward()
        self.reduce_gradients(self.main_params, n)
        if t["grad_clip"] is not None:
            torch.nn.utils.clip_grad_norm_(self.main_params, t["grad_clip"])
        self.optimizer.step()
        out = {"loss": loss.detach()}
        out.update({f"loss/{k}": v.detach() if isinstance(v, Tensor) else v
                    for k, v in terms.items()})
        if self.aux_optimizer is not None and aux is not None:
            out["loss/aux"] = aux.detach()
        return self.sync_batch(out, n)

    def _note_finite(self, loss: Tensor, epoch: int, b: int) -> None:
        # (epoch, batch, loss) of the first non-finite loss of the epoch, kept on the
        # device (a check per step would wait for the device at every step); read by
        # _check_finite at every progress refresh, before a checkpoint and at the
        # end of the epoch, which raises
        here = torch.stack([torch.full_like(loss, epoch, dtype=torch.float64),
                            torch.full_like(loss, b, dtype=torch.float64),
                            loss.to(torch.float64)])
        first = self._first_nonfinite
        if first is None:
            first = torch.full_like(here, -1.0)
        take = (first[0] < 0) & ~torch.isfinite(loss)
        self._first_nonfinite = torch.where(take, here, first)

    def _host_sums(self) -> Dict[str, float]:
        """The epoch's loss sums as Python floats (one host read for all of them)."""
        keys = sorted(self._epoch_sums)
        on_device = [k for k in keys if isinstance(self._epoch_sums[k], Tensor)]
        out = {k: float(self._epoch_sums[k]) for k in keys if k not in on_device}
        if on_device:
            values = torch.stack([self._epoch_sums[k].reshape(()) for k in on_device])
            out.update(zip(on_device, values.tolist()))
        return out

    # --------------------------------------------------------------- checkpoint
    def state_dict(self) -> Dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "aux_optimizer": self.aux_optimizer.state_dict() if self.aux_optimizer else None,
            "early_stopping": self.early_stopping.state_dict(),
            "rng": get_rng_state(),
            "rng_epoch_start": self._rng_epoch_start if self.batch > 0 else None,
            "epoch": self.epoch,
            "batch": self.batch,
            "epoch_sums": self._host_sums(),
            "epoch_batches": self._epoch_batches,
            "epoch_seconds": self._epoch_seconds,
            "best_state": self.best_state,
            "best_epoch": self.best_epoch,
            "best_valid": dict(self.best_valid),
            "history": list(self.history),
            "train_seconds": self.train_seconds,
            "eval_seconds": list(self.eval_seconds),
            "finished": self.finished,
            "stopped_early": self.stopped_early,
            "seed": self.seed,
            "world_size": self.world_size,
            "config": self.config,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.aux_optimizer is not None:
            if state["aux_optimizer"] is None:
                raise RuntimeError("checkpoint has no auxiliary optimiser state but the model has "
                                   "auxiliary parameters")
            self.aux_optimizer.load_state_dict(state["aux_optimizer"])
        self.early_stopping.load_state_dict(state["early_stopping"])
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        self._epoch_sums = dict(state["epoch_sums"])
        self._epoch_batches = int(state["epoch_batches"])
        self._epoch_seconds = float(state["epoch_seconds"])
        self._rng_epoch_start = state["rng_epoch_start"]
        self.best_state = state["best_state"]
        self.best_epoch = int(state["best_epoch"])
        self.best_valid = dict(state["best_valid"])
        self.history = list(state["history"])
        self.train_seconds = float(state["train_seconds"])
        self.eval_seconds = list(state["eval_seconds"])
        self.finished = bool(state["finished"])
        self.stopped_early = bool(state["stopped_early"])
        set_rng_state(state["rng"])

    def save(self) -> Optional[Path]:
        """Write the checkpoint (rank 0 only); returns its path."""
        if self.checkpoint_path is None or not self.is_main:
            return None
        return save_checkpoint(self.checkpoint_path, self.state_dict())

    def _interrupt(self, epoch: int):
        path = self.save()
        raise TrainingInterrupted(path, epoch, self.batch)

    def _log(self, record: Dict[str, Any]) -> None:
        self.history.append(record)
        if self.log_path is not None and self.is_main:
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, sort_keys=True) + "\n")
                f.flush()
                os.fsync(f.fileno())
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    self._tb.add_scalar(k, v, record["epoch"])
            for k, v in (record.get("valid") or {}).items():
                self._tb.add_scalar(f"valid/{k}", v, record["epoch"])

    def _rewrite_log(self) -> None:
        # After a resume the log must hold exactly the epochs in the checkpoint.
        if self.log_path is not None and self.is_main:
            text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.history)
            atomic_write_text(self.log_path, text)

    # ---------------------------------------------------------------------- fit
    def fit(self, resume: bool = False, test: bool = True) -> FitResult:
        r"""Train until early stopping or ``epochs``, restore the best state and
        evaluate the test split once (unless ``test=False``, used by grid search
        before a setting is selected).

        Args:
            resume: continue from ``out_dir/checkpoint.pt`` (it must exist).
            test: evaluate the test split at the end.

        Raises:
            TrainingInterrupted: after ``SIGINT`` / :meth:`request_stop`, once
                the checkpoint is written.
        """
        resume_rng = None
        if resume:
            if self.checkpoint_path is None or not self.checkpoint_path.exists():
                raise FileNotFoundError(f"resume: no checkpoint at {self.checkpoint_path}")
            state = load_checkpoint(self.checkpoint_path, map_location=self.device)
            self.load_state_dict(state)
            self._apply_budget()
            resume_rng = state["rng"] if self.batch > 0 else None
            self._rewrite_log()
            self._say(self._resume_notice())
        elif self.log_path is not None and self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.log_path.write_text("")
        if self.train_cfg["tensorboard"] and self.out_dir is not None and self.is_main:
            from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(str(self.out_dir / "tensorboard"))

        handler_installed, previous = False, None
        if threading.current_thread() is threading.main_thread():
            def _on_sigint(signum, frame):
                self._say("SIGINT: stopping after the current batch (press again to abort)")
                self._stop_requested = True
                signal.signal(signal.SIGINT, signal.default_int_handler)
            previous = signal.signal(signal.SIGINT, _on_sigint)
            handler_installed = True
        try:
            if not self.finished:
                self._loop(resume_rng)
            return self._finish(test)
        finally:
            if handler_installed:
                signal.signal(signal.SIGINT, previous)
            if self._tb is not None:
                self._tb.close()
                self._tb = None

    def _loop(self, resume_rng: Optional[Dict[str, Any]]) -> None:
        t = self.train_cfg
        while self.epoch < t["epochs"]:
            epoch = self.epoch
            self._train_epoch(epoch, resume_rng)
            resume_rng = None
            self.train_seconds += self._epoch_seconds
            nb = max(1, self._epoch_batches)
            record: Dict[str, Any] = {"epoch": epoch, "seconds": round(self._epoch_seconds, 4)}
            record.update({k: v / nb for k, v in sorted(self._host_sums().items())})
            last = epoch == t["epochs"] - 1
            stop = False
            if (epoch + 1) % t["eval_every"] == 0 or last:
                t0 = time.perf_counter()
                valid = self.evaluate("valid")
                self.eval_seconds.append(time.perf_counter() - t0)
                record["valid"] = valid
                record["eval_seconds"] = round(self.eval_seconds[-1], 4)
                stop, improved = self._early_stop_step(valid, epoch)
                if improved:
                    self.best_state = clone_state_dict(self.model)
                    self.best_epoch, self.best_valid = epoch, dict(valid)
                record["best_epoch"] = self.best_epoch
                if self.on_validation(epoch, dict(valid)):
                    stop = True
            self._log(record)
            self._say(self._format(record))
            self.epoch, self.batch = epoch + 1, 0
            self._epoch_sums, self._epoch_batches, self._epoch_seconds = {}, 0, 0.0
            self.finished = stop or self.epoch >= t["epochs"]
            self.stopped_early = stop
            every = t["checkpoint_every"]
            if self.finished or (every and self.epoch % every == 0) or self.should_stop():
                self.save()
            if self.finished:
                break
            if self.should_stop():
                self._interrupt(self.epoch)

    def _early_stop_step(self, valid: Dict[str, float], epoch: int) -> tuple[bool, bool]:
        """Feed the validation :class:`Metrics` to early stopping -> ``(stop, improved)``."""
        es = self.early_stopping
        improved = bool(es.step(epoch, self._last_metrics_obj))
        return bool(es.should_stop), improved

    def _format(self, r: Dict[str, Any]) -> str:
        best = self.best_valid.get(self.metric) if self.best_epoch >= 0 else None
        return progress_line(r, self.train_cfg["epochs"],
                             self.train_seconds + sum(self.eval_seconds), self.metric,
                             best_epoch=self.best_epoch, best_value=best)

    def _finish(self, test: bool) -> FitResult:
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        test_metrics = self.evaluate("test") if test else None
        epochs = self.epoch
        return FitResult(
            best_epoch=self.best_epoch,
            valid=dict(self.best_valid),
            test=test_metrics,
            seconds_per_epoch=self.train_seconds / max(1, epochs),
            seconds_per_eval=(sum(self.eval_seconds) / len(self.eval_seconds)
                              if self.eval_seconds else 0.0),
            epochs=epochs,
            stopped_early=self.stopped_early,
            history=list(self.history),
        )


__all__ = ["Trainer", "TrainData", "FitResult", "TrainingInterrupted", "BatchLoss",
           "metrics_to_dict", "progress_line"]
