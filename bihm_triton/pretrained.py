"""Models that ship with the package: the paper's 12-layer BiHM trained on binarized MNIST, loadable by name.

>>> import bihm_triton as bt
>>> model = bt.pretrained("bmnist-12l")              # a BiHM, ready to sample, inpaint and evaluate
>>> bt.list_pretrained()                             # name -> what it is and its measured numbers

On the command line a name is a ``--checkpoint``: ``bihm-triton sample --checkpoint pretrained:bmnist-12l``.

Each model is a safetensors file in ``bihm_triton/pretrained/`` (package data) whose metadata holds,
besides the architecture, its measured test numbers (nats, with standard errors), the random-stream
version it was trained and evaluated with (SPEC §5), the command and commit that made it, and a
cheap check (a few test points' log-likelihood estimate at a fixed seed) that
``tests/test_pretrained.py`` recomputes.
"""

from __future__ import annotations

import json
import os

__all__ = ["pretrained", "list_pretrained", "pretrained_path", "PRETRAINED_PREFIX"]

#: ``--checkpoint pretrained:<name>`` on the command line.
PRETRAINED_PREFIX = "pretrained:"
_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained")


def _files() -> dict:
    try:
        names = sorted(f for f in os.listdir(_DIR) if f.endswith(".safetensors"))
    except OSError:
        return {}
    return {f[: -len(".safetensors")]: os.path.join(_DIR, f) for f in names}


def pretrained_path(name: str) -> str:
    """The file of the shipped model ``name``.

    Raises:
        KeyError: no shipped model has that name (the message lists the names there are).
    """
    if name.startswith(PRETRAINED_PREFIX):
        name = name[len(PRETRAINED_PREFIX):]
    files = _files()
    if name not in files:
        raise KeyError(f"no pretrained model named {name!r}; the package ships {sorted(files) or 'none'}")
    return files[name]


def list_pretrained() -> dict:
    """``{name: info}`` of the shipped models: their metadata, read from the files: ``sizes``, ``data``,
    ``test`` (log_p_star, log_p_tilde_star, log_p, log_z2 and their standard errors, in nats; K, test points),
    ``epochs``, ``stream_version`` (SPEC §5), ``command``, ``commit`` and the ``check`` a test recomputes.
    An empty dict when none ships."""
    from safetensors import safe_open

    out = {}
    for name, path in _files().items():
        with safe_open(path, framework="pt") as f:
            meta = dict(f.metadata() or {})
        info = json.loads(meta.get("pretrained", "{}"))
        info["config"] = json.loads(meta.get("config", "{}"))
        out[name] = info
    return out


def pretrained(name: str, *, device=None, **kwargs):
    """The shipped model ``name`` as a :class:`~bihm_triton.model.BiHM` (float32 parameters, on ``device``;
    ``kwargs``: backend, chunk_rows). ``"bmnist-12l"``: the paper's 12-layer net (sizes [784, 300, …, 10],
    SPEC §3's headline architecture) trained on binarized MNIST by ``bench/reproduce.py headline``; its test
    numbers (nats) are in :func:`list_pretrained` and docs/REPRODUCTION.md.

    Raises:
        KeyError: an unknown name (the message lists the shipped ones).
    """
    from .model import BiHM

    return BiHM.load(pretrained_path(name), device=device, **kwargs)
