"""The command line's ``--data`` sources: ``digits`` (scikit-learn's bundled digits), ``idx:<path>`` (MNIST IDX
files: a folder with the train and t10k files gives the standard 50,000 / 10,000 / 10,000 split; a single file is
split 70 / 10 / 20 %) or a registered set's name (:func:`~bihm_triton.data.list_datasets`), as :class:`Data`."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .loaders import load_dataset
from .readers import idx_image_shape, load_digits, load_mnist_idx
from .registry import dataset_info, list_datasets

__all__ = ["Data", "open_data", "load_split", "SPLITS"]

#: The splits every source has.
SPLITS = ("train", "valid", "test")


@dataclass
class Data:
    """A ``--data`` source: its splits and the shape of one image (``order="F"``: column-major pixels)."""

    source: str
    shape: tuple
    order: str = "C"
    data_dir: str | None = None

    def split(self, name: str) -> torch.Tensor:
        return load_split(self.source, name, data_dir=self.data_dir)


def open_data(source: str, data_dir: str | None = None) -> Data:
    """The :class:`Data` of a ``--data`` string; checks the name and reads image shapes from the files."""
    if data_dir is not None:
        data_dir = os.path.expanduser(data_dir)
        if not os.path.isdir(data_dir):
            raise FileNotFoundError(f"--data-dir {data_dir}: no such folder")
    if source == "digits":
        return Data(source, (8, 8))
    if source.startswith("idx:"):
        path = os.path.expanduser(source[4:])
        split = "test" if os.path.isdir(path) else None
        if split and not any(os.path.exists(os.path.join(path, f"{p}-images-idx3-ubyte{z}"))
                             for p in ("train", "t10k") for z in ("", ".gz")):
            raise FileNotFoundError(f"--data {source}: no MNIST IDX image files (train-images-idx3-ubyte[.gz], "
                                    f"t10k-images-idx3-ubyte[.gz]) in {path}")
        if split and not any(os.path.exists(os.path.join(path, f"t10k-images-idx3-ubyte{z}")) for z in ("", ".gz")):
            split = "train"
        return Data("idx:" + path, idx_image_shape(path, split=split))
    if source not in list_datasets():
        raise ValueError(f"--data {source!r}: expected 'digits', 'idx:<path to MNIST IDX files>' or one of "
                         f"{list_datasets()}")
    info = dataset_info(source)
    return Data(source, info.image_shape or (1, info.dim), info.pixel_order, data_dir)


def _idx_splits(path: str) -> dict:
    """train/valid/test of MNIST IDX images at ``path`` (see DESCRIPTION), each with at least one row."""
    has = {s: os.path.isdir(path) and any(os.path.exists(os.path.join(path, f"{p}-images-idx3-ubyte{z}"))
                                          for z in ("", ".gz"))
           for s, p in (("train", "train"), ("test", "t10k"))}
    if has["train"] and has["test"]:
        train = load_mnist_idx(path, split="train")
        n_valid = 10000 if train.shape[0] >= 20000 else train.shape[0] // 6
        out = {"train": train[:train.shape[0] - n_valid], "valid": train[train.shape[0] - n_valid:],
               "test": load_mnist_idx(path, split="test")}
        rule = "the training file's last images are validation, the t10k file is test"
    else:
        x = load_mnist_idx(path, split=("test" if has["test"] else "train") if os.path.isdir(path) else None)
        n = x.shape[0]
        test0, valid0 = n - n // 5, n - n // 5 - n // 10
        out = {"train": x[:valid0], "valid": x[valid0:test0], "test": x[test0:]}
        rule = "the last 20 % are test and the 10 % before them validation"
    for split, x in out.items():
        if x.shape[0] < 1:
            raise ValueError(f"--data idx:{path}: too few images for a {split} split ({rule}; "
                             f"{sum(v.shape[0] for v in out.values())} images in all, at least 10 needed)")
    return out


def load_split(source: str, split: str, *, data_dir: str | None = None) -> torch.Tensor:
    """(n, d) float32 binary data of one split of a ``--data`` source (``data_dir``: local copies of the
    registered sets, see :func:`bihm_triton.data.load_dataset`)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if source == "digits":
        return load_digits(split)
    if source.startswith("idx:"):
        return _idx_splits(os.path.expanduser(source[4:]))[split]
    if source not in list_datasets():
        raise ValueError(f"--data {source!r}: expected 'digits', 'idx:<path to MNIST IDX files>' or one of "
                         f"{list_datasets()}")
    return load_dataset(source, split, data_dir=data_dir)
