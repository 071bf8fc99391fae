r"""Reading and validating the raw files of an MMRec-format dataset, with NumPy only.

The on-disk layout (see :file:`docs/data.md`)::

    <root>/<name>/<name>.inter        tab-separated, header
                                      userID itemID rating timestamp x_label
    <root>/<name>/<modality>_feat.npy float, one row per item
    <root>/<name>/<modality>_mask.npy optional bool [num_items]; False = the
                                      modality is (naturally) missing

This module imports neither PyTorch nor PyG, so that the command line can
check a dataset and report a bad file within a fraction of a second, before
any heavy import. :class:`pyg_mmrec.data.MMRecDataset` builds its graph from
:func:`parse_raw`. Every problem raises :class:`~pyg_mmrec.errors.DataError`
naming the file and, in the interaction file, the line (lines count from 1,
the header being line 1).
"""
from __future__ import annotations

import hashlib
import logging
import os
import os.path as osp
from typing import Dict, List, Optional, Tuple

import numpy as np

from pyg_mmrec.errors import DataError

log = logging.getLogger("pyg_mmrec.data")

#: bump when the processed format changes, so stale caches are ignored
PROCESSED_VERSION = 1

REQUIRED_COLUMNS = ("userID", "itemID", "x_label")
SPLITS = ("train", "valid", "test")


class DataFileNotFoundError(DataError, FileNotFoundError):
    """A dataset folder or file does not exist."""


# ----------------------------------------------------------------------------- locations
def list_modalities(folder: str) -> List[str]:
    """Sorted modality names ``m`` of every ``<m>_feat.npy`` in ``folder``."""
    mods = [f[: -len("_feat.npy")] for f in os.listdir(folder) if f.endswith("_feat.npy")]
    return sorted(m for m in mods if m)


def raw_files(folder: str, name: str) -> List[str]:
    """Paths of every raw file the dataset reads (for fingerprinting)."""
    files = [osp.join(folder, f"{name}.inter")]
    for m in list_modalities(folder):
        files.append(osp.join(folder, f"{m}_feat.npy"))
        mask = osp.join(folder, f"{m}_mask.npy")
        if osp.exists(mask):
            files.append(mask)
    return files


def dataset_folder(root: str, name: str) -> str:
    r"""``<root>/<name>`` (absolute), checked to hold ``<name>.inter``.

    Raises:
        DataFileNotFoundError: the folder or the interaction file is missing.
    """
    folder = osp.join(osp.abspath(osp.expanduser(str(root))), name)
    if not osp.isdir(folder):
        raise DataFileNotFoundError(f"dataset folder not found: '{folder}' (expected "
                                    f"{name}/{name}.inter under --root; check --root and "
                                    f"--dataset)")
    inter = osp.join(folder, f"{name}.inter")
    if not osp.isfile(inter):
        raise DataFileNotFoundError(f"interaction file not found: '{inter}' (expected a "
                                    f"tab-separated MMRec .inter file)")
    return folder


def fingerprint(folder: str, name: str) -> str:
    """A hash of the raw files' names, sizes and modification times."""
    h = hashlib.sha1()
    for p in raw_files(folder, name):
        st = os.stat(p)
        h.update(f"{osp.basename(p)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def writable_dir(path: str) -> bool:
    """Whether ``path`` is, or could be created as, a folder this user may write."""
    probe = path
    while not osp.exists(probe):  # first existing ancestor decides
        parent = osp.dirname(probe)
        if parent == probe:
            return False
        probe = parent
    # Permission bits first: a folder marked read-only (e.g. shared data) is
    # respected even by root, for whom os.access() always says yes.
    if not os.stat(probe).st_mode & 0o222:
        return False
    return os.access(probe, os.W_OK | os.X_OK)


def default_cache_dir() -> str:
    """``$PYG_MMREC_CACHE`` or ``$XDG_CACHE_HOME/pyg_mmrec`` (``~/.cache/pyg_mmrec``)."""
    env = os.environ.get("PYG_MMREC_CACHE")
    if env:
        return env
    base = os.environ.get("XDG_CACHE_HOME", osp.join(osp.expanduser("~"), ".cache"))
    return osp.join(base, "pyg_mmrec")


def processed_dir(folder: str, name: str, cache_dir: Optional[str] = None) -> str:
    """Where the processed tensors of the dataset in ``folder`` are cached."""
    if cache_dir is not None:
        return osp.join(osp.abspath(cache_dir), name, "processed")
    if writable_dir(osp.join(folder, "processed")):
        return osp.join(folder, "processed")
    tag = hashlib.sha1(folder.encode()).hexdigest()[:10]
    return osp.join(default_cache_dir(), f"{name}-{tag}", "processed")


def processed_file(folder: str, name: str, cache_dir: Optional[str] = None) -> str:
    """The cache file of the raw files as they are now (it exists once they
    were parsed, and so validated, successfully)."""
    return osp.join(processed_dir(folder, name, cache_dir),
                    f"data_v{PROCESSED_VERSION}_{fingerprint(folder, name)}.pt")


# ----------------------------------------------------------------------------- .inter
def read_inter_arrays(path: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Reads an MMRec ``.inter`` file.

    Returns:
        ``(user, item, x_label)`` as ``int64`` arrays of length ``E``.

    Raises:
        DataError: missing file, wrong header, non-integer value, ragged line,
            an ``x_label`` outside ``{0, 1, 2}`` or a negative id; the message
            names the file and the line.
    """
    if not osp.isfile(path):
        raise DataFileNotFoundError(f"interaction file not found: '{path}' (expected a "
                                    f"tab-separated MMRec .inter file)")
    try:
        with open(path, "r", encoding="utf-8") as f:
            header_line = f.readline()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: line 1: not UTF-8 text ({e.reason}); expected a "
                        f"tab-separated MMRec .inter file") from None
    header = header_line.rstrip("\r\n").split("\t")
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise DataError(
            f"{path}: line 1: wrong header {header!r}; expected tab-separated columns "
            f"'userID itemID rating timestamp x_label' (missing {missing})")
    cols = tuple(header.index(c) for c in REQUIRED_COLUMNS)
    try:
        arr = np.loadtxt(path, dtype=np.int64, delimiter="\t", skiprows=1, usecols=cols,
                         ndmin=2, comments=None, encoding="utf-8")
    except (ValueError, UnicodeDecodeError) as e:
        # numpy's row numbers are not consistent across error kinds: rescan
        # (only on this error path) to name the first offending line exactly.
        where = _locate_bad_line(path, cols, len(header))
        raise DataError(f"{path}: {where or str(e)}") from None
    if arr.shape[0] == 0:
        raise DataError(f"{path}: no interactions after the header")
    user, item, label = (np.ascontiguousarray(arr[:, j]) for j in range(3))
    bad = np.flatnonzero((label < 0) | (label > 2))
    if bad.size > 0:
        r = int(bad[0])
        raise DataError(f"{path}: line {r + 2}: x_label={int(label[r])}; expected 0 (train), "
                        f"1 (valid) or 2 (test) ({bad.size} bad rows)")
    for what, ids in (("userID", user), ("itemID", item)):
        neg = np.flatnonzero(ids < 0)
        if neg.size > 0:
            r = int(neg[0])
            raise DataError(f"{path}: line {r + 2}: negative {what} {int(ids[r])}; "
                            f"expected ids contiguous from 0")
    return user, item, label


def _locate_bad_line(path: str, cols: Tuple[int, ...], num_cols: int) -> Optional[str]:
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        f.readline()
        for lineno, line in enumerate(f, start=2):
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) != num_cols:
                return (f"line {lineno}: expected {num_cols} tab-separated columns, got "
                        f"{len(fields)}: {line.rstrip()!r}")
            for c in cols:
                try:
                    int(fields[c])
                except ValueError:
                    return (f"line {lineno}: column '{REQUIRED_COLUMNS[cols.index(c)]}' "
                            f"must be an integer, got {fields[c]!r}")
    return None


def check_contiguous(path: str, what: str, ids: np.ndarray) -> int:
    """-> the number of ids (``max + 1``), after checking every id in ``0..max`` occurs."""
    n = int(ids.max()) + 1
    present = np.zeros(n, dtype=bool)
    present[ids] = True
    if not present.all():
        gaps = np.flatnonzero(~present)
        raise DataError(f"{path}: {what} ids are not contiguous from 0: {gaps.size} of "
                        f"0..{n - 1} never occur (first missing: {gaps[:5].tolist()}); "
                        f"re-index the ids to 0..N-1")
    return n


def sort_and_check_duplicates(path: str, user: np.ndarray, item: np.ndarray, num_items: int
                              ) -> Tuple[np.ndarray, np.ndarray]:
    r"""One global sort by key :math:`u\cdot I + i`: finds duplicates and gives
    every split its (user, item)-sorted order for free.

    Returns:
        ``(sorted_key, perm)`` with ``sorted_key = key[perm]``.
    """
    key = user * num_items + item
    perm = np.argsort(key, kind="stable")
    sorted_key = key[perm]
    dup = np.flatnonzero(sorted_key[1:] == sorted_key[:-1])
    if dup.size > 0:
        a, b = sorted(perm[dup[0]: dup[0] + 2].tolist())
        raise DataError(f"{path}: lines {a + 2} and {b + 2}: duplicate interaction "
                        f"(user {int(user[a])}, item {int(item[a])}); {dup.size} duplicates "
                        f"in total: each (user, item) pair may occur once across all splits")
    return sorted_key, perm


# ----------------------------------------------------------------------------- .npy
def _load_npy(path: str, mmap: bool = False) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as e:
        raise DataError(f"{path}: cannot be opened ({e.strerror})") from None
    if magic != b"\x93NUMPY":  # numpy would take it for a pickle and say so, confusingly
        raise DataError(f"{path}: not a .npy file (no NumPy header); expected an array "
                        f"written by numpy.save")
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except Exception as e:  # corrupt or truncated file, pickled object array, ...
        raise DataError(f"{path}: cannot be read as a numpy array ({e}); expected a .npy "
                        f"file written by numpy.save") from None


def check_item_range(inter_path: str, item: np.ndarray, folder: str,
                     modalities: List[str]) -> None:
    r"""Every itemID must have a row in every ``<m>_feat.npy``: an id beyond a
    feature file's rows is reported at its line in the interaction file (the
    usual cause is a typo or a stale id there, not a short feature file)."""
    if item.size == 0:
        return
    max_item = int(item.max())
    for m in modalities:
        path = osp.join(folder, f"{m}_feat.npy")
        x = _load_npy(path, mmap=True)  # header only: the shape
        if x.ndim != 2:
            raise DataError(f"{path}: expected a 2-D array [num_items, F], got shape "
                            f"{tuple(x.shape)}")
        rows = int(x.shape[0])
        if max_item >= rows:
            r = int(np.flatnonzero(item >= rows)[0])
            raise DataError(f"{inter_path}: line {r + 2}: itemID {int(item[r])} is out of "
                            f"range: {m}_feat.npy has {rows} rows (items 0..{rows - 1}); "
                            f"expected one feature row per item")


def read_feature_arrays(folder: str, modality: str, num_items: int
                        ) -> Tuple[np.ndarray, np.ndarray]:
    r"""Reads ``<modality>_feat.npy`` (and ``<modality>_mask.npy`` if present).

    Returns:
        ``(x, mask)``: ``float32 [num_items, F]`` and ``bool [num_items]``.

    Raises:
        DataError: unreadable file, wrong shape or dtype, NaN/Inf rows, or a
            mask that is not one bool per item.
    """
    path = osp.join(folder, f"{modality}_feat.npy")
    x = _load_npy(path)
    if x.ndim != 2:
        raise DataError(f"{path}: expected a 2-D array [num_items={num_items}, F], "
                        f"got shape {tuple(x.shape)}")
    if x.shape[0] != num_items:
        raise DataError(f"{path}: has {x.shape[0]} rows but the interaction file has "
                        f"{num_items} items; expected one feature row per item")
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{path}: expected a floating-point array, got dtype {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        rows = np.flatnonzero(~finite)
        raise DataError(f"{path}: {rows.size} rows contain NaN/Inf (first rows: "
                        f"{rows[:5].tolist()}); store any finite placeholder for missing "
                        f"items and flag them in {modality}_mask.npy instead")

    mpath = osp.join(folder, f"{modality}_mask.npy")
    if not osp.exists(mpath):
        return x, np.ones(num_items, dtype=np.bool_)
    mk = _load_npy(mpath)
    if mk.shape != (num_items,):
        raise DataError(f"{mpath}: expected shape ({num_items},) (one flag per item), "
                        f"got {tuple(mk.shape)}")
    if mk.dtype != np.bool_:
        if np.issubdtype(mk.dtype, np.integer) and np.isin(mk, (0, 1)).all():
            mk = mk.astype(np.bool_)  # explicit 0/1 integers are unambiguous
        else:
            raise DataError(f"{mpath}: expected a bool array (True = present), got dtype "
                            f"{mk.dtype}")
    return x, np.array(mk, dtype=np.bool_, copy=True)


# ----------------------------------------------------------------------------- all
def parse_raw(folder: str, name: str, log_cold_users: bool = True) -> Dict[str, object]:
    r"""Parses and validates every raw file of one MMRec dataset.

    Users without a training interaction are dropped from the validation and
    test splits (as MMRec does: collaborative models cannot rank them).

    Returns:
        a dict with ``num_users``, ``num_items``, ``edges`` (``{split: int64
        [2, E_split]}`` of (user, item), sorted), ``modalities`` (sorted),
        ``features`` and ``masks`` (``{m: array}``), and ``num_cold_users``
        (``{"valid": n, "test": n}``).

    Raises:
        DataError: the first problem found, naming file (and line).
    """
    path = osp.join(folder, f"{name}.inter")
    user, item, label = read_inter_arrays(path)
    modalities = list_modalities(folder)
    for f in sorted(os.listdir(folder)):
        if f.endswith("_mask.npy") and f[: -len("_mask.npy")] not in modalities:
            raise DataError(f"{osp.join(folder, f)}: mask file without a matching "
                            f"'{f[: -len('_mask.npy')]}_feat.npy'")
    check_item_range(path, item, folder, modalities)
    num_users = check_contiguous(path, "userID", user)
    num_items = check_contiguous(path, "itemID", item)
    sorted_key, perm = sort_and_check_duplicates(path, user, item, num_items)
    del user, item  # the sorted keys carry everything from here on
    sorted_label = label[perm]
    del perm, label

    # Edges of every split, sorted by (user, item): independent of file order.
    split_key = {s: sorted_key[sorted_label == j] for j, s in enumerate(SPLITS)}
    del sorted_key, sorted_label
    for j, (s, k) in enumerate(split_key.items()):
        if k.size == 0:
            raise DataError(f"{path}: the {s} split (x_label={j}) is empty")

    has_train = np.zeros(num_users, dtype=bool)
    has_train[split_key["train"] // num_items] = True
    num_cold: Dict[str, int] = {}
    for s in ("valid", "test"):
        k = split_key[s]
        u = k // num_items
        keep = has_train[u]
        num_cold[s] = int(np.unique(u[~keep]).size)
        if num_cold[s] > 0:
            if log_cold_users:
                log.warning("%s: %d %s users have no training interaction; their %d %s "
                            "interactions are dropped from evaluation", path, num_cold[s], s,
                            int((~keep).sum()), s)
            split_key[s] = k[keep]
            if split_key[s].size == 0:
                raise DataError(f"{path}: the {s} split is empty after dropping "
                                f"{num_cold[s]} users without training interactions")

    features, masks = {}, {}
    for m in modalities:
        features[m], masks[m] = read_feature_arrays(folder, m, num_items)
    return {
        "num_users": num_users,
        "num_items": num_items,
        "edges": {s: np.stack([k // num_items, k % num_items]) for s, k in split_key.items()},
        "modalities": modalities,
        "features": features,
        "masks": masks,
        "num_cold_users": num_cold,
    }


def check_dataset(root: str, name: str, cache_dir: Optional[str] = None) -> bool:
    r"""Validate the dataset ``<root>/<name>`` before any heavy import.

    When the processed cache of the raw files as they are now exists, they
    were validated when it was written, and nothing is read again.

    Returns:
        ``True`` if the raw files were parsed (no cache yet), ``False`` if the
        cache vouched for them.

    Raises:
        DataError: the folder, a file or a line is wrong (see :func:`parse_raw`).
    """
    folder = dataset_folder(root, name)
    if osp.isfile(processed_file(folder, name, cache_dir)):
        return False
    parse_raw(folder, name, log_cold_users=False)
    return True


__all__ = ["DataFileNotFoundError", "PROCESSED_VERSION", "REQUIRED_COLUMNS", "SPLITS",
           "list_modalities", "raw_files", "dataset_folder", "fingerprint", "writable_dir",
           "default_cache_dir", "processed_dir", "processed_file", "read_inter_arrays",
           "check_contiguous", "sort_and_check_duplicates", "check_item_range",
           "read_feature_arrays", "parse_raw", "check_dataset"]
