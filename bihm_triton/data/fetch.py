"""Where data files are found (local copies, the cache) and how they are fetched and checked (downloads, checksums)."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import urllib.error
import urllib.request
import zlib
from typing import Optional

from tqdm import tqdm

from ..files import atomic_write, cache_folder
from .registry import DatasetInfo, LocalCopy, RemoteFile


class DatasetUnavailableError(RuntimeError):
    """A data set file is not in the cache and cannot be downloaded (offline, unreachable URL,
    ``download=False``, or no public source); the message says where to place it by hand."""


class ChecksumError(ValueError):
    """A data set file's SHA-256 differs from the published one."""


def default_cache_dir() -> str:
    """``$BIHM_TRITON_DATA`` if set, else ``~/.cache/bihm_triton`` (the library's cache rule,
    :func:`bihm_triton.files.cache_folder`; nothing is created here)."""
    return cache_folder("", env="BIHM_TRITON_DATA", env_subfolder=False, create=False)


def default_data_dir() -> Optional[str]:
    """``$BIHM_DATA_DIR``: a folder of local copies in the shared data layout (see :func:`load_dataset`)."""
    return os.environ.get("BIHM_DATA_DIR") or None


def _folder_listing(folder: str, limit: int = 12) -> str:
    """``"a/, b.txt, c/"``: what a folder holds (folders marked with /), the first ``limit`` entries."""
    try:
        names = sorted(os.listdir(folder))
    except OSError as e:
        return f"(unreadable: {e.strerror})"
    if not names:
        return "nothing (it is empty)"
    shown = [n + ("/" if os.path.isdir(os.path.join(folder, n)) else "") for n in names[:limit]]
    return ", ".join(shown) + (f", ... ({len(names)} entries)" if len(names) > limit else "")


def _not_in_folder(info: DatasetInfo, split: str, data_dir: str) -> str:
    """Why ``data_dir`` (given explicitly) does not provide the split, with what the folder holds."""
    folder = os.path.expanduser(data_dir)
    if not os.path.isdir(folder):
        return f"{info.name}: the data folder {data_dir} (data_dir / --data-dir) does not exist"
    copies = info.local.get(split, ())
    if not copies:
        return (f"{info.name}: the data folder {data_dir} (data_dir / --data-dir) cannot hold it (the shared data "
                f"layout has no place for this set); leave the folder out to download it")
    sub = copies[0].relpath.split("/")[0]
    inside = (f"; its {sub}/ holds: {_folder_listing(os.path.join(folder, sub))}"
              if os.path.isdir(os.path.join(folder, sub)) else "")
    return (f"{info.name}: the data folder {data_dir} (data_dir / --data-dir) has no {split} split of it "
            f"(looked for {' or '.join(c.relpath for c in copies)}); the folder holds: {_folder_listing(folder)}"
            f"{inside}. Give the folder that holds {sub}/, or leave the folder out to download the set")


def _local_path(info: DatasetInfo, split: str, data_dir: Optional[str]):
    """``(path, reader)`` of a checked local copy of the split in ``data_dir``, or None if there is none."""
    if not data_dir:
        return None
    for copy in info.local.get(split, ()):
        path = os.path.join(os.path.expanduser(data_dir), copy.relpath)
        if os.path.isfile(path):
            _check_local(path, copy)
            return path, copy.read
    return None


def _check_local(path: str, copy: LocalCopy) -> None:
    """Raise :class:`ChecksumError` unless one of the copy's checksums matches (none given: no check)."""
    expected = [(k, v) for k, v in (("sha256", copy.sha256), ("content_sha256", copy.content_sha256),
                                    ("content_md5", copy.content_md5)) if v]
    if not expected:
        return
    found = {}
    for kind, want in expected:
        if kind == "sha256":
            got = _file_digest(path, hashlib.sha256, gunzip=False)
        else:
            got = _file_digest(path, hashlib.sha256 if kind == "content_sha256" else hashlib.md5, gunzip=True)
        if got == want:
            return
        found[kind] = got
    raise ChecksumError(f"{path} (local copy) matches none of its published checksums: "
                        + "; ".join(f"{k} expected {dict(expected)[k]}, got {v}" for k, v in found.items()))


def _file_digest(path: str, algorithm, *, gunzip: bool) -> str:
    digest = algorithm()
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    try:
        with (gzip.open if gunzip and gzipped else open)(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ValueError(f"{path}: corrupt or truncated gzip stream ({exc})") from exc
    return digest.hexdigest()


_DOWNLOAD_TIMEOUT_S = 60
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)


def _fetch(remote: RemoteFile, folder: str, download: bool, info: DatasetInfo) -> str:
    """Path of ``remote`` in ``folder``: checked if present, else downloaded and checked."""
    path = os.path.join(folder, remote.filename)
    if os.path.exists(path):
        _check_sha256(path, remote.sha256, origin=f"{path} (already in the cache; delete it to download it again)")
        return path
    if not remote.urls:
        raise DatasetUnavailableError(
            f"{info.name}: no public download source is known for {remote.filename} ({info.license}); "
            f"obtain it yourself and place it at {path}")
    if not download:
        raise DatasetUnavailableError(
            f"{info.name}: {path} is missing and download=False; download it from {remote.urls[0]} "
            f"and place it at {path}, or call with download=True")
    created = not os.path.isdir(folder)
    os.makedirs(folder, exist_ok=True)
    failures = []
    for url in remote.urls:
        try:
            _download(url, path, remote.sha256)
            return path
        except _NETWORK_ERRORS as exc:
            failures.append(f"{url}: {exc}")
    if created and not os.listdir(folder):  # leave no empty cache folder behind
        os.rmdir(folder)
    raise DatasetUnavailableError(
        f"{info.name}: could not download {remote.filename} ({'; '.join(failures)}); download it by other means "
        f"and place it at {path}, or pass the folder that holds your copy as data_dir (--data-dir)")


def _download(url: str, path: str, sha256: Optional[str]) -> None:
    """Download ``url`` to ``path`` atomically (:func:`bihm_triton.files.atomic_write`), checked before it takes
    the final name: a failed or corrupt download is never under it."""
    filename = os.path.basename(path)

    def write(partial):
        with open(partial, "wb") as out, urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            with tqdm(total=int(length) if length else None, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=filename, disable=None) as progress:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    out.write(chunk)
                    progress.update(len(chunk))
        _check_sha256(partial, sha256, origin=f"{filename} downloaded from {url} (not kept)")

    atomic_write(path, write)


def _check_sha256(path: str, expected: Optional[str], *, origin: str) -> None:
    """Raise :class:`ChecksumError` (describing the file as ``origin``) if ``path``'s SHA-256 is not ``expected``."""
    if expected is None:
        return
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise ChecksumError(f"SHA-256 mismatch for {origin}: expected {expected}, got {digest.hexdigest()}")


