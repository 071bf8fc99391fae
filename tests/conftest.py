import os
from pathlib import Path

import numpy as np
import pytest
import torch

# The real data lives beside the project (see README); tests using it skip when absent.
DATA_ROOT = Path(os.environ.get("PYG_MMREC_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data")).resolve()


def load_script(relpath: str, module_name: str):
    """Import a script of the repository (``examples/x.py``, ``benchmarks/y.py``) as a module."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        module_name, Path(__file__).resolve().parents[1] / relpath)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not (DATA_ROOT / "ml100k_mm" / "ml100k_mm.inter").exists():
        pytest.skip(f"real data not found at {DATA_ROOT}")
    return DATA_ROOT


def cuda_usable() -> bool:
    """Whether CUDA test cases can run here (a GPU visible to a CUDA build of torch)."""
    return torch.cuda.is_available()


@pytest.fixture(params=["cpu", "cuda"])
def device(request) -> torch.device:
    """The device of an op/layer/model test: every such test runs on the CPU and, on a machine
    with a GPU, on CUDA (the CUDA cases skip here otherwise)."""
    if request.param == "cuda" and not cuda_usable():
        pytest.skip("CUDA is not available")
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


INTER_HEADER = "userID\titemID\trating\ttimestamp\tx_label\n"


def write_inter(folder, name, rows, header=INTER_HEADER, extra_lines=()):
    """Writes ``<folder>/<name>.inter`` (MMRec layout, tab-separated): ``header``, one line
    per row, then ``extra_lines`` verbatim (malformed input for error tests). A row is
    ``(user, item, label)`` (rating 1, timestamp 0) or ``(user, item, rating, timestamp,
    label)``; label 0/1/2 = train/valid/test. Returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{name}.inter", "w") as f:
        f.write(header)
        for row in rows:
            if len(row) == 3:
                row = (row[0], row[1], 1, 0, row[2])
            if len(row) != 5:
                raise ValueError(f"write_inter: a row is (user, item, label) or (user, item, "
                                 f"rating, timestamp, label), got {row!r}")
            f.write("\t".join(map(str, row)) + "\n")
        for line in extra_lines:
            f.write(line)
    return folder


def write_tiny_mmrec(root, name="tiny", num_users=20, num_items=30, per_user=8, seed=0,
                     image_mask=True):
    """A tiny MMRec-format dataset: <root>/<name>/<name>.inter + two modalities
    (+ a natural image mask with 3 missing posters when ``image_mask``)."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(num_users):
        items = rng.permutation(num_items)[:per_user]
        if u < num_items // 4:  # make sure every item id occurs
            items[2:6] = [(4 * u + j) % num_items for j in range(4)]
            items = list(dict.fromkeys(items.tolist()))
        for j, i in enumerate(items):
            rows.append((u, i, 5, j, 1 if j == 0 else 2 if j == 1 else 0))
    folder = write_inter(root / name, name, rows)
    np.save(folder / "image_feat.npy", rng.normal(size=(num_items, 6)).astype(np.float32))
    np.save(folder / "text_feat.npy", rng.normal(size=(num_items, 5)).astype(np.float32))
    if image_mask:
        mask = np.ones(num_items, dtype=bool)
        mask[:3] = False
        np.save(folder / "image_mask.npy", mask)
    return root


@pytest.fixture
def tiny_root(tmp_path, monkeypatch):
    """A tiny dataset ``tiny`` under a fresh root, with a private kNN cache."""
    monkeypatch.setenv("PYG_MMREC_CACHE", str(tmp_path / "cache"))
    return write_tiny_mmrec(tmp_path / "data")


def tiny_graph(num_users, num_items, num_modalities, masked, seed=0, per_user=5,
               dim=5, dim_step=2):
    """A random user-item graph (``per_user`` draws per user, duplicates removed) with
    modalities ``m0, m1, ...`` of sizes ``dim + j * dim_step``; with ``masked``, about 30 %
    of the items miss each modality and their rows are zero-filled, as the data layer does.
    Returns ``(edge_index, features, masks or None)``."""
    g = torch.Generator().manual_seed(seed)
    users = torch.arange(num_users).repeat_interleave(per_user)
    items = torch.randint(0, num_items, (users.numel(),), generator=g)
    edge_index = torch.unique(torch.stack([users, items]), dim=1)
    feats = {f"m{j}": torch.randn(num_items, dim + dim_step * j, generator=g)
             for j in range(num_modalities)}
    masks = None
    if masked:
        masks = {m: torch.rand(num_items, generator=g) > 0.3 for m in feats}
        for m in feats:
            feats[m][~masks[m]] = 0.0
    return edge_index, feats, masks


def tiny_splits(num_users, num_items, per_user, generator):
    """Per user, ``per_user`` distinct random items: the first is its validation
    interaction, the second its test one, the rest are training ones. Draws from
    ``generator`` (one ``randperm`` per user). Returns ``{"train"|"valid"|"test":
    edge_index [2, E]}`` (long)."""
    rows = {"train": [], "valid": [], "test": []}
    for u in range(num_users):
        items = torch.randperm(num_items, generator=generator)[:per_user].tolist()
        rows["valid"].append((u, items[0]))
        rows["test"].append((u, items[1]))
        rows["train"] += [(u, i) for i in items[2:]]
    return {k: torch.tensor(v, dtype=torch.long).t().contiguous() for k, v in rows.items()}


def stop_after(trainer, num_batches):
    """Makes ``trainer`` request a stop (as ``SIGINT`` does) after its ``num_batches``-th
    batch (counted over the epochs of one run); returns it."""
    seen = [0]
    on_batch_end = trainer.on_batch_end

    def count_and_stop(epoch, batch):
        on_batch_end(epoch, batch)
        seen[0] += 1
        if seen[0] == num_batches:
            trainer.request_stop()
    trainer.on_batch_end = count_and_stop
    return trainer


def random_modal_data(num_users, num_items, seed=0, dims=(12, 8), miss=0.3, num_edges=500):
    """Random user-item edges (duplicates allowed) and modalities ``image``, ``text``,
    ``audio`` (as many as ``dims``), each missing for about ``miss`` of the items
    (features left unfilled). Returns ``(edge_index, features, masks)``."""
    g = torch.Generator().manual_seed(seed)
    ei = torch.stack([torch.randint(0, num_users, (num_edges,), generator=g),
                      torch.randint(0, num_items, (num_edges,), generator=g)])
    names = ["image", "text", "audio"][: len(dims)]
    feats = {m: torch.randn(num_items, f, generator=g) for m, f in zip(names, dims)}
    masks = {m: torch.rand(num_items, generator=g) > miss for m in names}
    return ei, feats, masks


def random_batch(num_users, num_items, seed=1, n=32):
    """A seeded BPR batch ``(users, positives, negatives)``."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, num_users, (n,), generator=g),
            torch.randint(0, num_items, (n,), generator=g),
            torch.randint(0, num_items, (n,), generator=g))


# ----------------------------------------------------------------------------- tiny encoders
def char_encoder(texts):
    """Tiny deterministic text encoder: character histogram over 8 buckets."""
    out = np.zeros((len(texts), 8), dtype=np.float32)
    for r, t in enumerate(texts):
        for ch in t:
            out[r, ord(ch) % 8] += 1.0
    return out


class RawImageEncoder:
    """PIL-free image encoder: files hold 12 raw uint8 values (3 x 2 x 2)."""
    name = "raw"
    dim = 3

    def load(self, path):
        data = open(path, "rb").read()
        if len(data) != 12:
            raise OSError(f"{path}: not a raw 3x2x2 image")
        return np.frombuffer(data, dtype=np.uint8).reshape(3, 2, 2).astype(np.float32)

    def __call__(self, x):
        return x.mean((2, 3))
