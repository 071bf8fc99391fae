r"""From a trained run to recommendations: :func:`load` a run directory, then
recommend, score, export embeddings and place new items from their content.

.. code-block:: python

    import pyg_mmrec
    rec = pyg_mmrec.load("runs/freedom-ml100k_mm-natural/default/seed1")
    items, scores = rec.recommend([0, 5, 7], k=10)          # seen items excluded
    new = rec.add_items(features={"image": x_img, "text": x_txt})  # -> new item ids
    rec.score([0], new)

**Ids.** Users and items are addressed by the dataset's ids (the ``userID`` /
``itemID`` of ``<dataset>.inter``), whatever order a run trained them in
(a new-item run trains its warm items first). Items added with
:meth:`TrainedRecommender.add_items` get the next ids, from the catalog size
on. With ``ids="original"`` users and items are given and returned as the raw
ids of ``u_id_mapping.csv`` / ``i_id_mapping.csv`` (written by
``build-dataset``), as strings; an added item's original id is ``"new:<id>"``.

**State.** The model is the run's validation-selected state, with the
run's *evaluation* inputs (features filled by the run's rule, evaluation
presence masks). In a new-item run the held-out items are placed through
``add_items`` exactly as the run's evaluation placed them, so
:meth:`TrainedRecommender.evaluate` and a ranking of :meth:`recommend`
reproduce the logged metrics.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

IdLike = Union[int, str, Sequence[Union[int, str]], Tensor, np.ndarray]


def _read_mapping(path: Path) -> List[str]:
    r"""``u_id_mapping.csv`` / ``i_id_mapping.csv`` (tab-separated ``raw_id``,
    new id) -> the raw id of every new id, as strings."""
    raw: Dict[int, str] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header is None or len(header) != 2:
            raise ValueError(f"{path}: expected a tab-separated header 'raw_id<TAB>new id'")
        for line, row in enumerate(reader, start=2):
            if len(row) != 2:
                raise ValueError(f"{path}:{line}: expected two tab-separated columns")
            try:
                raw[int(row[1])] = row[0]
            except ValueError:
                raise ValueError(f"{path}:{line}: the new id {row[1]!r} is not an integer") \
                    from None
    n = len(raw)
    if sorted(raw) != list(range(n)):
        raise ValueError(f"{path}: the new ids are not 0..{n - 1}")
    return [raw[j] for j in range(n)]


class TrainedRecommender:
    r"""A finished run rebuilt for inference (made by :func:`load`).

    Attributes:
        run_dir (Path): the run directory (only read).
        config (dict): the run's configuration.
        model (torch.nn.Module): the recommender at its selected state, eval mode.
        num_users (int): :math:`U`.
        num_items (int): items that can be recommended, added ones included.
        modalities (list): the modalities the model reads (empty: ID-only).
        data_root (Path): the data directory the dataset was loaded from.
    """

    def __init__(self, rebuilt: Any) -> None:
        from .train.cold import grow_with_new_items
        self._rb = rebuilt
        built = rebuilt.built
        td = built.data
        self.run_dir = Path(rebuilt.run_dir)
        self.config = rebuilt.config
        self.data_root = Path(rebuilt.root)
        self.dataset = rebuilt.config["dataset"]
        model = rebuilt.model
        model.eval()
        self._set_eval_inputs()
        self._zero_rows = 0
        if td.cold is not None:
            grown = grow_with_new_items(model, td.cold)
            if grown is None:
                self._zero_rows = td.cold.num_cold
            else:
                model = grown
        self.model = model
        self.device = next((p.device for p in model.parameters()), torch.device("cpu"))
        self.num_users = int(td.num_users)
        n_dataset = int(rebuilt.dataset["item"].num_nodes)
        self._num_dataset_items = n_dataset
        order = built.item_order if built.item_order is not None else torch.arange(n_dataset)
        self._order = order.clone()  # internal row -> public item id
        self._train = td.train_edge_index
        self._valid = td.valid_edge_index
        self._reference = (built.reference_features, built.reference_masks)
        self._widths = {m: int(x.size(1)) for m, x in td.train_features.items()}
        self.modalities = list(self._widths)
        self._cache: Optional[Tuple[Tensor, Tensor]] = None
        self._maps: Dict[str, Optional[List[str]]] = {}

    def _set_eval_inputs(self) -> None:
        """Give the run's model the inputs its evaluation ranks with."""
        td = self._rb.built.data
        if td.train_features and td.eval_inputs_differ():
            dev = next((p.device for p in self._rb.model.parameters()), torch.device("cpu"))
            self._rb.model.set_modality_inputs(
                {m: x.to(dev) for m, x in (td.eval_features or td.train_features).items()},
                {m: x.to(dev) for m, x in (td.eval_masks or td.train_masks).items()})

    # ------------------------------------------------------------ properties
    @property
    def num_items(self) -> int:
        return int(self._order.numel())

    @property
    def supports_new_items(self) -> bool:
        from .train.cold import supports_new_items
        return supports_new_items(self.model)

    def __repr__(self) -> str:
        return (f"TrainedRecommender({self.config['model']}"
                f"{'+' + self.config['plugin'] if self.config.get('plugin') else ''}, "
                f"{self.dataset}, users={self.num_users}, items={self.num_items}, "
                f"run_dir={str(self.run_dir)!r})")

    # ------------------------------------------------------------ embeddings
    @torch.no_grad()
    def _embeddings(self) -> Tuple[Tensor, Tensor]:
        """(user [U, d], item [I, d]) in *internal* item order."""
        if self._cache is None:
            user, item = self.model.embeddings_for_eval()
            if self._zero_rows:  # an ID-only model's new items (see train/cold.py)
                item = torch.cat([item, item.new_zeros(self._zero_rows, item.size(1))], 0)
            if item.size(0) != self.num_items:
                raise RuntimeError(f"{type(self.model).__name__}: embeddings for "
                                   f"{item.size(0)} items, expected {self.num_items}")
            self._cache = (user, item)
        return self._cache

    def _position(self) -> Tensor:
        pos = torch.empty_like(self._order)
        pos[self._order] = torch.arange(self._order.numel())
        return pos

    def user_embeddings(self) -> Tensor:
        r"""User representations :math:`E_U` ``[U, d]`` (row = user id); scores are
        ``user_embeddings() @ item_embeddings().T``."""
        return self._embeddings()[0].detach().cpu()

    def item_embeddings(self) -> Tensor:
        r"""Item representations :math:`E_I` ``[I, d]`` (row = item id, added items last)."""
        return self._embeddings()[1][self._position()].detach().cpu()

    # ------------------------------------------------------------------- ids
    def _mapping(self, kind: str) -> List[str]:
        if kind not in self._maps:
            path = self.data_root / self.dataset / f"{kind[0]}_id_mapping.csv"
            self._maps[kind] = _read_mapping(path) if path.is_file() else None
        m = self._maps[kind]
        if m is None:
            raise ValueError(f"ids='original': the dataset has no {kind[0]}_id_mapping.csv "
                             f"under {self.data_root / self.dataset}; use ids='internal'")
        return m

    def _to_ids(self, values: IdLike, kind: str, ids: str, what: str) -> Tensor:
        r"""User or item ids given by the caller -> LongTensor of dataset ids, validated."""
        if ids not in ("internal", "original"):
            raise ValueError(f"ids: expected 'internal' or 'original', got {ids!r}")
        if isinstance(values, (int, np.integer, str)) and not isinstance(values, bool):
            values = [values]
        if isinstance(values, Tensor):
            values = values.tolist()
        values = list(np.asarray(values, dtype=object).reshape(-1)) \
            if isinstance(values, np.ndarray) else list(values)
        if not values:
            raise ValueError(f"{what}: expected at least one id")
        limit = self.num_users if kind == "user" else self.num_items
        if ids == "original":
            raw = self._mapping(kind)
            index = {r: j for j, r in enumerate(raw)}
            if kind == "item":
                index.update({f"new:{j}": j for j in range(self._num_dataset_items,
                                                          self.num_items)})
            out = []
            for v in values:
                if str(v) not in index:
                    raise ValueError(f"{what}: unknown original {kind} id {v!r} (not in "
                                     f"{kind[0]}_id_mapping.csv)")
                out.append(index[str(v)])
            return torch.tensor(out, dtype=torch.long)
        out = []
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"{what}: expected integer {kind} ids, got {v!r} "
                                 "(raw ids need ids='original')")
            if not 0 <= int(v) < limit:
                raise ValueError(f"{what}: unknown {kind} id {int(v)} (expected 0..{limit - 1})")
            out.append(int(v))
        return torch.tensor(out, dtype=torch.long)

    def user_ids(self, users: IdLike, ids: str = "original") -> Tensor:
        r"""User ids (raw ids of ``u_id_mapping.csv`` with ``ids="original"``) ->
        validated dataset user ids."""
        return self._to_ids(users, "user", ids, "users")

    def item_ids(self, items: IdLike, ids: str = "original") -> Tensor:
        r"""Item ids (raw ids with ``ids="original"``) -> validated dataset item ids."""
        return self._to_ids(items, "item", ids, "items")

    def original_item_ids(self, items: Tensor) -> np.ndarray:
        r"""Dataset item ids -> raw ids of ``i_id_mapping.csv`` (strings; added items
        ``"new:<id>"``, empty slots ``""``)."""
        raw = self._mapping("item")
        flat = [("" if i < 0 else raw[i] if i < len(raw) else f"new:{i}")
                for i in items.reshape(-1).tolist()]
        return np.asarray(flat, dtype=object).reshape(tuple(items.shape))

    def original_user_ids(self, users: Tensor) -> np.ndarray:
        raw = self._mapping("user")
        return np.asarray([raw[u] for u in users.reshape(-1).tolist()],
                          dtype=object).reshape(tuple(users.shape))

    # --------------------------------------------------------------- ranking
    @torch.no_grad()
    def recommend(self, users: IdLike, k: int = 10, exclude_seen: bool = True,
                  exclude_valid: bool = False, candidates: Optional[IdLike] = None,
                  ids: str = "internal") -> Tuple[Any, Tensor]:
        r"""Top-:math:`k` items per user, ranked by the chunked top-:math:`k` of
        :func:`pyg_mmrec.metrics.chunked_topk` (the evaluator's ranking).

        Args:
            users: user ids (int, list, tensor).
            k (int): items per user, :math:`1 \le k \le` number of candidates.
            exclude_seen (bool): never recommend a user's training items.
            exclude_valid (bool): nor their validation items (as the test
                evaluation does).
            candidates: restrict the ranking to these item ids (repeats dropped;
                equal scores are ordered as the candidates are given).
            ids (str): ``"internal"`` (dataset ids) or ``"original"`` (raw ids
                of the id mapping files, for ``users``, ``candidates`` and the result).

        Returns:
            ``(items [n, k], scores [n, k])``: a LongTensor (``ids="internal"``)
            or an object array of raw ids (``"original"``); when fewer than
            :math:`k` candidates remain for a user, trailing slots have score
            :math:`-\infty` and item ``-1`` (``""``).
        """
        from .metrics import chunked_topk
        u = self._to_ids(users, "user", ids, "users")
        cand = None
        if candidates is not None:
            cand = self._to_ids(candidates, "item", ids, "candidates")
            # distinct, in the given order (ties are broken by candidate position)
            first = {}
            for j, c in enumerate(cand.tolist()):
                first.setdefault(c, j)
            cand = cand[sorted(first.values())]
        n_cand = self.num_items if cand is None else int(cand.numel())
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n_cand:
            raise ValueError(f"k: expected an integer in 1..{n_cand} (the number of "
                             f"{'candidates' if cand is not None else 'items'}), got {k!r}")
        user_emb, item_emb = self._embeddings()
        exclude = []
        if exclude_seen:
            exclude.append(self._train)
        if exclude_valid:
            exclude.append(self._valid)
        pos = self._position()
        cand_internal = None if cand is None else pos[cand].to(item_emb.device)
        items_out, scores_out = [], []
        for _, top, sc in chunked_topk(user_emb, item_emb, u.to(user_emb.device), int(k),
                                       exclude=[e.to(user_emb.device) for e in exclude] or None,
                                       candidates=cand_internal):
            items_out.append(top.cpu())
            scores_out.append(sc.cpu())
        top = torch.cat(items_out)
        scores = torch.cat(scores_out)
        public = self._order[top.clamp(min=0)]
        public[torch.isneginf(scores)] = -1
        if ids == "original":
            return self.original_item_ids(public), scores
        return public, scores

    @torch.no_grad()
    def score(self, users: IdLike, items: IdLike, ids: str = "internal") -> Tensor:
        r"""Scores of every (user, item) pair: ``[len(users), len(items)]``."""
        u = self._to_ids(users, "user", ids, "users")
        i = self._to_ids(items, "item", ids, "items")
        user_emb, item_emb = self._embeddings()
        rows = self._position()[i].to(item_emb.device)
        return (user_emb[u.to(user_emb.device)] @ item_emb[rows].t()).cpu()

    @torch.no_grad()
    def evaluate(self, split: str = "valid") -> Dict[str, float]:
        r"""The run's evaluation of ``split`` (``"valid"``/``"test"``), recomputed
        by the trainer's own code on the run's selected state; equals the logged
        metrics of ``result.json``. Items added with :meth:`add_items` take no part."""
        try:
            return self._rb.trainer.evaluate(split)
        finally:  # the trainer leaves the training inputs in place
            self._set_eval_inputs()

    # ------------------------------------------------------------- new items
    def add_items(self, features: Dict[str, Any], masks: Optional[Dict[str, Any]] = None
                  ) -> Tensor:
        r"""Places new items (no interactions, only content) in the catalog.

        What an item without interactions gets is the model's
        ``add_items`` (its content path; see the model's documentation). A
        modality absent from ``features`` is missing for the new items; a
        ``masks[m]`` row ``False`` marks it missing for one item. Missing rows
        are filled by the run's rule (:func:`pyg_mmrec.train.cold.fill_new_item_features`).

        Args:
            features: ``{modality: [n, F_m]}`` (float, finite, width as in training).
            masks: optional ``{modality: bool [n]}``.

        Returns:
            LongTensor ``[n]``: the new items' ids (the next free ids).

        Raises:
            ValueError: an ID-only model, an unknown modality, a wrong width or
                row count, NaN/inf values, or a bad mask.
        """
        from .train.cold import fill_new_item_features, supports_new_items
        if not self.modalities or not supports_new_items(self.model):
            raise ValueError(f"add_items: {self.config['model']} is an ID-only model: it has a "
                             "learned row per training item and no way to represent an item "
                             "it never saw from its content; train a content model (VBPR, "
                             "FREEDOM, I3-MRec, ...) to place new items")
        if not isinstance(features, dict) or not features:
            raise ValueError(f"features: expected a dict {{modality: [n, F]}} with some of "
                             f"{self.modalities}, got {features!r:.80}")
        masks = dict(masks or {})
        for name, given in (("features", features), ("masks", masks)):
            unknown = sorted(set(given) - set(self.modalities))
            if unknown:
                raise ValueError(f"{name}: unknown modality {unknown[0]!r} (the run's "
                                 f"modalities: {', '.join(self.modalities)})")
        for m in masks:
            if m not in features:
                raise ValueError(f"masks['{m}']: no features['{m}'] given (leave the modality "
                                 "out of both to mark it missing)")
        xs: Dict[str, Tensor] = {}
        n = None
        for m, x in features.items():
            x = torch.as_tensor(x)
            if not x.is_floating_point() or x.dim() != 2 or x.size(1) != self._widths[m]:
                raise ValueError(f"features['{m}']: expected a float array [n, "
                                 f"{self._widths[m]}] (the training width), got "
                                 f"{x.dtype} {list(x.shape)}")
            if n is not None and x.size(0) != n:
                raise ValueError(f"features['{m}']: {x.size(0)} rows, but other modalities "
                                 f"have {n}")
            n = int(x.size(0))
            if not bool(torch.isfinite(x).all()):
                bad = int((~torch.isfinite(x)).any(1).nonzero()[0])
                raise ValueError(f"features['{m}']: row {bad} holds NaN or inf")
            xs[m] = x.to(torch.float32)
        if n == 0:
            raise ValueError("features: expected at least one row")
        mk: Dict[str, Tensor] = {}
        for m in self.modalities:
            if m not in xs:
                xs[m] = torch.zeros(n, self._widths[m])
                mk[m] = torch.zeros(n, dtype=torch.bool)
                continue
            given = masks.get(m)
            if given is None:
                mk[m] = torch.ones(n, dtype=torch.bool)
                continue
            t = torch.as_tensor(given)
            if t.dtype != torch.bool or tuple(t.shape) != (n,):
                raise ValueError(f"masks['{m}']: expected a bool array of shape [{n}], got "
                                 f"{t.dtype} {list(t.shape)}")
            mk[m] = t
        ref_x, ref_m = self._reference
        filled = fill_new_item_features(xs, mk, ref_x, ref_m, str(self.config["fill"]))
        dev = self.device
        self.model.add_items({m: x.to(dev) for m, x in filled.items()},
                             {m: t.to(dev) for m, t in mk.items()})
        start = self.num_items
        new_ids = torch.arange(start, start + n)
        # added items sit after every existing row (ID-only zero rows cannot occur here)
        self._order = torch.cat([self._order, new_ids])
        self._cache = None
        return new_ids


def load(run_dir: Union[str, Path], root: Optional[Union[str, Path]] = None,
         device: str = "cpu") -> TrainedRecommender:
    r"""Rebuilds a finished run for inference at its validation-selected state.

    Args:
        run_dir: a finished run directory (``checkpoint.pt`` and ``result.json``).
        root: the data directory holding the run's dataset (default: the one
            the run recorded in ``result.json``, else ``../shared/data``).
        device: ``"cpu"`` or ``"cuda"``.

    Nothing is written into ``run_dir``.

    Raises:
        FileNotFoundError: no such run, an unfinished run (finish it with
            ``--resume``), or the dataset is not found.
        ValueError: a damaged checkpoint, one of another code version or of a
            model this code builds differently.
    """
    from .train.run import rebuild_run
    return TrainedRecommender(rebuild_run(run_dir, root=root, device=device))


__all__ = ["load", "TrainedRecommender"]
