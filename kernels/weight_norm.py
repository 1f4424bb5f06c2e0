"""Weight normalization over rows as a standalone Triton op: ``W_j = g_j · v_j / ‖v_j‖`` and its backward.

Salimans & Kingma 2016, eq. 2; the semantics of ``torch.nn.utils.parametrizations.weight_norm``
with ``dim=0`` for an (M, N) weight. One program owns ``BLOCK_M`` rows and walks the row in
``BLOCK_N`` chunks twice (norm, then output), so any N fits.

Backward, with ``G = ∂L/∂W``, ``n_j = ‖v_j‖``:
``∂L/∂g_j = (G_j · v_j) / n_j`` and ``∂L/∂v_j = (g_j / n_j) · (G_j − (∂L/∂g_j / n_j) · v_j)``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._config import check_device, interpreting, next_pow2, tl_dtype


@triton.jit
def _row_dot(a_ptr, b_ptr, rows, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """``Σ_n a[rows, n] · b[rows, n]`` (BLOCK_M,) in fp32 for row-major (M, N) tensors."""
    acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    base = rows.to(tl.int64)[:, None] * N
    for n0 in range(0, N, BLOCK_N):
        ns = n0 + tl.arange(0, BLOCK_N)
        mask = (rows < M)[:, None] & (ns < N)[None, :]
        a = tl.load(a_ptr + base + ns[None, :], mask=mask, other=0).to(tl.float32)
        b = tl.load(b_ptr + base + ns[None, :], mask=mask, other=0).to(tl.float32)
        acc += tl.sum(a * b, axis=1)
    return acc


@triton.jit
def _weight_norm_fwd_kernel(v_ptr, g_ptr, w_ptr, norm_ptr, M, N, OUT_DTYPE: tl.constexpr,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    norm = tl.sqrt(_row_dot(v_ptr, v_ptr, rows, M, N, BLOCK_M, BLOCK_N))
    tl.store(norm_ptr + rows, norm, mask=row_ok)
    scale = tl.load(g_ptr + rows, mask=row_ok, other=0).to(tl.float32) / tl.where(row_ok, norm, 1.0)
    base = rows.to(tl.int64)[:, None] * N
    for n0 in range(0, N, BLOCK_N):
        ns = n0 + tl.arange(0, BLOCK_N)
        mask = row_ok[:, None] & (ns < N)[None, :]
        v = tl.load(v_ptr + base + ns[None, :], mask=mask, other=0).to(tl.float32)
        tl.store(w_ptr + base + ns[None, :], (v * scale[:, None]).to(OUT_DTYPE), mask=mask)


@triton.jit
def _weight_norm_bwd_kernel(gw_ptr, v_ptr, g_ptr, gv_ptr, gg_ptr, M, N, V_DTYPE: tl.constexpr,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    norm = tl.sqrt(_row_dot(v_ptr, v_ptr, rows, M, N, BLOCK_M, BLOCK_N))
    norm = tl.where(row_ok, norm, 1.0)
    grad_g = _row_dot(gw_ptr, v_ptr, rows, M, N, BLOCK_M, BLOCK_N) / norm
    tl.store(gg_ptr + rows, grad_g, mask=row_ok)
    g = tl.load(g_ptr + rows, mask=row_ok, other=0).to(tl.float32)
    s = g / norm
    c = grad_g / norm
    base = rows.to(tl.int64)[:, None] * N
    for n0 in range(0, N, BLOCK_N):
        ns = n0 + tl.arange(0, BLOCK_N)
        mask = row_ok[:, None] & (ns < N)[None, :]
        gw = tl.load(gw_ptr + base + ns[None, :], mask=mask, other=0).to(tl.float32)
        v = tl.load(v_ptr + base + ns[None, :], mask=mask, other=0).to(tl.float32)
        tl.store(gv_ptr + base + ns[None, :], (s[:, None] * (gw - c[:, None] * v)).to(V_DTYPE), mask=mask)


def _blocks(M: int, N: int):
    if interpreting():
        return max(16, min(64, next_pow2(M))), max(16, min(256, next_pow2(N)))
    return 4, max(16, min(1024, next_pow2(N)))


def weight_norm_forward(weight_v: torch.Tensor, weight_g: torch.Tensor, out_dtype: torch.dtype | None = None):
    """``W = g · v / ‖v‖`` over rows. Returns ``(W (M, N), norm (M,) float32)``.

    Args:
        weight_v: (M, N) floating; weight_g: (M,) (any shape with M elements).
        out_dtype: dtype of W (default ``weight_v.dtype``); arithmetic is fp32.
    """
    check_device(weight_v, weight_g)
    v = weight_v.contiguous()
    g = weight_g.reshape(-1).contiguous()
    M, N = v.shape
    out_dtype = out_dtype or v.dtype
    w = torch.empty((M, N), device=v.device, dtype=out_dtype)
    norm = torch.empty((M,), device=v.device, dtype=torch.float32)
    BM, BN = _blocks(M, N)
    if M > 0:
        _weight_norm_fwd_kernel[(triton.cdiv(M, BM),)](v, g, w, norm, M, N, OUT_DTYPE=tl_dtype(out_dtype),
                                                       BLOCK_M=BM, BLOCK_N=BN)
    return w, norm


def weight_norm_backward(grad_weight: torch.Tensor, weight_v: torch.Tensor, weight_g: torch.Tensor):
    """Gradients ``(∂L/∂v (M, N) as weight_v.dtype, ∂L/∂g (M,) float32)`` from ``∂L/∂W`` (M, N)."""
    check_device(grad_weight, weight_v, weight_g)
    gw = grad_weight.contiguous()
    v = weight_v.contiguous()
    g = weight_g.reshape(-1).contiguous()
    M, N = v.shape
    gv = torch.empty_like(v)
    gg = torch.empty((M,), device=v.device, dtype=torch.float32)
    BM, BN = _blocks(M, N)
    if M > 0:
        _weight_norm_bwd_kernel[(triton.cdiv(M, BM),)](gw, v, g, gv, gg, M, N, V_DTYPE=tl_dtype(v.dtype),
                                                       BLOCK_M=BM, BLOCK_N=BN)
    return gv, gg
