"""Atomic safetensors files: an interrupted save never corrupts the last good checkpoint."""

from __future__ import annotations

import json
import os
import tempfile

from safetensors import safe_open
from safetensors.torch import save_file

__all__ = ["save_safetensors_atomic", "read_safetensors", "write_json_atomic"]


def _atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp_path)``, fsync, then ``os.replace`` onto ``path`` (same directory, so the rename is atomic)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_safetensors_atomic(tensors: dict, path: str | os.PathLike, metadata: dict | None = None) -> None:
    """Write ``tensors`` (name -> tensor) and string ``metadata`` to a safetensors file, atomically."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_safetensors(path: str | os.PathLike) -> tuple[dict, dict]:
    """``(tensors, metadata)`` of a safetensors file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a readable safetensors file (names the path).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with safe_open(path, framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{path} is not a readable safetensors checkpoint: {e}") from e


def write_json_atomic(obj, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")

    _atomic_write(path, write)

