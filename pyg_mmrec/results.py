r"""Turn run logs into tables and plots.

Every run directory written by :func:`pyg_mmrec.train.run` holds a
``result.json``; :func:`load_results` collects them (recursively), and
:func:`aggregate` groups runs that differ only in their seed, giving the mean and
the sample standard deviation over seeds. :func:`markdown_table` renders the
groups; :func:`plot_metric_vs_missing` draws Recall@20 against the missing
rate (matplotlib is an optional extra: ``pip install pyg_mmrec[plot]``).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

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
            except json.JSONDecodeError as e:
                raise ValueError(f"{f}: not valid JSON: {e}") from e
            if not isinstance(r, dict) or "valid" not in r or "config" not in r:
                raise ValueError(f"{f}: not a pyg_mmrec result.json (no 'valid'/'config')")
            r["_path"] = str(f)
            out.append(r)
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


def aggregate(results: Sequence[Dict[str, Any]], split: str = "test") -> List[Dict[str, Any]]:
    """Group runs whose configuration differs only by ``seed`` and average
    their ``split`` metrics (mean and sample std over seeds). Runs without
    ``split`` metrics (grid candidates that were not selected) are skipped."""
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for r in results:
        if not r.get(split):
            continue
        cfg = dict(r["config"])
        seed = cfg.pop("seed", None)
        ph = cfg.get("plugin_hparams")
        explicit = set(cfg.get("overrides") or {}) & {"seed", "plugin.seed"}
        if isinstance(ph, dict) and ph.get("seed") == seed and not explicit:
            # the plug-in's seed follows the run's unless set explicitly: not a setting
            cfg["plugin_hparams"] = {k: v for k, v in ph.items() if k != "seed"}
        key = json.dumps(cfg, sort_keys=True, default=str)
        groups.setdefault(key, []).append(r)
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
            "setting": setting_label(cfg.get("overrides")),
            "seeds": sorted(r["config"].get("seed") for r in runs),
            "metrics": stats, "seconds_per_epoch": spe,
            "best_epoch": _mean_std([float(r.get("best_epoch", -1)) for r in runs]),
        })
    rows.sort(key=lambda r: (str(r["dataset"]), protocol_family(r["missing"]),
                             missing_rate(r["missing"]), str(r["model"]), str(r["plugin"]),
                             str(r["fill"]), r["setting"]))
    return rows


def _fmt(ms: tuple[float, float], digits: int = 4) -> str:
    m, s = ms
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def markdown_table(rows: Sequence[Dict[str, Any]], metrics: Sequence[str] = DEFAULT_METRICS,
                   split: str = "test") -> str:
    """Markdown table, one line per group: mean ± std over seeds."""
    head = ["dataset", "model", "missing", "fill", "setting", "seeds"]
    head += [f"{m} ({split})" for m in metrics] + ["s/epoch"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        name = r["model"] + (f"+{r['plugin']}" if r["plugin"] else "")
        cells = [str(r["dataset"]), name, str(r["missing"]), str(r["fill"]), r["setting"],
                 str(len(r["seeds"]))]
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
        raise RuntimeError("--plot needs matplotlib: pip install 'pyg_mmrec[plot]' "
                           "(or pip install matplotlib)") from e
    # one line per (model, dataset, fill, setting) and protocol family; the
    # "natural" runs (rate 0) anchor every protocol line of the same model
    series: Dict[tuple, Dict[str, List[tuple]]] = {}
    for r in rows:
        if metric not in r["metrics"]:
            continue
        name = f"{r['model']}{'+' + r['plugin'] if r['plugin'] else ''}"
        key = (name, r["dataset"], r["fill"], r["setting"])
        m, s = r["metrics"][metric]
        fam = protocol_family(r["missing"])
        series.setdefault(key, {}).setdefault(fam, []).append((missing_rate(r["missing"]), m, s))
    if not series:
        raise ValueError(f"plot: no run has test metric {metric!r}")
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
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


__all__ = ["load_results", "aggregate", "markdown_table", "plot_metric_vs_missing",
           "missing_rate", "protocol_family", "setting_label"]
