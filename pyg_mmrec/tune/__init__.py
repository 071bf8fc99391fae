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

Modules: :mod:`~pyg_mmrec.tune.space` (search spaces),
:mod:`~pyg_mmrec.tune.storage` (the study's database, identity and recovery),
:mod:`~pyg_mmrec.tune.search` (trials, pruning, budget, workers),
:mod:`~pyg_mmrec.tune.report` (table, selected YAML, plots, final runs) and
:mod:`~pyg_mmrec.tune.command` (the subcommand). Importing this package costs
only the standard library. See ``docs/tuning.md`` for the commands and the
storage story.
"""
from __future__ import annotations

from .command import add_arguments, cmd_tune, parse_duration, plan, usable_cores
from .report import best_trials_table, final_runs, selected_overrides, write_plots
from .search import (EXIT_CONFIG, EXIT_INTERRUPTED, make_objective, make_pruner, probe_cost,
                     run_workers, work)
from .space import (SPACE_SUFFIX, Param, TuneError, canonical_key, load_space, mmrec_grid,
                    parse_space_args, read_space_file, resolve_space, space_path)
from .storage import (BUDGET_FILE, GRACE_SECONDS, HEARTBEAT_SECONDS, STUDY_DB, LocalLock,
                      check_identity, check_storage, continue_trial, counted_trials,
                      open_or_create_study, open_storage, read_budget, recover_trials,
                      study_identity, write_budget)

__all__ = [
    "add_arguments", "cmd_tune", "parse_duration", "plan", "usable_cores",
    "best_trials_table", "final_runs", "selected_overrides", "write_plots",
    "EXIT_CONFIG", "EXIT_INTERRUPTED", "make_objective", "make_pruner", "probe_cost",
    "run_workers", "work",
    "SPACE_SUFFIX", "Param", "TuneError", "canonical_key", "load_space", "mmrec_grid",
    "parse_space_args", "read_space_file", "resolve_space", "space_path",
    "BUDGET_FILE", "read_budget", "write_budget", "GRACE_SECONDS", "HEARTBEAT_SECONDS",
    "STUDY_DB", "LocalLock", "check_identity",
    "check_storage", "continue_trial", "counted_trials", "open_or_create_study",
    "open_storage", "recover_trials", "study_identity",
]
