"""Binary data sets for training and evaluating BiHMs.

Every loader returns a ``torch.float32`` tensor of shape ``(n, d)`` whose values are 0 or 1.

* :func:`load_digits` — scikit-learn's bundled 8×8 digits (no download), binarized, with a fixed
  train/valid/test split; small enough for tests and exact enumeration.
* :func:`load_mnist_idx` / :func:`load_mnist_labels` — MNIST images / labels in IDX format, from a
  path (gzipped or not), images binarized by thresholding.
* :func:`load_dataset` — the benchmark sets of the BiHM paper (Bornschein et al., 2016), read from
  a local data folder when they are there (``data_dir`` / ``$BIHM_DATA_DIR``, the layout of the
  project's shared data), else downloaded on first use into a cache folder; checked against a
  published checksum where one exists, parsed and validated; :func:`list_datasets` names them and
  :func:`dataset_info` describes one.
* :func:`batches` — mini-batches for a training loop.

Registered sets (``d`` columns; train/valid/test rows):

=========================  ====  ============================  ==========================================
name                       d     rows                          source file format
=========================  ====  ============================  ==========================================
``binarized_mnist``        784   50000 / 10000 / 10000         Larochelle's fixed binarization, ``.amat``
``mnist``                  784   50000 / 10000 / 10000         MNIST IDX, thresholded at pixel/255 > 0.5
                                 (``train_all``: all 60000)
``caltech101_silhouettes`` 784   4100 / 2264 / 2307            Marlin's split 1, MATLAB ``.mat``
``adult``                  123   5000 / 1414 / 26147           LIBSVM (``a5a``), label dropped
``connect4``               126   16000 / 4000 / 47557          LIBSVM, label dropped
``dna``                    180   1400 / 600 / 1186             LIBSVM (``dna.scale``), label dropped
``mushrooms``              112   2000 / 500 / 5624             LIBSVM, label dropped
``nips``                   500   400 / 100 / 1240              ``.amat`` + 1 dummy last column, dropped
``ocr_letters``            128   32152 / 10000 / 10000         Taskar's ``letter.data.gz``, split here
``rcv1``                   150   40000 / 10000 / 150000        ``.amat`` + 1 label last column, dropped
``web``                    300   14000 / 3188 / 32561          LIBSVM (``w6a``), label dropped
=========================  ====  ============================  ==========================================

The eight UCI-derived sets and their splits are those of Larochelle & Murray (NADE, AISTATS 2011),
as distributed by Larochelle's MLPython (``mlpython/datasets/<name>.py``), which gives the file
names, formats and row counts used here.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import http.client
import math
import os
import random
import secrets
import struct
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Optional

import numpy as np
import torch
from tqdm import tqdm

__all__ = [
    "load_digits",
    "load_mnist_idx",
    "load_mnist_labels",
    "idx_image_shape",
    "load_dataset",
    "list_datasets",
    "dataset_info",
    "default_cache_dir",
    "default_data_dir",
    "LocalCopy",
    "batches",
    "DatasetInfo",
    "SplitSource",
    "RemoteFile",
    "DatasetUnavailableError",
    "ChecksumError",
    "DIGITS_SPLIT_SIZES",
    "DIGITS_SEED",
]


class DatasetUnavailableError(RuntimeError):
    """A data set file is not in the cache and cannot be downloaded (offline, unreachable URL,
    ``download=False``, or no public source); the message says where to place it by hand."""


class ChecksumError(ValueError):
    """A data set file's SHA-256 differs from the published one."""


# --------------------------------------------------------------------------------------------------
# scikit-learn digits
# --------------------------------------------------------------------------------------------------

#: Rows per split of :func:`load_digits` (1797 digits in all).
DIGITS_SPLIT_SIZES = {"train": 1197, "valid": 300, "test": 300}
#: Seed of the ``numpy.random.default_rng`` permutation that assigns digits to splits.
DIGITS_SEED = 1234


def load_digits(split: str = "train") -> torch.Tensor:
    """scikit-learn's 8×8 handwritten digits, binarized at half intensity, in a fixed split.

    Source: ``sklearn.datasets.load_digits`` (bundled with scikit-learn, no download): 1797 images
    with pixel values 0..16; ``x = 1`` where ``value / 16 > 0.5``. The digits are permuted with
    ``numpy.random.default_rng(DIGITS_SEED).permutation(1797)``; the first 1197 are ``"train"``,
    the next 300 ``"valid"``, the last 300 ``"test"`` (:data:`DIGITS_SPLIT_SIZES`), so the splits
    are disjoint and the same on every machine.

    Returns:
        ``float32`` tensor of shape ``(n, 64)`` with values in {0, 1}, rows in row-major pixel order.

    Raises:
        ValueError: ``split`` is not ``"train"``, ``"valid"`` or ``"test"``.
    """
    _check_split(split, DIGITS_SPLIT_SIZES)
    from sklearn.datasets import load_digits as sklearn_load_digits

    x = sklearn_load_digits().data / 16.0 > 0.5
    order = np.random.default_rng(DIGITS_SEED).permutation(len(x))
    return torch.from_numpy(x[order[_split_slice(DIGITS_SPLIT_SIZES, split)]].astype(np.float32))


# --------------------------------------------------------------------------------------------------
# MNIST IDX files
# --------------------------------------------------------------------------------------------------

IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions (n, rows, cols)
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension (n,)
_MNIST_PREFIXES = {"train": "train", "test": "t10k"}


def load_mnist_idx(path: str, *, split: Optional[str] = None, threshold: float = 0.5) -> torch.Tensor:
    """MNIST-style images from an IDX file, binarized as ``pixel / 255 > threshold``.

    IDX image format (LeCun et al., http://yann.lecun.com/exdb/mnist/): big-endian ``uint32`` magic
    2051, ``n``, ``rows``, ``cols``, then ``n·rows·cols`` pixel bytes. The file may be gzipped
    (recognized by its content, whatever its name).

    Args:
        path: an IDX file, or a folder holding ``train-images-idx3-ubyte[.gz]`` and/or
            ``t10k-images-idx3-ubyte[.gz]`` (the ``.gz`` one is preferred).
        split: with a folder, ``"train"`` or ``"test"`` picks the file; must be ``None`` with a file.
        threshold: in [0, 1).

    Returns:
        ``float32`` tensor of shape ``(n, rows·cols)`` with values in {0, 1}, pixels row-major.

    Raises:
        FileNotFoundError: the file, or both candidate names in the folder, are missing (the message
            names what was looked for).
        ValueError: bad magic number, truncated or oversized data, corrupt gzip stream (the message
            names the file); bad ``split`` or ``threshold``.
    """
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0, 1) (a fraction of full intensity), got {threshold}")
    return torch.from_numpy(_binarized_idx_images(_mnist_file(path, split, "images-idx3"), threshold))


def load_mnist_labels(path: str, *, split: Optional[str] = None) -> torch.Tensor:
    """MNIST-style labels from an IDX file.

    IDX label format: big-endian ``uint32`` magic 2049, ``n``, then ``n`` label bytes; gzipped or not.

    Args:
        path: an IDX file, or a folder holding ``train-labels-idx1-ubyte[.gz]`` and/or
            ``t10k-labels-idx1-ubyte[.gz]``.
        split: with a folder, ``"train"`` or ``"test"``; must be ``None`` with a file.

    Returns:
        ``int64`` tensor of shape ``(n,)``.

    Raises:
        FileNotFoundError, ValueError: as :func:`load_mnist_idx`.
    """
    labels = _read_idx(_mnist_file(path, split, "labels-idx1"), IDX_LABELS_MAGIC)
    return torch.from_numpy(labels.astype(np.int64))


def _mnist_file(path: str, split: Optional[str], kind: str) -> str:
    """The IDX file ``path`` names: itself, or the ``split`` file of ``kind`` in the folder ``path``."""
    if not os.path.isdir(path):
        if split is not None:
            raise ValueError(f"split={split!r} applies only when path is a folder; {path} is not one")
        if not os.path.exists(path):
            raise FileNotFoundError(f"MNIST IDX file not found: {path}")
        return path
    _check_split(split, _MNIST_PREFIXES)
    base = os.path.join(path, f"{_MNIST_PREFIXES[split]}-{kind}-ubyte")
    for candidate in (base + ".gz", base):
        if os.path.exists(candidate):
            return candidate
    raise FileNotFoundError(f"no MNIST {split} {kind.split('-')[0]} file in {path}: looked for {base}.gz and {base}")


def _binarized_idx_images(path: str, threshold: float = 0.5) -> np.ndarray:
    """``(n, rows·cols)`` float32 array of ``pixel / 255 > threshold`` from an IDX image file."""
    images = _read_idx(path, IDX_IMAGES_MAGIC)
    if len(images) == 0:
        raise ValueError(f"{path}: the IDX file holds no images (its header gives shape {images.shape})")
    return (images.reshape(len(images), -1) / 255.0 > threshold).astype(np.float32)


def idx_image_shape(path: str, *, split: Optional[str] = None) -> tuple[int, int]:
    """(rows, cols) of the images in an IDX image file (or a folder's ``split`` file), from its header.

    Raises:
        FileNotFoundError / ValueError: as :func:`load_mnist_idx`.
    """
    path = _mnist_file(path, split, "images-idx3")
    header = _read_bytes(path, 16)
    if len(header) < 16:
        raise ValueError(f"{path}: truncated IDX header ({len(header)} bytes, need 16)")
    magic, _, rows, cols = struct.unpack(">4I", header)
    if magic != IDX_IMAGES_MAGIC:
        raise ValueError(f"{path}: bad IDX magic number {magic}, expected {IDX_IMAGES_MAGIC}")
    return rows, cols


def _read_bytes(path: str, size: int = -1) -> bytes:
    """The bytes of a file, gunzipped when it is gzipped (recognized by its content); the first
    ``size`` bytes only when given. Raises ValueError naming the file for a corrupt gzip stream."""
    try:
        with open(path, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
        with (gzip.open if gzipped else open)(path, "rb") as f:
            return f.read(size)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ValueError(f"{path}: corrupt or truncated gzip stream ({exc})") from exc


def _read_idx(path: str, magic: int) -> np.ndarray:
    """The ``uint8`` array of an IDX file whose magic number must be ``magic`` (2051 or 2049)."""
    ndim = magic & 0xFF
    raw = _read_bytes(path)
    header_size = 4 * (1 + ndim)
    if len(raw) < header_size:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header_size})")
    found, *dims = struct.unpack(f">{1 + ndim}I", raw[:header_size])
    if found != magic:
        raise ValueError(f"{path}: bad IDX magic number {found}, expected {magic}")
    expected, actual = math.prod(dims), len(raw) - header_size
    if actual != expected:
        problem = "truncated" if actual < expected else "has trailing bytes"
        raise ValueError(
            f"{path}: {problem}: header gives shape {tuple(dims)} = {expected} bytes of data, file has {actual}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(dims)


# --------------------------------------------------------------------------------------------------
# Registry of the benchmark sets
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteFile:
    """One downloadable file: its name in the cache, where to get it (tried in order), its SHA-256.

    ``sha256=None`` means no published checksum was found: the file is then verified only
    structurally (row count, width, values in {0, 1}) after parsing.
    """

    filename: str
    urls: tuple[str, ...]
    sha256: Optional[str]


@dataclass(frozen=True)
class SplitSource:
    """Where one split comes from: the file, the reader that parses it to an ``(n, d)`` array, ``n``,
    and ``take``: the rows of the parsed file that form the split (None: all of them)."""

    file: RemoteFile
    read: Callable[[str], np.ndarray]
    size: int
    take: Optional[slice] = None


@dataclass(frozen=True)
class LocalCopy:
    """A data set file as it may sit in a local data folder (``--data-dir`` / ``$BIHM_DATA_DIR``), in
    the layout of the project's shared data: ``relpath`` under the folder, its reader, and what it is
    checked against — the SHA-256 of the file as stored, of its gunzipped content (a published
    ``.amat`` checksum kept gzipped), or the MD5 of its gunzipped content (MNIST's canonical IDX
    files). A file passes when any given checksum matches."""

    relpath: str
    read: Callable[[str], np.ndarray]
    sha256: Optional[str] = None
    content_sha256: Optional[str] = None
    content_md5: Optional[str] = None


@dataclass(frozen=True)
class DatasetInfo:
    """A registered data set: ``dim`` columns, its splits, provenance and licence.

    ``redistributable`` is ``True`` only where the distributor states a licence that allows copies;
    this project never redistributes any set, it downloads from the recorded sources.
    """

    name: str
    dim: int
    splits: Mapping[str, SplitSource]
    description: str
    license: str
    redistributable: bool
    image_shape: Optional[tuple] = None  #: (height, width) of an image, None for non-image data
    pixel_order: str = "C"  #: "C": row-major pixels; "F": column-major (MATLAB)
    local: Mapping[str, tuple] = dataclasses.field(default_factory=dict)  #: split -> LocalCopy candidates


def _read_amat(path: str, *, extra_columns: int = 0) -> np.ndarray:
    """A whitespace-separated text matrix (``.amat``, gzipped or not), without its last
    ``extra_columns`` columns. Single-digit 0/1 matrices with one separator between values are
    parsed directly from the bytes (the 78 MB binarized-MNIST file in a second); anything else
    with ``numpy.loadtxt``."""
    fast = _read_digit_matrix(path, separators=b" \n")
    if fast is not None:
        return fast[:, : fast.shape[1] - extra_columns]
    try:
        x = np.loadtxt(path, dtype=np.float32, ndmin=2)
    except ValueError as exc:
        raise ValueError(f"{path}: not a whitespace-separated numeric matrix ({exc})") from exc
    return x[:, : x.shape[1] - extra_columns]


def _read_digit_matrix(path: str, *, separators: bytes) -> Optional[np.ndarray]:
    """A matrix of single 0/1 digits each followed by one separator (the last of a row by a newline),
    as float32 — or None when the file is not exactly that (the caller falls back to a general parser)."""
    raw = _read_bytes(path)
    first = raw.find(b"\n")
    if first <= 0 or (first + 1) % 2 or len(raw) % (first + 1):
        return None
    cols, rows = (first + 1) // 2, len(raw) // (first + 1)
    b = np.frombuffer(raw, dtype=np.uint8).reshape(rows, 2 * cols)
    digits, seps = b[:, 0::2], b[:, 1::2]
    if not (np.isin(digits, (48, 49)).all() and (seps[:, -1] == 10).all()
            and np.isin(seps[:, :-1], np.frombuffer(separators, dtype=np.uint8)).all()):
        return None
    return (digits - 48).astype(np.float32)


def _read_csv01(path: str) -> np.ndarray:
    """Comma-separated 0/1 rows (the NADE ``.data`` files)."""
    fast = _read_digit_matrix(path, separators=b",")
    if fast is not None:
        return fast
    try:
        return np.loadtxt(path, delimiter=",", dtype=np.float32, ndmin=2)
    except ValueError as exc:
        raise ValueError(f"{path}: not a comma-separated numeric matrix ({exc})") from exc


def _read_npz(path: str, *, key: str) -> np.ndarray:
    """Array ``key`` of an ``.npz`` file (the MADE releases: ``train_data``/``valid_data``/``test_data``)."""
    try:
        with warnings.catch_warnings(), np.load(path, allow_pickle=False) as f:
            warnings.simplefilter("ignore", UserWarning)  # "created on Python 2": the MADE files were
            if key not in f.files:
                raise ValueError(f"{path}: no array {key!r} in the .npz file (it has {f.files})")
            return np.asarray(f[key], dtype=np.float32)
    except (OSError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: not a readable .npz file ({exc})") from exc


def _read_libsvm(path: str, *, dim: int) -> np.ndarray:
    """The dense ``(n, dim)`` features of a LIBSVM file with 1-based indices; the labels are dropped."""
    from sklearn.datasets import load_svmlight_file

    try:
        features, _labels = load_svmlight_file(path, n_features=dim, zero_based=False, dtype=np.float32)
    except ValueError as exc:
        raise ValueError(f"{path}: not a LIBSVM file with {dim} features ({exc})") from exc
    return features.toarray()


def _read_mat_array(path: str, *, key: str) -> np.ndarray:
    """The variable ``key`` of a MATLAB (v4–v7.2) ``.mat`` file, via ``scipy.io.loadmat``."""
    import scipy.io

    try:
        contents = scipy.io.loadmat(path, variable_names=[key])
    except (ValueError, TypeError, NotImplementedError, scipy.io.matlab.MatReadError) as exc:
        raise ValueError(f"{path}: not a readable MATLAB .mat file ({exc})") from exc
    if key not in contents:
        raise ValueError(f"{path}: no variable {key!r} in the .mat file")
    return contents[key]


#: Rows per split of ``ocr_letters`` and the seed of MLPython's shuffle of ``letter.data``.
OCR_LETTERS_SPLIT_SIZES = {"train": 32152, "valid": 10000, "test": 10000}
OCR_LETTERS_SEED = 12345


def _python2_shuffled_range(n: int, seed: int) -> list[int]:
    """``range(n)`` shuffled as Python 2.7's ``random.seed(seed); random.shuffle(...)`` does.

    Python 3 seeds the Mersenne Twister from an integer and draws ``random()`` exactly as 2.7 did,
    but its ``shuffle`` turns draws into indices differently, so 2.7's Fisher–Yates loop is spelled out.
    """
    rng = random.Random(seed)
    order = list(range(n))
    for i in reversed(range(1, n)):
        j = int(rng.random() * (i + 1))
        order[i], order[j] = order[j], order[i]
    return order


def _read_ocr_letters(path: str, *, split: str) -> np.ndarray:
    """One split of the OCR letters from Taskar's ``letter.data.gz``, as MLPython made them.

    Each tab-separated line holds id, letter, next id, word id, position, fold, then 128 pixels
    (16×8, row-major). MLPython's ``ocr_letters.obtain`` shuffles the lines with Python 2.7's
    ``random.seed(12345); random.shuffle`` and takes 32152 / 10000 / 10000 of them for
    train / valid / test; that procedure is reproduced here (not checked against MLPython's
    output files, which are not published).
    """
    try:
        with gzip.open(path, "rt", encoding="ascii") as f:
            rows = [line.strip("\n").strip("\t").split("\t")[6:] for line in f]
        pixels = np.array(rows, dtype=np.float32)
    except (EOFError, OSError, UnicodeDecodeError, ValueError, zlib.error) as exc:
        raise ValueError(f"{path}: not a gzipped tab-separated letter.data file ({exc})") from exc
    order = _python2_shuffled_range(len(pixels), OCR_LETTERS_SEED)
    return pixels[order[_split_slice(OCR_LETTERS_SPLIT_SIZES, split)]]


_LAROCHELLE = "http://www.cs.toronto.edu/~larocheh/public/datasets"
_NADE_REFERENCE = (
    "Larochelle & Murray, The Neural Autoregressive Distribution Estimator, AISTATS 2011; files and "
    "splits as distributed by Larochelle's MLPython (mlpython/datasets)."
)
_NO_LICENSE = "no licence stated by the distributor; not redistributed by this project"


def _larochelle_set(name, folder, pattern, dim, sizes, read, description, sha256=None,
                    license=_NO_LICENSE, redistributable=False) -> DatasetInfo:
    """A set with one file per split at ``<Larochelle's datasets>/<folder>/<pattern.format(split)>``."""
    splits = {}
    for split, size in sizes.items():
        filename = pattern.format(split)
        remote = RemoteFile(filename, (f"{_LAROCHELLE}/{folder}/{filename}",), (sha256 or {}).get(split))
        splits[split] = SplitSource(remote, read, size)
    return DatasetInfo(name, dim, splits, description, license, redistributable)


def _uci_libsvm(name, folder, pattern, dim, sizes, what) -> DatasetInfo:
    return _larochelle_set(name, folder, pattern, dim, sizes, functools.partial(_read_libsvm, dim=dim),
                           f"{what}: LIBSVM files, class label dropped. {_NADE_REFERENCE}")


_NADE_SIZES = {  # train, valid, test rows (NADE paper, Table 1; MLPython's `lengths`)
    "adult": (5000, 1414, 26147),
    "connect4": (16000, 4000, 47557),
    "dna": (1400, 600, 1186),
    "mushrooms": (2000, 500, 5624),
    "nips": (400, 100, 1240),
    "rcv1": (40000, 10000, 150000),
    "web": (14000, 3188, 32561),
}


def _sizes(name: str) -> dict[str, int]:
    return dict(zip(("train", "valid", "test"), _NADE_SIZES[name]))


_MNIST_LICENSE = "MNIST: Creative Commons Attribution-Share Alike 3.0 (yann.lecun.com/exdb/mnist)"
_MNIST_SHA256 = {"train": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                 "t10k": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"}
#: MD5 of the uncompressed canonical IDX image files (gzip headers differ between copies; the content does not).
_MNIST_CONTENT_MD5 = {"train": "6bbc9ace898e44ae57da46a324031adb", "t10k": "2646ac647ad5339dbf082846283269ea"}

# URLs and file names: binarized MNIST and the UCI-derived sets from MLPython's `obtain` functions
# (mlpython/datasets/<name>.py), CalTech-101 Silhouettes from Marlin's data page, MNIST from TFDS and torchvision.
# Checksums: SHA-256 of the whole downloaded file, exactly as published by
#   [TFDS-BM]    tensorflow/datasets, tensorflow_datasets/url_checksums/binarized_mnist.txt (commit 333639b3;
#                url, size in bytes, sha256; sizes 78400000 / 15680000 / 15680000);
#   [TFDS-MNIST] tensorflow/datasets, tensorflow_datasets/url_checksums/mnist.txt (commit 31f1255e; CVDF
#                mirror; sizes 9912422 / 1648877). The same SHA-256s are used by other projects for the
#                yann.lecun.com originals, and torchvision pins these files on its ossci-datasets mirror
#                by MD5 (f68b3c2d… train images, 9fb629c4… t10k images), so both mirrors are listed.
# No published checksum was found for the UCI-derived sets, letter.data.gz or the CalTech-101
# Silhouettes .mat file: those entries have sha256=None and are verified structurally only.
_DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        _larochelle_set(
            "binarized_mnist", "binarized_mnist", "binarized_mnist_{}.amat", 784,
            {"train": 50000, "valid": 10000, "test": 10000}, _read_amat,
            "MNIST with Larochelle's fixed stochastic binarization (Salakhutdinov & Murray, ICML 2008; "
            "Larochelle & Murray, AISTATS 2011): 784 space-separated 0/1 per line, row-major 28x28.",
            sha256={  # [TFDS-BM]
                "train": "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
                "valid": "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
                "test": "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
            },
            license=_MNIST_LICENSE + "; a derived work of MNIST", redistributable=True,
        ),
        DatasetInfo(
            "mnist", 784,
            {
                split: SplitSource(
                    RemoteFile(
                        f"{prefix}-images-idx3-ubyte.gz",
                        (f"https://storage.googleapis.com/cvdf-datasets/mnist/{prefix}-images-idx3-ubyte.gz",
                         f"https://ossci-datasets.s3.amazonaws.com/mnist/{prefix}-images-idx3-ubyte.gz"),
                        sha256,  # [TFDS-MNIST]
                    ),
                    _binarized_idx_images, size, take,
                )
                for split, prefix, size, take, sha256 in (
                    ("train", "train", 50000, slice(0, 50000), _MNIST_SHA256["train"]),
                    ("valid", "train", 10000, slice(50000, 60000), _MNIST_SHA256["train"]),
                    ("test", "t10k", 10000, None, _MNIST_SHA256["t10k"]),
                    ("train_all", "train", 60000, None, _MNIST_SHA256["train"]),
                )
            },
            "MNIST (LeCun, Cortes & Burges) thresholded at pixel/255 > 0.5, row-major 28x28; the usual "
            "split: the first 50000 training images train, the last 10000 validate, the 10000 test images "
            "test ('train_all' is all 60000 training images).",
            _MNIST_LICENSE, True,
        ),
        DatasetInfo(
            "caltech101_silhouettes", 784,
            {
                split: SplitSource(
                    RemoteFile("caltech101_silhouettes_28_split1.mat",
                               ("https://people.cs.umass.edu/~marlin/data/caltech101_silhouettes_28_split1.mat",),
                               None),
                    functools.partial(_read_mat_array, key=key), size,
                )
                for split, key, size in (("train", "train_data", 4100), ("valid", "val_data", 2264),
                                         ("test", "test_data", 2307))
            },
            "CalTech-101 Silhouettes 28x28, split 1 (Marlin, Swersky, Chen & de Freitas, AISTATS 2010): "
            "variables train_data / val_data / test_data of the .mat file, as stored (MATLAB column-major "
            "pixel order; reshape to (28, 28) with order='F' to view).",
            _NO_LICENSE, False,
        ),
        _uci_libsvm("adult", "adult", "a5a_{}.libsvm", 123, _sizes("adult"), "UCI Adult (LIBSVM a5a)"),
        _uci_libsvm("connect4", "connect-4", "connect-4_{}.libsvm", 126, _sizes("connect4"), "UCI Connect-4"),
        _uci_libsvm("dna", "dna", "dna_scale_{}.libsvm", 180, _sizes("dna"), "Statlog DNA (LIBSVM dna.scale)"),
        _uci_libsvm("mushrooms", "mushrooms", "mushrooms_{}.libsvm", 112, _sizes("mushrooms"), "UCI Mushrooms"),
        _uci_libsvm("web", "web", "w6a_{}.libsvm", 300, _sizes("web"), "Web (LIBSVM w6a)"),
        _larochelle_set(
            "nips", "nips-0-12", "nips-0-12_all_shuffled_bidon_target_{}.amat", 500, _sizes("nips"),
            functools.partial(_read_amat, extra_columns=1),
            "NIPS-0-12 word occurrences: .amat with a dummy last column ('bidon target'), dropped. "
            + _NADE_REFERENCE,
        ),
        _larochelle_set(
            "rcv1", "rcv1", "rcv1_all_subset.binary_{}_voc_150.amat", 150, _sizes("rcv1"),
            functools.partial(_read_amat, extra_columns=1),
            f"RCV1 subset, 150-word vocabulary: .amat with a class label last column, dropped. {_NADE_REFERENCE}",
        ),
        DatasetInfo(
            "ocr_letters", 128,
            {
                split: SplitSource(
                    RemoteFile("letter.data.gz",
                               ("http://ai.stanford.edu/~btaskar/ocr/letter.data.gz",
                                "http://info.usherbrooke.ca/hlarochelle/public/letter.data.gz"),
                               None),
                    functools.partial(_read_ocr_letters, split=split), size,
                )
                for split, size in OCR_LETTERS_SPLIT_SIZES.items()
            },
            "OCR letters (Kassel; Taskar, Guestrin & Koller, NIPS 2003), 16x8 binary pixels, split from "
            f"letter.data.gz as MLPython's ocr_letters.obtain does (see _read_ocr_letters). {_NADE_REFERENCE}",
            _NO_LICENSE, False,
        ),
    )
}


def _local_copies(info: DatasetInfo) -> dict:
    """Where each split of a registered set may sit in a local data folder (the shared data layout)."""
    name = info.name
    if name == "binarized_mnist":
        return {split: (LocalCopy(f"binarized_mnist/{src.file.filename}.gz", src.read, content_sha256=src.file.sha256),
                        LocalCopy(f"binarized_mnist/{src.file.filename}", src.read, sha256=src.file.sha256))
                for split, src in info.splits.items()}
    if name == "mnist":
        out = {}
        for split, src in info.splits.items():
            prefix = src.file.filename.split("-")[0]
            base = f"mnist/{prefix}-images-idx3-ubyte"
            out[split] = (LocalCopy(base + ".gz", src.read, sha256=src.file.sha256,
                                    content_md5=_MNIST_CONTENT_MD5[prefix]),
                          LocalCopy(base, src.read, content_md5=_MNIST_CONTENT_MD5[prefix]))
        return out
    if name in ("dna", "mushrooms", "nips"):  # the MADE releases
        return {split: (LocalCopy(f"uci/{name}/{name}.npz", functools.partial(_read_npz, key=f"{split}_data")),)
                for split in info.splits}
    if name in ("adult", "connect4"):  # NADE's train/valid files, a rebuilt test set
        return {"train": (LocalCopy(f"uci/{name}/{name}.train.data", _read_csv01),),
                "valid": (LocalCopy(f"uci/{name}/{name}.valid.data", _read_csv01),),
                "test": (LocalCopy(f"uci/{name}/{name}_test_reconstructed.npz",
                                   functools.partial(_read_npz, key="test_data")),)}
    return {}


_DATASETS = {name: dataclasses.replace(info, local=_local_copies(info)) for name, info in _DATASETS.items()}

_IMAGE_SHAPES = {"binarized_mnist": ((28, 28), "C"), "mnist": ((28, 28), "C"),
                 "caltech101_silhouettes": ((28, 28), "F"), "ocr_letters": ((16, 8), "C")}
_DATASETS = {name: dataclasses.replace(info, image_shape=_IMAGE_SHAPES[name][0], pixel_order=_IMAGE_SHAPES[name][1])
             if name in _IMAGE_SHAPES else info for name, info in _DATASETS.items()}


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`, sorted."""
    return sorted(_DATASETS)


def dataset_info(name: str) -> DatasetInfo:
    """The registry entry of ``name`` (columns, splits and their files, URLs, checksums, licence).

    Raises:
        ValueError: unknown ``name`` (the message lists the known ones).
    """
    if name not in _DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(list_datasets())}")
    return _DATASETS[name]


def default_cache_dir() -> str:
    """``$BIHM_TRITON_DATA`` if set, else ``~/.cache/bihm_triton``."""
    return os.environ.get("BIHM_TRITON_DATA") or os.path.join(os.path.expanduser("~"), ".cache", "bihm_triton")


def default_data_dir() -> Optional[str]:
    """``$BIHM_DATA_DIR``: a folder of local copies in the shared data layout (see :func:`load_dataset`)."""
    return os.environ.get("BIHM_DATA_DIR") or None


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
    """Download ``url`` to ``path`` through a temporary file in the same folder, checked before ``os.replace``."""
    folder, filename = os.path.split(path)
    partial = os.path.join(folder, f".{filename}.{secrets.token_hex(4)}.part")
    try:
        with open(partial, "xb") as out, urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            with tqdm(total=int(length) if length else None, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=filename, disable=None) as progress:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    out.write(chunk)
                    progress.update(len(chunk))
        _check_sha256(partial, sha256, origin=f"{filename} downloaded from {url} (not kept)")
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


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


def _validate_binary(x: np.ndarray, path: str, *, dim: int, rows: int) -> None:
    """Raise ValueError naming ``path`` unless ``x`` is a ``(rows, dim)`` array of zeros and ones."""
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"{path}: expected {dim} columns, parsed an array of shape {x.shape}")
    if x.shape[0] != rows:
        raise ValueError(f"{path}: expected {rows} rows, parsed {x.shape[0]}")
    bad = np.argwhere((x != 0) & (x != 1))
    if len(bad):
        row, col = bad[0]
        raise ValueError(f"{path}: values must be 0 or 1, found {x[row, col]} at row {row}, column {col}")


def _check_split(split: Optional[str], valid: Mapping[str, object], what: str = "split") -> None:
    if split not in valid:
        raise ValueError(f"{what} must be one of {', '.join(map(repr, valid))}; got {split!r}")


def _split_slice(sizes: Mapping[str, int], split: str) -> slice:
    """The rows of ``split`` when consecutive splits of ``sizes`` (in order) are cut from one array."""
    names = list(sizes)
    start = sum(sizes[name] for name in names[: names.index(split)])
    return slice(start, start + sizes[split])


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
