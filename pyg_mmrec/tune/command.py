r"""The ``tune`` subcommand: its arguments, the checks made before any trial,
and the sequence search -> report -> final runs."""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

from .report import final_runs, report
from .search import EXIT_INTERRUPTED, _say, _trial_line, probe_cost, run_workers
from .space import (Param, TuneError, _known_keys, canonical_key, load_space, parse_space_args,
                    read_space_file, resolve_space)
from .storage import (STUDY_DB, check_storage, counted_trials,
                      open_or_create_study, read_budget, recover_trials, study_identity,
                      write_budget)

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


def cmd_tune(args: argparse.Namespace, trainer_cls=None) -> int:
    r"""``python -m pyg_mmrec tune``: validate, open the study, search within the
    budget, report, then train the selected setting on ``--seeds``.

    ``trainer_cls`` (tests) replaces the :class:`~pyg_mmrec.train.Trainer` of
    the trials run in this process."""
    from pyg_mmrec.train import TrainingInterrupted
    try:
        return _tune(args, trainer_cls)
    except TrainingInterrupted as e:  # Ctrl-C in the cost probe or a final run
        print(f"interrupted: {e}. Run the same command again to resume.", file=sys.stderr)
        return EXIT_INTERRUPTED


def _tune(args: argparse.Namespace, trainer_cls) -> int:
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
        spent = read_budget(study_dir)
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
            spec["spent_before"], spec["started"] = spent, t_start  # budget.json per trial
            spec["min_trial_seconds"] = min_trial
            try:
                status = run_workers(spec, trainer_cls)
            except TuneError as e:
                raise ConfigError(str(e)) from e
            finally:
                write_budget(study_dir, spent + time.time() - t_start, spec["budget"])
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
