"""Fused stochastic binary layer kernels (SPEC §5): matmul, sigmoid, Bernoulli draw and log-likelihood.

One program owns a tile of ``4·BLOCK_G`` rows by ``BLOCK_M`` output units. Its rows are split by
``r % 4`` into four accumulators, so one Philox call per (row group, column) feeds all four
(the stream of :mod:`.philox`). The K loop accumulates ``h · Wᵀ`` in fp32 (fp16/bf16/fp64 inputs
are cast after the load); the epilogue adds the bias (and the weight-norm scale ``g/‖v‖``, whose
``‖v‖`` is accumulated from the same weight tiles), then

* sample mode: ``x = 1[u < σ(a)]`` written as the requested dtype;
* score mode: x read from the targets;

and the per-row ``Σ_j x·a − softplus(a)`` over the tile's columns goes to a partial buffer
``(n_col_tiles, R)`` that the launcher sums (deterministic, no atomics). Logits never reach memory.

The backward kernel recomputes the logits and writes ``∂L/∂a = g_r · (x − σ(a))`` (R, M); the
weight and input gradients are then two matmuls.

NaN logits give ``x = 0`` (the comparison with NaN is false) and a NaN log-likelihood.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._config import as_loadable, check_device, dot_precision, interpreting, next_pow2, tl_dtype
from .philox import group_uniforms, load_seed, seed_args

# --------------------------------------------------------------------------- device functions


@triton.jit
def _load_rows(h_ptr, rows, ks, R, N, stride_h):
    """(G, BLOCK_K) tile of h at ``rows`` × ``ks`` as fp32 (zero outside the matrix)."""
    ptrs = h_ptr + rows.to(tl.int64)[:, None] * stride_h + ks[None, :]
    return tl.load(ptrs, mask=(rows < R)[:, None] & (ks < N)[None, :], other=0).to(tl.float32)


@triton.jit
def log1p_unit(e):
    """``log(1 + e)`` for ``e`` in [0, 1] to a few ulps, also where ``1 + e`` rounds to 1.

    ``log1p(e) = 2·atanh(s)`` with ``s = e / (2 + e)`` in [0, 1/3], as the odd series
    ``2·(s + s³/3 + … + s¹³/13)`` (truncation < 2e−8 relative): no ``log`` call, one division,
    and a saturated logit (|a| > 17, e < 6e−8) still costs its e nats instead of 0.
    """
    s = e / (2.0 + e)
    s2 = s * s
    p = s2 * (1.0 / 13.0) + (1.0 / 11.0)
    p = p * s2 + (1.0 / 9.0)
    p = p * s2 + (1.0 / 7.0)
    p = p * s2 + (1.0 / 5.0)
    p = p * s2 + (1.0 / 3.0)
    p = p * s2 + 1.0
    return 2.0 * s * p


@triton.jit
def bernoulli_elementwise(a, u, x_in, SAMPLE: tl.constexpr, WANT_LP: tl.constexpr = True):
    """Per element: sample ``x = 1[u < σ(a)]`` (or take ``x_in``) and ``log Bern(x; σ(a))``.

    ``σ(a)`` and the softplus share one exp: with ``e = exp(−|a|)``,
    ``softplus(z) = max(z, 0) + log1p(e)`` for ``z = ±a`` and ``σ(a) = (a ≥ 0 ? 1 : e) / (1 + e)``.
    ``x·a − softplus(a) = −softplus(x ? −a : a)`` is exact for infinite logits too.
    Returns ``(x as int1, log-likelihood as fp32)``, both shaped like ``a``; without ``WANT_LP``
    the second is ``a`` (not computed).
    """
    e = tl.exp(-tl.abs(a))
    if SAMPLE:
        x = u < tl.where(a >= 0, 1.0, e) / (1.0 + e)
    else:
        x = x_in
    if WANT_LP:
        lp = -(tl.maximum(tl.where(x, -a, a), 0.0) + log1p_unit(e))
    else:
        lp = a
    return x, lp


@triton.jit
def _bernoulli_epilogue(a, u, x_in, col_ok, SAMPLE: tl.constexpr):
    """:func:`bernoulli_elementwise` on a (rows, BLOCK_M) tile; returns (x, per-row sum over valid columns)."""
    x, lp = bernoulli_elementwise(a, u, x_in, SAMPLE)
    return x, tl.sum(tl.where(col_ok[None, :], lp, 0.0), axis=1)


@triton.jit
def _lane_out(a, u, rows, cols, R, M, x_ptr, stride_x, lp_ptr, pid_m,
              SAMPLE: tl.constexpr, WRITE_X: tl.constexpr, X_DTYPE: tl.constexpr):
    """Epilogue of one row lane: sample (or read) x for logits a, write x and the partial log-likelihood."""
    col_ok = cols < M
    row_ok = rows < R
    x_ptrs = x_ptr + rows.to(tl.int64)[:, None] * stride_x + cols[None, :]
    mask = row_ok[:, None] & col_ok[None, :]
    if SAMPLE:
        x, lp = _bernoulli_epilogue(a, u, a, col_ok, True)
        if WRITE_X:
            tl.store(x_ptrs, x.to(X_DTYPE), mask=mask)
    else:
        x_in = tl.load(x_ptrs, mask=mask, other=0) != 0
        x, lp = _bernoulli_epilogue(a, a, x_in, col_ok, False)
    tl.store(lp_ptr + pid_m.to(tl.int64) * R + rows, lp, mask=row_ok)


@triton.jit
def _lane_grad(a, rows, cols, R, M, x_ptr, stride_x, g_ptr, ga_ptr):
    """``∂L/∂a = g_r · (x − σ(a))`` for one row lane."""
    col_ok = cols < M
    row_ok = rows < R
    mask = row_ok[:, None] & col_ok[None, :]
    offs = rows.to(tl.int64)[:, None] * stride_x + cols[None, :]
    x = (tl.load(x_ptr + offs, mask=mask, other=0) != 0).to(tl.float32)
    e = tl.exp(-tl.abs(a))
    sig = tl.where(a >= 0, 1.0, e) / (1.0 + e)
    g = tl.load(g_ptr + rows, mask=row_ok, other=0).to(tl.float32)
    tl.store(ga_ptr + rows.to(tl.int64)[:, None] * M + cols[None, :], g[:, None] * (x - sig), mask=mask)


@triton.jit
def _tile_logits(h_ptr, w_ptr, R, N, stride_h, stride_w, groups, cols, M,
                 WN: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                 PRECISION: tl.constexpr):
    """``h · Wᵀ`` for the four row lanes of a tile, and ``Σ_k W_jk²`` over the tile's columns when WN."""
    acc0 = tl.zeros((BLOCK_G, BLOCK_M), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_G, BLOCK_M), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_G, BLOCK_M), dtype=tl.float32)
    acc3 = tl.zeros((BLOCK_G, BLOCK_M), dtype=tl.float32)
    sumsq = tl.zeros((BLOCK_M,), dtype=tl.float32)
    rows0 = 4 * groups
    col_ok = cols < M
    for k0 in range(0, N, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        w_ptrs = w_ptr + cols.to(tl.int64)[None, :] * stride_w + ks[:, None]
        w = tl.load(w_ptrs, mask=(ks < N)[:, None] & col_ok[None, :], other=0).to(tl.float32)
        if WN:
            sumsq += tl.sum(w * w, axis=0)
        acc0 = tl.dot(_load_rows(h_ptr, rows0 + 0, ks, R, N, stride_h), w, acc0, input_precision=PRECISION)
        acc1 = tl.dot(_load_rows(h_ptr, rows0 + 1, ks, R, N, stride_h), w, acc1, input_precision=PRECISION)
        acc2 = tl.dot(_load_rows(h_ptr, rows0 + 2, ks, R, N, stride_h), w, acc2, input_precision=PRECISION)
        acc3 = tl.dot(_load_rows(h_ptr, rows0 + 3, ks, R, N, stride_h), w, acc3, input_precision=PRECISION)
    return acc0, acc1, acc2, acc3, sumsq


@triton.jit
def tile_affine(h_ptr, w_ptr, b_ptr, g_ptr, R, N, M, stride_h, stride_w, groups, cols,
                WN: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                PRECISION: tl.constexpr):
    """Logits of the four row lanes of a tile: ``h · Wᵀ + b``, or ``(h · vᵀ) ⊙ g/‖v‖ + b`` when WN."""
    acc0, acc1, acc2, acc3, sumsq = _tile_logits(h_ptr, w_ptr, R, N, stride_h, stride_w, groups, cols, M,
                                                 WN, BLOCK_G, BLOCK_M, BLOCK_K, PRECISION)
    col_ok = cols < M
    bias = tl.load(b_ptr + cols, mask=col_ok, other=0).to(tl.float32)[None, :]
    if WN:
        scale = tl.load(g_ptr + cols, mask=col_ok, other=0).to(tl.float32) / tl.sqrt(tl.where(col_ok, sumsq, 1.0))
        acc0 = acc0 * scale[None, :]
        acc1 = acc1 * scale[None, :]
        acc2 = acc2 * scale[None, :]
        acc3 = acc3 * scale[None, :]
    return acc0 + bias, acc1 + bias, acc2 + bias, acc3 + bias


# --------------------------------------------------------------------------------- kernels


@triton.jit(do_not_specialize=["seed", "offset"])
def _sbn_fwd_kernel(
    h_ptr, w_ptr, b_ptr, g_ptr, x_ptr, lp_ptr, seed_ptr,
    seed, offset, R, N, M, stride_h, stride_w, stride_x,
    SAMPLE: tl.constexpr, WRITE_X: tl.constexpr, WN: tl.constexpr, SEED_FROM_PTR: tl.constexpr,
    X_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(1)
    groups = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
    cols = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    a0, a1, a2, a3 = tile_affine(h_ptr, w_ptr, b_ptr, g_ptr, R, N, M, stride_h, stride_w, groups, cols,
                                 WN, BLOCK_G, BLOCK_M, BLOCK_K, PRECISION)
    if SAMPLE:
        key = load_seed(seed_ptr, seed, SEED_FROM_PTR)
        u0, u1, u2, u3 = group_uniforms(key, offset, groups, cols, M)
    else:  # placeholders, unused in score mode
        u0 = a0
        u1 = a0
        u2 = a0
        u3 = a0
    rows0 = 4 * groups
    _lane_out(a0, u0, rows0 + 0, cols, R, M, x_ptr, stride_x, lp_ptr, pid_m, SAMPLE, WRITE_X, X_DTYPE)
    _lane_out(a1, u1, rows0 + 1, cols, R, M, x_ptr, stride_x, lp_ptr, pid_m, SAMPLE, WRITE_X, X_DTYPE)
    _lane_out(a2, u2, rows0 + 2, cols, R, M, x_ptr, stride_x, lp_ptr, pid_m, SAMPLE, WRITE_X, X_DTYPE)
    _lane_out(a3, u3, rows0 + 3, cols, R, M, x_ptr, stride_x, lp_ptr, pid_m, SAMPLE, WRITE_X, X_DTYPE)


@triton.jit
def _sbn_grad_logits_kernel(
    h_ptr, w_ptr, b_ptr, wg_ptr, x_ptr, g_ptr, ga_ptr,
    R, N, M, stride_h, stride_w, stride_x,
    WN: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):
    groups = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
    cols = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    a0, a1, a2, a3 = tile_affine(h_ptr, w_ptr, b_ptr, wg_ptr, R, N, M, stride_h, stride_w, groups, cols,
                                 WN, BLOCK_G, BLOCK_M, BLOCK_K, PRECISION)
    rows0 = 4 * groups
    _lane_grad(a0, rows0 + 0, cols, R, M, x_ptr, stride_x, g_ptr, ga_ptr)
    _lane_grad(a1, rows0 + 1, cols, R, M, x_ptr, stride_x, g_ptr, ga_ptr)
    _lane_grad(a2, rows0 + 2, cols, R, M, x_ptr, stride_x, g_ptr, ga_ptr)
    _lane_grad(a3, rows0 + 3, cols, R, M, x_ptr, stride_x, g_ptr, ga_ptr)


# ------------------------------------------------------------------------------- launchers


def _blocks(R: int, N: int, M: int, block_g: int | None, block_m: int | None, block_k: int | None):
    """Tile sizes. Explicit values (tests) win; otherwise heuristics for the GPU or the interpreter."""
    if interpreting():
        # Bigger tiles run faster in the interpreter (fewer Python-level programs).
        bg = block_g or max(16, min(64, next_pow2(-(-R // 4))))
        bm = block_m or max(16, min(128, next_pow2(M)))
        bk = block_k or max(16, min(128, next_pow2(N)))
    else:
        bg = block_g or (32 if R >= 4096 else 16)
        bm = block_m or max(16, min(64, next_pow2(M)))
        bk = block_k or max(16, min(64, next_pow2(N)))
    check_blocks(bg, bm, bk)
    return bg, bm, bk


def check_blocks(block_g: int, block_m: int, block_k: int) -> None:
    """Tile sizes must be powers of two >= 16 (``tl.dot``'s minimum on a GPU)."""
    for name, v in (("block_g", block_g), ("block_m", block_m), ("block_k", block_k)):
        if v < 16 or v & (v - 1):
            raise ValueError(f"{name} must be a power of two >= 16, got {v}")


def _prep(h, weight, bias, weight_g):
    check_device(h, weight, bias, weight_g)
    h = as_loadable(h.contiguous())
    weight = weight.contiguous()
    bias = bias.contiguous()
    if weight_g is not None:
        weight_g = weight_g.reshape(-1).contiguous()
    return h, weight, bias, weight_g


def sbn_forward(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    *,
    weight_g: torch.Tensor | None = None,
    x: torch.Tensor | None = None,
    seed: torch.Tensor | int = 0,
    offset: int = 0,
    out_dtype: torch.dtype = torch.float32,
    write_x: bool = True,
    block_g: int | None = None,
    block_m: int | None = None,
    block_k: int | None = None,
):
    """Launch the fused forward kernel. Arguments are assumed checked (see :mod:`bihm_triton.ops`).

    Args:
        h: (R, N) states (bool, uint8, float16/bfloat16/float32/float64).
        weight: (M, N) weight, or the direction ``v`` when ``weight_g`` is given.
        bias: (M,).
        weight_g: (M,) magnitudes: weight normalization folded in, ``W`` never built.
        x: (R, M) targets: score mode. ``None``: sample mode with ``(seed, offset)``.
        out_dtype: dtype of the sample.
        write_x: sample mode only; False skips writing the sample (log-likelihood only).
        block_g, block_m, block_k: tile sizes (powers of two >= 16); rows per tile = 4·block_g.

    Returns:
        ``(x, log_prob)``: the sample (R, M) (or the given targets) and log_prob (R,) float32.
    """
    h, weight, bias, weight_g = _prep(h, weight, bias, weight_g)
    R, N = h.shape
    M = weight.shape[0]
    BG, BM, BK = _blocks(R, N, M, block_g, block_m, block_k)
    n_m = triton.cdiv(M, BM)
    grid = (triton.cdiv(triton.cdiv(R, 4), BG), n_m)
    sample = x is None
    if sample:
        x_out = torch.empty((R, M), device=h.device, dtype=out_dtype)
        x_arg = as_loadable(x_out)
        seed_ptr, seed_val, from_ptr = seed_args(seed, h.device)
    else:
        x_out = x
        x_arg = as_loadable(x.contiguous())
        seed_ptr, seed_val, from_ptr = None, 0, False
    partial = torch.empty((n_m, R), device=h.device, dtype=torch.float32)
    if R > 0 and M > 0:
        _sbn_fwd_kernel[grid](
            h, weight, bias, weight_g if weight_g is not None else bias, x_arg, partial,
            seed_ptr if from_ptr else partial,
            seed_val, offset, R, N, M, h.stride(0), weight.stride(0), x_arg.stride(0),
            SAMPLE=sample, WRITE_X=bool(write_x), WN=weight_g is not None, SEED_FROM_PTR=from_ptr,
            X_DTYPE=tl_dtype(x_arg.dtype), PRECISION=dot_precision(),
            BLOCK_G=BG, BLOCK_M=BM, BLOCK_K=BK,
        )
    else:
        partial.zero_()
    if n_m == 0:
        return x_out, torch.zeros(R, device=h.device, dtype=torch.float32)
    return x_out, partial[0] if n_m == 1 else partial.sum(0)


def sbn_grad_logits(
    grad_log_prob: torch.Tensor,
    h: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    *,
    weight_g: torch.Tensor | None = None,
    block_g: int | None = None,
    block_m: int | None = None,
    block_k: int | None = None,
) -> torch.Tensor:
    """``∂L/∂a = grad_log_prob[r] · (x − σ(a))`` (R, M) float32 with the logits recomputed.

    Args:
        grad_log_prob: (R,) gradient of the loss with respect to the per-row log-likelihood.
        h, x, weight, bias, weight_g: as in :func:`sbn_forward` (x holds the samples or targets).
    """
    h, weight, bias, weight_g = _prep(h, weight, bias, weight_g)
    R, N = h.shape
    M = weight.shape[0]
    BG, BM, BK = _blocks(R, N, M, block_g, block_m, block_k)
    x_arg = as_loadable(x.contiguous())
    g = grad_log_prob.contiguous().to(torch.float32)
    grad_a = torch.empty((R, M), device=h.device, dtype=torch.float32)
    grid = (triton.cdiv(triton.cdiv(R, 4), BG), triton.cdiv(M, BM))
    if R > 0 and M > 0:
        _sbn_grad_logits_kernel[grid](
            h, weight, bias, weight_g if weight_g is not None else bias, x_arg, g, grad_a,
            R, N, M, h.stride(0), weight.stride(0), x_arg.stride(0),
            WN=weight_g is not None, PRECISION=dot_precision(),
            BLOCK_G=BG, BLOCK_M=BM, BLOCK_K=BK,
        )
    return grad_a
