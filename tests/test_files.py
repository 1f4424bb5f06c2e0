"""One atomic write and one cache-folder rule for every file the library writes (bihm_triton/files.py)."""

from __future__ import annotations

import os
import re

import pytest

from bihm_triton import files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing_behind(tmp_path):
    path = tmp_path / "sub" / "result.json"
    files.write_json_atomic({"a": 1}, path)
    assert path.read_text() == '{\n  "a": 1\n}\n'

    def broken(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        files.atomic_write(path, broken)
    assert path.read_text() == '{\n  "a": 1\n}\n' and os.listdir(path.parent) == ["result.json"]
    files.write_text_atomic(path, "x")
    assert path.read_text() == "x" and oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def test_cache_folder_rule(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SOME_CACHE", raising=False)
    assert files.cache_folder("k", env="SOME_CACHE", env_subfolder=True, create=False) == \
        str(tmp_path / "home" / ".cache" / "bihm_triton" / "k")
    assert not (tmp_path / "home").exists()  # create=False touches nothing
    monkeypatch.setenv("SOME_CACHE", str(tmp_path / "env"))
    assert files.cache_folder("k", env="SOME_CACHE", env_subfolder=True) == str(tmp_path / "env" / "k")
    assert files.cache_folder("k", env="SOME_CACHE", env_subfolder=False) == str(tmp_path / "env")
    assert (tmp_path / "env" / "k").is_dir()
    (tmp_path / "file").write_text("")  # a file where the folder should be: the next candidate
    monkeypatch.setenv("SOME_CACHE", str(tmp_path / "file"))
    assert files.cache_folder("k", env="SOME_CACHE", env_subfolder=False) == \
        str(tmp_path / "home" / ".cache" / "bihm_triton" / "k")


def test_every_writer_goes_through_the_one_atomic_write():
    """``os.replace`` (the atomic step) is written once, in files.py; the caches' home folder once too."""
    found = []
    for room in ("bihm_triton", "kernels", "reference", "bench"):
        for folder, _, names in os.walk(os.path.join(ROOT, room)):
            for name in names:
                if name.endswith(".py"):
                    text = open(os.path.join(folder, name)).read()
                    if re.search(r"os\.replace\(|\.cache\"", text):
                        found.append(os.path.relpath(os.path.join(folder, name), ROOT))
    assert found == [os.path.join("bihm_triton", "files.py")]
