"""Loading a registered set's split, and mini-batches."""

from __future__ import annotations

import os
from typing import Iterator, Optional

import numpy as np
import torch

from .fetch import _fetch, _local_path, _not_in_folder, default_cache_dir, default_data_dir
from .readers import _check_split, _validate_binary
from .registry import dataset_info


def load_dataset(name: str, split: str = "train", *, data_dir: Optional[str] = None, cache_dir: Optional[str] = None,
                 download: bool = True) -> torch.Tensor:
    """One split of a registered benchmark set (see :func:`list_datasets` and the module docstring).

    **Local copies first.** With ``data_dir`` the split is read from that folder, which must hold it
    (a folder given explicitly is never passed over for a download); ``$BIHM_DATA_DIR`` (the default)
    is used when it holds the split, else the cache or a download. The layout is the project's
    shared data:
    ``binarized_mnist/binarized_mnist_<split>.amat[.gz]`` (the gunzipped content checked against the
    published SHA-256), ``mnist/{train,t10k}-images-idx3-ubyte[.gz]`` (the published SHA-256 of the
    ``.gz``, or the MD5 of the canonical uncompressed file), ``uci/<name>/<name>.npz`` (the MADE
    releases of dna, mushrooms, nips) and ``uci/<name>/<name>.{train,valid}.data`` plus
    ``uci/<name>/<name>_test_reconstructed.npz`` (adult, connect4). Sets without a published
    checksum are validated structurally (rows, width, values in {0, 1}).

    Otherwise the split's file lives at ``<cache_dir>/<name>/<filename>``. If it is missing and ``download``
    is true it is downloaded (urllib, progress bar on a terminal) from the recorded URLs in turn,
    checked against the published SHA-256 where there is one, and only then moved into place
    (temporary file + ``os.replace``), so a failed or corrupt download never sits under the final name.
    A file already in the cache is checked against the SHA-256 too. The parsed array is validated:
    2-D, ``dim`` columns, the split's row count, values in {0, 1}.

    Args:
        name: a name from :func:`list_datasets`.
        split: ``"train"``, ``"valid"`` or ``"test"`` (``mnist`` also ``"train_all"``: all 60000
            training images; its ``"train"``/``"valid"`` are the usual 50000/10000 split of them).
        data_dir: a folder of local copies that holds the set (default :func:`default_data_dir`, which
            may lack it).
        cache_dir: defaults to :func:`default_cache_dir` (``$BIHM_TRITON_DATA`` or ``~/.cache/bihm_triton``).
        download: if false, a missing file raises instead of being downloaded.

    Returns:
        ``float32`` tensor of shape ``(n, dim)`` with values in {0, 1}.

    Raises:
        FileNotFoundError: ``data_dir`` was given and does not hold the split (the message says what the
            folder holds).
        ValueError: unknown ``name`` or ``split`` (the message lists the valid ones); a file whose
            content does not parse or validate (the message names the file and the offending shape
            or value).
        ChecksumError: the file's SHA-256 is not the published one (names the file, expected and actual).
        DatasetUnavailableError: the file is missing and cannot be downloaded (offline, unreachable
            URL, ``download=False``, or no public source); names the URLs tried and the exact path
            where the file can be placed by hand.
    """
    info = dataset_info(name)
    _check_split(split, info.splits, f"split of {name}")
    source = info.splits[split]
    path, read = _local_path(info, split, data_dir or default_data_dir()), None
    if path is None and data_dir:  # a folder was given: it is the source, never a silent download
        raise FileNotFoundError(_not_in_folder(info, split, data_dir))
    if path is not None:
        path, read = path
    else:
        folder = os.path.abspath(os.path.join(cache_dir or default_cache_dir(), name))
        path, read = _fetch(source.file, folder, download, info), source.read
    x = read(path)
    if source.take is not None:
        x = x[source.take]
    _validate_binary(x, path, dim=info.dim, rows=source.size)
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


# --------------------------------------------------------------------------------------------------
# Mini-batches
# --------------------------------------------------------------------------------------------------


def batches(x: torch.Tensor, batch_size: int, *, shuffle: bool = True,
            generator: Optional[torch.Generator] = None) -> Iterator[torch.Tensor]:
    """Yield the rows of ``x`` (shape ``(n, ...)``) in mini-batches of ``batch_size`` (the last may be smaller).

    With ``shuffle`` the rows come in the order of ``torch.randperm(n, generator=generator)`` (one
    epoch, every row once); otherwise in order, as views.

    Raises:
        ValueError: ``batch_size < 1``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if not shuffle:
        yield from torch.split(x, batch_size)
        return
    order = torch.randperm(len(x), generator=generator).to(x.device)
    for start in range(0, len(x), batch_size):
        yield x[order[start : start + batch_size]]
