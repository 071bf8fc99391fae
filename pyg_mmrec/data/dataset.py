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

import os
import os.path as osp
import tempfile
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import HeteroData, InMemoryDataset

from . import raw as _raw
# the raw-file layer (NumPy only) is re-exported under its historical names
from .raw import (PROCESSED_VERSION, REQUIRED_COLUMNS, SPLITS, default_cache_dir,  # noqa: F401
                  list_modalities, raw_files)

EDGE_TYPE = ("user", "rates", "item")


def read_inter(path: str) -> Tuple[Tensor, Tensor, Tensor]:
    r"""Reads an MMRec ``.inter`` file (see :func:`pyg_mmrec.data.raw.read_inter_arrays`).

    Returns:
        ``(user, item, x_label)`` as ``int64`` tensors of length ``E``.

    Raises:
        FileNotFoundError: the file does not exist.
        DataError: wrong header, non-integer value, ragged line, or an
            ``x_label`` outside ``{0, 1, 2}``; the message names file and line.
    """
    return tuple(torch.from_numpy(a) for a in _raw.read_inter_arrays(path))


def read_features(folder: str, modality: str, num_items: int) -> Tuple[Tensor, Tensor]:
    r"""Reads ``<modality>_feat.npy`` (and ``<modality>_mask.npy`` if present).

    Returns:
        ``(x, mask)``: ``float32 [num_items, F]`` and ``bool [num_items]``.
    """
    x, mask = _raw.read_feature_arrays(folder, modality, num_items)
    return torch.from_numpy(x), torch.from_numpy(mask)


def build_hetero_data(folder: str, name: str) -> HeteroData:
    r"""Parses and validates the raw files of one MMRec dataset
    (:func:`pyg_mmrec.data.raw.parse_raw`) into a :class:`HeteroData`."""
    parsed = _raw.parse_raw(folder, name)
    data = HeteroData()
    data["user"].num_nodes = parsed["num_users"]
    data["item"].num_nodes = parsed["num_items"]
    edges = {s: torch.from_numpy(np.ascontiguousarray(e)) for s, e in parsed["edges"].items()}
    store = data[EDGE_TYPE]
    store.edge_index = edges["train"]
    store.valid_edge_index = edges["valid"]
    store.test_edge_index = edges["test"]
    for m in parsed["modalities"]:
        data["item"][f"{m}_feat"] = torch.from_numpy(parsed["features"][m])
        data["item"][f"{m}_mask"] = torch.from_numpy(parsed["masks"][m])
    data.modalities = list(parsed["modalities"])
    data.name = name
    data.num_cold_users = dict(parsed["num_cold_users"])
    return data


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
        folder = _raw.dataset_folder(root, name)
        self._folder = folder
        self._processed_dir = _raw.processed_dir(folder, name, cache_dir)
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
        return _raw.fingerprint(self._folder, self.name)

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
