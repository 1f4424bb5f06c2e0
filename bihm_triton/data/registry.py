"""The registry of the benchmark sets: what each split is, where it comes from, how it is checked."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

import numpy as np

from .readers import (OCR_LETTERS_SPLIT_SIZES, _binarized_idx_images, _read_amat, _read_csv01, _read_libsvm,
                      _read_mat_array, _read_npz, _read_ocr_letters)


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


