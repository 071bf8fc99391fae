r"""Search spaces of ``tune``: ``pyg_mmrec/configs/<model>.space.yaml`` files,
``--space`` arguments, and their validation against a model's configuration."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

SPACE_SUFFIX = ".space.yaml"


class TuneError(ValueError):
    """Bad input to ``tune`` (reported as one line, exit code 2, before any trial)."""


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
