r"""The search of ``tune``: one normal run per trial, pruning on the validation
curve, the wall-time budget, and the worker processes sharing a study."""
from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

from .space import Param, TuneError
from .storage import (LOCK_NAME, LocalLock, _on_stale_trial, counted_trials, open_storage,
                      write_budget)

EXIT_CONFIG, EXIT_INTERRUPTED = 2, 130
EXIT_FAILING = 3  # a worker stopped: its trials kept failing (see MAX_FAILED_IN_ROW)


def _suggest(trial, p: Param) -> Any:
    if p.kind == "categorical":
        return trial.suggest_categorical(p.name, p.choices)
    if p.kind == "int":
        return trial.suggest_int(p.name, int(p.low), int(p.high), log=p.log)
    return trial.suggest_float(p.name, float(p.low), float(p.high), log=p.log)


def make_pruner(name: str, warmup: int):
    import optuna
    if name == "median":
        # judge an epoch only against >= 3 trials that reached it: with fewer, the "median"
        # is the best trial's curve and any trial below it would be pruned
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=warmup,
                                           n_min_trials=3)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, warmup),
                                                      reduction_factor=3)
    return optuna.pruners.NopPruner()


def _trial_trainer(trainer_cls, trial, metric: str, deadline: float, state: Dict[str, Any]):
    """A :class:`Trainer` subclass that reports the validation curve to ``trial``,
    prunes, and stops before the wall-time ``deadline``."""

    class TrialTrainer(trainer_cls):
        def on_validation(self, epoch: int, valid: Dict[str, float]) -> bool:
            if not state.get("reported"):
                # a continued trial: report the epochs its checkpoint already holds
                for rec in self.history:  # (this epoch's record is logged after the hook)
                    if "valid" in rec and metric in rec["valid"]:
                        trial.report(float(rec["valid"][metric]), int(rec["epoch"]))
                state["reported"] = True
            now = time.time()
            # wall time since the previous validation (or the first step): one epoch's cost
            epoch_cost = now - state.get("last_validation", state.get("first_step", now))
            state["last_validation"] = now
            state["epoch_cost"] = max(state.get("epoch_cost", 0.0), epoch_cost)
            trial.report(float(valid[metric]), int(epoch))
            # training ends after this epoch anyway (early stopping, last epoch): complete
            finishing = (getattr(getattr(self, "early_stopping", None), "should_stop", False)
                         or epoch + 1 >= int(getattr(self, "train_cfg", {}).get("epochs", 0)))
            if finishing:
                return super().on_validation(epoch, valid)
            if trial.should_prune():
                state["stopped"] = "pruned"
                return True
            if now + state["epoch_cost"] > deadline:
                state["stopped"] = "budget"  # the next epoch would end past the budget
                return True
            return super().on_validation(epoch, valid)

        def on_batch_end(self, epoch: int, batch: int) -> None:
            super().on_batch_end(epoch, batch)
            state.setdefault("first_step", time.time())
            if time.time() > deadline and not state.get("stopped"):
                state["stopped"] = "budget"  # hard stop inside an epoch: checkpoint, end
                self.request_stop()

    return TrialTrainer


def make_objective(spec: Mapping[str, Any], space: Mapping[str, Param], deadline: float,
                   lock: Optional[LocalLock] = None, trainer_cls=None):
    r"""The objective of one worker: a normal run per trial in
    ``<study dir>/trials/<number>`` (``test=False``), valued by its validation
    metric at the early-stopping epoch."""
    import optuna

    from pyg_mmrec.train import Trainer, TrainingInterrupted, run

    base_trainer = trainer_cls or Trainer
    metric = spec["metric"]

    def objective(trial) -> float:
        if lock is not None:
            lock.release()  # the trial exists: other workers may count it now
        params = {name: _suggest(trial, p) for name, p in space.items()}
        resume_from = trial.user_attrs.get("resume_from")
        if resume_from and not Path(resume_from).is_dir():
            resume_from = None  # the run of a worker on another machine: start it here
        run_dir = Path(resume_from) if resume_from else (
            Path(spec["study_dir"]) / "trials" / f"{trial.number:04d}")
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        state: Dict[str, Any] = {"started": time.time()}
        cls = _trial_trainer(base_trainer, trial, metric, deadline, state)
        try:
            result = run(spec["model"], spec["dataset"], root=spec["root"],
                         missing=spec["missing"], seed=spec["search_seed"],
                         overrides={**spec["fixed"], **params}, plugin=spec["plugin"],
                         fill=spec["fill"], out_dir=run_dir, device=spec["device"], quiet=True,
                         resume=bool(resume_from), test=False, trainer_cls=cls)
        except TrainingInterrupted as e:
            if state.get("stopped") == "budget":
                trial.set_user_attr("stopped", "budget")
                raise optuna.TrialPruned(f"stopped at the budget inside an epoch ({e})") from e
            trial.set_user_attr("interrupted", True)
            # Optuna records a KeyboardInterrupt as a failed trial and re-raises it; the
            # next `tune` continues the run from its checkpoint (recover_trials)
            raise KeyboardInterrupt(str(e)) from e
        except Exception as e:
            # a failure of the setting itself (bad combination, non-finite loss): recorded,
            # never retried; the search goes on
            trial.set_user_attr("error", f"{type(e).__name__}: {e}"[:1000])
            raise
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("epochs", result.epochs)
        trial.set_user_attr("seconds_per_epoch", result.seconds_per_epoch)
        trial.set_user_attr("seconds_per_eval", result.seconds_per_eval)
        trial.set_user_attr("valid", result.valid)
        if state.get("stopped"):
            trial.set_user_attr("stopped", state["stopped"])
            raise optuna.TrialPruned(f"{state['stopped']} at epoch {result.epochs - 1}")
        return float(result.valid[metric])

    return objective


def _load_study(spec: Mapping[str, Any], worker: int):
    import optuna
    storage = open_storage(spec["storage"], spec["storage_timeout"], _on_stale_trial)
    study = optuna.load_study(study_name=spec["study"], storage=storage,
                              pruner=make_pruner(spec["pruner"], spec["prune_warmup"]))
    # one stream per worker and per start: a resumed search must not redraw the random
    # start-up settings its first session already tried
    seed = (spec["sampler_seed"] * 1_000_003 + worker * 10_007 + len(study.trials)) % 2**31
    study.sampler = optuna.samplers.TPESampler(seed=seed)
    return study


def work(spec: Mapping[str, Any], worker: int = 0, trainer_cls=None) -> int:
    r"""One worker: trial after trial on the shared study until ``--trials`` is
    reached or the next trial would not fit before the deadline. Returns the
    number of trials this worker ran."""
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if spec.get("threads"):
        import torch
        torch.set_num_threads(int(spec["threads"]))
    study = _load_study(spec, worker)
    space = {k: Param(**v) for k, v in spec["space"].items()}
    deadline = float(spec["deadline"])
    lock = LocalLock(Path(spec["study_dir"]) / LOCK_NAME)
    objective = make_objective(spec, space, deadline, lock, trainer_cls)
    ran = failed_in_row = 0
    while time.time() + float(spec["min_trial_seconds"]) <= deadline:
        lock.acquire()
        try:
            if spec["trials"] and counted_trials(study) >= spec["trials"]:
                break
            study.optimize(objective, n_trials=1, catch=(Exception,))
            ran += 1
        finally:
            lock.release()
        error = _latest_error(study)
        failed_in_row = failed_in_row + 1 if error else 0
        if failed_in_row >= MAX_FAILED_IN_ROW:
            # every setting fails the same way (e.g. code or data changed under a running
            # search): stop instead of burning the budget on trials that fail at once
            raise TuneError(f"tune: the last {failed_in_row} trials of worker {worker} failed; "
                            f"the latest with: {error}")
        if _stopped_at_budget(study):
            break  # what is left is less than an epoch of the trial just stopped
        if worker == 0 and "started" in spec:  # a crash loses at most one trial's time
            write_budget(Path(spec["study_dir"]),
                         spec["spent_before"] + time.time() - spec["started"], spec["budget"])
        if not spec["quiet"]:
            print(f"[tune w{worker}] {_trial_line(study, spec['metric'])}", file=sys.stderr,
                  flush=True)
    return ran


#: a worker stops after this many trials in a row failed by an error of their run
MAX_FAILED_IN_ROW = 10


def _my_latest_trial(study):
    """This process's latest trial (``None`` before its first)."""
    mine = [t for t in study.get_trials(deepcopy=False)
            if t.user_attrs.get("pid") == os.getpid()]
    return max(mine, key=lambda t: t.number) if mine else None


def _latest_error(study) -> Optional[str]:
    """The error of this process's latest trial, if it failed by one."""
    from optuna.trial import TrialState
    last = _my_latest_trial(study)
    if last is None or last.state != TrialState.FAIL:
        return None
    return last.user_attrs.get("error")


def _stopped_at_budget(study) -> bool:
    """Whether this process's latest trial was stopped by the wall-time budget."""
    last = _my_latest_trial(study)
    return last is not None and last.user_attrs.get("stopped") == "budget"


def _worker_main(spec: Dict[str, Any], worker: int) -> None:  # pragma: no cover - subprocess
    try:
        work(spec, worker)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    except TuneError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(EXIT_FAILING)


def _trial_line(study, metric: str) -> str:
    from optuna.trial import TrialState
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    best = max(done, key=lambda t: t.value) if done else None
    n = {s: sum(1 for t in trials if t.state == s) for s in (TrialState.COMPLETE,
                                                             TrialState.PRUNED, TrialState.FAIL)}
    return (f"{len(trials)} trial(s): {n[TrialState.COMPLETE]} complete, "
            f"{n[TrialState.PRUNED]} pruned/stopped, {n[TrialState.FAIL]} failed"
            + (f"; best valid {metric} {best.value:.4f} (trial {best.number})" if best else ""))


def probe_cost(spec: Mapping[str, Any]) -> Tuple[float, float]:
    r"""``(fixed seconds, seconds per epoch)`` of one trial, measured on one epoch
    (and its validation) of the default setting with the fixed overrides:
    loading the data and building the model, then training and validating."""
    from pyg_mmrec.train import run
    t0 = time.perf_counter()
    r = run(spec["model"], spec["dataset"], root=spec["root"], missing=spec["missing"],
            seed=spec["search_seed"], overrides={**spec["fixed"], "train.epochs": 1},
            plugin=spec["plugin"], fill=spec["fill"], out_dir=None, device=spec["device"],
            quiet=True, test=False)
    wall = time.perf_counter() - t0
    per_epoch = r.seconds_per_epoch + r.seconds_per_eval
    return max(0.0, wall - per_epoch), per_epoch


def run_workers(spec: Dict[str, Any], trainer_cls=None) -> int:
    r"""Run the search: in this process with one worker, else ``--workers``
    spawned processes on the shared study. Returns 0, or
    :data:`EXIT_INTERRUPTED` after Ctrl-C (trials continue on the next call)."""
    if spec["workers"] == 1:
        try:
            work(spec, 0, trainer_cls)
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        return 0
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker_main, args=(spec, i), name=f"tune-worker-{i}")
             for i in range(spec["workers"])]
    for p in procs:
        p.start()
    interrupted = False
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        # from a terminal the workers got the same SIGINT: they checkpoint their trial and
        # exit; a SIGINT sent to this process alone is passed on to them
        interrupted = True
        until = time.time() + 10
        for p in procs:
            p.join(timeout=max(0.0, until - time.time()))
        for p in procs:
            if p.is_alive():
                os.kill(p.pid, signal.SIGINT)
        for p in procs:
            p.join(timeout=120)
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join()
    codes = [p.exitcode for p in procs]
    if interrupted or any(c == EXIT_INTERRUPTED for c in codes):
        return EXIT_INTERRUPTED
    bad = [c for c in codes if c]
    if bad and all(c == EXIT_FAILING for c in bad):
        raise TuneError("tune: trials kept failing in every worker (their errors are above); "
                        "fix the setting and run the same command again")
    if bad:
        raise RuntimeError(f"tune: worker process(es) failed with exit code(s) {bad} (see "
                           "their messages above); run the same command again to resume")
    return 0


def _say(spec: Mapping[str, Any], msg: str) -> None:
    if not spec.get("quiet"):
        print(f"[tune] {msg}", file=sys.stderr, flush=True)
