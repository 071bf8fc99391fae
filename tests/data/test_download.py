import gzip
import hashlib
import http.server
import io
import os.path as osp
import socket
import threading
import zipfile

import pytest

from pyg_mmrec.data import download as D


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files`` with optional Range support and faults."""

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        srv = self.server
        name = self.path.lstrip("/")
        srv.requests.append((name, self.headers.get("Range")))
        if name not in srv.files:
            self.send_error(404, "not found")
            return
        body = srv.files[name]
        start = 0
        rng = self.headers.get("Range")
        if rng and srv.ranges:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        chunk = body[start:]
        self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        if srv.drop_after is not None and srv.drops_left > 0:
            srv.drops_left -= 1
            self.wfile.write(chunk[: srv.drop_after])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)  # connection lost mid-transfer
            return
        self.wfile.write(chunk)


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.requests, srv.ranges = {}, [], True
    srv.drop_after, srv.drops_left = None, 0
    t = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    t.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


PAYLOAD = bytes(range(256)) * 400  # 102,400 bytes
MD5 = "md5:" + hashlib.md5(PAYLOAD).hexdigest()
SHA = "sha256:" + hashlib.sha256(PAYLOAD).hexdigest()


def test_download_and_verify(server, tmp_path):
    server.files["a.bin"] = PAYLOAD
    for i, ck in enumerate((MD5, SHA, None)):
        path = D.download_file(f"{server.url}/a.bin", str(tmp_path / f"a{i}.bin"), ck,
                               progress=False)
        assert open(path, "rb").read() == PAYLOAD
        assert not osp.exists(path + ".part")
    assert D.verify_checksum(path, MD5) and D.verify_checksum(path, SHA)
    assert not D.verify_checksum(path, "md5:" + "0" * 32)


def test_cached_file_needs_no_network(server, tmp_path):
    server.files["a.bin"] = PAYLOAD
    path = str(tmp_path / "a.bin")
    D.download_file(f"{server.url}/a.bin", path, SHA, progress=False)
    n = len(server.requests)
    D.download_file(f"{server.url}/a.bin", path, SHA, progress=False)
    assert len(server.requests) == n


def test_resume_with_range(server, tmp_path):
    server.files["a.bin"] = PAYLOAD
    path = str(tmp_path / "a.bin")
    with open(path + ".part", "wb") as f:  # an earlier run stopped after 30,000 bytes
        f.write(PAYLOAD[:30000])
    D.download_file(f"{server.url}/a.bin", path, SHA, progress=False)
    assert open(path, "rb").read() == PAYLOAD
    assert server.requests == [("a.bin", "bytes=30000-")]


def test_complete_part_file_is_finished_by_416(server, tmp_path):
    server.files["a.bin"] = PAYLOAD
    path = str(tmp_path / "a.bin")
    with open(path + ".part", "wb") as f:
        f.write(PAYLOAD)
    D.download_file(f"{server.url}/a.bin", path, MD5, progress=False)
    assert open(path, "rb").read() == PAYLOAD


def test_server_ignoring_range_restarts(server, tmp_path):
    server.files["a.bin"] = PAYLOAD
    server.ranges = False
    path = str(tmp_path / "a.bin")
    with open(path + ".part", "wb") as f:
        f.write(b"stale bytes that must not survive")
    D.download_file(f"{server.url}/a.bin", path, MD5, progress=False)
    assert open(path, "rb").read() == PAYLOAD


def test_connection_drop_is_resumed(server, tmp_path):
    server.files["a.bin"] = PAYLOAD
    server.drop_after, server.drops_left = 40000, 1
    path = str(tmp_path / "a.bin")
    D.download_file(f"{server.url}/a.bin", path, SHA, progress=False)
    assert open(path, "rb").read() == PAYLOAD
    assert server.requests[0] == ("a.bin", None)
    assert server.requests[1][1] is not None and server.requests[1][1].startswith("bytes=")


def test_checksum_mismatch(server, tmp_path):
    server.files["a.bin"] = PAYLOAD
    path = str(tmp_path / "a.bin")
    with pytest.raises(D.DownloadError, match="checksum mismatch"):
        D.download_file(f"{server.url}/a.bin", path, "sha256:" + "0" * 64, progress=False)
    assert not osp.exists(path) and not osp.exists(path + ".part")


def test_bad_checksum_spec_and_http_error(server, tmp_path):
    with pytest.raises(ValueError, match="checksum"):
        D.download_file(f"{server.url}/a.bin", str(tmp_path / "x"), "crc:12", progress=False)
    with pytest.raises(D.DownloadError, match="HTTP 404"):
        D.download_file(f"{server.url}/missing.bin", str(tmp_path / "x"), progress=False)


def test_offline_message(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(D.DownloadError, match="offline"):
        D.download_file(f"http://127.0.0.1:{port}/a.bin", str(tmp_path / "a.bin"),
                        timeout=5, progress=False)


def test_download_dataset_with_mirror_and_zip(server, tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("toy/u.data", "1\t1\t5\t100\n2\t1\t3\t200\n")
    data = buf.getvalue()
    server.files["toy.zip"] = data
    src = D.DatasetSource("toy", [D.RemoteFile("https://example.invalid/toy.zip", "toy.zip",
                                               "md5:" + hashlib.md5(data).hexdigest(),
                                               extract=True)], "https://example.invalid")
    folder = D.download_dataset(src, str(tmp_path), mirror=server.url, progress=False)
    assert open(osp.join(folder, "toy", "u.data")).read().startswith("1\t1\t5")
    n = len(server.requests)
    assert D.download_dataset(src, str(tmp_path), mirror=server.url, progress=False) == folder
    assert len(server.requests) == n  # cached and extracted: no request


def test_zip_path_traversal_is_refused(server, tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("../evil.txt", "x")
    server.files["bad.zip"] = buf.getvalue()
    src = D.DatasetSource("bad", [D.RemoteFile("https://example.invalid/bad.zip", "bad.zip",
                                               extract=True)], "")
    with pytest.raises(D.DownloadError, match="outside"):
        D.download_dataset(src, str(tmp_path), mirror=server.url, progress=False)
    assert not osp.exists(tmp_path / "evil.txt")


def test_registry():
    assert set(D.DATASETS) == {"ml-100k", "baby", "sports", "clothing"}
    for src in D.DATASETS.values():
        for f in src.files:
            assert f.url.startswith("http") and f.url.endswith(f.filename)
            if f.checksum is not None:
                D._parse_checksum(f.checksum)
    with pytest.raises(ValueError, match="unknown dataset"):
        D.download_dataset("nope")


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("PYG_MMREC_CACHE", str(tmp_path))
    assert D.default_cache_dir() == osp.join(str(tmp_path), "downloads")


def test_amazon_meta_to_items(tmp_path):
    meta = tmp_path / "meta_Toy.json.gz"
    with gzip.open(meta, "wt") as f:  # 2014 files: Python dict literals, one per line
        f.write("{'asin': 'A1', 'title': 'Rattle', 'brand': 'Acme', "
                "'categories': [['Baby', 'Toys']], 'description': 'Loud\\tfun.', "
                "'imUrl': 'http://x/a.jpg'}\n")
        f.write('{"asin": "B2", "imUrl": "http://x/b.jpg"}\n')
        f.write("{'asin': 'C3', 'title': 'Not wanted'}\n")
    out = tmp_path / "items.tsv"
    assert D.amazon_meta_to_items(str(meta), str(out), asins={"A1", "B2"}) == 2
    lines = out.read_text().splitlines()
    assert lines[0] == "itemID\timUrl\ttext"
    assert lines[1] == "A1\thttp://x/a.jpg\tRattle Acme Baby Toys Loud fun."
    assert lines[2] == "B2\thttp://x/b.jpg\t"
