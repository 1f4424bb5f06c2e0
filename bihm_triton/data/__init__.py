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

The package: :mod:`~.readers` (file formats, the bundled digits), :mod:`~.registry` (the sets and their
splits), :mod:`~.fetch` (local copies, the cache, downloads, checksums), :mod:`~.loaders` (a split of a set,
mini-batches), :mod:`~.sources` (the command line's ``--data`` strings).

The eight UCI-derived sets and their splits are those of Larochelle & Murray (NADE, AISTATS 2011),
as distributed by Larochelle's MLPython (``mlpython/datasets/<name>.py``), which gives the file
names, formats and row counts used here.
"""

from . import fetch, loaders, readers, registry, sources  # noqa: F401
from .fetch import ChecksumError, DatasetUnavailableError, default_cache_dir, default_data_dir  # noqa: F401
from .loaders import batches, load_dataset  # noqa: F401
from .readers import (DIGITS_SEED, DIGITS_SPLIT_SIZES, IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, OCR_LETTERS_SEED,  # noqa: F401
                      idx_image_shape, load_digits,
                      load_mnist_idx, load_mnist_labels)
from .registry import DatasetInfo, LocalCopy, RemoteFile, SplitSource, dataset_info, list_datasets  # noqa: F401
from .sources import Data, load_split, open_data  # noqa: F401

__all__ = [
    "load_digits", "load_mnist_idx", "load_mnist_labels", "idx_image_shape", "load_dataset", "list_datasets",
    "dataset_info", "default_cache_dir", "default_data_dir", "LocalCopy", "batches", "DatasetInfo", "SplitSource",
    "RemoteFile", "DatasetUnavailableError", "ChecksumError", "DIGITS_SPLIT_SIZES", "DIGITS_SEED", "Data",
    "open_data", "load_split",
]
