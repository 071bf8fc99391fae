r"""``python -m pyg_mmrec tune``: a budgeted hyper-parameter search on validation (Optuna).

Every trial is a normal run (:func:`pyg_mmrec.train.run`: its own folder with
``config.yaml``, ``metrics.jsonl``, ``result.json`` and checkpoint) trained on
one seed with ``test=False``; the objective is the validation metric at the
trial's early-stopping epoch. After every validation the trial reports the
curve to Optuna, whose pruner (median or successive halving) may end it; a
trial that would overrun the wall-time budget is stopped and recorded as such.
The study lives in a database (SQLite in the output folder by default), so a
search resumes after Ctrl-C or a crash and several processes or machines can
share it. Once the search is over, the best setting is trained on every
``--seeds`` and the test split of those runs is read, once.

The search space of a model is ``pyg_mmrec/configs/<model>.space.yaml`` (and
``mrdib.space.yaml`` with ``--plugin mrdib``), see :func:`load_space`; the
command line adds or replaces entries (``--space key=low:high:log``,
``--space key=a,b,c``). Optuna and matplotlib are imported only by the
functions that need them (``pip install pyg_mmrec[tune]``).

See ``docs/tuning.md`` for the commands and the storage story.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

EXIT_CONFIG, EXIT_INTERRUPTED = 2, 130
SPACE_SUFFIX = ".space.yaml"
STUDY_DB = "study.db"
LOCK_NAME = ".tune.lock"
BUDGET_FILE = "budget.json"
# Heartbeat of RDB storages: a trial whose process stopped beating for GRACE seconds
# (killed, machine lost) is marked failed and continued from its checkpoint by another.
HEARTBEAT_SECONDS, GRACE_SECONDS = 30, 120
_STUDY_KEYS = ("model", "plugin", "dataset", "missing", "fill")


class TuneError(ValueError):
    """Bad input to ``tune`` (reported as one line, exit code 2, before any trial)."""


# ------------------------------------------------------------------------ search space
@dataclass
class Param:
    r"""One searched configuration key.

    ``kind`` is ``"categorical"`` (``choices``), ``"float"`` or ``"int"``
    (``low``..``high``, on a log scale with ``log``). ``mmrec`` marks the grid of
    MMRec's ``configs/model/<Model>.yaml``."""

    name: str
    kind: str
    choices: Optional[List[Any]] = None
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    mmrec: bool = False
    source: str = ""

    def describe(self) -> Dict[str, Any]:
        if self.kind == "categorical":
            return {"choices": list(self.choices)}
        return {"low": self.low, "high": self.high, "log": self.log, "int": self.kind == "int"}

    def values_to_check(self) -> List[Any]:
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _param_from_mapping(name: str, spec: Any, source: str) -> Param:
    where = f"{source}: '{name}'"
    if not isinstance(spec, Mapping):
        raise TuneError(f"{where}: expected a mapping {{choices: [...]}} or {{low: .., high: .., "
                        f"log: ..}}, got {spec!r}")
    unknown = set(spec) - {"choices", "low", "high", "log", "mmrec"}
    if unknown:
        raise TuneError(f"{where}: unknown field(s) {sorted(unknown)}; expected choices, or "
                        "low/high/log (and mmrec)")
    mmrec = bool(spec.get("mmrec", False))
    if "choices" in spec:
        if {"low", "high", "log"} & set(spec):
            raise TuneError(f"{where}: give either choices or low/high, not both")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise TuneError(f"{where}: choices must be a non-empty list, got {choices!r}")
        return _categorical(name, choices, where, mmrec, source)
    if "low" not in spec or "high" not in spec:
        raise TuneError(f"{where}: a range needs both low and high")
    return _range(name, spec["low"], spec["high"], bool(spec.get("log", False)), where, mmrec,
                  source)


def _categorical(name: str, choices: List[Any], where: str, mmrec: bool, source: str) -> Param:
    for c in choices:
        if not (c is None or isinstance(c, (bool, int, float, str))):
            raise TuneError(f"{where}: choice {c!r} is not a scalar (Optuna stores "
                            "None/bool/int/float/str choices)")
    seen = []
    for c in choices:
        if any(type(c) is type(s) and c == s for s in seen):
            raise TuneError(f"{where}: choice {c!r} is listed twice")
        seen.append(c)
    return Param(name, "categorical", choices=list(choices), mmrec=mmrec, source=source)


def _range(name: str, low: Any, high: Any, log: bool, where: str, mmrec: bool,
           source: str) -> Param:
    if not (_is_number(low) and _is_number(high)):
        raise TuneError(f"{where}: low and high must be numbers, got {low!r} and {high!r}")
    if not low < high:
        raise TuneError(f"{where}: empty range: low {low} must be below high {high}")
    if log and low <= 0:
        raise TuneError(f"{where}: a log range needs low > 0, got {low}")
    kind = "int" if _is_int(low) and _is_int(high) else "float"
    return Param(name, kind, low=low, high=high, log=log, mmrec=mmrec, source=source)


def space_path(name: str) -> Path:
    """``pyg_mmrec/configs/<name>.space.yaml`` of a model or plug-in name."""
    from pyg_mmrec.config import CONFIG_DIR, _model_key
    return CONFIG_DIR / f"{_model_key(name)}{SPACE_SUFFIX}"


def read_space_file(path: os.PathLike) -> Dict[str, Param]:
    r"""Read a search-space YAML: ``{key: {choices: [...]} | {low, high, log}}``.

    Keys are configuration keys (bare or qualified as ``train.``, ``model.``,
    ``plugin.``); ``mmrec: true`` marks MMRec's own grid of the key."""
    from pyg_mmrec.config import ConfigError, load_yaml
    path = Path(path)
    if not path.is_file():
        raise TuneError(f"search space file not found: {path}")
    try:
        raw = load_yaml(path)
    except ConfigError as e:
        raise TuneError(str(e)) from e
    return {str(k): _param_from_mapping(str(k), v, str(path)) for k, v in raw.items()}


def load_space(model: str, plugin: Optional[str] = None) -> Dict[str, Param]:
    """The shipped search space of ``model`` (plus ``plugin``'s); ``{}`` if none."""
    out: Dict[str, Param] = {}
    for name in [model] + ([plugin] if plugin else []):
        path = space_path(name)
        if path.is_file():
            out.update(read_space_file(path))
    return out


def mmrec_grid(model: str) -> Dict[str, List[Any]]:
    """MMRec's grid of ``model`` (``{key: values}``, the entries marked ``mmrec: true``
    in its space file); ``examples/backbone_table.py --search mmrec`` trains it."""
    path = space_path(model)
    if not path.is_file():
        return {}
    return {k: list(p.choices) for k, p in read_space_file(path).items()
            if p.mmrec and p.kind == "categorical"}


def parse_space_args(items: Optional[Sequence[str]]) -> Dict[str, Param]:
    r"""``--space`` values: ``key=low:high`` (``:log`` for a log scale; integers
    give an integer range) or ``key=a,b,c`` (categorical, YAML-typed values)."""
    from pyg_mmrec.config import ConfigError, parse_grid, parse_value
    out: Dict[str, Param] = {}
    for item in items or []:
        where = f"--space {item!r}"
        if "=" not in item:
            raise TuneError(f"{where}: expected key=low:high[:log] or key=a,b,c")
        key, text = (s.strip() for s in item.split("=", 1))
        if not key:
            raise TuneError(f"{where}: empty key")
        if not text:
            raise TuneError(f"{where}: empty space (expected low:high[:log] or a,b,c)")
        if key in out:
            raise TuneError(f"{where}: key '{key}' given twice")
        if ":" in text and "," not in text and not text.startswith(("[", "{")):
            parts = text.split(":")
            log = parts[-1].strip() == "log"
            if log:
                parts = parts[:-1]
            if len(parts) != 2:
                raise TuneError(f"{where}: expected low:high or low:high:log")
            try:
                low, high = (parse_value(p) for p in parts)
            except ConfigError as e:
                raise TuneError(f"{where}: {e}") from e
            out[key] = _range(key, low, high, log, where, False, "--space")
        else:
            try:
                values = parse_grid([f"{key}={text}"])[key]
            except ConfigError as e:
                raise TuneError(f"{where}: {e}") from e
            out[key] = _categorical(key, values, where, False, "--space")
    return out


def _known_keys(model: str, plugin: Optional[str]) -> Dict[str, Dict[str, Any]]:
    """``{section: {key: default}}`` of every key a run of ``model`` accepts."""
    from pyg_mmrec.config import (_MODEL_DATA_ARGS, _PLUGIN_DATA_ARGS, _constructor_params,
                                  build_config, resolve_model, resolve_plugin)
    cfg = build_config(model, {}, plugin)
    model_keys = dict(_constructor_params(resolve_model(model)[1], _MODEL_DATA_ARGS) or {})
    model_keys.update(cfg["hparams"])
    plugin_keys: Dict[str, Any] = {}
    if plugin:
        plugin_keys = dict(_constructor_params(resolve_plugin(plugin), _PLUGIN_DATA_ARGS) or {})
        plugin_keys.update(cfg["plugin_hparams"])
    return {"train": dict(cfg["train"]), "model": model_keys, "plugin": plugin_keys}


def canonical_key(key: str, known: Mapping[str, Mapping[str, Any]], what: str) -> str:
    """``lr`` -> ``train.lr``; an unknown key fails naming its closest match."""
    import difflib
    section, _, bare = key.partition(".") if "." in key else ("", "", key)
    if section and section not in known:
        raise TuneError(f"{what} '{key}': unknown section '{section}' (expected train., model. "
                        "or plugin.)")
    owners = [section] if section else [s for s in ("train", "model", "plugin") if bare in known[s]]
    if not owners or bare not in known[owners[0]]:
        names = sorted({k for s in known.values() for k in s}
                       | {f"{s}.{k}" for s, keys in known.items() for k in keys})
        close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else "; see the model's YAML for its keys"
        raise TuneError(f"{what} '{key}': unknown configuration key{hint}")
    if len(owners) > 1:
        raise TuneError(f"{what} '{key}' is ambiguous (a key of {owners}); write e.g. "
                        f"'{owners[0]}.{key}'")
    return f"{owners[0]}.{bare}"


def resolve_space(model: str, plugin: Optional[str], shipped: Mapping[str, Param],
                  cli: Mapping[str, Param], fixed: Mapping[str, Any]
                  ) -> Tuple[Dict[str, Param], List[str]]:
    r"""The space actually searched, keyed by canonical name (``train.lr``,
    ``model.n_layers``, ``plugin.kl_weight``), and notes for the user.

    ``cli`` entries replace shipped ones; a shipped key that ``fixed`` sets
    (``--set``, ``--config``, flags) is dropped from the space; a ``--space``
    key that ``fixed`` also sets is a contradiction. Every value (choice or
    range end) must be accepted by :func:`pyg_mmrec.config.build_config`.

    Raises:
        TuneError: unknown, ambiguous, duplicated or contradictory keys, values
            of the wrong type, or an empty space.
    """
    from pyg_mmrec.config import ConfigError, build_config
    known = _known_keys(model, plugin)
    fixed_canon = {canonical_key(k, known, "--set/--config"): k for k in fixed}
    space: Dict[str, Param] = {}
    notes: List[str] = []
    for origin, entries in (("shipped", shipped), ("cli", cli)):
        seen: Dict[str, str] = {}
        for key, p in entries.items():
            what = "--space" if origin == "cli" else f"search space ({p.source})"
            canon = canonical_key(key, known, what)
            if canon in seen:
                raise TuneError(f"{what}: '{key}' and '{seen[canon]}' are the same key "
                                f"({canon}); give it once")
            seen[canon] = key
            if canon in fixed_canon:
                if origin == "cli":
                    raise TuneError(f"--space '{key}' is also fixed by --set/--config/flag "
                                    f"'{fixed_canon[canon]}'; search it or fix it, not both")
                notes.append(f"{canon} fixed by '{fixed_canon[canon]}', not searched")
                continue
            if origin == "cli" and canon in space:
                notes.append(f"{canon}: --space replaces the shipped range")
            space[canon] = Param(canon, p.kind, p.choices, p.low, p.high, p.log, p.mmrec,
                                 p.source)
    if not space:
        raise TuneError(f"empty search space for {model}{'+' + plugin if plugin else ''}: "
                        "nothing to tune (no shipped space, or every key is fixed by --set); "
                        "add some with --space key=low:high[:log] or --space key=a,b,c")
    for canon, p in space.items():
        section, bare = canon.split(".", 1)
        default = known[section].get(bare)
        if p.kind == "int" and _is_number(default) and not _is_int(default):
            p.kind = "float"  # penalty_coeff: 1:1000 is a float range when the key is a float
        if canon == "train.metric":
            raise TuneError("--space metric: the selection metric cannot be searched over")
        for v in p.values_to_check():
            if p.kind == "float":
                v = float(v)
            try:
                build_config(model, {**fixed, canon: v}, plugin)
            except ConfigError as e:
                raise TuneError(f"search space '{canon}' = {v!r}: {e}") from e
    return space, notes


# ----------------------------------------------------------------------------- parsing
def parse_duration(text: str) -> float:
    """``"2h"``, ``"45m"``, ``"1h30m"``, ``"90s"`` or plain seconds -> seconds."""
    s = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        seconds = float(s)
    else:
        number = r"(\d+(?:\.\d+)?)"
        m = re.fullmatch(rf"(?:{number}h)?(?:{number}m(?:in)?)?(?:{number}s)?", s)
        if not s or not m or not any(m.groups()):
            raise TuneError(f"--budget: expected a duration such as 2h, 45m, 1h30m, 90s or "
                            f"seconds, got {text!r}")
        h, mi, se = (float(g) if g else 0.0 for g in m.groups())
        seconds = 3600 * h + 60 * mi + se
    if seconds <= 0:
        raise TuneError(f"--budget: expected a positive duration, got {text!r}")
    return seconds


def _fmt_seconds(s: float) -> str:
    s = float(s)
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.1f}min"
    return f"{s / 3600:.2f}h"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=,+_-]+", "_", str(text)).strip("_") or "x"


# ----------------------------------------------------------------------------- storage
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


# ---------------------------------------------------------------------------- the study
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


def _suggest(trial, p: Param) -> Any:
    if p.kind == "categorical":
        return trial.suggest_categorical(p.name, p.choices)
    if p.kind == "int":
        return trial.suggest_int(p.name, int(p.low), int(p.high), log=p.log)
    return trial.suggest_float(p.name, float(p.low), float(p.high), log=p.log)


def make_pruner(name: str, warmup: int):
    import optuna
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=warmup)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, warmup),
                                                      reduction_factor=3)
    return optuna.pruners.NopPruner()


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


# ------------------------------------------------------------------------------ trials
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
    ran = 0
    while time.time() + float(spec["min_trial_seconds"]) <= deadline:
        lock.acquire()
        try:
            if spec["trials"] and counted_trials(study) >= spec["trials"]:
                break
            study.optimize(objective, n_trials=1, catch=(Exception,))
            ran += 1
        finally:
            lock.release()
        if not spec["quiet"]:
            print(f"[tune w{worker}] {_trial_line(study, spec['metric'])}", file=sys.stderr,
                  flush=True)
    return ran


def _worker_main(spec: Dict[str, Any], worker: int) -> None:  # pragma: no cover - subprocess
    try:
        work(spec, worker)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)


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


# ----------------------------------------------------------------------------- outputs
def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def selected_overrides(fixed: Mapping[str, Any], params: Mapping[str, Any]) -> Dict[str, Any]:
    r"""The fixed settings plus a trial's parameters as a ``--config`` YAML
    mapping: model keys flat, ``train:`` and ``plugin:`` sections."""
    out: Dict[str, Any] = {}
    merged = {**dict(fixed), **dict(params)}
    for key, value in merged.items():
        section, _, bare = key.partition(".") if "." in key else ("model", "", key)
        value = _plain(value)
        if section == "model":
            out[bare] = value
        else:
            out.setdefault(section, {})[bare] = value
    return out


def best_trials_table(study, metric: str, top: int = 10) -> str:
    """Markdown table of the ``top`` completed trials, best first."""
    from optuna.trial import TrialState
    trials = study.get_trials(deepcopy=False)
    done = sorted((t for t in trials if t.state == TrialState.COMPLETE),
                  key=lambda t: -t.value)[:top]
    keys = sorted({k for t in done for k in t.params})
    head = ["trial", f"valid {metric}", "best epoch", "epochs", "minutes"] + keys
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in done:
        minutes = (t.duration.total_seconds() / 60) if t.duration else float("nan")
        cells = [str(t.number), f"{t.value:.4f}", str(t.user_attrs.get("best_epoch", "")),
                 str(t.user_attrs.get("epochs", "")), f"{minutes:.1f}"]
        cells += [_fmt_value(t.params.get(k)) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    counts = {s.name.lower(): sum(1 for t in trials if t.state == s) for s in TrialState}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    return "\n".join(lines) + f"\n\n{len(trials)} trial(s): {summary}."


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def write_plots(study, metric: str, folder: Path) -> List[Path]:
    r"""``history.png`` (optimisation history), ``importances.png`` (parameter
    importances, with at least two completed trials) and ``curves.png`` (the
    validation curve of every trial, pruned/stopped against completed)."""
    import warnings

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.trial import TrialState

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's matplotlib plots are "experimental"
        from optuna.visualization import matplotlib as ovm
        done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
        if done:
            ax = ovm.plot_optimization_history(study, target_name=f"valid {metric}")
            ax.figure.tight_layout()
            ax.figure.savefig(folder / "history.png", dpi=120)
            plt.close(ax.figure)
            written.append(folder / "history.png")
        if len(done) >= 2 and len({k for t in done for k in t.params}) >= 1:
            try:
                ax = ovm.plot_param_importances(study, target_name=f"valid {metric}")
                ax.figure.tight_layout()
                ax.figure.savefig(folder / "importances.png", dpi=120)
                plt.close(ax.figure)
                written.append(folder / "importances.png")
            except (RuntimeError, ValueError, ZeroDivisionError,
                    optuna.exceptions.OptunaError) as e:  # e.g. every trial scored the same
                print(f"[tune] parameter importances not plotted: {e}", file=sys.stderr)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {TrialState.COMPLETE: ("tab:blue", 1.2, "completed"),
              TrialState.PRUNED: ("tab:red", 0.7, "pruned / stopped at the budget")}
    labelled = set()
    for t in study.get_trials(deepcopy=False):
        if t.state not in styles or not t.intermediate_values:
            continue
        color, width, label = styles[t.state]
        steps = sorted(t.intermediate_values)
        ax.plot(steps, [t.intermediate_values[s] for s in steps], color=color, lw=width,
                alpha=0.8, label=None if label in labelled else label)
        labelled.add(label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"valid {metric}")
    ax.set_title(f"validation curves of the trials ({study.study_name})")
    if labelled:
        ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "curves.png", dpi=120)
    plt.close(fig)
    written.append(folder / "curves.png")
    return written


# ----------------------------------------------------------------------------- command
def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``tune`` subcommand's arguments (light: no heavy imports)."""
    p.add_argument("--model", required=True, help="model name (e.g. LightGCN, FREEDOM, I3MRec)")
    p.add_argument("--dataset", required=True, help="dataset folder name under --root")
    p.add_argument("--root", default="../shared/data", help="data directory (default: %(default)s)")
    p.add_argument("--missing", default="natural", metavar="SPEC",
                   help="missing-modality protocol, one per study (default: %(default)s)")
    p.add_argument("--plugin", default=None, help="plug-in wrapping the backbone (mrdib)")
    p.add_argument("--fill", default=None, choices=["zero", "mean", "propagate"],
                   help="how missing feature rows are filled (default: zero)")
    p.add_argument("--budget", required=True, metavar="DURATION",
                   help="wall time of the search on this machine, summed over resumptions "
                        "(2h, 45m, 1h30m, 90s); the final --seeds runs come after it")
    p.add_argument("--trials", type=int, default=None, metavar="N",
                   help="stop after N trials of the study (default: only the budget)")
    p.add_argument("--seeds", type=_seeds, default=[0],
                   help="seeds the selected setting is trained on; trials use the first "
                        "(default: 0)")
    p.add_argument("--space", action="append", default=[], metavar="KEY=SPEC",
                   help="search KEY over low:high[:log] or a,b,c (adds to or replaces the "
                        "shipped space); may be repeated")
    p.add_argument("--space-file", default=None, metavar="YAML",
                   help="search space replacing the shipped pyg_mmrec/configs/<model>.space.yaml")
    p.add_argument("--config", default=None, metavar="YAML",
                   help="fixed settings (like train --config); their keys are not searched")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="fix a configuration key (removes it from the shipped space)")
    p.add_argument("--epochs", type=int, default=None, help="shorthand for --set epochs=...")
    p.add_argument("--patience", type=int, default=None,
                   help="shorthand for --set patience=...")
    p.add_argument("--metric", default=None,
                   help="validation metric to maximise (default: the training metric, "
                        "recall@20)")
    p.add_argument("--pruner", default="median", choices=["median", "halving", "none"],
                   help="stop hopeless trials on their validation curve (default: %(default)s)")
    p.add_argument("--prune-warmup", type=int, default=10, metavar="EPOCHS",
                   help="epochs before a trial may be pruned (default: %(default)s)")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="Optuna RDB URL shared by the workers (default: sqlite:///<study "
                        "folder>/study.db); e.g. postgresql://user@host/db for several machines")
    p.add_argument("--storage-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="how long to wait for a locked SQLite database (default: %(default)s)")
    p.add_argument("--study", default=None, metavar="NAME",
                   help="study name (default: <model>[+plugin]-<dataset>-<missing>)")
    p.add_argument("--workers", type=int, default=1, metavar="K",
                   help="worker processes on this machine sharing the study (default: 1)")
    p.add_argument("--threads", type=int, default=None, metavar="T",
                   help="torch threads per worker (default: torch's with one worker, else "
                        "cores / workers)")
    p.add_argument("--sampler-seed", type=int, default=0,
                   help="seed of the TPE sampler (default: %(default)s)")
    p.add_argument("--out", default="runs/tune",
                   help="output directory; the study folder is <out>/<study> (default: "
                        "%(default)s)")
    p.add_argument("--plot", action="store_true",
                   help="require the PNG plots (they are written whenever matplotlib is "
                        "installed; with --plot its absence is an error before any trial)")
    p.add_argument("--no-final", action="store_true",
                   help="only search (a helper machine): do not train the best setting on "
                        "--seeds")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no per-trial lines")


def _seeds(text: str) -> List[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds: expected comma-separated integers, "
                                         f"got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds: expected distinct integers, got {text!r}")
    return seeds


@dataclass
class _Plan:
    spec: Dict[str, Any]
    space: Dict[str, Param]
    fixed: Dict[str, Any]
    notes: List[str] = field(default_factory=list)


def plan(args: argparse.Namespace) -> _Plan:
    r"""Validate everything that needs no data and no storage: model, plug-in,
    fixed settings, space, budget, workers, plots. Raises :class:`TuneError`
    (or :class:`~pyg_mmrec.config.ConfigError`) with a one-line message."""
    from pyg_mmrec.config import _model_key, build_config, config_overrides, parse_assignments
    from pyg_mmrec.data.missing import parse_missing_spec

    budget = parse_duration(args.budget)
    cores = usable_cores()
    if args.workers < 1:
        raise TuneError(f"--workers: expected a positive integer, got {args.workers}")
    if args.workers > cores:
        raise TuneError(f"--workers {args.workers}: above the {cores} core(s) of this machine "
                        "(several machines: run tune on each with the same --storage/--study)")
    if args.threads is not None and (args.threads < 1 or args.workers * args.threads > cores):
        raise TuneError(f"--threads {args.threads}: --workers x --threads must be between 1 and "
                        f"the {cores} core(s)")
    if args.trials is not None and args.trials < 1:
        raise TuneError(f"--trials: expected a positive integer, got {args.trials}")
    if args.prune_warmup < 0:
        raise TuneError(f"--prune-warmup: expected >= 0, got {args.prune_warmup}")
    if args.storage_timeout <= 0:
        raise TuneError(f"--storage-timeout: expected a positive number of seconds, got "
                        f"{args.storage_timeout}")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError as e:
            raise TuneError("--plot needs matplotlib (pip install pyg_mmrec[plot]), which is "
                            f"not installed ({e})") from e
    try:
        import optuna  # noqa: F401
    except ImportError as e:
        raise TuneError(f"tune needs Optuna (pip install pyg_mmrec[tune]): {e}") from e
    try:
        parse_missing_spec(args.missing)
    except ValueError as e:
        raise TuneError(f"--missing: {e}") from e

    fixed = config_overrides(args.config) if args.config else {}
    fixed.update(parse_assignments(args.set))
    for flag in ("epochs", "patience"):
        if getattr(args, flag) is not None:
            fixed[f"train.{flag}"] = getattr(args, flag)
    if args.metric is not None:
        fixed["train.metric"] = args.metric
    config = build_config(args.model, fixed, args.plugin)  # unknown model/plugin/key
    metric = config["train"]["metric"]
    known = _known_keys(args.model, args.plugin)
    fixed = {canonical_key(k, known, "--set/--config"): v for k, v in fixed.items()}

    shipped = (read_space_file(args.space_file) if args.space_file
               else load_space(args.model, args.plugin))
    space, notes = resolve_space(args.model, args.plugin, shipped,
                                 parse_space_args(args.space), fixed)

    name = _model_key(args.model) + (f"+{_model_key(args.plugin)}" if args.plugin else "")
    study = args.study or _safe(f"{name}-{args.dataset}-{args.missing}"
                                + (f"-fill_{args.fill}" if args.fill else ""))
    study_dir = (Path(args.out) / _safe(study)).resolve()
    storage = args.storage or f"sqlite:///{study_dir / STUDY_DB}"
    train = config["train"]
    min_epochs = max(1, min(train["epochs"], train["patience"] + 1))
    try:
        import matplotlib  # noqa: F401
        plots = True
    except ImportError:
        plots = False
    spec = {"model": args.model, "plugin": args.plugin, "dataset": args.dataset,
            "root": args.root, "missing": args.missing, "fill": args.fill,
            "device": args.device, "search_seed": args.seeds[0], "seeds": list(args.seeds),
            "fixed": fixed, "metric": metric, "space": {k: vars(p) for k, p in space.items()},
            "study": study, "study_dir": str(study_dir), "storage": storage,
            "storage_timeout": float(args.storage_timeout), "budget": budget,
            "trials": args.trials, "workers": args.workers,
            # several workers: share the cores instead of each taking all of them
            "threads": args.threads or (max(1, cores // args.workers) if args.workers > 1
                                        else None),
            "pruner": args.pruner, "prune_warmup": args.prune_warmup,
            "sampler_seed": args.sampler_seed, "quiet": args.quiet,
            "min_epochs": min_epochs, "plots": plots, "final": not args.no_final}
    return _Plan(spec, space, fixed, notes)


def _say(spec: Mapping[str, Any], msg: str) -> None:
    if not spec.get("quiet"):
        print(f"[tune] {msg}", file=sys.stderr, flush=True)


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


def _read_budget(study_dir: Path) -> float:
    import json
    path = study_dir / BUDGET_FILE
    if not path.is_file():
        return 0.0
    try:
        return float(json.loads(path.read_text())["spent_seconds"])
    except (ValueError, KeyError, TypeError) as e:
        raise TuneError(f"{path}: unreadable budget record ({e}); delete it to start the "
                        "budget again") from e


def _write_budget(study_dir: Path, spent: float, budget: float) -> None:
    from pyg_mmrec.train.checkpoint import atomic_write_json
    atomic_write_json(study_dir / BUDGET_FILE, {"spent_seconds": round(spent, 3),
                                                "budget_seconds": budget,
                                                "host": socket.gethostname()})


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
    if bad:
        raise RuntimeError(f"tune: worker process(es) failed with exit code(s) {bad} (see "
                           "their messages above); run the same command again to resume")
    return 0


def final_runs(spec: Mapping[str, Any], study, best) -> List[Dict[str, Any]]:
    r"""Train the best trial's setting on every seed in ``<study>/final/trial<N>/``
    and read the test split of those runs (only theirs, once). The search
    seed's run is the trial's own (copied, then only evaluated)."""
    import shutil

    from pyg_mmrec.train import run
    overrides = {**spec["fixed"], **best.params}
    root = Path(spec["study_dir"]) / "final" / f"trial{best.number:04d}"
    out = []
    for seed in spec["seeds"]:
        run_dir = root / f"seed{seed}"
        trial_dir = Path(best.user_attrs.get("run_dir", ""))
        if (seed == spec["search_seed"] and not run_dir.exists()
                and (trial_dir / "result.json").is_file()):
            tmp = run_dir.with_name(run_dir.name + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(trial_dir, tmp)
            (tmp / "result.json").unlink()  # written again with the test metrics below
            tmp.rename(run_dir)
        _say(spec, f"final: seed {seed} of trial {best.number} -> {run_dir}")
        r = run(spec["model"], spec["dataset"], root=spec["root"], missing=spec["missing"],
                seed=seed, overrides=overrides, plugin=spec["plugin"], fill=spec["fill"],
                out_dir=run_dir, device=spec["device"], quiet=True, resume=True, test=True)
        out.append(r.to_dict())
    return out


def report(spec: Mapping[str, Any], study, fixed: Mapping[str, Any]) -> Optional[Any]:
    """Write ``best_trials.md``, ``selected.yaml`` and the plots; returns the best trial."""
    import yaml
    from optuna.trial import TrialState

    from pyg_mmrec.train.checkpoint import atomic_write_text
    study_dir = Path(spec["study_dir"])
    table = best_trials_table(study, spec["metric"])
    atomic_write_text(study_dir / "best_trials.md", table + "\n")
    print(table)
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if spec["plots"]:
        for path in write_plots(study, spec["metric"], study_dir / "plots"):
            _say(spec, f"plot written to {path}")
    if not done:
        return None
    best = max(done, key=lambda t: t.value)
    header = (f"# Selected by `python -m pyg_mmrec tune` on valid {spec['metric']} "
              f"{best.value:.4f} (trial {best.number} of study {spec['study']}: "
              f"{spec['model']}{'+' + spec['plugin'] if spec['plugin'] else ''} on "
              f"{spec['dataset']}, missing {spec['missing']}, seed {spec['search_seed']}).\n"
              f"# Use: python -m pyg_mmrec train --model {spec['model']} --dataset "
              f"{spec['dataset']} --missing {spec['missing']}"
              f"{' --plugin ' + spec['plugin'] if spec['plugin'] else ''}"
              f"{' --fill ' + spec['fill'] if spec['fill'] else ''} --config "
              f"{study_dir / 'selected.yaml'}\n")
    body = yaml.safe_dump(selected_overrides(fixed, best.params), sort_keys=False)
    atomic_write_text(study_dir / "selected.yaml", header + body)
    _say(spec, f"selected setting written to {study_dir / 'selected.yaml'}")
    return best


def cmd_tune(args: argparse.Namespace, trainer_cls=None) -> int:
    r"""``python -m pyg_mmrec tune``: validate, open the study, search within the
    budget, report, then train the selected setting on ``--seeds``.

    ``trainer_cls`` (tests) replaces the :class:`~pyg_mmrec.train.Trainer` of
    the trials run in this process."""
    from pyg_mmrec.config import ConfigError
    from pyg_mmrec.results import aggregate, markdown_table
    try:
        p = plan(args)
        spec = p.spec
        study_dir = Path(spec["study_dir"])
        if args.storage is None:
            study_dir.mkdir(parents=True, exist_ok=True)
        check_storage(spec["storage"], spec["storage_timeout"])
        identity = study_identity(args, p.space, p.fixed, spec["metric"], spec["search_seed"])
        study, created = open_or_create_study(spec, identity, p.space)
        study_dir.mkdir(parents=True, exist_ok=True)
        spent = _read_budget(study_dir)
    except TuneError as e:
        raise ConfigError(str(e)) from e
    for note in p.notes:
        _say(spec, note)
    _say(spec, f"study {spec['study']} in {spec['storage']} ("
               + ("new" if created else f"resumed: {counted_trials(study)} trial(s) so far")
               + "); space: "
               + ", ".join(f"{k} {v.describe()}" for k, v in p.space.items()))

    recovered = recover_trials(study)  # first: a dead trial must not count as running
    if recovered:
        _say(spec, f"continuing interrupted trial(s) {recovered} from their checkpoints")
    t_start = time.time()
    remaining = spec["budget"] - spent
    reached = spec["trials"] is not None and counted_trials(study) >= spec["trials"]
    status = 0
    if remaining > 0 and not reached:
        fixed_s, per_epoch = probe_cost(spec)
        min_trial = fixed_s + spec["min_epochs"] * per_epoch
        remaining -= time.time() - t_start
        _say(spec, f"one epoch + validation of the default setting: {per_epoch:.2f}s, loading "
                   f"{fixed_s:.2f}s; the shortest trial ({spec['min_epochs']} epochs before early "
                   f"stopping can end it) ~{_fmt_seconds(min_trial)}; budget left "
                   f"{_fmt_seconds(max(0.0, remaining))}")
        if min_trial > remaining:
            if counted_trials(study) == 0:
                raise ConfigError(
                    f"--budget {args.budget}: too small for one trial: the shortest trial "
                    f"needs ~{_fmt_seconds(min_trial)} ({spec['min_epochs']} epochs at "
                    f"{per_epoch:.2f}s plus {fixed_s:.2f}s loading) and "
                    f"{_fmt_seconds(max(0.0, remaining))} are left; give more, or fewer "
                    "--epochs/--patience")
            _say(spec, "the budget left is too small for another trial")
        else:
            spec["deadline"] = time.time() + remaining
            spec["min_trial_seconds"] = min_trial
            try:
                status = run_workers(spec, trainer_cls)
            finally:
                _write_budget(study_dir, spent + time.time() - t_start, spec["budget"])
    else:
        _say(spec, "budget spent" if remaining <= 0 else f"--trials {spec['trials']} reached")
    if status == EXIT_INTERRUPTED:
        print(f"interrupted: {_trial_line(study, spec['metric'])}. Run the same command again "
              "to resume (interrupted trials continue from their checkpoints).", file=sys.stderr)
        return EXIT_INTERRUPTED

    _say(spec, _trial_line(study, spec["metric"]))
    best = report(spec, study, p.fixed)
    if best is None:
        print("error: no trial completed within the budget; give a larger --budget (or smaller "
              "--epochs/--patience) and run again to resume", file=sys.stderr)
        return 1
    if not spec["final"]:
        return 0
    results = final_runs(spec, study, best)
    from pyg_mmrec.train.checkpoint import atomic_write_json
    atomic_write_json(study_dir / "final.json", {
        "trial": best.number, "valid": best.value, "params": best.params,
        "seeds": spec["seeds"], "runs": results})
    print()
    print(markdown_table(aggregate(results, split="test")))
    return 0


__all__ = ["Param", "TuneError", "load_space", "read_space_file", "mmrec_grid",
           "parse_space_args", "resolve_space", "parse_duration", "check_storage",
           "open_storage", "continue_trial", "recover_trials", "counted_trials",
           "make_objective", "work", "write_plots", "best_trials_table", "selected_overrides",
           "add_arguments", "cmd_tune", "plan"]
