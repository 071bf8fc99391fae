r"""What ``tune`` leaves for people: the table of the best trials, the selected
setting as a ``--config`` YAML, the plots, and the final runs on ``--seeds``."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from .search import _say


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
