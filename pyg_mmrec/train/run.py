r"""One training run end to end: configuration -> data -> masks -> model -> trainer.

:func:`run` is what the command line calls for every (setting, seed) pair, and
what examples and benchmarks call directly.
"""
from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Dict, List, Mapping, Optional, Union

import numpy as np
import torch

from .checkpoint import CHECKPOINT_NAME, atomic_write_json, atomic_write_text
from .trainer import TrainData, Trainer

RUN_FILES = ("config.yaml", "metrics.jsonl", "result.json", CHECKPOINT_NAME, "masks")
FILLS = ("zero", "mean", "propagate")


@dataclass
class RunResult:
    """Outcome of :func:`run` (also written to ``<out_dir>/result.json``).

    ``valid`` holds the validation metrics at ``best_epoch`` (epochs count from
    0); ``test`` the test metrics of that same state, or ``None`` when the run
    was asked not to look at the test split (grid search before selection)."""

    best_epoch: int
    valid: Dict[str, float]
    test: Optional[Dict[str, float]]
    seconds_per_epoch: float
    config: Dict[str, Any]
    seconds_per_eval: float = 0.0
    epochs: int = 0
    stopped_early: bool = False
    out_dir: Optional[str] = None
    history: List[Dict[str, Any]] = field(default_factory=list, repr=False)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d.pop("history")
        c = self.config
        d.update({k: c.get(k) for k in ("model", "plugin", "dataset", "missing", "fill", "seed",
                                        "cold_items")})
        return d


def set_seed(seed: int) -> None:
    """Seed ``random``, ``numpy`` and ``torch`` (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _load_data(dataset: Any, root: Optional[Union[str, Path]]):
    if isinstance(dataset, str):
        from pyg_mmrec.data import MMRecDataset
        if root is None:
            raise ValueError("root: the data directory is required when dataset is a name")
        return MMRecDataset(str(root), dataset)[0]
    if hasattr(dataset, "node_types"):  # a HeteroData in the documented layout
        return dataset
    raise ValueError(f"dataset: expected a dataset name or a HeteroData, "
                     f"got {type(dataset).__name__}")


def _features(data) -> Dict[str, torch.Tensor]:
    mods = list(getattr(data, "modalities", []) or [])
    return {m: data["item"][f"{m}_feat"] for m in mods}


def _check_out_dir(out_dir: Path, resume: bool) -> bool:
    """-> whether a checkpoint exists to resume from. Refuses to overwrite a run."""
    existing = [f for f in RUN_FILES if (out_dir / f).exists()]
    if existing and not resume:
        raise FileExistsError(f"{out_dir} already holds a run ({', '.join(existing)}); pass "
                              "resume=True (--resume) to continue it or choose another "
                              "output directory")
    return (out_dir / CHECKPOINT_NAME).exists()


# Configuration entries a resume may change: the stopping budget (epochs,
# patience), stored in the training section and, as given, among the overrides.
_BUDGET_KEYS = tuple(f"{where}{key}" for key in ("epochs", "patience")
                     for where in ("train.", "overrides.train.", "overrides."))


def _config_diff(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "",
                 skip: Collection[str] = ()) -> List[str]:
    """The entries that differ, ``"path: old -> new"``, except the paths in ``skip``."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            out += _config_diff(va, vb, f"{prefix}{k}.", skip)
        elif va != vb and f"{prefix}{k}" not in skip:
            out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return out


@dataclass
class BuiltRun:
    r"""What :func:`_build` makes of a configuration and a dataset: the
    trainer's inputs, the seeded model and what the inference layer needs to
    place new items and to map ids.

    Attributes:
        data: the trainer's :class:`TrainData`.
        model: the seeded (untrained) model, wrapped by the plug-in if any.
        masks: the run's :class:`~pyg_mmrec.data.missing.MaskSet` (dataset item order).
        raw: the dataset's unfilled features (dataset order; empty for ID-only models).
        cold: the :class:`~pyg_mmrec.data.cold.ColdSplit` of a new-item run, else ``None``.
        item_order: internal item id -> dataset item id (``None``: the identity).
        reference_features, reference_masks: the trained items' evaluation
            features (filled) and masks, the reference of the fill rule for new items.
    """

    data: TrainData
    model: torch.nn.Module
    masks: Any
    raw: Dict[str, torch.Tensor]
    cold: Any = None
    item_order: Optional[torch.Tensor] = None
    reference_features: Dict[str, torch.Tensor] = field(default_factory=dict)
    reference_masks: Dict[str, torch.Tensor] = field(default_factory=dict)

    def __iter__(self):  # (td, net, masks, raw), the historical tuple
        return iter((self.data, self.model, self.masks, self.raw))


def _build(data, config: Mapping[str, Any], ctor: Callable, wrapper: Optional[Callable],
           missing: str, seed: int, fill: str, cold_items: Optional[float] = None) -> BuiltRun:
    """The run's inputs and seeded model (:class:`BuiltRun`).
    Shared by :func:`run` and :func:`rebuild_run` (hence :func:`evaluate_run`
    and :func:`pyg_mmrec.load`), so a rebuilt run sees exactly the masks,
    fills, new-item split and initialisation of the training run.

    Under the new-item protocol (``cold_items``) the model is built on the
    warm items only (internal ids, see :mod:`pyg_mmrec.data.cold`); the new
    items' features are filled by the run's rule from the trained items
    (:func:`pyg_mmrec.train.cold.fill_new_item_features`) and carry the run's
    *evaluation* masks, so they can miss a modality too."""
    from pyg_mmrec.config import ConfigError
    from pyg_mmrec.data.missing import fill_features, make_masks
    num_users, num_items = int(data["user"].num_nodes), int(data["item"].num_nodes)
    store = data["user", "rates", "item"]
    train_ei = store.edge_index
    valid_ei, test_ei = store.valid_edge_index, store.test_edge_index
    try:
        masks = make_masks(missing, data, seed)
    except ValueError as e:
        raise ConfigError(f"missing: {e}") from e

    raw = _features(data)
    if getattr(ctor, "uses_features", True) is False and wrapper is None:
        raw = {}  # ID-only model: no modality inputs at all
    split, order, model_items = None, None, num_items
    train_masks = {m: masks.train[m] for m in raw}
    eval_masks = {m: masks.eval[m] for m in raw}
    feats = raw
    if cold_items is not None:
        from pyg_mmrec.data.cold import make_cold_split
        try:
            split = make_cold_split(data, cold_items, seed)
        except ValueError as e:
            raise ConfigError(str(e)) from e
        order, model_items = split.order, split.num_warm
        train_ei, valid_ei, test_ei = (split.train_edge_index, split.valid_edge_index,
                                       split.test_edge_index)
        warm = split.warm_items
        feats = {m: raw[m][warm] for m in raw}
        train_masks = {m: t[warm] for m, t in train_masks.items()}
        eval_masks = {m: t[warm] for m, t in eval_masks.items()}
    fill_kw = dict(strategy=fill, edge_index=train_ei, num_users=num_users)
    train_feat = fill_features(feats, train_masks, **fill_kw) if raw else {}
    same = all(torch.equal(train_masks[m], eval_masks[m]) for m in raw)
    eval_feat = train_feat if same else (
        fill_features(feats, eval_masks, **fill_kw) if raw else {})
    cold_eval = None
    if split is not None:
        from .cold import ColdEval, fill_new_item_features
        new = order[split.num_warm:]
        new_masks = {m: masks.eval[m][new] for m in raw}
        new_feat = fill_new_item_features({m: raw[m][new] for m in raw}, new_masks,
                                          eval_feat, eval_masks, fill)
        cold_eval = ColdEval(split.num_warm, num_items, new_feat, new_masks, seed)
    td = TrainData(num_users, model_items, train_ei, valid_ei, test_ei, train_feat, train_masks,
                   None if same else eval_feat, None if same else eval_masks, cold=cold_eval)

    set_seed(seed)
    net = ctor(num_users, model_items, train_ei, dict(train_feat), dict(train_masks),
               **config["hparams"])
    if wrapper is not None:
        net = wrapper(net, **config["plugin_hparams"])
    return BuiltRun(td, net, masks, raw, split, order, dict(eval_feat), dict(eval_masks))


def _check_cold_sizes(config: Mapping[str, Any], built: BuiltRun) -> None:
    from pyg_mmrec.config import ConfigError, eval_ks
    if built.cold is None:
        return
    k = max(eval_ks(config["train"]))
    for what, n in (("new", built.cold.num_cold), ("training", built.cold.num_warm)):
        if k > n:
            raise ConfigError(f"cold_items: K={k} is larger than the number of {what} items "
                              f"({n}) of a share of {built.cold.share}")


def run(model: Union[str, Callable], dataset: Any, root: Optional[Union[str, Path]] = None,
        missing: str = "natural", seed: int = 0, overrides: Optional[Mapping[str, Any]] = None,
        plugin: Optional[str] = None, fill: Optional[str] = None,
        out_dir: Optional[Union[str, Path]] = None, device: str = "cpu", quiet: bool = True,
        resume: bool = False, test: bool = True,
        trainer_cls: type = Trainer, cold_items: Optional[float] = None) -> RunResult:
    r"""Train and evaluate one model on one dataset, seed and missing-modality protocol.

    Everything is validated before training starts (unknown model or key, bad
    values, K above the item count, unknown missing protocol or fill).

    Args:
        model: registry name (``"FREEDOM"``, see :func:`pyg_mmrec.models.get_model_class`)
            or a callable ``f(num_users, num_items, train_edge_index, features, masks, **hparams)``.
        dataset: dataset name under ``root`` (MMRec layout) or a loaded ``HeteroData``.
        root: directory holding ``<dataset>/``.
        missing: missing-modality protocol (``"natural"``, ``"i3mrec:fm:0.3"``, ...;
            see :func:`pyg_mmrec.data.missing.make_masks`).
        seed: seeds the model initialisation, the masks and the BPR sampler.
        overrides: configuration overrides (see :func:`pyg_mmrec.config.build_config`).
        plugin: ``"mrdib"`` wraps the backbone as ``MRdIB(backbone, **plugin_hparams)``.
        fill: how missing feature rows are filled: ``"zero"`` (default), ``"mean"``,
            ``"propagate"`` (:func:`pyg_mmrec.data.missing.fill_features`).
        out_dir: run directory for ``config.yaml``, ``metrics.jsonl``,
            ``result.json`` and ``checkpoint.pt``; an existing run is never
            overwritten (use ``resume``). ``None``: nothing is written.
        device: ``"cpu"`` or ``"cuda"``.
        quiet: no progress bars or per-epoch lines.
        resume: continue from ``out_dir/checkpoint.pt`` if present (else start).
            The configuration must be the checkpoint's, except the stopping
            budget (``train.epochs``, ``train.patience``): a larger one
            continues a run that ended at its cap or ran out of patience,
            exactly as a fresh run with that budget would have gone on (when
            ``eval_every`` divides the old cap; always with the default 1).
            Fewer epochs than already trained, or less patience, is refused.
        test: evaluate the test split at the selected epoch.
        trainer_cls: the :class:`Trainer` (sub)class to use.
        cold_items: new-item protocol (:mod:`pyg_mmrec.data.cold`): this share of
            the items (drawn with ``seed``) loses every training interaction and
            is placed from its content before each evaluation. The metrics then
            also hold ``cold/<metric>@K`` (users ranked against the new items
            only); selection stays on ``train.metric``, which may name one of
            them (``cold/recall@20``). The split is saved as
            ``masks/cold_items.npy``.
    """
    from pyg_mmrec.config import (ConfigError, build_config, check_against_data,
                                  config_to_yaml, resolve_model, resolve_plugin)

    # ---- validation that needs no data
    config = build_config(model, overrides, plugin)
    fill = "zero" if fill is None else str(fill)
    if fill not in FILLS:
        raise ConfigError(f"fill: unknown strategy {fill!r}; expected one of {list(FILLS)}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"seed: expected an integer, got {seed!r}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"device: expected 'cpu' or 'cuda', got {device!r}") from e
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device: expected 'cpu' or 'cuda', got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' requested but torch.cuda.is_available() is False")
    _, ctor = resolve_model(model)
    wrapper = resolve_plugin(plugin)
    from pyg_mmrec.data.missing import parse_missing_spec
    try:
        parse_missing_spec(missing)
    except ValueError as e:
        raise ConfigError(f"missing: {e}") from e
    if cold_items is not None:
        from pyg_mmrec.data.cold import _check_share
        try:
            cold_items = _check_share(cold_items)
        except ValueError as e:
            raise ConfigError(str(e)) from e
    elif config["train"]["metric"].startswith("cold/"):
        raise ConfigError(f"train.metric {config['train']['metric']!r}: new-item metrics exist "
                          "only under the new-item protocol (cold_items / --cold-items)")
    if plugin is not None and "seed" in config["plugin_hparams"] and not any(
            k in (overrides or {}) for k in ("seed", "plugin.seed")):
        # the plug-in's own RNG follows the run's seed unless set explicitly
        config["plugin_hparams"]["seed"] = seed
    config.update({"dataset": dataset if isinstance(dataset, str) else "<HeteroData>",
                   "missing": missing, "fill": fill, "seed": seed,
                   "overrides": dict(overrides or {})})
    if cold_items is not None:  # absent otherwise: older runs keep their configuration
        config["cold_items"] = cold_items

    out = Path(out_dir) if out_dir is not None else None
    can_resume = _check_out_dir(out, resume) if out is not None else False
    from . import distributed as dist_  # one process: rank 0 of 1, all no-ops
    rank, world_size = dist_.get_rank_world()
    dist_.barrier("output directory check")  # every rank checked before rank 0 writes

    # ---- data, masks, fills, model (seeded), optional plug-in
    with dist_.rank_zero_first("loading the dataset"):  # rank 0 fills the cache first
        data = _load_data(dataset, root)
    check_against_data(config, int(data["item"].num_nodes))
    built = _build(data, config, ctor, wrapper, missing, seed, fill, cold_items)
    _check_cold_sizes(config, built)
    td, net, masks, raw = built

    # ---- outputs
    if out is not None:
        if can_resume:
            from .checkpoint import load_checkpoint
            saved = load_checkpoint(out / CHECKPOINT_NAME)["config"]
            # The stopping budget alone may change: a run that reached its cap
            # or ran out of patience continues under the larger one (the
            # trainer refuses a smaller one).
            diff = _config_diff(saved, config, skip=_BUDGET_KEYS)
            if diff:
                raise ConfigError(f"resume: the configuration differs from the checkpoint's in "
                                  f"{out}: {'; '.join(diff)} (a run directory holds one "
                                  f"configuration: give a different one another --out)")
    if out is not None and rank == 0:  # only rank 0 writes
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", config_to_yaml(config))
        if raw:  # the exact missing entries of this run, for audit and re-use
            masks.save(str(out / "masks"))
        if built.cold is not None:
            built.cold.save(str(out / "masks"))

    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    if config["train"]["deterministic"]:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if world_size > 1 and trainer_cls is Trainer:
        trainer_cls = dist_.DistributedTrainer
    try:
        trainer = trainer_cls(net, td, config["train"], seed=seed, out_dir=out, device=device,
                              quiet=quiet, config=config)
        t0 = time.perf_counter()
        fit = trainer.fit(resume=can_resume, test=test)
        wall = time.perf_counter() - t0
    finally:
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)

    result = RunResult(best_epoch=fit.best_epoch, valid=fit.valid, test=fit.test,
                       seconds_per_epoch=fit.seconds_per_epoch, config=config,
                       seconds_per_eval=fit.seconds_per_eval, epochs=fit.epochs,
                       stopped_early=fit.stopped_early,
                       out_dir=str(out) if out is not None else None, history=fit.history)
    if out is not None and rank == 0:
        d = result.to_dict()
        d["wall_seconds_last_call"] = wall
        if isinstance(dataset, str) and root is not None:  # where load() finds the data again
            d["data_root"] = str(Path(root).resolve())
        atomic_write_json(out / "result.json", d)
    return result


DEFAULT_DATA_ROOT = "../shared/data"


@dataclass
class RebuiltRun:
    r"""A finished run rebuilt at its validation-selected state (:func:`rebuild_run`).

    Attributes:
        run_dir: the run directory.
        config: the run's configuration (``train`` completed with today's defaults).
        logged: ``result.json``'s content.
        built: the :class:`BuiltRun` (inputs, masks, new-item split); its
            model holds the checkpoint's best state, in eval mode.
        trainer: a :class:`Trainer` over it, for :meth:`Trainer.evaluate` only.
        dataset: the loaded ``HeteroData``.
        root: the data directory it was loaded from.
    """

    run_dir: Path
    config: Dict[str, Any]
    logged: Dict[str, Any]
    built: BuiltRun
    trainer: Trainer
    dataset: Any
    root: Path

    @property
    def model(self) -> torch.nn.Module:
        return self.built.model


def _read_checkpoint(path: Path) -> Dict[str, Any]:
    from .checkpoint import CHECKPOINT_VERSION, load_checkpoint
    try:
        return load_checkpoint(path, map_location="cpu")
    except FileNotFoundError:
        raise
    except RuntimeError as e:
        if "not a pyg_mmrec checkpoint" in str(e):
            raise ValueError(f"{path}: not a pyg_mmrec checkpoint of format version "
                             f"{CHECKPOINT_VERSION} (written by another code version); "
                             "retrain the run with this version") from e
        raise ValueError(f"{path}: cannot be read ({type(e).__name__}: {str(e).splitlines()[0]}); "
                         "the file is corrupted or truncated: retrain the run, or continue it "
                         "with --resume from an intact copy") from e
    except Exception as e:  # noqa: BLE001 - pickle/zip/EOF errors of a damaged file
        msg = str(e).splitlines()[0] if str(e) else ""
        raise ValueError(f"{path}: cannot be read ({type(e).__name__}: {msg}); the file is "
                         "corrupted or truncated: retrain the run, or continue it with "
                         "--resume from an intact copy") from e


def resolve_data_root(logged: Mapping[str, Any], dataset: str,
                      root: Optional[Union[str, Path]]) -> Path:
    r"""The data directory of a run: ``root`` if given, else the one the run
    recorded in ``result.json`` (``data_root``) when it still holds the
    dataset, else :data:`DEFAULT_DATA_ROOT`. Raises ``FileNotFoundError``
    saying where the dataset was looked for."""
    tried = []
    candidates = [root] if root is not None else [logged.get("data_root"), DEFAULT_DATA_ROOT]
    for c in candidates:
        if c is None:
            continue
        p = Path(c)
        tried.append(str(p))
        if (p / dataset).is_dir():
            return p
    raise FileNotFoundError(f"dataset {dataset!r} of the run not found under "
                            f"{' or '.join(tried)}; pass the data directory holding it "
                            "(root= / --root)")


def rebuild_run(run_dir: Union[str, Path], root: Optional[Union[str, Path]] = None,
                device: str = "cpu", topk: Optional[List[int]] = None) -> RebuiltRun:
    r"""Rebuilds a finished run at its validation-selected state: the model of
    its configuration, seed, masks, fills and new-item split, with the
    checkpoint's *best* state loaded, in eval mode. The one rebuild path of
    :func:`evaluate_run` and :func:`pyg_mmrec.load`. Reads only; writes nothing.

    Args:
        run_dir: a run directory (``checkpoint.pt`` and ``result.json``).
        root: data directory holding the run's dataset (default: see
            :func:`resolve_data_root`).
        device: ``"cpu"`` or ``"cuda"``.
        topk: cut-offs of the trainer's evaluation (default: the run's own).

    Raises:
        FileNotFoundError: no checkpoint, no ``result.json`` (an unfinished
            run), or the dataset is not found.
        ValueError: a damaged checkpoint, one of another code version, a
            model state that does not fit the rebuilt model, or saved masks /
            new-item split that differ from the rebuilt ones.
    """
    import copy
    import json

    from pyg_mmrec.config import (ConfigError, check_against_data, resolve_model, resolve_plugin,
                                  train_defaults, validate_train)
    from pyg_mmrec.data.missing import MaskSet

    run_dir = Path(run_dir)
    result_path = run_dir / "result.json"
    ckpt_path = run_dir / CHECKPOINT_NAME
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"{run_dir}: no {CHECKPOINT_NAME} (not a run directory)")
    if not result_path.is_file():
        raise FileNotFoundError(f"{run_dir}: no result.json: the run has not finished (finish it "
                                "with --resume first; an unfinished run has no selected epoch)")
    try:
        logged = json.loads(result_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{result_path}: not valid JSON: {e}") from e
    state = _read_checkpoint(ckpt_path)
    if not state.get("finished") or state.get("best_state") is None:
        raise ValueError(f"{ckpt_path}: not a finished run with a selected epoch (finish it "
                         "with --resume)")
    config = copy.deepcopy(state["config"])
    dataset = config.get("dataset")
    if not isinstance(dataset, str) or dataset.startswith("<"):
        raise ValueError(f"{run_dir}: trained on an in-memory dataset ({dataset!r}); only runs "
                         "of a named dataset under --root can be rebuilt")
    try:
        _, ctor = resolve_model(config["model"])
        wrapper = resolve_plugin(config.get("plugin"))
    except ConfigError as e:
        raise ValueError(f"{run_dir}: {e}") from e
    # keys added to train.yaml after the run keep their defaults (nothing trains here)
    train = {**train_defaults(), **config["train"]}
    if topk is not None:
        train["topk"] = list(topk)  # validated below
    config["train"] = validate_train(train)

    data_root = resolve_data_root(logged, dataset, root)
    data = _load_data(dataset, data_root)
    check_against_data(config, int(data["item"].num_nodes))
    seed, missing, fill = int(config["seed"]), str(config["missing"]), str(config["fill"])
    cold_items = config.get("cold_items")
    built = _build(data, config, ctor, wrapper, missing, seed, fill, cold_items)
    _check_cold_sizes(config, built)
    masks, raw = built.masks, built.raw
    if raw and (run_dir / "masks" / "masks.json").is_file():
        saved = MaskSet.load(str(run_dir / "masks"))
        if set(saved.train) != set(raw) or not all(
                torch.equal(saved.train[m], masks.train[m])
                and torch.equal(saved.eval[m], masks.eval[m]) for m in raw):
            raise ValueError(f"{run_dir}/masks: the run's saved presence masks differ from "
                             f"those rebuilt from {dataset!r} (seed {seed}, {missing}); the "
                             "dataset changed since the run")
    if built.cold is not None:
        from pyg_mmrec.data.cold import ColdSplit
        saved_cold = ColdSplit.load_items(str(run_dir / "masks"))
        if not torch.equal(saved_cold, built.cold.cold_items):
            raise ValueError(f"{run_dir}/masks/cold_items.npy: the run's saved new items differ "
                             f"from those rebuilt from {dataset!r} (seed {seed}); the dataset "
                             "changed since the run")
    net = built.model
    try:
        net.load_state_dict(state["best_state"])
    except (RuntimeError, KeyError) as e:
        first = str(e).strip().splitlines()
        raise ValueError(f"{ckpt_path}: its model state does not fit {config['model']} as "
                         f"this code version builds it ({first[1].strip() if len(first) > 1 else first[0]}"
                         "); use the code version that wrote it or retrain") from e
    trainer = Trainer(net, built.data, config["train"], seed=seed, out_dir=None, device=device,
                      quiet=True, config=config)
    net.eval()
    return RebuiltRun(run_dir, config, logged, built, trainer, data, data_root)


def evaluate_run(run_dir: Union[str, Path], root: Optional[Union[str, Path]] = None,
                 topk: Optional[List[int]] = None, splits: tuple = ("valid", "test"),
                 device: str = "cpu", tolerance: float = 1e-6) -> Dict[str, Any]:
    r"""Re-score a finished run's selected checkpoint, e.g. at other cut-offs.

    The run is rebuilt by :func:`rebuild_run` (configuration, masks from the
    run's seed, fills, new-item split) at its *best* state — the epoch
    selected on validation — and ranked again with ``topk`` as the cut-offs.
    Nothing is trained and nothing is written: the run directory is only read.
    A new-item run's metrics hold the ``cold/`` group too.

    Two rules keep it honest and exact:

    * the test split is scored only for runs whose ``result.json`` already
      holds test metrics (a selected setting); a grid candidate that was not
      selected never has its test split read, here as in training;
    * every metric the run logged is recomputed and must match
      ``result.json`` within ``tolerance`` (and the masks must equal the
      saved ``masks/``), otherwise the code or the data changed since the
      run and the new figures would not describe it.

    Args:
        run_dir: a run directory (``checkpoint.pt`` and ``result.json``).
        root: data directory holding the run's dataset (default: the one the
            run recorded, see :func:`resolve_data_root`).
        topk: cut-offs to report (default: the run's own).
        splits: ``"valid"`` and/or ``"test"``.
        device: ``"cpu"`` or ``"cuda"``.
        tolerance: largest accepted difference to the logged metrics.

    Returns:
        ``result.json``'s content with ``valid``/``test`` replaced by the new
        metrics (splits not asked for are dropped) and ``config.train.topk``
        set to the cut-offs used.

    Raises:
        FileNotFoundError: no checkpoint or no ``result.json`` (unfinished run).
        ValueError: the run cannot be re-scored as asked (see above).
    """
    import json

    run_dir = Path(run_dir)
    bad = [s for s in splits if s not in ("valid", "test")]
    if bad or not splits:
        raise ValueError(f"splits: expected 'valid' and/or 'test', got {list(splits)}")
    result_path = run_dir / "result.json"
    if result_path.is_file() and "test" in splits:
        try:
            logged = json.loads(result_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{result_path}: not valid JSON: {e}") from e
        if not logged.get("test"):
            raise ValueError(f"{run_dir}: the test split of this run was never read (a grid "
                             "candidate that was not selected on validation); only --split "
                             "valid can be re-scored")
    rb = rebuild_run(run_dir, root=root, device=device, topk=topk)
    logged, trainer = rb.logged, rb.trainer
    out = {k: v for k, v in logged.items() if k not in ("valid", "test")}
    out["config"] = rb.config
    for split in ("valid", "test"):
        if split not in splits:
            continue
        metrics = trainer.evaluate(split)
        for name, value in (logged.get(split) or {}).items():
            if name in metrics and abs(float(metrics[name]) - float(value)) > tolerance:
                raise ValueError(
                    f"{run_dir}: re-scoring does not reproduce the logged {split} {name} "
                    f"({metrics[name]:.6f} against {float(value):.6f} in result.json); the "
                    "code or the data changed since the run")
        out[split] = metrics
    out["out_dir"] = str(run_dir)
    return out


__all__ = ["run", "evaluate_run", "rebuild_run", "RebuiltRun", "BuiltRun", "RunResult", "set_seed",
           "FILLS", "DEFAULT_DATA_ROOT", "resolve_data_root"]
