r"""MMRec-format multimodal recommendation datasets as PyG :class:`HeteroData`.

The on-disk layout is the one of `MMRec <https://github.com/enoche/MMRec>`_::

    <root>/<name>/<name>.inter        tab-separated, header
                                      userID itemID rating timestamp x_label
    <root>/<name>/<modality>_feat.npy float, one row per item (any number)
    <root>/<name>/<modality>_mask.npy optional bool [num_items]; False = the
                                      modality is (naturally) missing

``x_label`` is 0/1/2 for train/valid/test.  Ids are integers, contiguous from 0.
"""
from __future__ import annotations

import hashlib
import logging
import os
import os.path as osp
import tempfile
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import HeteroData, InMemoryDataset

log = logging.getLogger("pyg_mmrec.data")

#: bump when the processed format changes, so stale caches are ignored
PROCESSED_VERSION = 1

REQUIRED_COLUMNS = ("userID", "itemID", "x_label")
SPLITS = ("train", "valid", "test")
EDGE_TYPE = ("user", "rates", "item")


# ---------------------------------------------------------------------------
# raw-file helpers (plain functions so that they are testable on their own)
# ---------------------------------------------------------------------------
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


def read_inter(path: str) -> Tuple[Tensor, Tensor, Tensor]:
    r"""Reads an MMRec ``.inter`` file.

    Returns:
        ``(user, item, x_label)`` as ``int64`` tensors of length ``E``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: wrong header, non-integer value, ragged line, or an
            ``x_label`` outside ``{0, 1, 2}``; the message names file and line.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f"interaction file not found: '{path}' (expected a "
                                f"tab-separated MMRec .inter file)")
    with open(path, "r", encoding="utf-8") as f:
        header_line = f.readline()
    header = header_line.rstrip("\r\n").split("\t")
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ValueError(
            f"{path}: line 1: wrong header {header!r}; expected tab-separated columns "
            f"'userID itemID rating timestamp x_label' (missing {missing})")
    cols = tuple(header.index(c) for c in REQUIRED_COLUMNS)
    try:
        arr = np.loadtxt(path, dtype=np.int64, delimiter="\t", skiprows=1, usecols=cols,
                         ndmin=2, comments=None)
    except ValueError as e:
        # numpy's row numbers are not consistent across error kinds: rescan
        # (only on this error path) to name the first offending line exactly.
        where = _locate_bad_line(path, cols, len(header))
        raise ValueError(f"{path}: {where or str(e)}") from None
    if arr.shape[0] == 0:
        raise ValueError(f"{path}: no interactions after the header")
    user, item, label = (torch.from_numpy(np.ascontiguousarray(arr[:, j])) for j in range(3))
    bad = ((label < 0) | (label > 2)).nonzero()
    if bad.numel() > 0:
        r = int(bad[0])
        raise ValueError(f"{path}: line {r + 2}: x_label={int(label[r])}; expected 0 (train), "
                         f"1 (valid) or 2 (test) ({bad.numel()} bad rows)")
    for what, ids in (("userID", user), ("itemID", item)):
        neg = (ids < 0).nonzero()
        if neg.numel() > 0:
            r = int(neg[0])
            raise ValueError(f"{path}: line {r + 2}: negative {what} {int(ids[r])}; "
                             f"expected ids contiguous from 0")
    return user, item, label


def _locate_bad_line(path: str, cols: Tuple[int, ...], num_cols: int) -> Optional[str]:
    with open(path, "r", encoding="utf-8") as f:
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


def _check_contiguous(path: str, what: str, ids: Tensor) -> int:
    n = int(ids.max()) + 1
    present = torch.zeros(n, dtype=torch.bool)
    present[ids] = True
    if not bool(present.all()):
        gaps = (~present).nonzero().view(-1)
        raise ValueError(f"{path}: {what} ids are not contiguous from 0: {gaps.numel()} of "
                         f"0..{n - 1} never occur (first missing: {gaps[:5].tolist()}); "
                         f"re-index the ids to 0..N-1")
    return n


def _sort_and_check_duplicates(path: str, user: Tensor, item: Tensor, num_items: int
                               ) -> Tuple[Tensor, Tensor]:
    r"""One global sort by key :math:`u\cdot I + i`: finds duplicates and gives
    every split its (user, item)-sorted order for free.

    Returns:
        ``(sorted_key, perm)`` with ``sorted_key = key[perm]``.
    """
    sorted_key, perm = (user * num_items + item).sort()
    dup = (sorted_key[1:] == sorted_key[:-1]).nonzero().view(-1)
    if dup.numel() > 0:
        a, b = sorted(perm[dup[0]: dup[0] + 2].tolist())
        raise ValueError(f"{path}: lines {a + 2} and {b + 2}: duplicate interaction "
                         f"(user {int(user[a])}, item {int(item[a])}); {dup.numel()} duplicates "
                         f"in total: each (user, item) pair may occur once across all splits")
    return sorted_key, perm


def read_features(folder: str, modality: str, num_items: int) -> Tuple[Tensor, Tensor]:
    r"""Reads ``<modality>_feat.npy`` (and ``<modality>_mask.npy`` if present).

    Returns:
        ``(x, mask)``: ``float32 [num_items, F]`` and ``bool [num_items]``.
    """
    path = osp.join(folder, f"{modality}_feat.npy")
    try:
        x = np.load(path, allow_pickle=False)
    except Exception as e:  # corrupt file, pickled object array, ...
        raise ValueError(f"{path}: cannot be read as a numpy array ({e})") from None
    if x.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D array [num_items={num_items}, F], "
                         f"got shape {tuple(x.shape)}")
    if x.shape[0] != num_items:
        raise ValueError(f"{path}: has {x.shape[0]} rows but the interaction file has "
                         f"{num_items} items; expected one feature row per item")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{path}: expected a floating-point array, got dtype {x.dtype}")
    x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    finite = torch.isfinite(x).all(dim=1)
    if not bool(finite.all()):
        rows = (~finite).nonzero().view(-1)
        raise ValueError(f"{path}: {rows.numel()} rows contain NaN/Inf (first rows: "
                         f"{rows[:5].tolist()}); store any finite placeholder for missing "
                         f"items and flag them in {modality}_mask.npy instead")

    mpath = osp.join(folder, f"{modality}_mask.npy")
    if not osp.exists(mpath):
        return x, torch.ones(num_items, dtype=torch.bool)
    try:
        mk = np.load(mpath, allow_pickle=False)
    except Exception as e:
        raise ValueError(f"{mpath}: cannot be read as a numpy array ({e})") from None
    if mk.shape != (num_items,):
        raise ValueError(f"{mpath}: expected shape ({num_items},) (one flag per item), "
                         f"got {tuple(mk.shape)}")
    if mk.dtype != np.bool_:
        if np.issubdtype(mk.dtype, np.integer) and np.isin(mk, (0, 1)).all():
            mk = mk.astype(np.bool_)  # explicit 0/1 integers are unambiguous
        else:
            raise ValueError(f"{mpath}: expected a bool array (True = present), got dtype "
                             f"{mk.dtype}")
    return x, torch.from_numpy(mk.copy())


def build_hetero_data(folder: str, name: str) -> HeteroData:
    r"""Parses and validates the raw files of one MMRec dataset."""
    path = osp.join(folder, f"{name}.inter")
    user, item, label = read_inter(path)
    num_users = _check_contiguous(path, "userID", user)
    num_items = _check_contiguous(path, "itemID", item)
    sorted_key, perm = _sort_and_check_duplicates(path, user, item, num_items)
    del user, item  # the sorted keys carry everything from here on
    sorted_label = label[perm]
    del perm, label

    # Edges of every split, sorted by (user, item): independent of file order.
    split_key = {s: sorted_key[sorted_label == j] for j, s in enumerate(SPLITS)}
    del sorted_key, sorted_label
    for j, (s, k) in enumerate(split_key.items()):
        if k.numel() == 0:
            raise ValueError(f"{path}: the {s} split (x_label={j}) is empty")

    # MMRec evaluates only users that have training interactions: cold-start
    # users cannot be ranked by collaborative models, so drop them (logged).
    has_train = torch.zeros(num_users, dtype=torch.bool)
    has_train[split_key["train"] // num_items] = True
    num_cold: Dict[str, int] = {}
    for s in ("valid", "test"):
        k = split_key[s]
        u = k // num_items
        keep = has_train[u]
        num_cold[s] = int(u[~keep].unique().numel())
        if num_cold[s] > 0:
            log.warning("%s: %d %s users have no training interaction; their %d %s "
                        "interactions are dropped from evaluation", path, num_cold[s], s,
                        int((~keep).sum()), s)
            split_key[s] = k[keep]
            if split_key[s].numel() == 0:
                raise ValueError(f"{path}: the {s} split is empty after dropping "
                                 f"{num_cold[s]} users without training interactions")

    data = HeteroData()
    data["user"].num_nodes = num_users
    data["item"].num_nodes = num_items
    edges = {s: torch.stack([k // num_items, k % num_items], dim=0)
             for s, k in split_key.items()}
    store = data[EDGE_TYPE]
    store.edge_index = edges["train"]
    store.valid_edge_index = edges["valid"]
    store.test_edge_index = edges["test"]

    modalities = list_modalities(folder)
    for f in os.listdir(folder):
        if f.endswith("_mask.npy") and f[: -len("_mask.npy")] not in modalities:
            raise ValueError(f"{osp.join(folder, f)}: mask file without a matching "
                             f"'{f[: -len('_mask.npy')]}_feat.npy'")
    for m in modalities:
        x, mk = read_features(folder, m, num_items)
        data["item"][f"{m}_feat"] = x
        data["item"][f"{m}_mask"] = mk
    data.modalities = modalities
    data.name = name
    data.num_cold_users = num_cold
    return data


def _writable_dir(path: str) -> bool:
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


class MMRecDataset(InMemoryDataset):
    r"""A multimodal recommendation dataset in the `MMRec
    <https://github.com/enoche/MMRec>`_ format, as a single
    :class:`~torch_geometric.data.HeteroData` graph.

    ``dataset[0]`` holds

    * ``data['user'].num_nodes``, ``data['item'].num_nodes``;
    * ``data['user', 'rates', 'item'].edge_index`` (training interactions,
      ``[2, E_train]`` of (user, item), sorted), ``.valid_edge_index`` and
      ``.test_edge_index``;
    * ``data.modalities``: sorted modality names (one per ``<m>_feat.npy``);
    * ``data['item'][f'{m}_feat']`` (``float32 [I, F_m]``) and
      ``data['item'][f'{m}_mask']`` (``bool [I]``, the *natural* presence
      :math:`M`, all ``True`` without ``<m>_mask.npy``);
    * ``data.num_cold_users``: ``{'valid': n, 'test': n}`` users dropped from
      evaluation because they have no training interaction (as in MMRec).

    Processed tensors are cached like :class:`~torch_geometric.data.InMemoryDataset`
    does, under ``<root>/<name>/processed`` when that is writable and otherwise
    under :func:`default_cache_dir` (``cache_dir`` overrides both).  The cache
    file name contains a fingerprint of the raw files (names, sizes, modification
    times), so editing a raw file triggers re-processing.  Writes are atomic.

    Args:
        root (str): folder that contains ``<name>/``.
        name (str): dataset name, e.g. ``"ml100k_mm"`` or ``"baby"``.
        force_reload (bool, optional): re-process even if a cache exists.
        transform (callable, optional): applied on every access.
        cache_dir (str, optional): where to put processed files.
        log (bool, optional): print processing messages.
    """

    def __init__(self, root: str, name: str, force_reload: bool = False,
                 transform: Optional[Callable] = None, cache_dir: Optional[str] = None,
                 log: bool = False) -> None:
        self.name = name
        root = osp.abspath(osp.expanduser(str(root)))
        folder = osp.join(root, name)
        if not osp.isdir(folder):
            raise FileNotFoundError(f"dataset folder not found: '{folder}' (expected "
                                    f"<root>/<name>/ containing {name}.inter)")
        inter = osp.join(folder, f"{name}.inter")
        if not osp.isfile(inter):
            raise FileNotFoundError(f"interaction file not found: '{inter}'")
        self._folder = folder
        if cache_dir is not None:
            self._processed_dir = osp.join(osp.abspath(cache_dir), name, "processed")
        elif _writable_dir(osp.join(folder, "processed")):
            self._processed_dir = osp.join(folder, "processed")
        else:
            tag = hashlib.sha1(folder.encode()).hexdigest()[:10]
            self._processed_dir = osp.join(default_cache_dir(), f"{name}-{tag}", "processed")
        self._fingerprint = self._compute_fingerprint()
        super().__init__(root, transform=transform, force_reload=force_reload, log=log)
        self.load(self.processed_paths[0], data_cls=HeteroData)

    # ------------------------------------------------------------ locations
    @property
    def raw_dir(self) -> str:
        return self._folder

    @property
    def processed_dir(self) -> str:
        return self._processed_dir

    @property
    def raw_file_names(self) -> List[str]:
        return [osp.basename(p) for p in raw_files(self._folder, self.name)]

    @property
    def processed_file_names(self) -> List[str]:
        return [f"data_v{PROCESSED_VERSION}_{self._fingerprint}.pt"]

    def _compute_fingerprint(self) -> str:
        h = hashlib.sha1()
        for p in raw_files(self._folder, self.name):
            st = os.stat(p)
            h.update(f"{osp.basename(p)}:{st.st_size}:{st.st_mtime_ns};".encode())
        return h.hexdigest()[:16]

    # ----------------------------------------------------------- processing
    def process(self) -> None:
        data = build_hetero_data(self._folder, self.name)
        out = self.processed_paths[0]
        os.makedirs(self.processed_dir, exist_ok=True)
        # Atomic: write to a temp file in the same folder, then rename.
        fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".pt", dir=self.processed_dir)
        os.close(fd)
        try:
            self.save([data], tmp)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600
            os.replace(tmp, out)
        finally:
            if osp.exists(tmp):
                os.remove(tmp)
        for f in os.listdir(self.processed_dir):  # drop caches of older raw files
            if f.startswith("data_v") and f.endswith(".pt") and f != osp.basename(out):
                try:
                    os.remove(osp.join(self.processed_dir, f))
                except OSError:
                    pass

    # ------------------------------------------------------------- summary
    @property
    def num_users(self) -> int:
        return int(self._data["user"].num_nodes)

    @property
    def num_items(self) -> int:
        return int(self._data["item"].num_nodes)

    @property
    def modalities(self) -> List[str]:
        return list(self._data.modalities)

    def __repr__(self) -> str:
        d = self._data
        st = d[EDGE_TYPE]
        counts = "/".join(str(e.size(1)) for e in
                          (st.edge_index, st.valid_edge_index, st.test_edge_index))
        mods = []
        for m in d.modalities:
            x, mk = d["item"][f"{m}_feat"], d["item"][f"{m}_mask"]
            miss = int((~mk).sum())
            mods.append(f"{m}[{x.size(1)}]" + (f" ({miss} missing)" if miss else ""))
        return (f"{self.__class__.__name__}({self.name}: {self.num_users:,} users, "
                f"{self.num_items:,} items, train/valid/test {counts} interactions, "
                f"modalities: {', '.join(mods) if mods else 'none'})")
