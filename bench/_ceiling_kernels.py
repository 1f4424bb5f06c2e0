"""Triton kernels that measure the instruction ceilings of SPEC §7 (used by ``roofline.py --measure``).

* :func:`philox_only` — draws ``tl.rand4x`` numbers (Philox4x32-10, all four outputs used) and
  sums them: uniforms per second.
* :func:`bernoulli` — draws and applies the Bernoulli epilogue of a sampled element
  (``x = 1[u < σ(a)]``, ``x·a − softplus(a)``; SPEC §5) to four elements per Philox call, with
  logits made from the counter: sampled elements per second.
* :func:`score_only` — the epilogue alone (given targets): scored elements per second.

Each program loops over ``per_prog`` counters in blocks and writes one partial sum per lane, so
nothing is dead code and memory traffic is negligible. Imported lazily (needs triton).
"""

from __future__ import annotations

import triton
import triton.language as tl

from bihm_triton.kernels.sbn import bernoulli_elementwise


@triton.jit
def philox_only(out_ptr, seed, per_prog, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    base = pid.to(tl.int64) * per_prog
    for i in range(0, per_prog, BLOCK):
        c = base + i + tl.arange(0, BLOCK)
        u0, u1, u2, u3 = tl.rand4x(seed, c)
        acc += (u0 + u1) + (u2 + u3)
    tl.store(out_ptr + pid * BLOCK + tl.arange(0, BLOCK), acc)


@triton.jit
def _epilogue(a, u, x_given, SAMPLE: tl.constexpr):
    """The library's per-element epilogue (``kernels/sbn.py``), so the ceiling measures what the kernels run."""
    _, lp = bernoulli_elementwise(a, u, x_given, SAMPLE)
    return lp


@triton.jit
def bernoulli(out_ptr, seed, per_prog, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    base = pid.to(tl.int64) * per_prog
    for i in range(0, per_prog, BLOCK):
        c = base + i + tl.arange(0, BLOCK)
        u0, u1, u2, u3 = tl.rand4x(seed, c)
        a = (c & 63).to(tl.float32) * 0.125 - 4.0
        acc += _epilogue(a, u0, a, True) + _epilogue(a + 0.5, u1, a, True)
        acc += _epilogue(a - 0.5, u2, a, True) + _epilogue(a + 1.0, u3, a, True)
    tl.store(out_ptr + pid * BLOCK + tl.arange(0, BLOCK), acc)


@triton.jit
def score_only(out_ptr, per_prog, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    base = pid.to(tl.int64) * per_prog
    for i in range(0, per_prog, BLOCK):
        c = base + i + tl.arange(0, BLOCK)
        a = (c & 63).to(tl.float32) * 0.125 - 4.0
        h = c * 40503
        x0 = (h & 256) != 0
        x1 = (h & 512) != 0
        acc += _epilogue(a, a, x0, False) + _epilogue(a + 0.5, a, x1, False)
        acc += _epilogue(a - 0.5, a, x1, False) + _epilogue(a + 1.0, a, x0, False)
    tl.store(out_ptr + pid * BLOCK + tl.arange(0, BLOCK), acc)
