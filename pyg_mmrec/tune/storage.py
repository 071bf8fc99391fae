r"""Where a ``tune`` study lives: checks of the storage URL, Optuna's RDB
storage with a heartbeat, the study's identity, the local lock of the workers
of one machine, and the recovery of interrupted trials."""
from __future__ import annotations

import argparse
import json
import os
import re
import socket
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

from .space import Param, TuneError, _is_number

STUDY_DB = "study.db"
BUDGET_FILE = "budget.json"
LOCK_NAME = ".tune.lock"
# Heartbeat of RDB storages: a trial whose process stopped beating for GRACE seconds
# (killed, machine lost) is marked failed and continued from its checkpoint by another.
HEARTBEAT_SECONDS, GRACE_SECONDS = 30, 120
_STUDY_KEYS = ("model", "plugin", "dataset", "missing", "fill")


def _sqlite_path(url: str) -> Optional[Path]:
    if not url.startswith("sqlite:"):
        return None
    m = re.fullmatch(r"sqlite:///(.+)", url)
    if not m or m.group(1) == ":memory:":
        raise TuneError(f"--storage {url}: expected sqlite:///path/to/study.db (a file; an "
                        "in-memory database cannot be shared or resumed)")
    return Path(m.group(1))


def check_storage(url: str, timeout: float) -> None:
    r"""Fail early (one line) if the storage cannot be used: a SQLite file in a
    missing folder, or locked by another process for more than ``timeout``
    seconds; any other URL is tried by :func:`open_storage`. A SQLite
    database is switched to write-ahead logging (WAL), which lets readers
    work while one process writes."""
    import sqlite3
    path = _sqlite_path(url)
    if path is None:
        return
    if not path.parent.is_dir():
        raise TuneError(f"--storage {url}: unreachable: folder {path.parent} does not exist")
    try:
        con = sqlite3.connect(str(path), timeout=timeout)
        try:
            con.execute("BEGIN IMMEDIATE")  # needs the write lock, as Optuna will
            con.execute("ROLLBACK")
            con.execute("PRAGMA journal_mode=WAL")
        finally:
            con.close()
    except sqlite3.OperationalError as e:
        if "locked" in str(e) or "busy" in str(e):
            raise TuneError(f"--storage {url}: locked by another process for more than "
                            f"{timeout:g}s (--storage-timeout); is another tune writing it "
                            "without releasing the lock?") from e
        raise TuneError(f"--storage {url}: unreachable: {e}") from e
    except sqlite3.DatabaseError as e:
        raise TuneError(f"--storage {url}: not a SQLite database: {e}") from e


def open_storage(url: str, timeout: float, failed_trial_callback: Optional[Callable] = None):
    r"""An Optuna ``RDBStorage`` on ``url`` with a heartbeat (a trial whose
    process stops beating for :data:`GRACE_SECONDS` is failed and continued
    from its checkpoint by ``failed_trial_callback``). SQLite waits up to
    ``timeout`` seconds for a lock instead of failing at once; other databases
    (PostgreSQL, MySQL) check their connection before use."""
    import optuna
    if _sqlite_path(url) is not None:
        engine_kwargs = {"connect_args": {"timeout": timeout}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    import warnings
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_SECONDS,
                grace_period=GRACE_SECONDS, heartbeat_stale_trial_callback=failed_trial_callback)
    except Exception as e:  # noqa: BLE001 - driver missing, host down, bad URL, locked
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "locked" in first:
            raise TuneError(f"--storage {url}: locked by another process ({first})") from e
        raise TuneError(f"--storage {url}: unreachable: {type(e).__name__}: {first}") from e


class LocalLock:
    r"""An exclusive ``fcntl`` lock on a file, shared by the workers of one
    machine: a worker holds it from counting the study's trials until its
    trial exists, so ``--trials N`` is exact on one machine. Released
    idempotently. Without ``fcntl`` (Windows) it does nothing."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fh = None

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return
        self._fh = open(self.path, "a+")
        fcntl.flock(self._fh, fcntl.LOCK_EX)

    def release(self) -> None:
        if self._fh is not None:
            import fcntl
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


def study_identity(args: argparse.Namespace, space: Mapping[str, Param],
                   fixed: Mapping[str, Any], metric: str, search_seed: int) -> Dict[str, Any]:
    """What a study is about; a study in the storage must match it to be resumed."""
    from pyg_mmrec.config import _model_key
    return {"model": _model_key(args.model), "plugin": (_model_key(args.plugin)
                                                         if args.plugin else None),
            "dataset": args.dataset, "missing": args.missing, "fill": args.fill or "zero",
            "metric": metric, "search_seed": search_seed,
            "fixed": {k: fixed[k] for k in sorted(fixed)},
            "space": {k: space[k].describe() for k in sorted(space)}}


def check_identity(saved: Mapping[str, Any], wanted: Mapping[str, Any], study: str,
                   storage: str) -> None:
    r"""A study is resumed only with the same model, data, protocol, metric,
    seed, fixed settings and space; anything else is another study."""
    if not saved:
        raise TuneError(f"--study {study} in {storage} was not created by pyg_mmrec tune; "
                        "give another --study")
    for key in _STUDY_KEYS:
        if saved.get(key) != wanted.get(key):
            what = ", ".join(f"{k} {saved.get(k)}" for k in _STUDY_KEYS if saved.get(k))
            raise TuneError(f"--study {study} in {storage} was created for {what}, not "
                            f"{key} {wanted.get(key)}; give another --study or --storage")
    for key in ("metric", "search_seed", "fixed", "space"):
        if saved.get(key) != wanted.get(key):
            raise TuneError(f"--study {study} in {storage} was created with another {key} "
                            f"({saved.get(key)} != {wanted.get(key)}); resume it with the same "
                            "command, or give another --study")


def continue_trial(study, trial) -> bool:
    r"""Enqueue a failed trial's parameters again so that its run continues
    from its checkpoint (a trial interrupted by Ctrl-C, or whose process
    died); ``False`` if it was already continued or has nothing to continue."""
    run_dir = trial.user_attrs.get("run_dir")
    if not run_dir:
        return False
    if any(t.user_attrs.get("continues") == trial.number for t in study.get_trials(deepcopy=False)):
        return False
    study.enqueue_trial(dict(trial.params), user_attrs={"resume_from": run_dir,
                                                         "continues": trial.number})
    return True


def _on_stale_trial(study, trial) -> None:
    """``failed_trial_callback`` of the storage: a dead worker's trial continues."""
    continue_trial(study, trial)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_trials(study) -> List[int]:
    r"""Before a search (re)starts: failed trials that did not fail by an error
    of their setting (interrupted by Ctrl-C, failed by the heartbeat after
    their worker died), and running trials of this machine whose process is
    gone (killed, crashed), are enqueued again to continue from their
    checkpoints. Running trials of live processes or of other machines are
    left to their heartbeat."""
    import optuna
    from optuna.trial import TrialState
    host, out = socket.gethostname(), []
    storage = study._storage
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.RUNNING and t.user_attrs.get("host") == host:
            pid = t.user_attrs.get("pid")
            if pid is not None and not _pid_alive(int(pid)):
                try:
                    storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
                except optuna.exceptions.UpdateFinishedTrialError:
                    continue  # another process failed it meanwhile
                t = storage.get_trial(t._trial_id)
                if continue_trial(study, t):
                    out.append(t.number)
        elif t.state == TrialState.FAIL and "error" not in t.user_attrs:
            if continue_trial(study, t):
                out.append(t.number)
    return out


def counted_trials(study) -> int:
    r"""Trials that count towards ``--trials``: finished, failed or running, each
    continued trial once (a Ctrl-C'd trial and its continuation are one)."""
    from optuna.trial import TrialState
    trials = study.get_trials(deepcopy=False)
    continued = {t.user_attrs.get("continues") for t in trials} - {None}
    return sum(1 for t in trials if t.state != TrialState.WAITING and t.number not in continued)


def open_or_create_study(spec: Mapping[str, Any], identity: Mapping[str, Any],
                         space: Mapping[str, Param]):
    r"""Load the study if it exists (it must match ``identity``), else create it
    and enqueue the defaults as its first trial (the search never ends below
    the shipped setting on validation)."""
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(spec["storage"], spec["storage_timeout"], _on_stale_trial)
    try:
        names = {s.study_name for s in optuna.study.get_all_study_summaries(storage,
                                                                            include_best_trial=False)}
    except Exception as e:  # noqa: BLE001
        raise TuneError(f"--storage {spec['storage']}: unreachable: {e}") from e
    if spec["study"] in names:
        study = optuna.load_study(study_name=spec["study"], storage=storage)
        check_identity(study.user_attrs.get("identity") or {}, identity, spec["study"],
                       spec["storage"])
        return study, False
    study = optuna.create_study(study_name=spec["study"], storage=storage, direction="maximize",
                                load_if_exists=True)
    if study.user_attrs.get("identity"):  # another process created it meanwhile
        check_identity(study.user_attrs["identity"], identity, spec["study"], spec["storage"])
        return study, False
    study.set_user_attr("identity", dict(identity))
    from pyg_mmrec.config import build_config
    cfg = build_config(spec["model"], spec["fixed"], spec["plugin"])
    sections = {"train": cfg["train"], "model": cfg["hparams"], "plugin": cfg["plugin_hparams"]}
    defaults = {}
    for name, p in space.items():
        section, bare = name.split(".", 1)
        v = sections[section].get(bare)
        if p.kind == "categorical" and any(type(v) is type(c) and v == c for c in p.choices):
            defaults[name] = v
        elif p.kind != "categorical" and _is_number(v) and p.low <= v <= p.high:
            defaults[name] = int(v) if p.kind == "int" else float(v)
    if defaults:
        study.enqueue_trial(defaults, user_attrs={"defaults": True})
    return study, True


def read_budget(study_dir: Path) -> float:
    """Seconds of search already spent on this study from this output folder."""
    path = study_dir / BUDGET_FILE
    if not path.is_file():
        return 0.0
    try:
        return float(json.loads(path.read_text())["spent_seconds"])
    except (ValueError, KeyError, TypeError) as e:
        raise TuneError(f"{path}: unreadable budget record ({e}); delete it to start the "
                        "budget again") from e


def write_budget(study_dir: Path, spent: float, budget: float) -> None:
    """Record the seconds spent (atomically: a crash leaves the previous record)."""
    from pyg_mmrec.train.checkpoint import atomic_write_json
    atomic_write_json(study_dir / BUDGET_FILE, {"spent_seconds": round(spent, 3),
                                                "budget_seconds": budget,
                                                "host": socket.gethostname()})
