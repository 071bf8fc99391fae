r"""Turn run logs into tables and plots.

Every run directory written by :func:`pyg_mmrec.train.run` holds a
``result.json``; :func:`load_results` collects them (recursively), and
:func:`aggregate` groups runs that differ only in their seed, giving the mean and
the sample standard deviation over seeds. :func:`markdown_table` renders the
groups; :func:`plot_metric_vs_missing` draws Recall@20 against the missing
rate (matplotlib is an optional extra: ``pip install pyg_mmrec[plot]``).
:func:`paired_comparison` compares two sets of runs seed by seed: runs of one
seed see the same simulated missing entries, so the per-seed differences and a
sign-flip test say how often, and how surely, one model is ahead.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

from pyg_mmrec.errors import ConfigError, DataError, MissingExtraError

DEFAULT_METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")


def load_results(paths: Union[str, Path, Iterable[Union[str, Path]]]) -> List[Dict[str, Any]]:
    """Read every ``result.json`` under the given files/directories."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out = []
    for p in paths:
        p = Path(p)
        if p.is_file():
            files = [p]
        elif p.is_dir():
            files = sorted(p.rglob("result.json"))
        else:
            raise FileNotFoundError(f"results: {p} does not exist")
        for f in files:
            try:
                r = json.loads(f.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise DataError(f"{f}: not valid JSON ({e}); delete it and finish its run "
                                "again with the same train command plus --resume") from e
            if not isinstance(r, dict) or "valid" not in r or "config" not in r:
                raise DataError(f"{f}: not a pyg_mmrec result.json (no 'valid'/'config')")
            r["_path"] = str(f)
            out.append(r)
    return out


def unfinished_runs(paths: Union[str, Path, Iterable[Union[str, Path]]]) -> List[Path]:
    """Run directories under ``paths`` that hold a ``checkpoint.pt`` but no
    ``result.json`` yet (interrupted, or still training)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += [c.parent for c in sorted(p.rglob("checkpoint.pt"))
                    if not (c.parent / "result.json").exists()]
    return out


def missing_rate(spec: Optional[str]) -> float:
    """Missing rate of a protocol spec: ``"i3mrec:fm:0.3"`` -> 0.3, ``"natural"`` -> 0."""
    if not spec or spec == "natural":
        return 0.0
    nums = re.findall(r"(?<![\w.])(\d*\.?\d+)(?![\w.])", str(spec))
    return float(nums[-1]) if nums else 0.0


def protocol_family(spec: Optional[str]) -> str:
    """``"i3mrec:fm:0.3"`` -> ``"i3mrec:fm"``; ``"natural"`` -> ``"natural"``."""
    parts = str(spec or "natural").split(":")
    keep = [p for p in parts if not re.fullmatch(r"\d*\.?\d+", p)]
    return ":".join(keep) or "natural"


def setting_label(overrides: Optional[Dict[str, Any]]) -> str:
    if not overrides:
        return "default"
    short = {k.split(".", 1)[1] if k.split(".", 1)[0] in ("train", "model") else k: v
             for k, v in overrides.items()}
    return ",".join(f"{k}={v}" for k, v in sorted(short.items()))


def _mean_std(xs: Sequence[float]) -> tuple[float, float]:
    n = len(xs)
    m = sum(xs) / n
    if n < 2:
        return m, 0.0
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))


def _setting_key(result: Dict[str, Any]) -> str:
    """The run's configuration without its seed, as a comparable string."""
    cfg = dict(result["config"])
    seed = cfg.pop("seed", None)
    ph = cfg.get("plugin_hparams")
    explicit = set(cfg.get("overrides") or {}) & {"seed", "plugin.seed"}
    if isinstance(ph, dict) and ph.get("seed") == seed and not explicit:
        # the plug-in's seed follows the run's unless set explicitly: not a setting
        cfg["plugin_hparams"] = {k: v for k, v in ph.items() if k != "seed"}
    return json.dumps(cfg, sort_keys=True, default=str)


def aggregate(results: Sequence[Dict[str, Any]], split: str = "test") -> List[Dict[str, Any]]:
    """Group runs whose configuration differs only by ``seed`` and average
    their ``split`` metrics (mean and sample std over seeds). Runs without
    ``split`` metrics (grid candidates that were not selected) are skipped."""
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for r in results:
        if r.get(split):
            groups.setdefault(_setting_key(r), []).append(r)
    rows = []
    for runs in groups.values():
        cfg = runs[0]["config"]
        keys = sorted(set().union(*(r[split].keys() for r in runs)))
        stats = {}
        for k in keys:
            xs = [float(r[split][k]) for r in runs if k in r[split]]
            stats[k] = _mean_std(xs)
        spe = _mean_std([float(r.get("seconds_per_epoch", 0.0)) for r in runs])
        rows.append({
            "model": cfg.get("model"), "plugin": cfg.get("plugin"), "dataset": cfg.get("dataset"),
            "missing": cfg.get("missing"), "fill": cfg.get("fill"),
            "cold_items": cfg.get("cold_items"),
            "setting": setting_label(cfg.get("overrides")),
            "seeds": sorted(r["config"].get("seed") for r in runs),
            "metrics": stats, "seconds_per_epoch": spe,
            "best_epoch": _mean_std([float(r.get("best_epoch", -1)) for r in runs]),
        })
    rows.sort(key=lambda r: (str(r["dataset"]), float(r["cold_items"] or 0.0),
                             protocol_family(r["missing"]),
                             missing_rate(r["missing"]), str(r["model"]), str(r["plugin"]),
                             str(r["fill"]), r["setting"]))
    return rows


def _model_name(model: Any, plugin: Optional[str]) -> str:
    """``model`` or ``model+plugin``."""
    return f"{model}+{plugin}" if plugin else str(model)


def run_label(result: Dict[str, Any]) -> str:
    """``model[+plugin] [fill=…] [setting]`` of one run."""
    cfg = result["config"]
    label = _model_name(cfg.get("model"), cfg.get("plugin"))
    if cfg.get("fill") not in (None, "zero"):
        label += f" fill={cfg['fill']}"
    setting = setting_label(cfg.get("overrides"))
    return label if setting == "default" else f"{label} [{setting}]"


def sign_flip_p_value(diffs: Sequence[float], samples: int = 100_000, seed: int = 0) -> float:
    r"""Two-sided p-value of "the paired differences are centred on zero":
    the share of the :math:`2^n` sign assignments whose sum is at least as far
    from zero as the observed one (exact for :math:`n \le 20`, else estimated
    from ``samples`` seeded random assignments). It assumes only that each
    difference is as likely positive as negative under the null; with
    :math:`n` pairs it cannot go below :math:`2 / 2^n` (0.0625 for 5 seeds)."""
    import numpy as np
    d = np.asarray([float(x) for x in diffs], dtype=np.float64)
    n = d.size
    if n == 0:
        raise ValueError("sign_flip_p_value: no differences")
    exact = n <= 20
    total = 2 ** n if exact else int(samples)
    rng = np.random.default_rng(seed)
    # slack for float rounding: an assignment equal to the observed one in exact
    # arithmetic must count even if its sum rounds a hair lower
    d_sum = float(d.sum())
    observed = abs(d_sum) - 1e-12 * max(1.0, float(np.abs(d).sum()))
    hits, chunk = 0, 1 << 14  # sign assignments per block: bounded memory
    for start in range(0, total, chunk):
        rows = min(chunk, total - start)
        if exact:
            bits = (np.arange(start, start + rows, dtype=np.int64)[:, None] >> np.arange(n)) & 1
        else:
            bits = rng.integers(0, 2, size=(rows, n), dtype=np.int8)
        # flipping the entries with bit 1 turns the sum into sum(d) - 2 * (bits @ d)
        hits += int((np.abs(d_sum - 2.0 * (bits @ d)) >= observed).sum())
    # a sampled estimate counts the observed assignment too, so it is never 0
    return hits / total if exact else (hits + 1) / (total + 1)


def paired_comparison(a: Sequence[Dict[str, Any]], b: Sequence[Dict[str, Any]],
                      metrics: Sequence[str] = ("recall@20", "ndcg@20"),
                      split: str = "test") -> List[Dict[str, Any]]:
    """Compare run sets ``a`` and ``b`` seed by seed.

    Runs are paired when they share dataset, missing-modality protocol and
    seed. Within one (dataset, protocol) each side must hold a single setting
    (one model configuration, several seeds); runs without ``split`` metrics
    (unselected grid candidates) are left out. One row per (dataset,
    protocol, metric) with at least one pair: both means over the paired
    seeds, the mean and sample std of ``a - b``, wins/ties/losses of ``a`` and
    :func:`sign_flip_p_value`. Seeds or protocols present on one side only are
    listed in each row's ``unpaired`` (and in no statistic).
    """
    sides = {}
    for name, runs in (("A", a), ("B", b)):
        by_cell: Dict[tuple, Dict[int, Dict[str, Any]]] = {}
        first_setting: Dict[tuple, tuple] = {}  # cell -> (setting key, path of its first run)
        for r in runs:
            if not r.get(split):
                continue
            cfg = r["config"]
            cell = (str(cfg.get("dataset")), str(cfg.get("missing")) + (  # new-item runs apart
                f" cold_items={cfg['cold_items']:g}" if cfg.get("cold_items") else ""))
            key = _setting_key(r)
            first_key, first_path = first_setting.setdefault(cell, (key, r.get("_path", "?")))
            if key != first_key:
                raise ValueError(
                    f"compare: side {name} holds two settings for dataset {cell[0]!r}, "
                    f"protocol {cell[1]!r} ({first_path} and {r.get('_path', '?')}); point it "
                    "at one model configuration")
            seed = cfg.get("seed")
            if seed in by_cell.setdefault(cell, {}):
                raise ValueError(
                    f"compare: side {name} has seed {seed} twice for dataset {cell[0]!r}, "
                    f"protocol {cell[1]!r}: {by_cell[cell][seed].get('_path', '?')} and "
                    f"{r.get('_path', '?')}")
            by_cell[cell][seed] = r
        if not by_cell:
            raise ValueError(f"compare: side {name} has no run with {split} metrics")
        sides[name] = by_cell
    rows = []
    cells = sorted(set(sides["A"]) | set(sides["B"]),
                   key=lambda c: (c[0], protocol_family(c[1]), missing_rate(c[1]), c[1]))
    for cell in cells:
        runs_a, runs_b = sides["A"].get(cell, {}), sides["B"].get(cell, {})
        seeds = sorted(set(runs_a) & set(runs_b))
        if not seeds:
            continue
        unpaired = {"A": sorted(set(runs_a) - set(runs_b)),
                    "B": sorted(set(runs_b) - set(runs_a))}
        for metric in metrics:
            xa, xb = [], []
            for s in seeds:
                for run, xs in ((runs_a[s], xa), (runs_b[s], xb)):
                    if metric not in run[split]:
                        raise ValueError(f"compare: {run.get('_path', '?')} has no {split} "
                                         f"metric {metric!r} (it has {sorted(run[split])})")
                    xs.append(float(run[split][metric]))
            diffs = [x - y for x, y in zip(xa, xb)]
            rows.append({
                "dataset": cell[0], "missing": cell[1], "metric": metric, "split": split,
                "a": run_label(runs_a[seeds[0]]), "b": run_label(runs_b[seeds[0]]),
                "seeds": seeds, "mean_a": _mean_std(xa), "mean_b": _mean_std(xb),
                "diff": _mean_std(diffs),
                "wins": sum(x > 0 for x in diffs), "ties": sum(x == 0 for x in diffs),
                "losses": sum(x < 0 for x in diffs), "p_value": sign_flip_p_value(diffs),
                "unpaired": unpaired,
            })
    if not rows:
        raise ValueError("compare: no run of A shares dataset, protocol and seed with a run "
                         f"of B (A: {sorted(sides['A'])}, B: {sorted(sides['B'])})")
    return rows


def comparison_table(rows: Sequence[Dict[str, Any]]) -> str:
    """Markdown table of :func:`paired_comparison` rows."""
    head = ["dataset", "missing", "metric", "pairs", "A", "B", "A − B", "A wins/ties/losses",
            "sign-flip p"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        dm, ds = r["diff"]
        cells = [r["dataset"], r["missing"], f"{r['metric']} ({r['split']})",
                 str(len(r["seeds"])), _fmt(r["mean_a"]), _fmt(r["mean_b"]),
                 f"{dm:+.4f} ± {ds:.4f}", f"{r['wins']}/{r['ties']}/{r['losses']}",
                 f"{r['p_value']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(ms: tuple[float, float], digits: int = 4) -> str:
    m, s = ms
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def markdown_table(rows: Sequence[Dict[str, Any]], metrics: Sequence[str] = DEFAULT_METRICS,
                   split: str = "test") -> str:
    """Markdown table, one line per group: mean ± std over seeds.

    When some rows come from the new-item protocol (``cold_items``), a
    ``new items`` column gives their share and every metric gains a
    ``new-item <metric>`` column (``cold/<metric>``: users ranked against the
    new items only) placed before the overall ones."""
    cold = any(r.get("cold_items") for r in rows)
    if cold:
        metrics = [f"cold/{m}" for m in metrics if not m.startswith("cold/")] + [
            m for m in metrics]
    head = ["dataset", "model", "missing", "fill", "setting", "seeds"]
    if cold:
        head.insert(3, "new items")
    head += [(f"new-item {m[5:]} ({split})" if m.startswith("cold/") else f"{m} ({split})")
             for m in metrics] + ["s/epoch"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        name = _model_name(r["model"], r["plugin"])
        cells = [str(r["dataset"]), name, str(r["missing"]), str(r["fill"]), r["setting"],
                 str(len(r["seeds"]))]
        if cold:
            cells.insert(3, f"{r['cold_items']:g}" if r.get("cold_items") else "–")
        cells += [_fmt(r["metrics"][m]) if m in r["metrics"] else "–" for m in metrics]
        cells.append(_fmt(r["seconds_per_epoch"], 2))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_metric_vs_missing(rows: Sequence[Dict[str, Any]], path: Union[str, Path],
                           metric: str = "recall@20") -> Path:
    """PNG of ``metric`` (mean ± std over seeds) against the missing rate, one
    line per model / plug-in / fill / protocol family / dataset."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise MissingExtraError("--plot needs matplotlib (the optional extra 'plot'), which is "
                                "not installed; install it with: pip install 'pyg_mmrec[plot]' "
                                "(or pip install matplotlib)") from e
    # one line per (model, dataset, fill, setting) and protocol family; the
    # "natural" runs (rate 0) anchor every protocol line of the same model
    series: Dict[tuple, Dict[str, List[tuple]]] = {}
    for r in rows:
        if metric not in r["metrics"]:
            continue
        name = _model_name(r["model"], r["plugin"])
        key = (name, r["dataset"], r["fill"], r["setting"])
        m, s = r["metrics"][metric]
        fam = protocol_family(r["missing"])
        series.setdefault(key, {}).setdefault(fam, []).append((missing_rate(r["missing"]), m, s))
    if not series:
        raise ConfigError(f"--metric {metric}: no run has this test metric to plot")
    lines: Dict[str, List[tuple]] = {}
    for (name, dataset, fill, setting), fams in series.items():
        natural = fams.pop("natural", [])
        extra = f" {setting}" if setting != "default" else ""
        for fam, pts in (fams or {"natural": []}).items():
            lines[f"{name} [{dataset}, {fam}, fill={fill}]{extra}"] = natural + pts
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, pts in sorted(lines.items()):
        pts.sort()
        xs, ms, ss = zip(*pts)
        ax.errorbar(xs, ms, yerr=ss, marker="o", capsize=3, label=label)
    ax.set_xlabel("missing rate")
    ax.set_ylabel(f"test {metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # atomic: an interrupted or failed write never leaves half a PNG behind
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, dpi=120, format=path.suffix.lstrip(".") or "png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()
    return path


__all__ = ["load_results", "aggregate", "markdown_table", "plot_metric_vs_missing",
           "missing_rate", "protocol_family", "setting_label", "run_label", "paired_comparison",
           "comparison_table", "sign_flip_p_value"]
