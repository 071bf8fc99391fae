r"""Builds an MMRec-format multimodal dataset from a raw catalog.

Input: an interaction file (CSV/TSV, optionally gzipped: user, item and
optionally rating and timestamp), an item file with one or more text columns,
and a folder of item images named ``<item id>.jpg|png``. Output, in
``DIR/NAME/``:

* ``NAME.inter`` - tab-separated ``userID itemID rating timestamp x_label``,
  ids re-indexed from 0, ``x_label`` 0/1/2 = train/valid/test (MMRec layout);
* ``u_id_mapping.csv`` / ``i_id_mapping.csv`` - tab-separated raw id -> new id
  (MMRec's file names);
* ``text_feat.npy`` / ``text_mask.npy`` and ``image_feat.npy`` /
  ``image_mask.npy`` - one float32 row and one presence flag per item; rows of
  missing items hold the mean of the present rows;
* ``build_info.json`` - the settings and counts of the run.

Steps: read (column names auto-detected) -> drop repeated (user, item) pairs
(the earliest is kept) -> iterative :math:`k`-core filter -> re-index (raw ids
in natural order) -> per-user split (by time when timestamps exist: every
user's first 80% of interactions train, next 10% valid, last 10% test; else
random) -> encode features (resumable, see :mod:`pyg_mmrec.data.features`).

Command line: ``python -m pyg_mmrec build-dataset --interactions FILE --items
FILE --images DIR --out DIR/NAME`` (or ``python -m
pyg_mmrec.data.build_dataset ...``).
"""
import argparse
import csv
import gzip
import io
import json
import logging
import os
import os.path as osp
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import features as F

log = logging.getLogger("pyg_mmrec.data.build_dataset")

# Normalised (lower case, no '_', '-', ' ') header names recognised per role.
USER_ALIASES = ("userid", "user", "uid", "reviewerid", "customerid", "visitorid")
ITEM_ALIASES = ("itemid", "item", "iid", "asin", "parentasin", "movieid", "movie",
                "productid", "product")
RATING_ALIASES = ("rating", "overall", "score", "stars", "rate")
TIME_ALIASES = ("timestamp", "unixreviewtime", "time", "ts", "unixtime", "datetime", "date")
TEXT_ALIASES = ("text",)
TEXT_PART_ALIASES = ("title", "name", "description", "desc", "overview", "plot")

csv.field_size_limit(min(sys.maxsize, 2 ** 31 - 1))


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name.strip().lower())


# --------------------------------------------------------------------------- reading
def _open_text(path: str) -> io.TextIOBase:
    if not osp.isfile(path):
        raise FileNotFoundError(f"file not found: '{path}'")
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, "r", encoding="utf-8", newline="")


def _detect_sep(path: str, first_line: str) -> str:
    base = path[:-3] if path.endswith(".gz") else path
    ext = osp.splitext(base)[1].lower()
    if ext in (".tsv", ".tab", ".inter"):
        return "\t"
    if ext == ".csv":
        return ","
    if "::" in first_line:
        return "::"
    counts = {s: first_line.count(s) for s in ("\t", ",", ";", "|")}
    sep, n = max(counts.items(), key=lambda kv: kv[1])
    if n == 0:
        raise ValueError(f"{path}: cannot detect the column separator from the first line "
                         f"{first_line[:80]!r}; pass it explicitly (--sep)")
    return sep


def read_table(path: str, sep: Optional[str] = None) -> Tuple[List[List[str]], str]:
    r"""Reads a delimited text file (``.gz`` allowed) into rows of strings.

    ``sep`` is detected from the extension (``.tsv``/``.inter`` tab, ``.csv``
    comma) or the first line when :obj:`None`; ``"::"`` (MovieLens-1M) works.
    Returns ``(rows, sep)``; blank lines are skipped.
    """
    with _open_text(path) as fh:
        first = fh.readline()
        if not first.strip():
            raise ValueError(f"{path}: the file is empty (expected a header or data row)")
        sep = sep if sep is not None else _detect_sep(path, first)
        fh.seek(0)
        if len(sep) == 1:
            rows = [r for r in csv.reader(fh, delimiter=sep) if r]
        else:
            rows = [ln.rstrip("\r\n").split(sep) for ln in fh if ln.strip()]
    return rows, sep


def _find_column(header: List[str], spec: Optional[str], aliases: Sequence[str], role: str,
                 path: str, required: bool) -> Optional[int]:
    if spec is not None:
        if spec in header:
            return header.index(spec)
        normed = [_norm(h) for h in header]
        if _norm(spec) in normed:
            return normed.index(_norm(spec))
        raise ValueError(f"{path}: {role} column '{spec}' not found; the header has "
                         f"{header}")
    normed = [_norm(h) for h in header]
    for a in aliases:
        if a in normed:
            return normed.index(a)
    if required:
        raise ValueError(f"{path}: cannot find the {role} column among {header}; name it "
                         f"with --{role}-column (recognised names: {', '.join(aliases)})")
    return None


def _parse_float(values: Sequence[str], path: str, what: str, col: int,
                 line_offset: int) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.float64)
    except ValueError:
        for r, v in enumerate(values):
            try:
                float(v)
            except ValueError:
                raise ValueError(f"{path}: line {r + line_offset}: {what} (column {col + 1}) "
                                 f"is {v!r}; expected a number") from None
        raise


def _parse_time(values: Sequence[str], path: str, col: int, line_offset: int) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.float64)
    except ValueError:
        pass
    out = np.empty(len(values), dtype=np.float64)
    for r, v in enumerate(values):
        try:
            out[r] = float(v)
        except ValueError:
            try:  # ISO 8601 dates/times, e.g. 2014-03-01 or 2014-03-01T12:00:00Z
                out[r] = datetime.fromisoformat(v.strip().replace("Z", "+00:00")).timestamp()
            except ValueError:
                raise ValueError(f"{path}: line {r + line_offset}: timestamp (column "
                                 f"{col + 1}) is {v!r}; expected a number or an ISO 8601 "
                                 f"date") from None
    return out


@dataclass
class Interactions:
    r"""Raw interactions: parallel arrays, one entry per row of the file."""
    user: np.ndarray                     # str [E]
    item: np.ndarray                     # str [E]
    rating: Optional[np.ndarray] = None  # float64 [E]
    timestamp: Optional[np.ndarray] = None  # float64 [E]
    columns: Dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.user)

    def subset(self, keep: np.ndarray) -> "Interactions":
        return Interactions(self.user[keep], self.item[keep],
                            None if self.rating is None else self.rating[keep],
                            None if self.timestamp is None else self.timestamp[keep],
                            self.columns)


def read_interactions(path: str, user_column: Optional[str] = None,
                      item_column: Optional[str] = None, rating_column: Optional[str] = None,
                      timestamp_column: Optional[str] = None,
                      sep: Optional[str] = None) -> Interactions:
    r"""Reads user-item interactions from a CSV/TSV file.

    With a header row, the columns are found by name (``--*-column`` or the
    usual names: userID/user_id/reviewerID, itemID/item_id/asin/movieId,
    rating/overall, timestamp/unixReviewTime/time). Without one (e.g.
    MovieLens ``u.data``), the columns are taken as user, item[, rating[,
    timestamp]] or by 0-based position given as ``--user-column 0`` etc.
    Extra columns (such as an existing ``x_label``) are ignored.
    """
    rows, sep = read_table(path, sep)
    specs = {"user": user_column, "item": item_column, "rating": rating_column,
             "timestamp": timestamp_column}
    positional = all(s is None or s.isdigit() for s in specs.values())
    head = rows[0]
    normed = {_norm(h) for h in head}
    known = set(USER_ALIASES + ITEM_ALIASES + RATING_ALIASES + TIME_ALIASES)
    has_header = bool(normed & known) or any(
        s is not None and not s.isdigit() for s in specs.values())
    if has_header:
        if positional and any(s is not None for s in specs.values()):
            raise ValueError(f"{path}: has a header row {head}; name the columns instead of "
                             f"giving positions")
        idx = {
            "user": _find_column(head, user_column, USER_ALIASES, "user", path, True),
            "item": _find_column(head, item_column, ITEM_ALIASES, "item", path, True),
            "rating": _find_column(head, rating_column, RATING_ALIASES, "rating", path, False),
            "timestamp": _find_column(head, timestamp_column, TIME_ALIASES, "timestamp", path,
                                      False),
        }
        names = {k: head[v] for k, v in idx.items() if v is not None}
        body, line_offset = rows[1:], 2
    else:
        width = len(head)
        if any(s is not None for s in specs.values()):
            idx = {k: (int(s) if s is not None else None) for k, s in specs.items()}
            if idx["user"] is None or idx["item"] is None:
                raise ValueError(f"{path}: has no header row; give both --user-column and "
                                 f"--item-column as 0-based positions")
        elif 2 <= width <= 4:
            idx = {"user": 0, "item": 1, "rating": 2 if width > 2 else None,
                   "timestamp": 3 if width > 3 else None}
            log.info("%s: no header row recognised; reading columns as user, item%s", path,
                     {2: "", 3: ", rating", 4: ", rating, timestamp"}[width])
        else:
            raise ValueError(f"{path}: no header row recognised in {head[:6]} and {width} "
                             f"columns; add a header (userID, itemID, rating, timestamp) or "
                             f"give the columns by position (--user-column 0 ...)")
        for k, v in idx.items():
            if v is not None and v >= width:
                raise ValueError(f"{path}: {k} column position {v} is out of range for "
                                 f"{width} columns")
        names = {k: f"column {v}" for k, v in idx.items() if v is not None}
        body, line_offset = rows, 1
    if not body:
        raise ValueError(f"{path}: no interaction rows")
    need = max(v for v in idx.values() if v is not None) + 1
    for r, row in enumerate(body):
        if len(row) < need:
            raise ValueError(f"{path}: line {r + line_offset}: {len(row)} fields, expected at "
                             f"least {need} (separator {sep!r})")
    cols = list(zip(*body))
    user = np.asarray([s.strip() for s in cols[idx["user"]]], dtype=object)
    item = np.asarray([s.strip() for s in cols[idx["item"]]], dtype=object)
    for what, arr in (("user", user), ("item", item)):
        empty = np.flatnonzero(arr == "")
        if empty.size:
            raise ValueError(f"{path}: line {empty[0] + line_offset}: empty {what} id "
                             f"({empty.size} rows in total)")
    rating = (_parse_float(cols[idx["rating"]], path, "rating", idx["rating"], line_offset)
              if idx["rating"] is not None else None)
    ts = (_parse_time(cols[idx["timestamp"]], path, idx["timestamp"], line_offset)
          if idx["timestamp"] is not None else None)
    return Interactions(user, item, rating, ts, names)


def read_item_texts(path: str, id_column: Optional[str] = None,
                    text_columns: Optional[Sequence[str]] = None, sep: Optional[str] = None,
                    text_sep: str = " ") -> Dict[str, str]:
    r"""Reads one text per item from a CSV/TSV file with a header row.

    ``text_columns`` (default: ``text`` if present, else the title/name and
    description/plot columns found) are joined with ``text_sep``; blank parts
    are skipped, so an item whose parts are all blank has no text.
    """
    rows, _ = read_table(path, sep)
    head = rows[0]
    i_id = _find_column(head, id_column, ITEM_ALIASES + ("id",), "item-id", path, True)
    if text_columns:
        t_idx = [_find_column(head, c, (), "text", path, True) for c in text_columns]
    else:
        t = _find_column(head, None, TEXT_ALIASES, "text", path, False)
        if t is not None:
            t_idx = [t]
        else:
            normed = [_norm(h) for h in head]
            t_idx = [normed.index(a) for a in TEXT_PART_ALIASES if a in normed]
            if not t_idx:
                raise ValueError(f"{path}: no text column found among {head}; name it with "
                                 f"--text-column (recognised: text, title, description, ...)")
    log.info("%s: item text from column(s) %s", path, [head[j] for j in t_idx])
    texts: Dict[str, str] = {}
    dup = 0
    for r, row in enumerate(rows[1:]):
        if len(row) <= max(t_idx + [i_id]):
            raise ValueError(f"{path}: line {r + 2}: {len(row)} fields, expected "
                             f"{len(head)} like the header")
        key = row[i_id].strip()
        parts = [row[j].strip() for j in t_idx if row[j].strip()]
        if key in texts:
            dup += 1
        texts[key] = text_sep.join(parts)
    if dup:
        log.warning("%s: %d repeated item ids; the last row of each wins", path, dup)
    return texts


# --------------------------------------------------------------------------- processing
def drop_duplicates(inter: Interactions) -> Interactions:
    r"""Keeps one row per (user, item) pair: the earliest by timestamp, else the
    first in the file (the MMRec loaders reject repeated pairs)."""
    _, u = np.unique(inter.user.astype(str), return_inverse=True)
    _, i = np.unique(inter.item.astype(str), return_inverse=True)
    key = u.reshape(-1).astype(np.int64) * (int(i.max()) + 1) + i.reshape(-1)
    order = (np.argsort(inter.timestamp, kind="stable") if inter.timestamp is not None
             else np.arange(len(inter)))
    _, first = np.unique(key[order], return_index=True)
    keep = np.zeros(len(inter), dtype=bool)
    keep[order[first]] = True
    n_dup = len(inter) - int(keep.sum())
    if n_dup:
        log.info("dropped %d repeated (user, item) rows (kept the earliest)", n_dup)
    return inter.subset(keep)


def k_core(user: np.ndarray, item: np.ndarray, k: int) -> np.ndarray:
    r"""Iterative :math:`k`-core: removes users and items with fewer than
    :math:`k` interactions until none is left. ``user``/``item`` are integer
    codes. Returns the boolean mask of kept rows."""
    keep = np.ones(len(user), dtype=bool)
    if k <= 1:
        return keep
    nu, ni = int(user.max()) + 1, int(item.max()) + 1
    while True:
        du = np.bincount(user[keep], minlength=nu)
        di = np.bincount(item[keep], minlength=ni)
        bad = keep & ((du[user] < k) | (di[item] < k))
        if not bad.any():
            return keep
        keep &= ~bad


def reindex(ids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    r"""Maps raw ids to ``0..N-1`` in natural order (numerically when every id
    is an integer, else as strings). Returns ``(new_ids int64 [E], raw_of_new
    str [N])``."""
    uniq, inv = np.unique(ids.astype(str), return_inverse=True)  # lexicographic
    if all(re.fullmatch(r"-?\d+", u) for u in uniq):
        perm = np.argsort(uniq.astype(np.int64), kind="stable")
        new_of_lex = np.empty(len(uniq), dtype=np.int64)
        new_of_lex[perm] = np.arange(len(uniq))
        return new_of_lex[inv.reshape(-1)], uniq[perm]
    return inv.reshape(-1).astype(np.int64), uniq


def split_per_user(user: np.ndarray, ratios: Sequence[float] = (0.8, 0.1, 0.1),
                   timestamp: Optional[np.ndarray] = None, seed: int = 0) -> np.ndarray:
    r"""Per-user train/valid/test labels (``x_label`` 0/1/2).

    Each user's :math:`n_u` interactions are ordered by time (ties keep file
    order) when ``timestamp`` is given, else shuffled with ``seed``; the first
    :math:`\mathrm{round}(r_0 n_u)` are train, the next
    :math:`\mathrm{round}(r_1 n_u)` valid and the rest test (rounding half to
    even; the shipped ``ml100k_mm`` split follows this rule exactly). A user
    with :math:`n_u \ge 3` gets at least one valid and one test interaction
    (taken from train), so a 5-core user splits 3/1/1 rather than 4/0/1.
    """
    r = np.asarray(ratios, dtype=np.float64)
    if r.shape != (3,) or (r < 0).any() or abs(r.sum() - 1.0) > 1e-6:
        raise ValueError(f"split ratios must be three non-negative numbers summing to 1, "
                         f"got {list(ratios)}")
    key = (timestamp if timestamp is not None
           else np.random.default_rng(seed).permutation(len(user)))
    order = np.lexsort((key, user))  # stable: equal times keep file order
    counts = np.bincount(user)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(user)) - start[user[order]]
    n = counts[user[order]].astype(np.float64)
    n_train = np.round(r[0] * n)
    n_valid = np.minimum(np.round(r[1] * n), n - n_train)
    # Small users (e.g. 5-core: round(0.5) = 0) would get no valid/test item;
    # from 3 interactions on, each non-empty split gets at least one, taken from train.
    small = n >= 3
    give_v = small & (r[1] > 0) & (n_valid == 0)
    n_valid = n_valid + give_v
    n_train = n_train - give_v
    give_t = small & (r[2] > 0) & (n - n_train - n_valid == 0)
    n_train = n_train - give_t
    lab_sorted = np.where(rank < n_train, 0, np.where(rank < n_train + n_valid, 1, 2))
    label = np.empty(len(user), dtype=np.int64)
    label[order] = lab_sorted
    return label


def _fmt_numbers(x: np.ndarray) -> List[str]:
    if np.all(np.isfinite(x)) and np.all(x == np.round(x)):
        return [str(v) for v in x.astype(np.int64)]
    return [repr(float(v)) for v in x]


def _write_text_atomic(path: str, text: str) -> None:
    F._atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_inter(path: str, user: np.ndarray, item: np.ndarray, rating: np.ndarray,
                timestamp: np.ndarray, label: np.ndarray) -> None:
    r"""Writes the MMRec ``.inter`` file, rows sorted by user, split and time."""
    order = np.lexsort((timestamp, label, user))
    cols = [[str(v) for v in user[order]], [str(v) for v in item[order]],
            _fmt_numbers(rating[order]), _fmt_numbers(timestamp[order]),
            [str(v) for v in label[order]]]
    lines = ["userID\titemID\trating\ttimestamp\tx_label"]
    lines += ["\t".join(t) for t in zip(*cols)]
    _write_text_atomic(path, "\n".join(lines) + "\n")


def _write_mapping(path: str, raw: np.ndarray, new_name: str) -> None:
    body = "".join(f"{r}\t{j}\n" for j, r in enumerate(raw))
    _write_text_atomic(path, f"raw_id\t{new_name}\n" + body)


# --------------------------------------------------------------------------- driver
def build_dataset(interactions: str, out: str, items: Optional[str] = None,
                  images: Optional[str] = None, *, text_encoder: Any = None,
                  image_encoder: Any = None, k: int = 5, split: str = "auto",
                  ratios: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0,
                  user_column: Optional[str] = None, item_column: Optional[str] = None,
                  rating_column: Optional[str] = None, timestamp_column: Optional[str] = None,
                  item_id_column: Optional[str] = None,
                  text_columns: Optional[Sequence[str]] = None, text_sep: str = " ",
                  sep: Optional[str] = None, min_rating: Optional[float] = None,
                  batch_size: int = 32, device: str = "cpu", progress: bool = True,
                  keep_cache: bool = False) -> Dict[str, Any]:
    r"""Builds ``out/<name>.inter`` plus text/image features and masks (see the
    module docstring). ``out`` is ``DIR/NAME``. Text is encoded when ``items``
    is given, images when ``images`` is given; ``text_encoder`` /
    ``image_encoder`` accept what :func:`~pyg_mmrec.data.features.resolve_text_encoder`
    / :func:`~pyg_mmrec.data.features.resolve_image_encoder` accept.

    Returns the summary that is also written to ``build_info.json``.
    """
    t0 = time.time()
    out = osp.normpath(out)
    name = osp.basename(out)
    if not name or name in (".", ".."):
        raise ValueError(f"--out must be DIR/NAME (the dataset folder), got '{out}'")
    if split not in ("auto", "temporal", "random"):
        raise ValueError(f"split must be auto|temporal|random, got '{split}'")
    if k < 0:
        raise ValueError(f"k-core must be >= 0, got {k}")
    if images is not None and not osp.isdir(images):
        raise FileNotFoundError(f"image folder not found: '{images}'")
    if items is not None and not osp.isfile(items):
        raise FileNotFoundError(f"item file not found: '{items}'")

    inter = read_interactions(interactions, user_column, item_column, rating_column,
                              timestamp_column, sep)
    n_raw = len(inter)
    log.info("%s: %d rows, columns %s", interactions, n_raw, inter.columns)
    if min_rating is not None:
        if inter.rating is None:
            raise ValueError("min_rating given but the interaction file has no rating column")
        inter = inter.subset(inter.rating >= min_rating)
    if split == "temporal" and inter.timestamp is None:
        raise ValueError(f"--split temporal needs timestamps, but {interactions} has no "
                         f"timestamp column (use --timestamp-column or --split random)")
    temporal = inter.timestamp is not None and split != "random"
    inter = drop_duplicates(inter)

    # k-core on integer codes (string comparisons only once).
    _, u_code = np.unique(inter.user.astype(str), return_inverse=True)
    _, i_code = np.unique(inter.item.astype(str), return_inverse=True)
    keep = k_core(u_code, i_code, k)
    if not keep.any():
        raise ValueError(f"the {k}-core of {interactions} is empty; lower --k-core")
    if not keep.all():
        log.info("%d-core: kept %d of %d interactions", k, int(keep.sum()), len(keep))
    inter = inter.subset(keep)

    user, raw_users = reindex(inter.user)
    item, raw_items = reindex(inter.item)
    num_users, num_items = len(raw_users), len(raw_items)
    ts = inter.timestamp if inter.timestamp is not None else np.zeros(len(inter))
    rating = inter.rating if inter.rating is not None else np.ones(len(inter))
    label = split_per_user(user, ratios, ts if temporal else None, seed)

    os.makedirs(out, exist_ok=True)
    write_inter(osp.join(out, f"{name}.inter"), user, item, rating, ts, label)
    _write_mapping(osp.join(out, "u_id_mapping.csv"), raw_users, "userID")
    _write_mapping(osp.join(out, "i_id_mapping.csv"), raw_items, "itemID")
    counts = np.bincount(label, minlength=3)
    info: Dict[str, Any] = {
        "name": name, "interactions_file": osp.abspath(interactions), "raw_rows": n_raw,
        "num_users": num_users, "num_items": num_items, "num_interactions": int(len(label)),
        "train": int(counts[0]), "valid": int(counts[1]), "test": int(counts[2]),
        "k_core": k, "split": "temporal" if temporal else "random", "ratios": list(ratios),
        "seed": seed, "columns": inter.columns, "modalities": {},
    }
    log.info("%s: %d users, %d items, %d interactions (%d/%d/%d train/valid/test, %s split)",
             name, num_users, num_items, len(label), *counts.tolist(), info["split"])

    cache_root = osp.join(out, ".build_cache")
    keys = [str(x) for x in raw_items]
    if items is not None:
        texts = read_item_texts(items, item_id_column, text_columns, sep=None,
                                text_sep=text_sep)
        unknown = sum(1 for x in keys if x not in texts)
        if unknown:
            log.warning("text: %d of %d items are not in %s (text_mask False)", unknown,
                        num_items, items)
        feat, mask = F.encode_texts([texts.get(x) for x in keys], text_encoder, batch_size,
                                    osp.join(cache_root, "text"), device, progress)
        F.save_npy_atomic(osp.join(out, "text_feat.npy"), feat)
        F.save_npy_atomic(osp.join(out, "text_mask.npy"), mask)
        info["modalities"]["text"] = {"dim": int(feat.shape[1]), "present": int(mask.sum()),
                                      "missing": int((~mask).sum()),
                                      "not_in_item_file": unknown}
    if images is not None:
        paths = F.find_images(images, keys)
        feat, mask = F.encode_images(paths, image_encoder, batch_size,
                                     osp.join(cache_root, "image"), device, progress)
        F.save_npy_atomic(osp.join(out, "image_feat.npy"), feat)
        F.save_npy_atomic(osp.join(out, "image_mask.npy"), mask)
        n_absent = sum(p is None for p in paths)
        info["modalities"]["image"] = {"dim": int(feat.shape[1]), "present": int(mask.sum()),
                                       "missing": int((~mask).sum()), "no_file": n_absent,
                                       "unreadable": int((~mask).sum()) - n_absent}
    if not keep_cache and osp.isdir(cache_root):
        shutil.rmtree(cache_root)
    info["seconds"] = round(time.time() - t0, 2)
    _write_text_atomic(osp.join(out, "build_info.json"), json.dumps(info, indent=2) + "\n")
    return info


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    r"""Adds the ``build-dataset`` options to ``parser``."""
    p = parser
    p.add_argument("--interactions", required=True,
                   help="CSV/TSV(.gz) with user, item[, rating][, timestamp]")
    p.add_argument("--items", default=None, help="CSV/TSV with an item id and text column(s)")
    p.add_argument("--images", default=None, help="folder of <item id>.jpg|png images")
    p.add_argument("--out", required=True, help="output dataset folder DIR/NAME")
    p.add_argument("--split", choices=("auto", "temporal", "random"), default="auto",
                   help="per-user split; auto = temporal when timestamps exist")
    p.add_argument("--split-ratios", type=float, nargs=3, default=(0.8, 0.1, 0.1),
                   metavar=("TRAIN", "VALID", "TEST"))
    p.add_argument("--k-core", type=int, default=5, help="iterative k-core (0 or 1: off)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random split")
    p.add_argument("--min-rating", type=float, default=None,
                   help="keep only interactions with rating >= this")
    p.add_argument("--sep", default=None, help="column separator (default: auto)")
    p.add_argument("--user-column", default=None, help="name (or 0-based position)")
    p.add_argument("--item-column", default=None, help="name (or 0-based position)")
    p.add_argument("--rating-column", default=None)
    p.add_argument("--timestamp-column", default=None)
    p.add_argument("--item-id-column", default=None, help="item id column of --items")
    p.add_argument("--text-column", action="append", default=None,
                   help="text column of --items (repeat to join several)")
    p.add_argument("--text-sep", default=" ", help="joins several text columns")
    p.add_argument("--text-encoder", default=None,
                   help=f"sentence-transformers name or folder (default {F.DEFAULT_TEXT_ENCODER})")
    p.add_argument("--image-encoder", default=None,
                   help=f"image encoder (default {F.DEFAULT_IMAGE_ENCODER})")
    p.add_argument("--batch-size", type=int, default=32,
                   help="items per encoded (and cached) batch")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--keep-cache", action="store_true",
                   help="keep the per-batch cache (.build_cache) after success")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(args: argparse.Namespace) -> Dict[str, Any]:
    r"""Runs :func:`build_dataset` from parsed :func:`add_arguments` options."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads is not None:
        import torch
        torch.set_num_threads(args.threads)
    info = build_dataset(
        args.interactions, args.out, args.items, args.images,
        text_encoder=args.text_encoder, image_encoder=args.image_encoder, k=args.k_core,
        split=args.split, ratios=tuple(args.split_ratios), seed=args.seed,
        user_column=args.user_column, item_column=args.item_column,
        rating_column=args.rating_column, timestamp_column=args.timestamp_column,
        item_id_column=args.item_id_column, text_columns=args.text_column,
        text_sep=args.text_sep, sep=args.sep, min_rating=args.min_rating,
        batch_size=args.batch_size, device=args.device, progress=not args.no_progress,
        keep_cache=args.keep_cache)
    print(json.dumps(info, indent=2))
    return info


if __name__ == "__main__":
    _p = argparse.ArgumentParser(prog="python -m pyg_mmrec.data.build_dataset",
                                 description=__doc__.split("\n\n")[0])
    main(add_arguments(_p).parse_args())
