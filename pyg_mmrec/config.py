r"""Run configuration: YAML defaults, command-line overrides and validation.

A run's configuration is a plain dictionary::

    {"model": "freedom",            # registry name (or the callable's name)
     "plugin": None | "mrdib",
     "hparams": {...},              # constructor keyword arguments of the model
     "plugin_hparams": {...},       # constructor keyword arguments of the plug-in
     "train": {...}}                # trainer settings (see configs/train.yaml)

It is assembled in three layers, later ones winning:

1. ``pyg_mmrec/configs/train.yaml`` (training defaults),
2. ``pyg_mmrec/configs/<model>.yaml`` (flat constructor hyper-parameters, plus an
   optional ``train:`` section) and, with a plug-in, ``configs/<plugin>.yaml``,
3. overrides (``--set key=value`` on the command line; YAML-typed values).

An override key is either bare (``lr``, ``embedding_dim``; it must name exactly
one known key) or qualified: ``train.lr``, ``model.embedding_dim``,
``plugin.beta``. Everything is validated before any data is loaded or any
training starts, with a message naming the offending key.
"""
from __future__ import annotations

import copy
import functools
import inspect
import itertools
import re
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import yaml

from pyg_mmrec.errors import ConfigError  # re-exported: defined with the other user errors

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

#: the metric names :func:`pyg_mmrec.metrics.evaluate_full_ranking` reports
METRIC_NAMES = ("recall", "ndcg", "precision", "map", "hit")

#: the plug-ins ``run(..., plugin=...)`` knows: name -> "module:Class"
PLUGINS = {"mrdib": "pyg_mmrec.models.mrdib:MRdIB"}

# positional constructor arguments that are data, not hyper-parameters
_MODEL_DATA_ARGS = ("num_users", "num_items", "train_edge_index", "features", "masks")
_PLUGIN_DATA_ARGS = ("backbone",)




# ----------------------------------------------------------------------------- YAML
def load_yaml(path: Union[str, Path]) -> Dict[str, Any]:
    """Read a YAML mapping (an empty file gives ``{}``)."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            obj = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from e
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise ConfigError(f"{path}: expected a YAML mapping, got {type(obj).__name__}")
    return obj


def parse_value(text: str) -> Any:
    """Parse a command-line value the way YAML would (``1e-3`` -> float,
    ``[10,20]`` -> list, ``true`` -> bool, ``null`` -> None, else str)."""
    # PyYAML (YAML 1.1) reads "1e-3" as a string; accept plain scientific notation.
    if re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", text.strip()):
        return float(text)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot parse value {text!r}: {e}") from e


def parse_assignments(items: Optional[Iterable[str]]) -> Dict[str, Any]:
    """``["lr=1e-3", "topk=[10,20]"]`` -> ``{"lr": 0.001, "topk": [10, 20]}``."""
    out: Dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, value = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"--set {item!r}: empty key")
        out[key] = parse_value(value)
    return out


def named_configs(model: str) -> List[str]:
    """The short names ``--config`` accepts for ``model``: ``reference`` for a
    shipped ``configs/<model>_reference.yaml``, and so on."""
    prefix = f"{_model_key(model)}_"
    return sorted(p.stem[len(prefix):] for p in CONFIG_DIR.glob(f"{prefix}*.yaml"))


def resolve_config_path(path: Union[str, Path], model: Optional[str] = None) -> Path:
    """The YAML that ``--config`` names: a file path, or, when no such file
    exists and ``path`` is a bare name, the shipped
    ``pyg_mmrec/configs/<model>_<name>.yaml`` (e.g. ``--model i3mrec --config
    reference``)."""
    p = Path(path)
    if p.is_file():
        return p
    name = str(path)
    bare = model is not None and p.suffix == "" and "/" not in name and "\\" not in name
    if bare:
        shipped = CONFIG_DIR / f"{_model_key(model)}_{name}.yaml"
        if shipped.is_file():
            return shipped
        known = named_configs(model)
        raise ConfigError(f"--config {name!r}: no such file, and no shipped configuration "
                          f"{name!r} for model {model!r} (shipped: {known or 'none'})")
    raise ConfigError(f"--config: file not found: {path}")


def config_overrides(path: Union[str, Path], model: Optional[str] = None) -> Dict[str, Any]:
    """A YAML of overrides as qualified keys: ``{k: v, train: {lr: ..}, plugin: {..}}``
    -> ``{"model.k": v, "train.lr": .., "plugin.x": ..}`` (``--config``). ``path``
    is a file or, with ``model``, the short name of a shipped configuration
    (:func:`resolve_config_path`)."""
    path = resolve_config_path(path, model)
    out: Dict[str, Any] = {}
    for k, v in load_yaml(path).items():
        if k in ("train", "model", "plugin"):
            if not isinstance(v, dict):
                raise ConfigError(f"--config {path}: '{k}' must be a mapping")
            out.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        else:
            out[f"model.{k}"] = v
    return out


def parse_grid(items: Optional[Iterable[str]]) -> Dict[str, List[Any]]:
    """``["lr=1e-3,1e-4", "n_layers=1,2"]`` -> ``{"lr": [0.001, 0.0001], "n_layers": [1, 2]}``.

    Values are split on commas outside brackets, so ``topk=[10,20],[20,50]``
    gives two lists."""
    grid: Dict[str, List[Any]] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--grid {item!r}: expected key=v1,v2,...")
        key, values = item.split("=", 1)
        parts, depth, cur = [], 0, ""
        for ch in values:
            depth += ch in "[{"
            depth -= ch in "]}"
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
            else:
                cur += ch
        parts.append(cur)
        if any(not p.strip() for p in parts):
            raise ConfigError(f"--grid {item!r}: empty value in the list")
        key = key.strip()
        names = [k.strip() for k in key.split("+")]
        if any(not k for k in names):
            raise ConfigError(f"--grid {item!r}: empty key in the tied keys {key!r} "
                              "(expected key or key1+key2+...)")
        seen = [k for g in grid for k in g.split("+")]
        again = [k for k in names if k in seen or names.count(k) > 1]
        if again:
            raise ConfigError(f"--grid: key {again[0]!r} given twice")
        grid["+".join(names)] = [parse_value(p) for p in parts]
    return grid


def grid_settings(grid: Dict[str, List[Any]]) -> List[Dict[str, Any]]:
    """Every combination of a :func:`parse_grid` grid as a flat ``{key: value}``
    dict; a tied entry ``"a+b": [v1, v2]`` sets ``a`` and ``b`` to the same
    value in each setting (one grid dimension, not two)."""
    settings = []
    for vals in itertools.product(*grid.values()):
        s: Dict[str, Any] = {}
        for key, v in zip(grid, vals):
            for k in key.split("+"):
                s[k] = v
        settings.append(s)
    return settings or [{}]


# ------------------------------------------------------------------------- defaults
def train_defaults() -> Dict[str, Any]:
    """The training defaults of ``configs/train.yaml``."""
    return load_yaml(CONFIG_DIR / "train.yaml")


def _model_key(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def model_defaults(name: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``(hparams, train_overrides)`` from ``configs/<name>.yaml`` (empty if absent)."""
    path = CONFIG_DIR / f"{_model_key(name)}.yaml"
    if not path.exists():
        return {}, {}
    cfg = load_yaml(path)
    train = cfg.pop("train", None) or {}
    if not isinstance(train, dict):
        raise ConfigError(f"{path}: 'train' must be a mapping")
    return cfg, train


def _constructor_params(fn: Callable, skip: Tuple[str, ...]) -> Optional[Dict[str, Any]]:
    """Named keyword parameters of ``fn`` (a class or function) beyond the data
    arguments, with their defaults (``inspect.Parameter.empty`` if none). A
    class that groups its options (e.g. :class:`~pyg_mmrec.models.i3mrec.I3MRec`)
    lists its flat keys itself, through a ``hparam_defaults()`` class method."""
    listed = getattr(fn, "hparam_defaults", None)
    if callable(listed):
        return dict(listed())
    try:
        sig = inspect.signature(fn.__init__ if inspect.isclass(fn) else fn)
    except (TypeError, ValueError):
        return None
    out = {}
    for p in sig.parameters.values():
        if p.name == "self" or p.name in skip:
            continue
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out[p.name] = p.default
    return out


def _literal_default(node: Optional["ast.expr"]) -> Any:
    import ast
    if node is None:
        return inspect.Parameter.empty
    return ast.literal_eval(node)  # ValueError for anything but a literal


def _class_string_attr(node: Any, name: str) -> Optional[str]:
    """The value of ``name = "..."`` in a class body, or ``None``."""
    import ast
    for b in getattr(node, "body", []):
        if (isinstance(b, ast.Assign) and len(b.targets) == 1
                and isinstance(b.targets[0], ast.Name) and b.targets[0].id == name
                and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str)):
            return b.value.value
    return None


@functools.lru_cache(maxsize=None)
def _module_classes(module: str) -> Optional[Dict[str, Any]]:
    """The top-level class definitions (``ast.ClassDef``) of a module's source,
    parsed once per process without importing it; ``None`` when it has no
    readable ``.py`` source."""
    import ast
    import importlib.util
    try:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            return None
        with open(spec.origin, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=spec.origin)
    except (ImportError, OSError, SyntaxError, ValueError):
        return None
    return {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}


def _static_constructor_params(entry: str, skip: Tuple[str, ...]
                               ) -> Optional[Dict[str, Any]]:
    r"""What :func:`_constructor_params` returns for the class ``"module:Class"``,
    read from its source file without importing it (importing a model costs
    PyTorch and PyG, seconds of start-up).

    Returns ``None`` when the source does not say it plainly (the class or its
    ``__init__`` not found in its module, a default that is not a literal):
    the caller then imports the class. A test checks that both ways agree for
    every registered model and plug-in.
    """
    import ast
    import importlib
    module, cls_name = entry.split(":")
    classes = _module_classes(module)
    if classes is None:
        return None
    seen = set()
    node = classes.get(cls_name)
    while node is not None and node.name not in seen:
        seen.add(node.name)
        init = next((b for b in node.body
                     if isinstance(b, ast.FunctionDef) and b.name == "__init__"), None)
        if init is not None:
            break
        # inherited __init__: follow a single base defined in the same module
        bases = [b.id for b in node.bases if isinstance(b, ast.Name)]
        node = classes.get(bases[0]) if len(bases) == 1 else None
    else:
        return None
    hparams_from = _class_string_attr(classes.get(cls_name), "hparams_from")
    if hparams_from is not None:  # the class lists its flat keys in a light module
        try:
            mod, fn = hparams_from.split(":")
            return dict(getattr(importlib.import_module(mod), fn)())
        except (ImportError, AttributeError, ValueError):
            return None
    if init is None or init.decorator_list:
        return None
    a = init.args
    positional = list(a.posonlyargs) + list(a.args)
    defaults = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
    out: Dict[str, Any] = {}
    try:
        for arg, default in list(zip(positional, defaults)) + list(zip(a.kwonlyargs,
                                                                       a.kw_defaults)):
            if arg.arg == "self" or arg.arg in skip:
                continue
            out[arg.arg] = _literal_default(default)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    return out


def model_params(model: str) -> Dict[str, Any]:
    r"""Constructor hyper-parameters ``{name: default}`` of a registered model
    (``inspect.Parameter.empty`` when it has no default), read from the source
    when possible so that no model (and no PyTorch) is imported.

    Raises:
        ConfigError: unknown model.
    """
    from pyg_mmrec.models import model_entry
    try:
        entry = model_entry(model)
    except ValueError as e:
        raise ConfigError(f"model: {e}") from e
    params = _static_constructor_params(entry, _MODEL_DATA_ARGS)
    if params is None:
        params = _constructor_params(resolve_model(model)[1], _MODEL_DATA_ARGS) or {}
    return params


def plugin_params(plugin: str) -> Dict[str, Any]:
    r"""Like :func:`model_params`, for a plug-in name (``"mrdib"``).

    Raises:
        ConfigError: unknown plug-in.
    """
    key = _model_key(str(plugin))
    if key not in PLUGINS:
        raise ConfigError(f"plugin: unknown plug-in {plugin!r}; expected one of {sorted(PLUGINS)}")
    params = _static_constructor_params(PLUGINS[key], _PLUGIN_DATA_ARGS)
    if params is None:
        params = _constructor_params(resolve_plugin(plugin), _PLUGIN_DATA_ARGS) or {}
    return params


# ------------------------------------------------------------------------ validation
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_like(key: str, value: Any, default: Any) -> Any:
    """Check that ``value`` has the type of ``default``; ints are accepted
    (and widened) where a float is expected."""
    if default is None or default is inspect.Parameter.empty:
        return value
    if value is None:
        return value  # "null" always allowed for optional settings of models
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif _is_int(default):
        ok = _is_int(value)
    elif isinstance(default, float):
        ok = _is_number(value)
        value = float(value) if ok else value
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple))
        if ok and default:
            value = [_check_like(f"{key}[{i}]", v, default[0]) for i, v in enumerate(value)]
    elif isinstance(default, dict):
        ok = isinstance(value, dict)
    else:
        ok = True
    if not ok:
        raise ConfigError(f"'{key}': expected a value of type {type(default).__name__} "
                          f"(like the default {default!r}), got {value!r} ({type(value).__name__})")
    return value


def _positive_int(key, v, minimum=1):
    if not _is_int(v) or v < minimum:
        raise ConfigError(f"train.{key}: expected an integer >= {minimum}, got {v!r}")
    return v


def _number(key, v, positive=False, allow_none=False):
    if v is None and allow_none:
        return v
    if not _is_number(v):
        raise ConfigError(f"train.{key}: expected a number, got {v!r} ({type(v).__name__})")
    if positive and not v > 0:
        raise ConfigError(f"train.{key}: expected a positive number, got {v!r}")
    if not positive and v < 0:
        raise ConfigError(f"train.{key}: expected a non-negative number, got {v!r}")
    return float(v)


def _bool(key, v):
    if not isinstance(v, bool):
        raise ConfigError(f"train.{key}: expected true or false, got {v!r}")
    return v


def parse_metric(metric: str) -> Tuple[str, int]:
    """``"recall@20"`` -> ``("recall", 20)``; a ``cold/`` prefix (the new-item
    metrics of the cold-items protocol) is accepted and dropped here."""
    m = re.fullmatch(r"(?:cold/)?([a-z]+)@(\d+)", str(metric).strip().lower())
    if not m or m.group(1) not in METRIC_NAMES or int(m.group(2)) < 1:
        raise ConfigError(f"train.metric: expected [cold/]<name>@<K> with name in "
                          f"{list(METRIC_NAMES)} and K >= 1, got {metric!r}")
    return m.group(1), int(m.group(2))


def metric_key(metric: str) -> str:
    """The normalised key of a selection metric: ``"recall@20"`` or, selecting
    on the new items of the cold-items protocol, ``"cold/recall@20"``."""
    prefix = "cold/" if str(metric).strip().lower().startswith("cold/") else ""
    return prefix + "{}@{}".format(*parse_metric(metric))


_TRAIN_CHECKS = {
    "epochs": lambda k, v: _positive_int(k, v),
    "batch_size": lambda k, v: _positive_int(k, v),
    "lr": lambda k, v: _number(k, v, positive=True),
    "weight_decay": lambda k, v: _number(k, v),
    "lazy_embeddings": _bool,
    "aux_lr": lambda k, v: _number(k, v, positive=True, allow_none=True),
    "num_neg": lambda k, v: _positive_int(k, v),
    "grad_clip": lambda k, v: _number(k, v, positive=True, allow_none=True),
    "eval_every": lambda k, v: _positive_int(k, v),
    "patience": lambda k, v: _positive_int(k, v),
    "metric": lambda k, v: metric_key(v),
    "min_delta": lambda k, v: _number(k, v),
    "topk": lambda k, v: _check_topk(v),
    "deterministic": _bool,
    "checkpoint_every": lambda k, v: _positive_int(k, v, minimum=0),
    "tensorboard": _bool,
    "eval_max_users": lambda k, v: None if v is None else _positive_int(k, v),
    "test_excludes_valid": _bool,
    "lr_decay": lambda k, v: _check_lr_decay(v),
}


def _check_lr_decay(v):
    """``[factor, every]`` (MMRec's ``learning_rate_scheduler``) or ``None``."""
    if v is None:
        return None
    if (not isinstance(v, (list, tuple)) or len(v) != 2 or not all(_is_number(x) for x in v)
            or not v[0] > 0 or not v[1] > 0):
        raise ConfigError(f"train.lr_decay: expected [factor, every] with factor > 0 and "
                          f"every > 0 (lr * factor ** (epoch / every)), or null; got {v!r}")
    return [float(v[0]), float(v[1])]


def _check_topk(v):
    if isinstance(v, (int,)) and not isinstance(v, bool):
        v = [v]
    if not isinstance(v, (list, tuple)) or not v or not all(_is_int(k) and k >= 1 for k in v):
        raise ConfigError(f"train.topk: expected a non-empty list of integers >= 1, got {v!r}")
    return sorted(set(int(k) for k in v))


def validate_train(train: Mapping[str, Any]) -> Dict[str, Any]:
    """Check every training setting; returns the normalised settings."""
    unknown = sorted(set(train) - set(_TRAIN_CHECKS))
    if unknown:
        raise ConfigError(f"unknown training key(s) {unknown}; "
                          f"expected some of {sorted(_TRAIN_CHECKS)}")
    missing = sorted(set(_TRAIN_CHECKS) - set(train))
    if missing:
        raise ConfigError(f"training key(s) {missing} have no value "
                          "(is configs/train.yaml complete?)")
    out = {k: _TRAIN_CHECKS[k](k, train[k]) for k in _TRAIN_CHECKS}
    if out["tensorboard"]:
        import importlib.util  # found without importing it (or PyTorch): cheap
        if importlib.util.find_spec("tensorboard") is None:
            raise ConfigError("train.tensorboard: true needs the `tensorboard` package (the "
                              "optional extra 'tensorboard'), which is not installed; install "
                              "it with: pip install 'pyg_mmrec[tensorboard]'")
    return out


def eval_ks(train: Mapping[str, Any]) -> List[int]:
    """All cut-offs to evaluate: ``topk`` plus the selection metric's K."""
    return sorted(set(train["topk"]) | {parse_metric(train["metric"])[1]})


def check_against_data(config: Mapping[str, Any], num_items: int) -> None:
    """Checks that need the dataset (before training starts)."""
    ks = eval_ks(config["train"])
    if max(ks) > num_items:
        raise ConfigError(f"train.topk/metric: K={max(ks)} is larger than the number of items "
                          f"({num_items})")


# ------------------------------------------------------------------------ resolution
def resolve_model(model: Union[str, Callable]) -> Tuple[str, Callable]:
    """Registry name or callable -> ``(name, constructor)``."""
    if isinstance(model, str):
        from pyg_mmrec.models import get_model_class
        try:
            return _model_key(model), get_model_class(model)
        except ValueError as e:
            raise ConfigError(f"model: {e}") from e
    if callable(model):
        return getattr(model, "__name__", type(model).__name__).lower(), model
    raise ConfigError(f"model: expected a registry name or a callable, got {model!r}")


def resolve_plugin(plugin: Optional[str]) -> Optional[Callable]:
    if plugin is None:
        return None
    key = _model_key(str(plugin))
    if key not in PLUGINS:
        raise ConfigError(f"plugin: unknown plug-in {plugin!r}; expected one of {sorted(PLUGINS)}")
    import importlib
    module, cls = PLUGINS[key].split(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"plugin {plugin!r} is not available: {e}") from e


def _check_grouped_hparams(model: Union[str, Callable], hparams: Mapping[str, Any]) -> None:
    """A model that groups its options (``hparams_from = "module:flat_defaults"``)
    validates them in that light module's ``check_flat``: range and choice errors
    become configuration errors before any data is read or PyTorch imported."""
    import importlib
    if not isinstance(model, str):
        return
    from pyg_mmrec.models import model_entry
    try:
        module, cls_name = model_entry(model).split(":")
    except ValueError:
        return
    source = _class_string_attr((_module_classes(module) or {}).get(cls_name), "hparams_from")
    if source is None:
        return
    check = getattr(importlib.import_module(source.split(":")[0]), "check_flat", None)
    if check is None:
        return
    try:
        check(hparams)
    except ValueError as e:
        raise ConfigError(f"model '{_model_key(model)}': {e}") from None


def build_config(model: Union[str, Callable], overrides: Optional[Mapping[str, Any]] = None,
                 plugin: Optional[str] = None) -> Dict[str, Any]:
    r"""Assemble and validate the configuration of one run.

    Args:
        model: registry name (:func:`pyg_mmrec.models.get_model_class`) or a
            callable ``f(num_users, num_items, train_edge_index, features, masks, **hparams)``.
        overrides: ``{key: value}``; keys bare or qualified (``train.``,
            ``model.``, ``plugin.``).
        plugin: ``None`` or ``"mrdib"``.

    Raises:
        ConfigError: unknown model/plug-in/key, or a value of the wrong type or range.
    """
    if isinstance(model, str):  # registered: no import needed to know its parameters
        name, ctor_params = _model_key(model), model_params(model)
    else:
        name, ctor = resolve_model(model)
        ctor_params = _constructor_params(ctor, _MODEL_DATA_ARGS)
    hparams, model_train = model_defaults(name) if isinstance(model, str) else ({}, {})
    train = train_defaults()
    for k in model_train:
        if k not in train:
            raise ConfigError(f"configs/{name}.yaml: unknown key 'train.{k}'; "
                              f"expected some of {sorted(train)}")
    train.update(model_train)

    # Keys a model accepts: its YAML plus its named constructor parameters.
    model_keys = dict(ctor_params or {})
    model_keys.update(hparams)
    strict_model = isinstance(model, str) or bool(model_keys)

    plugin_name, plugin_hparams, plugin_keys = None, {}, {}
    if plugin is not None:
        plugin_ctor_params = plugin_params(plugin)
        plugin_name = _model_key(plugin)
        plugin_hparams, plugin_train = model_defaults(plugin_name)
        for k in plugin_train:
            if k not in train:
                raise ConfigError(f"configs/{plugin_name}.yaml: unknown key 'train.{k}'")
        train.update(plugin_train)
        plugin_keys = dict(plugin_ctor_params)
        plugin_keys.update(plugin_hparams)

    sections = {"train": train, "model": model_keys, "plugin": plugin_keys}
    for key, value in dict(overrides or {}).items():
        section, _, bare = key.partition(".") if "." in key else ("", "", key)
        if section:
            if section not in sections:
                raise ConfigError(f"override '{key}': unknown section '{section}'; "
                                  "expected train., model. or plugin.")
            if section == "plugin" and plugin is None:
                raise ConfigError(f"override '{key}': no plug-in selected")
            if bare not in sections[section] and not (section == "model" and not strict_model):
                raise ConfigError(f"override '{key}': unknown key '{bare}' for {section}; "
                                  f"expected one of {sorted(sections[section])}")
        else:
            owners = [s for s in ("train", "model", "plugin") if bare in sections[s]]
            if not owners and not strict_model:
                owners = ["model"]
            if not owners:
                known = sorted(set(train) | set(model_keys) | set(plugin_keys))
                raise ConfigError(f"unknown configuration key '{key}' for model '{name}'"
                                  f"{' with plug-in ' + plugin if plugin else ''}; "
                                  f"expected one of {known}")
            if len(owners) > 1:
                raise ConfigError(f"override '{key}' is ambiguous (a key of {owners}); "
                                  f"write e.g. '{owners[0]}.{key}'")
            section = owners[0]
        if section == "train":
            train[bare] = value
        elif section == "model":
            default = model_keys.get(bare)
            hparams[bare] = _check_like(f"model.{bare}", value, default)
        else:
            plugin_hparams[bare] = _check_like(f"plugin.{bare}", value, plugin_keys.get(bare))

    _check_grouped_hparams(model, hparams)
    return {
        "model": name,
        "plugin": plugin_name,
        "hparams": hparams,
        "plugin_hparams": plugin_hparams,
        "train": validate_train(train),
    }


def config_to_yaml(config: Mapping[str, Any]) -> str:
    """Serialise a (JSON-like) configuration to YAML text."""
    return yaml.safe_dump(_plain(copy.deepcopy(dict(config))), sort_keys=False)


def _plain(obj):
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


__all__ = [
    "ConfigError", "CONFIG_DIR", "config_overrides", "PLUGINS", "load_yaml", "parse_value", "parse_assignments",
    "parse_grid", "grid_settings", "train_defaults", "model_defaults", "validate_train", "parse_metric", "metric_key", "eval_ks",
    "check_against_data", "resolve_model", "resolve_plugin", "build_config", "config_to_yaml",
    "model_params", "plugin_params",
]
