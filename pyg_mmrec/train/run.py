r"""One training run end to end: configuration -> data -> masks -> model -> trainer.

:func:`run` is what the command line calls for every (setting, seed) pair, and
what examples and benchmarks call directly.
"""
from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

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
        d.update({k: c.get(k) for k in ("model", "plugin", "dataset", "missing", "fill", "seed")})
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


def _config_diff(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> List[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            out += _config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return out


def _build(data, config: Mapping[str, Any], ctor: Callable, wrapper: Optional[Callable],
           missing: str, seed: int, fill: str):
    """The run's inputs and seeded model: ``(TrainData, model, MaskSet, raw features)``.
    Shared by :func:`run` and :func:`evaluate_run`, so a re-evaluation sees
    exactly the masks, fills and initialisation of the training run."""
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
    train_masks = {m: masks.train[m] for m in raw}
    eval_masks = {m: masks.eval[m] for m in raw}
    fill_kw = dict(strategy=fill, edge_index=train_ei, num_users=num_users)
    train_feat = fill_features(raw, train_masks, **fill_kw) if raw else {}
    same = all(torch.equal(train_masks[m], eval_masks[m]) for m in raw)
    eval_feat = train_feat if same else (
        fill_features(raw, eval_masks, **fill_kw) if raw else {})
    td = TrainData(num_users, num_items, train_ei, valid_ei, test_ei, train_feat, train_masks,
                   None if same else eval_feat, None if same else eval_masks)

    set_seed(seed)
    net = ctor(num_users, num_items, train_ei, dict(train_feat), dict(train_masks),
               **config["hparams"])
    if wrapper is not None:
        net = wrapper(net, **config["plugin_hparams"])
    return td, net, masks, raw


def run(model: Union[str, Callable], dataset: Any, root: Optional[Union[str, Path]] = None,
        missing: str = "natural", seed: int = 0, overrides: Optional[Mapping[str, Any]] = None,
        plugin: Optional[str] = None, fill: Optional[str] = None,
        out_dir: Optional[Union[str, Path]] = None, device: str = "cpu", quiet: bool = True,
        resume: bool = False, test: bool = True,
        trainer_cls: type = Trainer) -> RunResult:
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
        test: evaluate the test split at the selected epoch.
        trainer_cls: the :class:`Trainer` (sub)class to use.
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
    if plugin is not None and "seed" in config["plugin_hparams"] and not any(
            k in (overrides or {}) for k in ("seed", "plugin.seed")):
        # the plug-in's own RNG follows the run's seed unless set explicitly
        config["plugin_hparams"]["seed"] = seed
    config.update({"dataset": dataset if isinstance(dataset, str) else "<HeteroData>",
                   "missing": missing, "fill": fill, "seed": seed,
                   "overrides": dict(overrides or {})})

    out = Path(out_dir) if out_dir is not None else None
    can_resume = _check_out_dir(out, resume) if out is not None else False
    from . import distributed as dist_  # one process: rank 0 of 1, all no-ops
    rank, world_size = dist_.get_rank_world()
    dist_.barrier("output directory check")  # every rank checked before rank 0 writes

    # ---- data, masks, fills, model (seeded), optional plug-in
    with dist_.rank_zero_first("loading the dataset"):  # rank 0 fills the cache first
        data = _load_data(dataset, root)
    check_against_data(config, int(data["item"].num_nodes))
    td, net, masks, raw = _build(data, config, ctor, wrapper, missing, seed, fill)

    # ---- outputs
    if out is not None:
        if can_resume:
            from .checkpoint import load_checkpoint
            saved = load_checkpoint(out / CHECKPOINT_NAME)["config"]
            diff = _config_diff(saved, config)
            if diff:
                raise ConfigError(f"resume: the configuration differs from the checkpoint's in "
                                  f"{out}: {'; '.join(diff)} (a run directory holds one "
                                  f"configuration: give a different one another --out)")
    if out is not None and rank == 0:  # only rank 0 writes
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", config_to_yaml(config))
        if raw:  # the exact missing entries of this run, for audit and re-use
            masks.save(str(out / "masks"))

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
        atomic_write_json(out / "result.json", d)
    return result


def evaluate_run(run_dir: Union[str, Path], root: Optional[Union[str, Path]] = None,
                 topk: Optional[List[int]] = None, splits: tuple = ("valid", "test"),
                 device: str = "cpu", tolerance: float = 1e-6) -> Dict[str, Any]:
    r"""Re-score a finished run's selected checkpoint, e.g. at other cut-offs.

    The run is rebuilt from its ``checkpoint.pt`` (configuration, masks from
    the run's seed, fills) and its *best* state — the epoch selected on
    validation — is ranked again with ``topk`` as the cut-offs. Nothing is
    trained and nothing is written: the run directory is only read.

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
        root: data directory holding the run's dataset (it is not stored in
            the run).
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
    import copy
    import json

    from pyg_mmrec.config import (ConfigError, check_against_data, resolve_model, resolve_plugin,
                                  train_defaults, validate_train)
    from pyg_mmrec.data.missing import MaskSet
    from .checkpoint import load_checkpoint

    run_dir = Path(run_dir)
    bad = [s for s in splits if s not in ("valid", "test")]
    if bad or not splits:
        raise ValueError(f"splits: expected 'valid' and/or 'test', got {list(splits)}")
    result_path = run_dir / "result.json"
    if not (run_dir / CHECKPOINT_NAME).is_file():
        raise FileNotFoundError(f"{run_dir}: no {CHECKPOINT_NAME} (not a run directory)")
    if not result_path.is_file():
        raise FileNotFoundError(f"{run_dir}: no result.json: the run has not finished (finish it "
                                "with --resume first; an unfinished run has no selected epoch)")
    try:
        logged = json.loads(result_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{result_path}: not valid JSON: {e}") from e
    if "test" in splits and not logged.get("test"):
        raise ValueError(f"{run_dir}: the test split of this run was never read (a grid "
                         "candidate that was not selected on validation); only --split valid "
                         "can be re-scored")
    state = load_checkpoint(run_dir / CHECKPOINT_NAME, map_location="cpu")
    if not state.get("finished") or state.get("best_state") is None:
        raise ValueError(f"{run_dir}/{CHECKPOINT_NAME}: not a finished run with a selected "
                         "epoch")
    config = copy.deepcopy(state["config"])
    dataset = config.get("dataset")
    if not isinstance(dataset, str) or dataset.startswith("<"):
        raise ValueError(f"{run_dir}: trained on an in-memory dataset ({dataset!r}); only runs "
                         "of a named dataset under --root can be rebuilt")
    try:
        _, ctor = resolve_model(config["model"])
    except ConfigError as e:
        raise ValueError(f"{run_dir}: {e}") from e
    wrapper = resolve_plugin(config.get("plugin"))
    # keys added to train.yaml after the run keep their defaults (nothing trains here)
    train = {**train_defaults(), **config["train"]}
    if topk is not None:
        train["topk"] = list(topk)  # validated below
    config["train"] = validate_train(train)

    data = _load_data(dataset, root)
    check_against_data(config, int(data["item"].num_nodes))
    seed, missing, fill = int(config["seed"]), str(config["missing"]), str(config["fill"])
    td, net, masks, raw = _build(data, config, ctor, wrapper, missing, seed, fill)
    if raw and (run_dir / "masks").is_dir():
        saved = MaskSet.load(str(run_dir / "masks"))
        if set(saved.train) != set(raw) or not all(
                torch.equal(saved.train[m], masks.train[m])
                and torch.equal(saved.eval[m], masks.eval[m]) for m in raw):
            raise ValueError(f"{run_dir}/masks: the run's saved presence masks differ from "
                             f"those rebuilt from {dataset!r} (seed {seed}, {missing}); the "
                             "dataset changed since the run")
    trainer = Trainer(net, td, config["train"], seed=seed, out_dir=None, device=device,
                      quiet=True, config=config)
    net.load_state_dict(state["best_state"])
    out = {k: v for k, v in logged.items() if k not in ("valid", "test")}
    out["config"] = config
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


__all__ = ["run", "evaluate_run", "RunResult", "set_seed", "FILLS"]
