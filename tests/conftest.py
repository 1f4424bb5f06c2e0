"""Test setup: Triton's interpreter on machines without a GPU, shared fixtures.

``TRITON_INTERPRET=1`` must be set before anything imports triton (kernels decorated before that
stay compiled), so it is set here, at collection time, unless a CUDA device is present. Set
``BIHM_TEST_DEVICE=cuda`` to insist on the GPU; the tests then run the kernels compiled.
"""

from __future__ import annotations

import os
import sys


def _has_cuda() -> bool:
    import torch  # torch does not import triton

    return torch.cuda.is_available()


if os.environ.get("BIHM_TEST_DEVICE", "cuda" if _has_cuda() else "cpu") == "cpu":
    assert "triton" not in sys.modules, "triton was imported before tests/conftest.py could set TRITON_INTERPRET"
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from helpers import DEVICE  # noqa: E402  (after TRITON_INTERPRET is decided)


@pytest.fixture
def device() -> torch.device:
    """Where the Triton backend runs: the GPU, or the CPU under the interpreter."""
    return DEVICE


class _NaNEmpty:
    """``torch.empty`` that fills floating outputs with NaN and integer ones with a non-binary value (7)."""

    def __init__(self, real):
        self.real = real

    def __call__(self, *args, **kwargs):
        t = self.real(*args, **kwargs)
        if t.is_floating_point():
            t.fill_(float("nan"))
        elif t.dtype == torch.bool:
            t.view(torch.uint8).fill_(7)
        else:
            t.fill_(7)
        return t


@pytest.fixture
def poison_empty(monkeypatch):
    """Make every ``torch.empty`` in the code under test return poisoned memory, so an output element a
    kernel forgets to write shows up as NaN (or 7) instead of hiding behind zeros."""
    monkeypatch.setattr(torch, "empty", _NaNEmpty(torch.empty))
    yield
