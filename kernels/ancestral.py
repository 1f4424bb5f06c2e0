"""Fused ancestral sampler: every p layer of a BiHM for a tile of samples in one kernel launch.

One program owns ``4·BLOCK_G`` sample rows and walks the layers top-down (the prior, then
``h_{L−1}, …, h_0 = x``): for each layer it computes the logits tile by tile, draws the Bernoulli
samples from the SPEC §5 stream (layer i of the pass uses the counters that
:func:`bihm_triton.reference.pass_offsets` gives it, exactly like the per-layer path), writes the
states as uint8 into one state buffer and accumulates ``log p(x, h)`` per row in registers. The
next layer reads back the rows this same program just wrote (a CTA barrier orders them; they are
L1/L2-resident), so no launch, no global synchronization and no fp32 activations separate the
layers. The layer shapes and offsets come from a small int64 table, so one compiled kernel serves
every architecture.

Samples equal the per-layer path's element for element except where a last-bit difference of a
logit (the two paths sum in different orders) flips a draw; ``log p(x, h)`` equals the sum of the
per-layer log-likelihoods up to fp32 rounding.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._config import check_device, dot_precision, interpreting
from .philox import group_uniforms, load_seed, seed_args
from .sbn import _bernoulli_epilogue, check_blocks, tile_affine

TABLE_COLS = 8  # w_off, b_off, N, M, in_off, out_off, rng_off, unused


@triton.jit
def _store_lane(a, u, rows, cols, R, M, out_ptr):
    col_ok = cols < M
    row_ok = rows < R
    x, lp = _bernoulli_epilogue(a, u, u, col_ok, True)
    ptrs = out_ptr + rows.to(tl.int64)[:, None] * M + cols[None, :]
    tl.store(ptrs, x.to(tl.uint8), mask=row_ok[:, None] & col_ok[None, :])
    return lp


@triton.jit(do_not_specialize=["seed"])
def _ancestral_kernel(
    w_ptr, b_ptr, state_ptr, lp_ptr, table_ptr, seed_ptr, seed, R, n_layers,
    SEED_FROM_PTR: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    groups = pid * BLOCK_G + tl.arange(0, BLOCK_G)
    rows0 = 4 * groups
    key = load_seed(seed_ptr, seed, SEED_FROM_PTR)
    lp0 = tl.zeros((BLOCK_G,), dtype=tl.float32)
    lp1 = tl.zeros((BLOCK_G,), dtype=tl.float32)
    lp2 = tl.zeros((BLOCK_G,), dtype=tl.float32)
    lp3 = tl.zeros((BLOCK_G,), dtype=tl.float32)
    for layer in range(n_layers):
        t = table_ptr + layer * 8
        w_off = tl.load(t + 0)
        b_off = tl.load(t + 1)
        N = tl.load(t + 2).to(tl.int32)
        M = tl.load(t + 3).to(tl.int32)
        in_ptr = state_ptr + tl.load(t + 4)
        out_ptr = state_ptr + tl.load(t + 5)
        rng_off = tl.load(t + 6)
        for m0 in range(0, M, BLOCK_M):
            cols = m0 + tl.arange(0, BLOCK_M)
            a0, a1, a2, a3 = tile_affine(in_ptr, w_ptr + w_off, b_ptr + b_off, b_ptr, R, N, M, N, N, groups, cols,
                                         False, BLOCK_G, BLOCK_M, BLOCK_K, PRECISION)
            u0, u1, u2, u3 = group_uniforms(key, rng_off, groups, cols, M)
            lp0 += _store_lane(a0, u0, rows0 + 0, cols, R, M, out_ptr)
            lp1 += _store_lane(a1, u1, rows0 + 1, cols, R, M, out_ptr)
            lp2 += _store_lane(a2, u2, rows0 + 2, cols, R, M, out_ptr)
            lp3 += _store_lane(a3, u3, rows0 + 3, cols, R, M, out_ptr)
        # the next layer reads the states this program's threads just wrote
        tl.debug_barrier()
    tl.store(lp_ptr + rows0 + 0, lp0, mask=rows0 + 0 < R)
    tl.store(lp_ptr + rows0 + 1, lp1, mask=rows0 + 1 < R)
    tl.store(lp_ptr + rows0 + 2, lp2, mask=rows0 + 2 < R)
    tl.store(lp_ptr + rows0 + 3, lp3, mask=rows0 + 3 < R)


class PackedNetwork:
    """The p network's weights packed for :func:`ancestral_sample`: one fp32 weight buffer, one bias
    buffer and the layer widths, in sampling order (prior first, then ``h_{L−1}`` down to x).

    Args:
        weights: per layer in sampling order, (d_out, d_in) tensors (the prior's is (d_L, 0)).
        biases: per layer, (d_out,) tensors (the prior's is its logits).
    """

    def __init__(self, weights: list[torch.Tensor], biases: list[torch.Tensor]):
        self.widths = [int(w.shape[0]) for w in weights]
        self.in_widths = [int(w.shape[1]) for w in weights]
        for i in range(1, len(weights)):
            if self.in_widths[i] != self.widths[i - 1]:
                raise ValueError(f"layer {i} takes {self.in_widths[i]} inputs but layer {i - 1} has {self.widths[i - 1]} units")
        self.device = weights[0].device
        self.w = torch.cat([w.detach().reshape(-1).to(torch.float32) for w in weights])
        self.b = torch.cat([b.detach().reshape(-1).to(torch.float32) for b in biases])
        self.w_offsets, self.b_offsets = [], []
        wo = bo = 0
        for w in weights:
            self.w_offsets.append(wo)
            self.b_offsets.append(bo)
            wo += w.numel()
            bo += w.shape[0]

    def table(self, rows: int, offset: int, total_rows: int | None = None, row_start: int = 0):
        """(n_layers, 8) int64 launch table and the state-buffer offset of each layer's output.

        ``total_rows``/``row_start`` place the rows inside a larger pass (row_start a multiple of 4),
        as :meth:`bihm_triton.reference.BiHM.p_pass` does.
        """
        from ..reference.philox import counters_used

        if row_start % 4:
            raise ValueError(f"row_start must be a multiple of 4, got {row_start}")
        total = rows if total_rows is None else total_rows
        state_offsets, so = [], 0
        for d in self.widths:
            state_offsets.append(so)
            so += rows * d
        rows_table = []
        rng = offset
        for i, d in enumerate(self.widths):
            in_off = state_offsets[i - 1] if i > 0 else 0
            rows_table.append([self.w_offsets[i], self.b_offsets[i], self.in_widths[i], d, in_off,
                               state_offsets[i], rng + (row_start // 4) * d, 0])
            rng += counters_used(total, d)
        return torch.tensor(rows_table, dtype=torch.int64, device=self.device), state_offsets + [so]


def _blocks(block_g, block_m, block_k):
    if interpreting():
        bg, bm, bk = block_g or 16, block_m or 64, block_k or 64
    else:
        bg, bm, bk = block_g or 16, block_m or 64, block_k or 32
    check_blocks(bg, bm, bk)
    return bg, bm, bk


def ancestral_sample(net: PackedNetwork, rows: int, *, seed: torch.Tensor | int = 0, offset: int = 0,
                     total_rows: int | None = None, row_start: int = 0,
                     block_g: int | None = None, block_m: int | None = None, block_k: int | None = None):
    """Sample ``rows`` draws of the packed network in one launch (rows ``row_start…`` of a pass of
    ``total_rows``, by default the whole pass).

    Args:
        net: the packed p network. rows: samples to draw.
        seed: Philox key (int or one-element int64 tensor). offset: first counter of the pass.
        total_rows, row_start: place the rows in a larger pass (row_start a multiple of 4).
        block_g, block_m, block_k: tile sizes, powers of two >= 16 (4·block_g rows per program).

    Raises:
        ValueError: row_start not a multiple of 4, or bad tile sizes.
        RuntimeError: tensors on the CPU without ``TRITON_INTERPRET=1``.

    Returns:
        ``(states, log_p)``: states a list of uint8 (rows, d) tensors in sampling order (the prior's
        first, x last), views into one buffer; log_p (rows,) float32, the sum of every layer's
        ``Σ_j log Bern(x_j; σ(a_j))``.
    """
    check_device(net.w)
    table, state_offsets = net.table(rows, offset, total_rows, row_start)
    state = torch.empty(state_offsets[-1], device=net.device, dtype=torch.uint8)
    log_p = torch.empty(rows, device=net.device, dtype=torch.float32)
    BG, BM, BK = _blocks(block_g, block_m, block_k)
    seed_ptr, seed_val, from_ptr = seed_args(seed, net.device)
    if rows > 0:
        grid = (triton.cdiv(triton.cdiv(rows, 4), BG),)
        _ancestral_kernel[grid](net.w, net.b, state, log_p, table, seed_ptr if from_ptr else table, seed_val,
                                rows, len(net.widths), SEED_FROM_PTR=from_ptr, PRECISION=dot_precision(),
                                BLOCK_G=BG, BLOCK_M=BM, BLOCK_K=BK)
    states = [state[state_offsets[i]:state_offsets[i] + rows * d].view(rows, d) for i, d in enumerate(net.widths)]
    return states, log_p
