"""``python -m pyg_mmrec tune``: search space, bad input, a 2-trial study end to end,
resume after an interruption, the budget, and 2 worker processes on one SQLite study."""
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from pyg_mmrec import tune  # noqa: E402
from pyg_mmrec.cli import build_parser, main  # noqa: E402
from pyg_mmrec.config import ConfigError, build_config, config_overrides  # noqa: E402
from pyg_mmrec.train import Trainer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# a tiny, fast study: 4 epochs at most, recall@10 (the tiny dataset has 30 items)
TINY = ["--dataset", "tiny", "--epochs", "4", "--patience", "2", "--set", "topk=[5,10]",
        "--set", "metric=recall@10", "--quiet"]


def tune_args(root, out, *extra):
    return build_parser().parse_args(["tune", "--model", "LightGCN", "--root", str(root),
                                      "--out", str(out), *TINY, *extra])


def study_dir(out, name="lightgcn-tiny-natural"):
    return Path(out) / name


def load(out, name="lightgcn-tiny-natural"):
    return optuna.load_study(study_name=name,
                             storage=f"sqlite:///{study_dir(out, name) / 'study.db'}")


def epochs_logged(run_dir):
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x)["epoch"] for x in lines if x.strip()]


def error_of(capsys, argv):
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err[-1] if err else ""


# ------------------------------------------------------------------------ search space
@pytest.mark.parametrize("model,plugin", [("BPR", None), ("LightGCN", None), ("VBPR", None),
                                          ("MMGCN", None), ("LATTICE", None), ("FREEDOM", None),
                                          ("MGCN", None), ("LGMRec", None), ("I3MRec", None),
                                          ("FREEDOM", "mrdib")])
def test_every_shipped_space_is_valid_for_its_model(model, plugin):
    space, notes = tune.resolve_space(model, plugin, tune.load_space(model, plugin), {}, {})
    assert space and not notes
    for name, p in space.items():
        assert name.split(".")[0] in ("train", "model", "plugin")
        for v in p.values_to_check():  # every value builds a configuration
            build_config(model, {name: v}, plugin)


def test_papers_grids_are_in_the_spaces():
    i3 = tune.load_space("I3MRec")
    for key in ("penalty", "penalty_coeff", "max_info_coeff", "min_info_coeff", "temperature",
                "id_branch", "edge_dropout", "n_layers", "fusion_mode", "lr"):
        assert key in i3, key
    assert set(i3["id_branch"].choices) == {"none", "embedding", "lightgcn"}
    mrdib = tune.load_space("FREEDOM", "mrdib")
    for key in ("kl_weight", "unique_weight", "redundant_weight", "synergy_weight"):
        assert mrdib[f"plugin.{key}"].choices == [1e-4, 1e-3, 5e-3, 1e-2, 5e-2]


def test_mmrec_grid_is_one_source_for_the_backbone_table():
    from conftest import load_script
    table = load_script("examples/backbone_table.py", "backbone_table_tune")
    assert tune.mmrec_grid("LightGCN") == {"n_layers": [1, 2, 3, 4],
                                           "reg_weight": [1e-2, 1e-3, 1e-4, 1e-5, 1e-6]}
    assert table.MMREC_GRIDS["LightGCN"]["reg_weight"] == "1e-2,1e-3,1e-4,1e-5,1e-6"
    assert table.MMREC_GRIDS["FREEDOM"] == {"dropout": "0.8,0.9",
                                            "reg_weight": "0.0,1e-5,1e-4,1e-3"}
    assert "lr" in tune.load_space("LightGCN") and "lr" not in table.MMREC_GRIDS["LightGCN"]


def test_space_arguments():
    s = tune.parse_space_args(["lr=1e-4:1e-2:log", "n_layers=1:4", "penalty=vrex,irm",
                               "dropout=0.8,0.9"])
    assert (s["lr"].kind, s["lr"].low, s["lr"].high, s["lr"].log) == ("float", 1e-4, 1e-2, True)
    assert (s["n_layers"].kind, s["n_layers"].low, s["n_layers"].high) == ("int", 1, 4)
    assert s["penalty"].choices == ["vrex", "irm"] and s["dropout"].choices == [0.8, 0.9]
    for bad, msg in [("lr=", "empty space"), ("lr=1e-2:1e-4", "empty range"),
                     ("lr=0:1:log", "log range"), ("n=1,1", "listed twice"),
                     ("lr", "expected key"), ("lr=a:b", "must be numbers")]:
        with pytest.raises(tune.TuneError, match=msg):
            tune.parse_space_args([bad])


def test_resolve_space_fixed_keys_and_contradictions():
    shipped = tune.load_space("LightGCN")
    space, notes = tune.resolve_space("LightGCN", None, shipped, {}, {"train.lr": 1e-3})
    assert "train.lr" not in space and any("train.lr" in n for n in notes)
    cli = tune.parse_space_args(["n_layers=1,2"])
    space, _ = tune.resolve_space("LightGCN", None, shipped, cli, {})
    assert space["model.n_layers"].choices == [1, 2]  # --space replaces the shipped range
    with pytest.raises(tune.TuneError, match="also fixed"):
        tune.resolve_space("LightGCN", None, {}, tune.parse_space_args(["lr=1e-4:1e-2"]),
                           {"lr": 1e-3})
    with pytest.raises(tune.TuneError, match="same key"):
        tune.resolve_space("LightGCN", None, {}, tune.parse_space_args(
            ["lr=1e-4:1e-2", "train.lr=1e-3,1e-2"]), {})
    with pytest.raises(tune.TuneError, match="did you mean 'n_layers'"):
        tune.resolve_space("LightGCN", None, {}, tune.parse_space_args(["n_layer=1,2"]), {})
    with pytest.raises(tune.TuneError, match="empty search space"):
        tune.resolve_space("LightGCN", None, shipped, {},
                           {"lr": 1e-3, "n_layers": 2, "reg_weight": 1e-4})
    with pytest.raises(tune.TuneError, match="penalty"):  # a value the model rejects
        tune.resolve_space("I3MRec", None, {}, tune.parse_space_args(["penalty_coeff=a,b"]), {})


def test_durations():
    assert tune.parse_duration("2h") == 7200 and tune.parse_duration("1h30m") == 5400
    assert tune.parse_duration("45m") == 2700 and tune.parse_duration("90") == 90
    for bad in ("", "0", "2 hours", "-5"):
        with pytest.raises(tune.TuneError, match="--budget"):
            tune.parse_duration(bad)


def test_cli_start_up_does_not_import_optuna_or_matplotlib():
    code = ("import sys; from pyg_mmrec.cli import build_parser; build_parser(); "
            "print('optuna' in sys.modules, 'matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO)), check=True).stdout
    assert out.split() == ["False", "False"]


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("extra,msg", [
    (["--space", "n_layer=1,2"], "did you mean 'n_layers'"),
    (["--space", "lr=1e-2:1e-4"], "empty range"),
    (["--set", "lr=1e-3", "--set", "n_layers=2", "--set", "reg_weight=1e-4"],
     "empty search space"),
    (["--space", "lr=1e-4:1e-2", "--set", "lr=1e-3"], "also fixed"),
    (["--workers", "999"], "above the"),
    (["--budget", "soon"], "--budget"),
    (["--storage", "sqlite:////nonexistent/folder/study.db"], "unreachable"),
    (["--storage", "postgresql://nobody@127.0.0.1:1/none"], "unreachable"),
])
def test_bad_input_is_one_line_before_any_trial(tiny_root, tmp_path, capsys, extra, msg):
    argv = ["tune", "--model", "LightGCN", "--root", str(tiny_root), "--out",
            str(tmp_path / "out"), *TINY, "--budget", "1m", *extra]
    if "--budget" in extra:
        argv.remove("1m")
        argv.remove("--budget")
    rc, err = error_of(capsys, argv)
    assert rc == 2 and err.startswith("error: ") and msg in err, err
    assert not list(tmp_path.rglob("metrics.jsonl"))


def test_plot_without_matplotlib_fails_first(tiny_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # "not installed"
    rc, err = error_of(capsys, ["tune", "--model", "LightGCN", "--root", str(tiny_root),
                                "--out", str(tmp_path), *TINY, "--budget", "1m", "--plot"])
    assert rc == 2 and "--plot needs matplotlib" in err
    assert not (tmp_path / "lightgcn-tiny-natural").exists()


def test_budget_too_small_for_one_trial(tiny_root, tmp_path, capsys):
    rc, err = error_of(capsys, ["tune", "--model", "LightGCN", "--root", str(tiny_root),
                                "--out", str(tmp_path), *TINY, "--budget", "0.001"])
    assert rc == 2 and "too small for one trial" in err, err
    assert not list(tmp_path.rglob("metrics.jsonl"))


def test_locked_storage(tiny_root, tmp_path, capsys):
    db = tmp_path / "locked.db"
    holder = sqlite3.connect(str(db))
    holder.execute("CREATE TABLE x (a)")
    holder.execute("BEGIN EXCLUSIVE")  # another process keeps the write lock
    try:
        rc, err = error_of(capsys, ["tune", "--model", "LightGCN", "--root", str(tiny_root),
                                    "--out", str(tmp_path), *TINY, "--budget", "1m",
                                    "--storage", f"sqlite:///{db}", "--storage-timeout", "0.3"])
    finally:
        holder.rollback()
        holder.close()
    assert rc == 2 and "locked by another process" in err, err


# ----------------------------------------------------------------------- a real study
def test_two_trial_study_end_to_end(tiny_root, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["tune", "--model", "LightGCN", "--root", str(tiny_root), "--out", str(out),
               *TINY, "--budget", "5m", "--trials", "2", "--seeds", "1,2", "--pruner", "none"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    sd = study_dir(out)
    study = load(out)
    trials = study.get_trials()
    assert len(trials) == 2 and all(t.state.name == "COMPLETE" for t in trials)
    assert trials[0].user_attrs.get("defaults")  # the shipped setting is trial 0
    assert trials[0].params == {"model.n_layers": 2, "model.reg_weight": 1e-4,
                                "train.lr": 5e-3}
    for t in trials:  # every trial is a normal run that never read the test split
        result = json.loads((Path(t.user_attrs["run_dir"]) / "result.json").read_text())
        assert result["test"] is None and result["config"]["seed"] == 1
        assert t.value == pytest.approx(result["valid"]["recall@10"])
        assert len(t.intermediate_values) == result["epochs"]
    best = max(trials, key=lambda t: t.value)
    # the selected setting is a --config for `train`: same configuration as the best trial
    selected = config_overrides(sd / "selected.yaml")
    fixed = {"train.epochs": 4, "train.patience": 2, "train.topk": [5, 10],
             "train.metric": "recall@10"}
    assert build_config("LightGCN", selected) == build_config("LightGCN",
                                                              {**fixed, **best.params})
    # the best setting on both seeds, test read for those runs only
    final = json.loads((sd / "final.json").read_text())
    assert final["trial"] == best.number and [r["seed"] for r in final["runs"]] == [1, 2]
    assert all(r["test"] for r in final["runs"])
    assert final["runs"][0]["valid"] == pytest.approx(best.user_attrs["valid"])
    assert "| trial |" in (sd / "best_trials.md").read_text() and "recall@10 (test)" in printed
    try:
        import matplotlib  # noqa: F401
        for png in ("history.png", "importances.png", "curves.png"):
            assert (sd / "plots" / png).stat().st_size > 1000
    except ImportError:  # plots are optional: none without matplotlib
        assert not (sd / "plots").exists()
    # the same command again: nothing is trained twice, the finished study is reused
    rc = main(["tune", "--model", "LightGCN", "--root", str(tiny_root), "--out", str(out),
               *TINY, "--budget", "5m", "--trials", "2", "--seeds", "1,2", "--pruner", "none"])
    assert rc == 0 and len(load(out).get_trials()) == 2
    # a study of this name for another model is refused
    rc, err = error_of(capsys, ["tune", "--model", "BPR", "--root", str(tiny_root), "--out",
                                str(out), *TINY, "--budget", "1m", "--study",
                                "lightgcn-tiny-natural"])
    assert rc == 2 and "was created for model lightgcn" in err, err
    rc, err = error_of(capsys, ["tune", "--model", "LightGCN", "--root", str(tiny_root),
                                "--out", str(out), *TINY, "--budget", "1m", "--seeds", "1",
                                "--space", "n_layers=1,2"])
    assert rc == 2 and "another space" in err, err


class StopOnce(Trainer):
    """Interrupts (as Ctrl-C does) the trial run in folder ``0001`` after epoch 1."""
    fired = False

    def on_batch_end(self, epoch, batch):
        super().on_batch_end(epoch, batch)
        if (not StopOnce.fired and self.out_dir is not None and self.out_dir.name == "0001"
                and epoch == 1):
            StopOnce.fired = True
            self.request_stop()


def test_interrupted_study_resumes_without_losing_or_repeating_work(tiny_root, tmp_path,
                                                                   capsys):
    out = tmp_path / "out"
    argv = ["--budget", "5m", "--trials", "3", "--seeds", "1", "--pruner", "none",
            "--no-final", "--patience", "10"]
    StopOnce.fired = False
    rc = tune.cmd_tune(tune_args(tiny_root, out, *argv), trainer_cls=StopOnce)
    assert rc == tune.EXIT_INTERRUPTED and StopOnce.fired
    study = load(out)
    states = [t.state.name for t in study.get_trials()]
    assert states == ["COMPLETE", "FAIL"]
    assert study.get_trials()[1].user_attrs["interrupted"]
    run_dir = Path(study.get_trials()[1].user_attrs["run_dir"])
    assert (run_dir / "checkpoint.pt").is_file() and not (run_dir / "result.json").exists()
    assert epochs_logged(run_dir) == [0, 1]  # stopped at the end of epoch 1 (one batch)

    rc = tune.cmd_tune(tune_args(tiny_root, out, *argv))  # the same command again
    assert rc == 0
    trials = load(out).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    cont = trials[2]
    assert cont.user_attrs["continues"] == 1 and cont.params == trials[1].params
    assert Path(cont.user_attrs["run_dir"]) == run_dir
    assert epochs_logged(run_dir) == [0, 1, 2, 3]  # continued, no epoch trained twice
    assert sorted(cont.intermediate_values) == [0, 1, 2, 3]
    assert tune.counted_trials(load(out)) == 3
    assert len({t.user_attrs["run_dir"] for t in trials}) == 3


def test_trials_of_a_dead_process_are_continued(tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    trial.set_user_attr("run_dir", str(tmp_path / "trials" / "0000"))
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", dead.pid)
    live = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    live.set_user_attr("host", socket.gethostname())
    live.set_user_attr("pid", os.getpid())
    broken = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    broken.set_user_attr("run_dir", str(tmp_path / "trials" / "0002"))
    broken.set_user_attr("error", "RuntimeError: non-finite loss")  # the setting's own fault
    study.tell(broken, state=optuna.trial.TrialState.FAIL)
    assert tune.recover_trials(study) == [0]
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "RUNNING", "FAIL", "WAITING"]
    assert trials[3].user_attrs == {"resume_from": str(tmp_path / "trials" / "0000"),
                                    "continues": 0}
    assert trials[3].system_attrs["fixed_params"] == trials[0].params  # Optuna's enqueued params
    assert tune.recover_trials(study) == []  # continued once only


class SlowTrainer(Trainer):
    def on_batch_end(self, epoch, batch):
        time.sleep(0.25)
        super().on_batch_end(epoch, batch)


def test_budget_is_wall_time_and_an_overrunning_trial_is_stopped(tiny_root, tmp_path, capsys):
    out = tmp_path / "out"
    # 0.25 s per epoch: early stopping (patience 50) could end a trial after ~13 s at best
    args = tune_args(tiny_root, out, "--budget", "8", "--epochs", "200", "--patience", "50",
                     "--pruner", "none")
    t0 = time.time()
    rc = tune.cmd_tune(args, trainer_cls=SlowTrainer)
    assert rc == 1 and "no trial completed" in capsys.readouterr().err
    trials = load(out).get_trials()
    assert len(trials) == 1 and trials[0].state.name == "PRUNED"
    assert trials[0].user_attrs["stopped"] == "budget"
    assert 3 <= len(trials[0].intermediate_values) < 51
    spent = json.loads((study_dir(out) / "budget.json").read_text())["spent_seconds"]
    assert spent <= 8 + 1.0  # one epoch of slack at most (an epoch here is ~0.3 s)
    assert time.time() - t0 < 60


def test_on_validation_hook_stops_like_early_stopping(tiny_root, tmp_path):
    from pyg_mmrec.train import run
    seen = []

    class StopAt2(Trainer):
        def on_validation(self, epoch, valid):
            seen.append((epoch, sorted(valid)))
            return epoch == 2

    r = run("LightGCN", "tiny", root=tiny_root, seed=0, out_dir=tmp_path / "r",
            overrides={"epochs": 10, "topk": [5, 10], "metric": "recall@10"},
            test=False, trainer_cls=StopAt2)
    assert [e for e, _ in seen] == [0, 1, 2] and "recall@10" in seen[0][1]
    assert r.epochs == 3 and r.stopped_early and r.test is None


@pytest.mark.slow
@pytest.mark.skipif(tune.usable_cores() < 2, reason="needs 2 cores")
def test_two_workers_share_one_sqlite_study(tiny_root, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pyg_mmrec", "tune", "--model", "LightGCN", "--root",
         str(tiny_root), "--out", str(out), *TINY, "--budget", "3m", "--trials", "5",
         "--workers", "2", "--seeds", "1", "--no-final", "--pruner", "none"],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    trials = load(out).get_trials()
    assert len(trials) == 5 and all(t.state.name == "COMPLETE" for t in trials)
    pids = {t.user_attrs["pid"] for t in trials}
    assert len(pids) == 2  # both workers ran trials
    dirs = [t.user_attrs["run_dir"] for t in trials]
    assert len(set(dirs)) == 5  # no trial ran twice
    assert sorted(p.name for p in (study_dir(out) / "trials").iterdir()) == \
        [f"{t.number:04d}" for t in trials]
    for d in dirs:  # each run trained once, every epoch once
        assert epochs_logged(d) == list(range(len(epochs_logged(d))))
        assert json.loads((Path(d) / "result.json").read_text())["test"] is None


class PruneFromEpoch1(optuna.pruners.BasePruner):
    def prune(self, study, trial):
        return bool(trial.intermediate_values) and max(trial.intermediate_values) >= 1


def test_a_pruned_trial_ends_its_run_cleanly_and_is_recorded(tiny_root, tmp_path):
    spec = {"model": "LightGCN", "plugin": None, "dataset": "tiny", "root": str(tiny_root),
            "missing": "natural", "fill": None, "device": "cpu", "search_seed": 3,
            "fixed": {"train.epochs": 10, "train.patience": 10, "train.topk": [5, 10],
                      "train.metric": "recall@10"},
            "metric": "recall@10", "study_dir": str(tmp_path)}
    space = {"train.lr": tune.Param("train.lr", "float", low=1e-3, high=1e-2, log=True)}
    study = optuna.create_study(direction="maximize", pruner=PruneFromEpoch1())
    study.optimize(tune.make_objective(spec, space, deadline=time.time() + 600), n_trials=1)
    t = study.trials[0]
    assert t.state.name == "PRUNED" and t.user_attrs["stopped"] == "pruned"
    assert sorted(t.intermediate_values) == [0, 1]
    result = json.loads((tmp_path / "trials" / "0000" / "result.json").read_text())
    assert result["epochs"] == 2 and result["stopped_early"] and result["test"] is None
    assert result["config"]["seed"] == 3


@pytest.mark.slow
def test_a_killed_search_resumes_its_running_trial(tiny_root, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    argv = [sys.executable, "-m", "pyg_mmrec", "tune", "--model", "LightGCN", "--root",
            str(tiny_root), "--out", str(out), *TINY, "--epochs", "60", "--patience", "60",
            "--budget", "5m", "--trials", "1", "--seeds", "1", "--no-final", "--pruner", "none"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = study_dir(out) / "trials" / "0000" / "metrics.jsonl"
    t0 = time.time()
    while not (log.is_file() and len(log.read_text().splitlines()) >= 3):
        assert proc.poll() is None and time.time() - t0 < 300, "the trial did not start"
        time.sleep(0.05)
    proc.kill()  # a crash: no checkpoint-on-exit, the trial stays RUNNING in the study
    proc.wait()
    assert load(out).trials[0].state.name == "RUNNING"
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    trials = load(out).get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert trials[1].user_attrs["continues"] == 0
    assert trials[1].user_attrs["run_dir"] == trials[0].user_attrs["run_dir"]
    assert epochs_logged(log.parent) == list(range(60))  # continued from its checkpoint


class BreakTrial0(Trainer):
    def on_batch_end(self, epoch, batch):
        super().on_batch_end(epoch, batch)
        if self.out_dir is not None and self.out_dir.name == "0000":
            raise RuntimeError("non-finite loss at epoch 0 (a bad setting)")


def test_a_failing_setting_is_recorded_and_the_search_goes_on(tiny_root, tmp_path, capsys):
    out = tmp_path / "out"
    args = tune_args(tiny_root, out, "--budget", "5m", "--trials", "2", "--seeds", "1",
                     "--no-final", "--pruner", "none")
    assert tune.cmd_tune(args, trainer_cls=BreakTrial0) == 0
    trials = load(out).get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert "non-finite loss" in trials[0].user_attrs["error"]
    assert tune.recover_trials(load(out)) == []  # a failing setting is not retried
    assert (study_dir(out) / "selected.yaml").is_file()


class BreakEveryTrial(Trainer):
    def on_batch_end(self, epoch, batch):
        super().on_batch_end(epoch, batch)
        if self.out_dir is not None:  # the cost probe (no folder) runs normally
            raise ValueError("unknown hyper-parameter(s) ['knn_method']")


def test_a_search_whose_trials_keep_failing_stops_with_one_line(tiny_root, tmp_path, capsys,
                                                                  monkeypatch):
    monkeypatch.setattr("pyg_mmrec.tune.search.MAX_FAILED_IN_ROW", 3)
    out = tmp_path / "out"
    args = tune_args(tiny_root, out, "--budget", "5m", "--seeds", "1", "--no-final",
                     "--pruner", "none")
    with pytest.raises(ConfigError, match=r"last 3 trials .* failed; the latest with: "
                                          r"ValueError: unknown hyper-parameter"):
        tune.cmd_tune(args, trainer_cls=BreakEveryTrial)
    assert [t.state.name for t in load(out).get_trials()] == ["FAIL"] * 3


def test_a_trial_ending_anyway_is_complete_not_pruned(tiny_root, tmp_path):
    spec = {"model": "LightGCN", "plugin": None, "dataset": "tiny", "root": str(tiny_root),
            "missing": "natural", "fill": None, "device": "cpu", "search_seed": 3,
            "fixed": {"train.epochs": 2, "train.patience": 10, "train.topk": [5, 10],
                      "train.metric": "recall@10"},
            "metric": "recall@10", "study_dir": str(tmp_path)}
    space = {"train.lr": tune.Param("train.lr", "float", low=1e-3, high=1e-2, log=True)}
    study = optuna.create_study(direction="maximize", pruner=PruneFromEpoch1())
    study.optimize(tune.make_objective(spec, space, deadline=time.time() + 600), n_trials=1)
    assert study.trials[0].state.name == "COMPLETE"  # epoch 1 is its last: nothing to prune
