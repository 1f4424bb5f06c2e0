"""Atomic safetensors files: an interrupted save never corrupts the last good checkpoint."""

from __future__ import annotations

import hashlib
import os

import torch

from safetensors import safe_open
from safetensors.torch import save_file

from .files import atomic_write, write_json_atomic

__all__ = ["save_safetensors_atomic", "read_safetensors", "write_json_atomic"]


def tensors_digest(tensors: dict) -> str:
    """SHA-256 of every tensor's name, dtype, shape and bytes (sorted by name): detects corruption."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def save_safetensors_atomic(tensors: dict, path: str | os.PathLike, metadata: dict | None = None) -> None:
    """Write ``tensors`` (name -> tensor) and string ``metadata`` to a safetensors file, atomically,
    with the SHA-256 of the tensors (:func:`tensors_digest`) in the metadata."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    metadata = dict(metadata or {}, sha256=tensors_digest(tensors))
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_safetensors(path: str | os.PathLike) -> tuple[dict, dict]:
    """``(tensors, metadata)`` of a safetensors file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a readable safetensors file, its tensors do not match the SHA-256
            recorded when it was written, or a floating tensor holds NaN (corrupt; names the path).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with safe_open(path, framework="pt") as f:
            tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{path} is not a readable safetensors checkpoint: {e}") from e
    if "sha256" in metadata and tensors_digest(tensors) != metadata["sha256"]:
        raise ValueError(f"{path} is corrupt: its tensors do not match the SHA-256 recorded when it was written")
    for name, t in tensors.items():
        if t.is_floating_point() and bool(torch.isnan(t).any()):
            raise ValueError(f"{path} is corrupt: tensor {name!r} holds NaN values")
    return tensors, metadata
