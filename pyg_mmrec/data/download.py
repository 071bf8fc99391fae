r"""Download helpers for the public benchmark sets behind MMRec.

The sets are fetched from their official raw locations into a cache folder
(``~/.cache/pyg_mmrec/downloads`` by default), checked against a checksum
when one is known, and resumed with HTTP ``Range`` requests when a transfer
broke off. Turn the raw files into an MMRec dataset with
:mod:`pyg_mmrec.data.build_dataset` (for Amazon metadata,
:func:`amazon_meta_to_items` first writes the item text table).

=============  =====================================================================
``ml-100k``    MovieLens-100K from GroupLens (``u.data``: user, item, rating, time)
``baby``       Amazon 2014 *Baby*: rating-only CSV + item metadata (McAuley et al.)
``sports``     Amazon 2014 *Sports and Outdoors*: rating-only CSV + item metadata
``clothing``   Amazon 2014 *Clothing, Shoes and Jewelry*: rating-only CSV + metadata
=============  =====================================================================

MMRec (`Zhou, 2023 <https://arxiv.org/abs/2302.03497>`_) builds its Baby,
Sports and Clothing sets from these Amazon files (5-core, see its
``preprocessing/`` notebooks); its already processed copies live in a shared
Google Drive folder, which has no stable per-file URL and is therefore not
downloaded here. Checksums: the MovieLens-100K MD5 is the one GroupLens
publishes beside the archive (``ml-100k.zip.md5``); for the Amazon files no
published checksum is known, so they are stored as :obj:`None` (size and
completeness are still checked against ``Content-Length``). Pass
``checksum=`` yourself to pin a file you have verified.
"""
import ast
import gzip
import hashlib
import http.client
import json
import logging
import os
import os.path as osp
import socket
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Union

log = logging.getLogger("pyg_mmrec.data.download")

_SNAP = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles"


@dataclass(frozen=True)
class RemoteFile:
    r"""One downloadable file: ``url``, local ``filename`` and an optional
    ``checksum`` written as ``"md5:<hex>"`` or ``"sha256:<hex>"``."""
    url: str
    filename: str
    checksum: Optional[str] = None
    extract: bool = False


@dataclass(frozen=True)
class DatasetSource:
    r"""A benchmark set: its files, home page and a short description."""
    name: str
    files: Sequence[RemoteFile]
    homepage: str
    description: str = ""


def _amazon(name: str, category: str, label: str) -> DatasetSource:
    return DatasetSource(
        name,
        [RemoteFile(f"{_SNAP}/ratings_{category}.csv", f"ratings_{category}.csv"),
         RemoteFile(f"{_SNAP}/meta_{category}.json.gz", f"meta_{category}.json.gz")],
        "http://jmcauley.ucsd.edu/data/amazon/links.html",
        f"Amazon 2014 '{label}': ratings (user, asin, rating, unix time; no header) and "
        f"item metadata (title, brand, categories, description, imUrl). MMRec's '{name}' "
        f"is its 5-core.",
    )


DATASETS: Dict[str, DatasetSource] = {
    "ml-100k": DatasetSource(
        "ml-100k",
        [RemoteFile("https://files.grouplens.org/datasets/movielens/ml-100k.zip",
                    "ml-100k.zip", "md5:0e33842e24a9c977be4e0107933c0723", extract=True)],
        "https://grouplens.org/datasets/movielens/100k/",
        "MovieLens-100K: 943 users, 1,682 movies, 100,000 ratings (u.data, tab-separated, "
        "no header). Research use only; not redistributable.",
    ),
    "baby": _amazon("baby", "Baby", "Baby"),
    "sports": _amazon("sports", "Sports_and_Outdoors", "Sports and Outdoors"),
    "clothing": _amazon("clothing", "Clothing_Shoes_and_Jewelry", "Clothing, Shoes and Jewelry"),
}


class DownloadError(RuntimeError):
    r"""A download failed (no network, HTTP error, checksum mismatch)."""


def default_cache_dir() -> str:
    r"""``<cache>/downloads`` with ``<cache>`` = ``$PYG_MMREC_CACHE`` or
    ``$XDG_CACHE_HOME/pyg_mmrec`` (``~/.cache/pyg_mmrec``), the same base that
    :class:`~pyg_mmrec.data.MMRecDataset` uses for processed files."""
    base = os.environ.get("PYG_MMREC_CACHE")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME", osp.join(osp.expanduser("~"), ".cache"))
        base = osp.join(xdg, "pyg_mmrec")
    return osp.join(base, "downloads")


def file_checksum(path: str, algorithm: str = "sha256", chunk_size: int = 1 << 20) -> str:
    r"""Hex digest of a file (``md5``, ``sha1``, ``sha256``, ...)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            h.update(block)
    return h.hexdigest()


def _parse_checksum(checksum: str) -> tuple:
    algo, sep, digest = checksum.partition(":")
    if not sep or algo.lower() not in hashlib.algorithms_available or not digest:
        raise ValueError(f"checksum must look like 'md5:<hex>' or 'sha256:<hex>', got "
                         f"'{checksum}'")
    return algo.lower(), digest.lower()


def verify_checksum(path: str, checksum: Optional[str]) -> bool:
    r"""True when ``checksum`` is :obj:`None` or matches the file."""
    if checksum is None:
        return True
    algo, digest = _parse_checksum(checksum)
    return file_checksum(path, algo) == digest


def _offline_message(url: str, path: str, err: BaseException) -> str:
    return (f"cannot download {url} ({err}). This machine seems to be offline or the host is "
            f"unreachable: download the file elsewhere and place it at '{path}' (it is then "
            f"verified and used), or set a mirror with `mirror=`/--mirror")


def download_file(url: str, path: str, checksum: Optional[str] = None, *,
                  timeout: float = 30.0, retries: int = 3, chunk_size: int = 1 << 16,
                  progress: bool = True) -> str:
    r"""Downloads ``url`` to ``path``, resumably and verified.

    Bytes go to ``path + '.part'``; when that exists (an earlier run broke
    off), the transfer continues with an HTTP ``Range`` request (a server that
    ignores ranges makes it start over). A connection that drops mid-transfer
    is resumed up to ``retries`` times. Only a complete file (``Content-Length``
    reached) whose ``checksum`` matches is moved to ``path``; a mismatch
    deletes the partial file and raises. An existing ``path`` that matches is
    returned without any network access.

    Raises:
        DownloadError: offline/unreachable host, HTTP error, checksum mismatch.
    """
    if checksum is not None:
        _parse_checksum(checksum)  # fail early on a malformed checksum
    if osp.exists(path):
        if verify_checksum(path, checksum):
            log.info("using cached %s", path)
            return path
        raise DownloadError(f"'{path}' exists but does not match {checksum}; delete it to "
                            f"download again")
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    part = path + ".part"
    attempts = 0
    while True:
        have = osp.getsize(part) if osp.exists(part) else 0
        req = urllib.request.Request(url, headers={"User-Agent": "pyg_mmrec-download"})
        if have:
            req.add_header("Range", f"bytes={have}-")
        try:
            resp = urllib.request.urlopen(req, timeout=timeout)
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # range beyond the end: the partial file is complete
                total = _total_from_content_range(e.headers.get("Content-Range"))
                if total is None or total == have:
                    break
                os.remove(part)  # inconsistent partial file: start over
                continue
            raise DownloadError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
        except (OSError, http.client.HTTPException) as e:  # URLError, timeout, refused
            raise DownloadError(_offline_message(url, path, getattr(e, "reason", e))) from None
        with resp:
            status = getattr(resp, "status", resp.getcode())
            c_range = resp.headers.get("Content-Range") or ""
            if have and status == 206 and c_range.startswith(f"bytes {have}-"):
                mode = "ab"
                total = _total_from_content_range(c_range)
                log.info("resuming %s at byte %d", url, have)
            elif status == 206:  # a range we did not ask for: start over
                if osp.exists(part):
                    os.remove(part)
                attempts += 1
                if attempts > retries:
                    raise DownloadError(f"{url}: server answered an unexpected range "
                                        f"'{c_range}'")
                continue
            else:  # 200: full body (no or ignored Range)
                mode, have = "wb", 0
                length = resp.headers.get("Content-Length")
                total = int(length) if length is not None else None
            try:
                _copy(resp, part, mode, have, total, chunk_size, progress, osp.basename(path))
            except (socket.timeout, ConnectionError, OSError, http.client.HTTPException) as e:
                attempts += 1
                if attempts > retries:
                    raise DownloadError(f"download of {url} kept failing ({e}); rerun to "
                                        f"resume from '{part}'") from None
                log.warning("connection lost (%s); resuming (%d/%d)", e, attempts, retries)
                continue
        size = osp.getsize(part)
        if total is not None and size < total:
            attempts += 1
            if attempts > retries:
                raise DownloadError(f"download of {url} incomplete ({size} of {total} "
                                    f"bytes); rerun to resume from '{part}'")
            continue
        break
    if not verify_checksum(part, checksum):
        algo, _ = _parse_checksum(checksum)  # type: ignore[arg-type]
        got = file_checksum(part, algo)
        os.remove(part)
        raise DownloadError(f"checksum mismatch for {url}: expected {checksum}, got "
                            f"{algo}:{got}; the partial file was deleted")
    os.replace(part, path)
    return path


def _total_from_content_range(value: Optional[str]) -> Optional[int]:
    # "bytes 100-199/200" or "bytes */200"
    if not value or "/" not in value:
        return None
    tail = value.rsplit("/", 1)[1].strip()
    return int(tail) if tail.isdigit() else None


def _copy(resp, part: str, mode: str, have: int, total: Optional[int], chunk_size: int,
          progress: bool, desc: str) -> None:
    from tqdm.auto import tqdm
    with open(part, mode) as f, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                     desc=desc, disable=not progress) as bar:
        while True:
            block = resp.read(chunk_size)
            if not block:
                break
            f.write(block)
            bar.update(len(block))


def _safe_extract(archive: str, folder: str) -> None:
    root = osp.realpath(folder)
    with zipfile.ZipFile(archive) as z:
        for member in z.namelist():
            target = osp.realpath(osp.join(folder, member))
            if target != root and not target.startswith(root + os.sep):
                raise DownloadError(f"{archive}: member '{member}' would be written outside "
                                    f"'{folder}'; refusing to extract")
        z.extractall(folder)


def download_dataset(name: Union[str, DatasetSource], root: Optional[str] = None, *,
                     mirror: Optional[str] = None, extract: bool = True,
                     progress: bool = True, timeout: float = 30.0) -> str:
    r"""Downloads (and unpacks) a benchmark set into ``root/<name>/``.

    Args:
        name (str or DatasetSource): one of :data:`DATASETS` (``ml-100k``,
            ``baby``, ``sports``, ``clothing``) or a custom source.
        root (str, optional): cache folder. (default: :func:`default_cache_dir`)
        mirror (str, optional): base URL that replaces each file's origin
            (``<mirror>/<filename>``), e.g. a local copy.
        extract (bool, optional): unpack zip archives (once). (default: :obj:`True`)

    Returns:
        The dataset folder.
    """
    if isinstance(name, str):
        if name not in DATASETS:
            raise ValueError(f"unknown dataset '{name}'; available: {sorted(DATASETS)}")
        src = DATASETS[name]
    else:
        src = name
    folder = osp.join(root or default_cache_dir(), src.name)
    os.makedirs(folder, exist_ok=True)
    for rf in src.files:
        url = f"{mirror.rstrip('/')}/{rf.filename}" if mirror else rf.url
        path = download_file(url, osp.join(folder, rf.filename), rf.checksum,
                             timeout=timeout, progress=progress)
        if extract and rf.extract and zipfile.is_zipfile(path):
            stamp = path + ".extracted"
            if not osp.exists(stamp):
                _safe_extract(path, folder)
                open(stamp, "w").close()
    return folder


def amazon_meta_to_items(meta_path: str, out_path: str,
                         asins: Optional[Iterable[str]] = None) -> int:
    r"""Turns Amazon 2014 ``meta_<Category>.json.gz`` into an item table for
    :mod:`~pyg_mmrec.data.build_dataset`.

    Writes a TSV with ``itemID`` (the asin), ``imUrl`` and ``text``; following
    MMRec's recipe the text is title, brand, the flattened category path and
    the description, joined by spaces (items with none of them get an empty
    text and thus ``text_mask`` False). The 2014 files hold one Python dict
    literal per line, which is parsed safely with :func:`ast.literal_eval`.
    Returns the number of items written.
    """
    keep = set(asins) if asins is not None else None
    opener = gzip.open if meta_path.endswith(".gz") else open
    n = 0
    tmp = out_path + ".tmp"
    with opener(meta_path, "rt", encoding="utf-8") as fin, \
            open(tmp, "w", encoding="utf-8") as fout:
        fout.write("itemID\timUrl\ttext\n")
        for lineno, line in enumerate(fin, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError:
                try:
                    d = ast.literal_eval(line)
                except (ValueError, SyntaxError):
                    raise ValueError(f"{meta_path}: line {lineno}: neither JSON nor a Python "
                                     f"dict literal") from None
            asin = str(d.get("asin", "")).strip()
            if not asin or (keep is not None and asin not in keep):
                continue
            cats: List[str] = []
            for path in d.get("categories") or []:
                cats.extend(str(c) for c in (path if isinstance(path, list) else [path]))
            parts = [str(d.get("title") or ""), str(d.get("brand") or ""), " ".join(cats),
                     str(d.get("description") or "")]
            text = " ".join(p.strip() for p in parts if p.strip())
            text = " ".join(text.split())  # tabs/newlines would break the TSV
            fout.write(f"{asin}\t{str(d.get('imUrl') or '').strip()}\t{text}\n")
            n += 1
    os.replace(tmp, out_path)
    return n


def main(argv: Optional[Sequence[str]] = None) -> str:
    import argparse
    p = argparse.ArgumentParser(prog="python -m pyg_mmrec.data.download",
                                description="Download a public benchmark set.")
    p.add_argument("name", choices=sorted(DATASETS))
    p.add_argument("--root", default=None,
                   help="cache folder (default: ~/.cache/pyg_mmrec/downloads)")
    p.add_argument("--mirror", default=None, help="base URL replacing the official origin")
    p.add_argument("--no-extract", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        folder = download_dataset(args.name, args.root, mirror=args.mirror,
                                  extract=not args.no_extract)
    except DownloadError as e:
        raise SystemExit(f"error: {e}")
    print(folder)
    return folder


__all__ = ["RemoteFile", "DatasetSource", "DATASETS", "DownloadError", "default_cache_dir",
           "file_checksum", "verify_checksum", "download_file", "download_dataset",
           "amazon_meta_to_items"]

if __name__ == "__main__":
    main()
