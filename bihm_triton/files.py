"""Files the library writes: one atomic write and one cache-folder rule, for every writer.

The run folders' checkpoints and JSON, downloaded data sets, the generated Triton kernels, the CPU backend's
built library and the reproduction's results all go through :func:`atomic_write` (a reader never sees half a
file, a crash never leaves one under the final name); the three caches (data sets, generated kernels, the CPU
library) find their folder with :func:`cache_folder`.
"""

from __future__ import annotations

import json
import os
import tempfile

__all__ = ["atomic_write", "write_text_atomic", "write_json_atomic", "cache_folder"]


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp)`` on a new temporary file beside ``path``, fsync it, then ``os.replace`` it onto ``path``
    (same folder, so the rename is atomic). The folder is created if needed; the file gets the mode a plain
    ``open`` would give (umask applied).

    Raises:
        OSError: the folder cannot be created or written.
        Whatever ``write`` raises (also KeyboardInterrupt): the temporary file is removed and ``path`` keeps what
        it held.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask)  # after writing: mkstemp (and some writers) create 0600 files
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path``, atomically (:func:`atomic_write`)."""
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)

    atomic_write(path, write)


def write_json_atomic(obj, path: str | os.PathLike, *, indent: int = 2, sort_keys: bool = True) -> None:
    """Write ``obj`` as JSON (a final newline), atomically (:func:`atomic_write`)."""
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=indent, sort_keys=sort_keys)
            f.write("\n")

    atomic_write(path, write)


def cache_folder(kind: str, *, env: str, env_subfolder: bool, create: bool = True) -> str:
    """The folder of one of the library's caches: ``$env`` (joined with ``kind`` when ``env_subfolder``), else
    ``~/.cache/bihm_triton/<kind>``, else ``<tmp>/bihm_triton_<kind>_<uid>``: with ``create``, the first that can be
    made and written; without, the first of the first two (nothing is touched).

    Raises:
        OSError: ``create`` and none of them is writable (the message names ``env``).
    """
    chosen = os.environ.get(env)
    if chosen and env_subfolder and kind:
        chosen = os.path.join(chosen, kind)
    home = os.path.join(os.path.expanduser("~"), ".cache", "bihm_triton", *([kind] if kind else []))
    if not create:
        return chosen or home
    uid = os.getuid() if hasattr(os, "getuid") else 0
    for d in (chosen, home, os.path.join(tempfile.gettempdir(), f"bihm_triton_{kind or 'cache'}_{uid}")):
        if not d:
            continue
        try:
            os.makedirs(d, exist_ok=True)
            if os.access(d, os.W_OK):
                return d
        except OSError:
            continue
    raise OSError(f"no writable folder for bihm_triton's {kind or 'cache'} cache; set {env}")
