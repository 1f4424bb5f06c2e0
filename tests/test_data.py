"""Tests of bihm_triton.data: digits split, IDX parser, registry readers, download and checksum logic.

No network: downloads go to ``file://`` URLs in ``tmp_path`` or to a patched ``urlopen``. The real
MNIST test set is read from ``../shared/data/mnist`` when that folder exists.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import struct
import urllib.error

import numpy as np
import pytest
import scipy.io
import torch

from bihm_triton import data
import helpers

SPLITS = ("train", "valid", "test")
MNIST_DIR = helpers.MNIST_DIR


# ---------------------------------------------------------------------------------------------- digits


def _sorted_rows(a: np.ndarray) -> np.ndarray:
    return a[np.lexsort(a.T[::-1])]


def test_digits_shapes_dtype_and_values():
    for split, size in data.DIGITS_SPLIT_SIZES.items():
        x = data.load_digits(split)
        assert x.shape == (size, 64) and x.dtype == torch.float32
        assert set(x.unique().tolist()) == {0.0, 1.0}


def test_digits_splits_partition_all_1797_digits_deterministically():
    from sklearn.datasets import load_digits

    full = (load_digits().data / 16.0 > 0.5).astype(np.float32)
    parts = [data.load_digits(split).numpy() for split in SPLITS]
    assert [len(p) for p in parts] == [1197, 300, 300] and sum(map(len, parts)) == 1797
    # Together the splits hold every digit exactly once (as a multiset of rows): disjoint, complete.
    np.testing.assert_array_equal(_sorted_rows(np.concatenate(parts)), _sorted_rows(full))
    for split, part in zip(SPLITS, parts):
        np.testing.assert_array_equal(data.load_digits(split).numpy(), part)
    assert not np.array_equal(parts[0], full[:1197]), "the split should be a permutation, not the file order"


def test_digits_bad_split():
    with pytest.raises(ValueError, match="split must be one of 'train', 'valid', 'test'; got 'validation'"):
        data.load_digits("validation")


# ------------------------------------------------------------------------------------------------- IDX


def _write_idx(path, magic, dims, payload, *, gz):
    raw = struct.pack(f">{1 + len(dims)}I", magic, *dims) + bytes(payload)
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(raw)
    return str(path)


@pytest.fixture
def pixels():
    return np.random.default_rng(0).integers(0, 256, size=(3, 4, 5), dtype=np.uint8)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_images_and_labels_round_trip(tmp_path, pixels, gz):
    images = _write_idx(tmp_path / "img", data.IDX_IMAGES_MAGIC, pixels.shape, pixels.tobytes(), gz=gz)
    x = data.load_mnist_idx(images)
    assert x.dtype == torch.float32 and x.shape == (3, 20)
    np.testing.assert_array_equal(x.numpy(), pixels.reshape(3, 20) / 255.0 > 0.5)
    np.testing.assert_array_equal(data.load_mnist_idx(images, threshold=0.0).numpy(), pixels.reshape(3, 20) > 0)

    labels = _write_idx(tmp_path / "lab", data.IDX_LABELS_MAGIC, (4,), [7, 0, 9, 3], gz=gz)
    y = data.load_mnist_labels(labels)
    assert y.dtype == torch.int64 and y.tolist() == [7, 0, 9, 3]


def test_idx_folder_picks_split_and_prefers_gz(tmp_path, pixels):
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", data.IDX_IMAGES_MAGIC, pixels.shape, pixels.tobytes(), gz=True)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", data.IDX_IMAGES_MAGIC, (1, 4, 5), bytes(20), gz=False)
    _write_idx(tmp_path / "train-images-idx3-ubyte", data.IDX_IMAGES_MAGIC, (2, 4, 5), bytes(40), gz=False)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", data.IDX_LABELS_MAGIC, (3,), [1, 2, 3], gz=True)
    assert data.load_mnist_idx(str(tmp_path), split="test").shape == (3, 20)
    assert data.load_mnist_idx(str(tmp_path), split="train").shape == (2, 20)
    assert data.load_mnist_labels(str(tmp_path), split="test").tolist() == [1, 2, 3]
    with pytest.raises(FileNotFoundError, match=r"train-labels-idx1-ubyte\.gz and .*train-labels-idx1-ubyte$"):
        data.load_mnist_labels(str(tmp_path), split="train")
    with pytest.raises(ValueError, match="split must be one of 'train', 'test'"):
        data.load_mnist_idx(str(tmp_path), split=None)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_errors_name_the_file(tmp_path, pixels, gz):
    good = pixels.tobytes()
    cases = {
        "bad IDX magic number 2049, expected 2051": (data.IDX_LABELS_MAGIC, pixels.shape, good),
        r"truncated: header gives shape \(3, 4, 5\) = 60 bytes of data, file has 59":
            (data.IDX_IMAGES_MAGIC, pixels.shape, good[:-1]),
        "has trailing bytes": (data.IDX_IMAGES_MAGIC, pixels.shape, good + b"\0"),
        r"truncated IDX header \(4 bytes, need 16\)": (data.IDX_IMAGES_MAGIC, (), b""),  # only the magic number
    }
    for i, (message, (magic, dims, payload)) in enumerate(cases.items()):
        path = _write_idx(tmp_path / f"case{i}", magic, dims, payload, gz=gz)
        with pytest.raises(ValueError, match=re.escape(path) + ": " + message):
            data.load_mnist_idx(path)


def test_idx_truncated_gzip_stream_and_missing_file(tmp_path, pixels):
    _write_idx(tmp_path / "whole.gz", data.IDX_IMAGES_MAGIC, pixels.shape, pixels.tobytes(), gz=True)
    cut = tmp_path / "cut.gz"
    cut.write_bytes((tmp_path / "whole.gz").read_bytes()[:-12])
    with pytest.raises(ValueError, match=re.escape(str(cut)) + ": corrupt or truncated gzip stream"):
        data.load_mnist_idx(str(cut))
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        data.load_mnist_idx(str(tmp_path / "nothing-here"))


def test_idx_argument_errors(tmp_path, pixels):
    path = _write_idx(tmp_path / "img", data.IDX_IMAGES_MAGIC, pixels.shape, pixels.tobytes(), gz=False)
    with pytest.raises(ValueError, match="applies only when path is a folder"):
        data.load_mnist_idx(path, split="test")
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\)"):
        data.load_mnist_idx(path, threshold=128)


@pytest.mark.skipif(not os.path.isdir(MNIST_DIR), reason=f"real MNIST test set not found at {MNIST_DIR}")
def test_real_mnist_test_set():
    x = data.load_mnist_idx(MNIST_DIR, split="test")
    assert x.shape == (10000, 784) and x.dtype == torch.float32
    assert set(x.unique().tolist()) == {0.0, 1.0}
    assert 0.10 < x.mean().item() < 0.16  # thresholded MNIST is ~13% ink
    y = data.load_mnist_labels(os.path.join(MNIST_DIR, "t10k-labels-idx1-ubyte.gz"))
    assert torch.bincount(y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    torch.testing.assert_close(data.load_mnist_idx(os.path.join(MNIST_DIR, "t10k-images-idx3-ubyte.gz")), x)


# ----------------------------------------------------------------------------------------- file readers


def test_amat_reader_drops_extra_columns(tmp_path):
    path = tmp_path / "x.amat"
    path.write_text("0 1 1 7\n1 0 0 3\n")
    np.testing.assert_array_equal(data.readers._read_amat(str(path), extra_columns=1), [[0, 1, 1], [1, 0, 0]])
    np.testing.assert_array_equal(data.readers._read_amat(str(path))[:, 3], [7, 3])
    path.write_text("0 1 1\n1 0\n")
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": not a whitespace-separated numeric matrix"):
        data.readers._read_amat(str(path))


def test_libsvm_reader(tmp_path):
    path = tmp_path / "x.libsvm"
    path.write_text("+1 1:1 3:1\n-1 2:1\n")
    np.testing.assert_array_equal(data.readers._read_libsvm(str(path), dim=4), [[1, 0, 1, 0], [0, 1, 0, 0]])
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": not a LIBSVM file with 2 features"):
        data.readers._read_libsvm(str(path), dim=2)


def test_caltech_mat_reader(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {key: (rng.random((n, 784)) < 0.3).astype(np.uint8)
              for key, n in (("train_data", 5), ("val_data", 2), ("test_data", 3))}
    path = str(tmp_path / "caltech101_silhouettes_28_split1.mat")
    scipy.io.savemat(path, {**arrays, "train_labels": np.ones((5, 1))})
    info = data.dataset_info("caltech101_silhouettes")
    for split, key in (("train", "train_data"), ("valid", "val_data"), ("test", "test_data")):
        np.testing.assert_array_equal(info.splits[split].read(path), arrays[key])
    with pytest.raises(ValueError, match="no variable 'nope'"):
        data.readers._read_mat_array(path, key="nope")
    (tmp_path / "junk.mat").write_bytes(b"junk" * 64)
    with pytest.raises(ValueError, match="junk.mat: not a readable MATLAB .mat file"):
        data.readers._read_mat_array(str(tmp_path / "junk.mat"), key="train_data")


def test_python2_shuffle_is_pinned():
    # Regression pin: this permutation defines the ocr_letters splits and must never change.
    assert data.readers._python2_shuffled_range(10, data.OCR_LETTERS_SEED) == [1, 3, 9, 5, 8, 7, 2, 6, 0, 4]
    order = data.readers._python2_shuffled_range(1000, 7)
    assert sorted(order) == list(range(1000)) and order != list(range(1000))


def test_ocr_letters_reader(tmp_path):
    rng = np.random.default_rng(2)
    pixels = (rng.random((6, 128)) < 0.4).astype(int)
    lines = [f"{i + 1}\t{'abcdef'[i]}\t{i + 2}\t1\t{i + 1}\t0\t" + "\t".join(map(str, row)) + "\t\n"
             for i, row in enumerate(pixels)]
    path = tmp_path / "letter.data.gz"
    with gzip.open(path, "wt") as f:
        f.writelines(lines)
    train = data.readers._read_ocr_letters(str(path), split="train")  # all 6 rows fall in the first 32152
    np.testing.assert_array_equal(train, pixels[data.readers._python2_shuffled_range(6, data.OCR_LETTERS_SEED)])
    assert data.readers._read_ocr_letters(str(path), split="test").shape == (0, 128)
    with gzip.open(path, "wt") as f:
        f.writelines(lines[:2] + ["1\ta\t2\t1\t1\t0\t0\t1\n"])
    with pytest.raises(ValueError, match="letter.data.gz: not a gzipped tab-separated letter.data file"):
        data.readers._read_ocr_letters(str(path), split="train")


# ------------------------------------------------------------------------------------ registry, download

TOY_CONTENT = b"0 1 1\n1 0 0\n"
TOY_ROWS = [[0, 1, 1], [1, 0, 0]]


def _toy(monkeypatch, tmp_path, content=TOY_CONTENT, *, sha256="auto", urls=None, dim=3, rows=2):
    """Register a one-split set 'toy' whose file is served from tmp_path/remote; return the cache dir."""
    remote = tmp_path / "remote" / "toy_train.amat"
    remote.parent.mkdir(exist_ok=True)
    remote.write_bytes(content)
    file = data.RemoteFile(
        "toy_train.amat",
        (remote.as_uri(),) if urls is None else urls,
        hashlib.sha256(content).hexdigest() if sha256 == "auto" else sha256,
    )
    info = data.DatasetInfo("toy", dim, {"train": data.SplitSource(file, data.readers._read_amat, rows)},
                            "a toy set", "test licence", False)
    monkeypatch.setitem(data.registry._DATASETS, "toy", info)
    return tmp_path / "cache"


def test_download_verify_and_reuse(monkeypatch, tmp_path):
    cache = _toy(monkeypatch, tmp_path)
    x = data.load_dataset("toy", cache_dir=str(cache))
    assert x.dtype == torch.float32 and x.tolist() == TOY_ROWS
    assert os.listdir(cache / "toy") == ["toy_train.amat"]  # no temporary file left behind
    assert (cache / "toy" / "toy_train.amat").read_bytes() == TOY_CONTENT
    (tmp_path / "remote" / "toy_train.amat").unlink()  # now only the cached copy exists
    assert data.load_dataset("toy", cache_dir=str(cache), download=False).tolist() == TOY_ROWS


def test_default_cache_dir_from_environment(monkeypatch, tmp_path):
    _toy(monkeypatch, tmp_path)
    monkeypatch.setenv("BIHM_TRITON_DATA", str(tmp_path / "env-cache"))
    assert data.default_cache_dir() == str(tmp_path / "env-cache")
    data.load_dataset("toy")
    assert (tmp_path / "env-cache" / "toy" / "toy_train.amat").exists()


def test_checksum_mismatch_leaves_nothing_in_cache(monkeypatch, tmp_path):
    expected, actual = "0" * 64, hashlib.sha256(TOY_CONTENT).hexdigest()
    cache = _toy(monkeypatch, tmp_path, sha256=expected)
    with pytest.raises(data.ChecksumError, match=f"toy_train.amat downloaded from .*expected {expected}, got {actual}"):
        data.load_dataset("toy", cache_dir=str(cache))
    assert os.listdir(cache / "toy") == []


def test_corrupt_cached_file_is_reported(monkeypatch, tmp_path):
    cache = _toy(monkeypatch, tmp_path)
    (cache / "toy").mkdir(parents=True)
    (cache / "toy" / "toy_train.amat").write_bytes(b"1 1 1\n1 0 0\n")
    with pytest.raises(data.ChecksumError, match="already in the cache; delete it to download it again"):
        data.load_dataset("toy", cache_dir=str(cache), download=False)


def test_offline_names_url_and_manual_path(monkeypatch, tmp_path):
    url = "http://example.invalid/datasets/toy_train.amat"
    cache = _toy(monkeypatch, tmp_path, urls=(url, (tmp_path / "absent.amat").as_uri()))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    real_urlopen = data.fetch.urllib.request.urlopen
    monkeypatch.setattr(data.fetch.urllib.request, "urlopen",
                        lambda u, **kw: offline() if u.startswith("http:") else real_urlopen(u, **kw))
    target = str(cache / "toy" / "toy_train.amat")
    with pytest.raises(data.DatasetUnavailableError) as info:
        data.load_dataset("toy", cache_dir=str(cache))
    message = str(info.value)
    assert url in message and "Temporary failure in name resolution" in message
    assert "absent.amat" in message  # every mirror tried is named
    assert f"place it at {target}, or pass the folder" in message and "\n" not in message  # one line
    assert not os.path.exists(cache / "toy")  # no empty cache folder left behind


def test_second_mirror_is_used_when_first_fails(monkeypatch, tmp_path):
    cache = _toy(monkeypatch, tmp_path, urls=((tmp_path / "absent.amat").as_uri(),
                                              (tmp_path / "remote" / "toy_train.amat").as_uri()))
    assert data.load_dataset("toy", cache_dir=str(cache)).tolist() == TOY_ROWS


def test_download_false_and_no_source(monkeypatch, tmp_path):
    cache = _toy(monkeypatch, tmp_path)
    target = str(cache / "toy" / "toy_train.amat")
    with pytest.raises(data.DatasetUnavailableError, match=re.escape(f"{target} is missing and download=False")):
        data.load_dataset("toy", cache_dir=str(cache), download=False)
    assert not cache.exists()
    cache = _toy(monkeypatch, tmp_path, urls=())
    message = f"no public download source .*test licence.*{re.escape(target)}"
    with pytest.raises(data.DatasetUnavailableError, match=message):
        data.load_dataset("toy", cache_dir=str(cache))


@pytest.mark.parametrize("content, dim, rows, message", [
    (b"0 1 2\n1 0 0\n", 3, 2, "values must be 0 or 1, found 2.0 at row 0, column 2"),
    (b"0 1 -1\n1 0 0\n", 3, 2, "values must be 0 or 1, found -1.0 at row 0, column 2"),
    (TOY_CONTENT, 4, 2, r"expected 4 columns, parsed an array of shape \(2, 3\)"),
    (TOY_CONTENT, 3, 5, "expected 5 rows, parsed 2"),
])
def test_parsed_array_is_validated(monkeypatch, tmp_path, content, dim, rows, message):
    cache = _toy(monkeypatch, tmp_path, content, sha256=None, dim=dim, rows=rows)
    with pytest.raises(ValueError, match=re.escape(str(cache / "toy" / "toy_train.amat")) + ": " + message):
        data.load_dataset("toy", cache_dir=str(cache))


def test_unknown_name_and_split(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'bmnist'; known: adult, binarized_mnist, caltech101"):
        data.load_dataset("bmnist", cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="split of binarized_mnist must be one of 'train', 'valid', 'test'; got 'va"):
        data.load_dataset("binarized_mnist", "val", cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="split of mnist must be one of 'train', 'valid', 'test', 'train_all'; got 'va'"):
        data.load_dataset("mnist", "va", cache_dir=str(tmp_path))
    assert not os.listdir(tmp_path)


EXPECTED = {  # name: (d, train, valid, test), from the papers and the distributors' loaders
    "binarized_mnist": (784, 50000, 10000, 10000),
    "mnist": (784, 50000, 10000, 10000),
    "caltech101_silhouettes": (784, 4100, 2264, 2307),
    "adult": (123, 5000, 1414, 26147),
    "connect4": (126, 16000, 4000, 47557),
    "dna": (180, 1400, 600, 1186),
    "mushrooms": (112, 2000, 500, 5624),
    "nips": (500, 400, 100, 1240),
    "ocr_letters": (128, 32152, 10000, 10000),
    "rcv1": (150, 40000, 10000, 150000),
    "web": (300, 14000, 3188, 32561),
}


def test_registry_entries():
    assert data.list_datasets() == sorted(EXPECTED)
    for name, (dim, *sizes) in EXPECTED.items():
        info = data.dataset_info(name)
        assert info.name == name and info.dim == dim
        assert {s: info.splits[s].size for s in info.splits if s in SPLITS} == {s: n for s, n in zip(SPLITS, sizes)}
        for source in info.splits.values():
            assert source.file.urls and all(u.startswith(("http://", "https://")) for u in source.file.urls)
            checksum = source.file.sha256
            assert checksum is None or re.fullmatch("[0-9a-f]{64}", checksum)
            assert (checksum is not None) == (name in ("binarized_mnist", "mnist"))


# --------------------------------------------------------------------------------------------- batches


def test_batches():
    x = torch.arange(10.0).reshape(10, 1)
    ordered = list(data.batches(x, 4, shuffle=False))
    assert [len(b) for b in ordered] == [4, 4, 2] and torch.equal(torch.cat(ordered), x)
    shuffled = torch.cat(list(data.batches(x, 3, generator=torch.Generator().manual_seed(0))))
    assert sorted(shuffled.flatten().tolist()) == x.flatten().tolist() and not torch.equal(shuffled, x)
    again = torch.cat(list(data.batches(x, 3, generator=torch.Generator().manual_seed(0))))
    assert torch.equal(shuffled, again)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        next(data.batches(x, 0))


# ------------------------------------------------------------------------- local copies (shared data)

SHARED = helpers.SHARED_DATA
needs_shared = pytest.mark.skipif(not os.path.isdir(SHARED), reason=f"no shared data folder at {SHARED}")


@needs_shared
@pytest.mark.parametrize("name", ["binarized_mnist", "mnist", "dna", "mushrooms", "nips", "adult", "connect4"])
def test_local_copies_load_with_their_checksums(name):
    """Every split of the sets in ../shared/data loads from there (no network), with the registry's shapes."""
    dim, *sizes = EXPECTED[name]
    for split, n in zip(SPLITS, sizes):
        x = data.load_dataset(name, split, data_dir=SHARED, cache_dir="/nonexistent", download=False)
        assert tuple(x.shape) == (n, dim) and x.dtype == torch.float32
        assert set(torch.unique(x).tolist()) <= {0.0, 1.0}
    if name == "binarized_mnist":  # the shared README's first-row sums
        assert [int(data.load_dataset(name, s, data_dir=SHARED)[0].sum()) for s in SPLITS] == [123, 90, 147]
    if name == "mnist":
        full = data.load_dataset(name, "train_all", data_dir=SHARED)
        assert full.shape == (60000, 784)
        assert torch.equal(full[50000:], data.load_dataset(name, "valid", data_dir=SHARED))


@needs_shared
def test_a_tampered_local_copy_fails_its_checksum(tmp_path):
    import gzip as gz
    import shutil

    folder = tmp_path / "binarized_mnist"
    folder.mkdir()
    src = os.path.join(SHARED, "binarized_mnist", "binarized_mnist_valid.amat.gz")
    with gz.open(src, "rb") as f:
        raw = bytearray(f.read())
    raw[0] = ord("1")  # one pixel flipped: still a valid matrix, no longer the published file
    with gz.open(folder / "binarized_mnist_valid.amat.gz", "wb") as f:
        f.write(bytes(raw))
    with pytest.raises(data.ChecksumError, match="matches none of its published checksums"):
        data.load_dataset("binarized_mnist", "valid", data_dir=str(tmp_path), download=False)
    shutil.copy(src, folder / "binarized_mnist_valid.amat.gz")
    assert data.load_dataset("binarized_mnist", "valid", data_dir=str(tmp_path), download=False).shape == (10000, 784)


def test_bihm_data_dir_falls_back_to_the_cache(monkeypatch, tmp_path):
    """$BIHM_DATA_DIR without the set's files is not an error: the cache (or a download) is used. A folder
    given explicitly must hold the set (issue 16: tests/test_issue16.py)."""
    cache = _toy(monkeypatch, tmp_path, TOY_CONTENT, sha256=None)
    monkeypatch.setenv("BIHM_DATA_DIR", str(tmp_path / "empty"))
    assert data.load_dataset("toy", cache_dir=str(cache)).tolist() == TOY_ROWS
    with pytest.raises(FileNotFoundError, match="cannot hold it"):
        data.load_dataset("toy", data_dir=str(tmp_path / "remote"), cache_dir=str(cache))
