"""Tile-level device functions shared by the generated fused kernels (:mod:`.chain`, :mod:`.passes`).

Every function works on one ``BLOCK_R × C`` tile of rows (samples) by columns (units): the
SPEC §5 uniforms of a tile with its four Philox lanes interleaved, the Bernoulli draw, the
log-likelihood of given targets, the gradient of the log-likelihood with respect to the logits,
the dot with bf16 weight terms, and loads of binary states.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .sbn import bernoulli_elementwise

@triton.jit
def interleave4(u0, u1, u2, u3):
    """Four (G, C) blocks -> one (4G, C) block whose row ``4g + l`` is row g of ``u_l``."""
    G: tl.constexpr = u0.shape[0]
    C: tl.constexpr = u0.shape[1]
    t = tl.join(tl.join(u0, u1), tl.join(u2, u3))  # (G, C, 2, 2): [g, c, i, o] = u_{2o + i}
    t = tl.permute(t, (0, 3, 2, 1))  # (G, 2, 2, C): [g, o, i, c]
    return tl.reshape(t, (4 * G, C))


@triton.jit
def tile_uniforms(key, base, cols, M, BLOCK_R: tl.constexpr):
    """Uniforms (BLOCK_R, C) of the SPEC §5 stream for a tile whose first row starts a row group.

    Row ``r`` (tile-local) and column ``cols[j]`` read lane ``r % 4`` of the Philox call at counter
    ``base + (r // 4)·M + cols[j]`` (``base``: the draw's offset plus the tile's first group times M).
    """
    G: tl.constexpr = BLOCK_R // 4
    local = tl.arange(0, G)[:, None] * M + cols[None, :]
    u0, u1, u2, u3 = tl.rand4x(key, base + local.to(tl.int64))
    return interleave4(u0, u1, u2, u3)


@triton.jit
def draw_tile(acc, bias_ptr, cols, M, key, base, BLOCK_R: tl.constexpr, WANT_LP: tl.constexpr):
    """Bias, Bernoulli draw and per-row log-likelihood of one (BLOCK_R, C) logit tile.

    ``bias_ptr`` points at a bias padded with zeros past M to the tile grid (no mask on the load).
    Returns ``(x as int1 (BLOCK_R, C), Σ_j log Bern over the columns j < M (BLOCK_R,) fp32)``
    (zeros when not WANT_LP).
    """
    a = acc + tl.load(bias_ptr + cols)[None, :]
    u = tile_uniforms(key, base, cols, M, BLOCK_R)
    x, lp = bernoulli_elementwise(a, u, u, True, WANT_LP)
    if WANT_LP:
        row_lp = tl.sum(tl.where((cols < M)[None, :], lp, 0.0), axis=1)
    else:
        row_lp = tl.zeros((BLOCK_R,), dtype=tl.float32)
    return x, row_lp


@triton.jit
def load_bits(ptr, r_loc, ks, LD, OP: tl.constexpr):
    """Maskless (r_loc, ks) tile of binary states read as ``!= 0``, as the dot operand type. ``ptr``
    points at the tile's first row of a scratch buffer padded to the tile grid in both directions."""
    v = tl.load(ptr + r_loc[:, None] * LD + ks[None, :])
    return (v != 0).to(OP)


@triton.jit
def load_bits_masked(ptr, rows, ks, row_limit, N, LD, OP: tl.constexpr):
    """(rows, ks) tile of binary states (any dtype, read as ``!= 0``), zero outside ``rows < row_limit``
    and ``ks < N``, as the dot operand type (external inputs and user-facing output layouts)."""
    mask = (rows < row_limit)[:, None] & (ks < N)[None, :]
    v = tl.load(ptr + rows.to(tl.int64)[:, None] * LD + ks[None, :], mask=mask, other=0)
    return (v != 0).to(OP)


@triton.jit
def dot_terms(a, w_ptr, ks, cols, LDW, PLANE: tl.constexpr, acc, TERMS: tl.constexpr, OP: tl.constexpr):
    """``acc + a · Wᵀ[ks, cols]``: W^T stored (K_pad, LDW), zero-padded to the tile grid (maskless
    loads), as ``TERMS`` bf16 planes ``PLANE`` elements apart."""
    ptrs = w_ptr + ks[:, None] * LDW + cols[None, :]
    acc = tl.dot(a, tl.load(ptrs).to(OP), acc)
    if TERMS >= 2:
        acc = tl.dot(a, tl.load(ptrs + PLANE).to(OP), acc)
    if TERMS >= 3:
        acc = tl.dot(a, tl.load(ptrs + 2 * PLANE).to(OP), acc)
    return acc


@triton.jit
def score_tile(acc, bias_ptr, cols, M, x):
    """Σ_j log Bern(x_j; σ(a_j)) over the columns j < M of a tile (BLOCK_R,), for logits ``acc + bias`` and
    given binary targets x (int1)."""
    a = acc + tl.load(bias_ptr + cols)[None, :]
    _, lp = bernoulli_elementwise(a, a, x, False, True)
    return tl.sum(tl.where((cols < M)[None, :], lp, 0.0), axis=1)


@triton.jit
def grad_tile(acc, bias_ptr, cols, M, x, coef):
    """``∂L/∂a = coef_r · (x − σ(a))`` of a tile (zero in the padding columns), fp32; coef (BLOCK_R,)."""
    a = acc + tl.load(bias_ptr + cols)[None, :]
    e = tl.exp(-tl.abs(a))
    sig = tl.where(a >= 0, 1.0, e) / (1.0 + e)
    g = coef[:, None] * (x.to(tl.float32) - sig)
    return tl.where((cols < M)[None, :], g, 0.0)
