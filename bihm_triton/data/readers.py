"""File formats of the data sets (IDX, .amat, LIBSVM, CSV, .npz, .mat, OCR letters) and scikit-learn's bundled digits."""

from __future__ import annotations

import gzip
import math
import os
import random
import struct
import warnings
import zipfile
import zlib
from typing import Mapping, Optional

import numpy as np
import torch


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


def _check_split(split: Optional[str], valid: Mapping[str, object], what: str = "split") -> None:
    if split not in valid:
        raise ValueError(f"{what} must be one of {', '.join(map(repr, valid))}; got {split!r}")


def _split_slice(sizes: Mapping[str, int], split: str) -> slice:
    """The rows of ``split`` when consecutive splits of ``sizes`` (in order) are cut from one array."""
    names = list(sizes)
    start = sum(sizes[name] for name in names[: names.index(split)])
    return slice(start, start + sizes[split])


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
