"""The SPEC §5 random stream in Triton: four rows share one Philox4x32-10 call per column.

The mapping (defined in :mod:`bihm_triton.reference.philox`): element ``(r, j)`` of an (R, M)
draw reads output ``r % 4`` of ``philox(key=seed, counter=offset + (r // 4)·M + j)``, converted by
Triton's ``uint_to_uniform_float``. ``tl.rand4x`` splits an int64 counter into ``c0`` (low word)
and ``c1`` (high word) and the seed into ``k0``/``k1`` exactly as the reference does.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._config import check_device


@triton.jit
def group_uniforms(seed, offset, groups, cols, M):
    """Uniforms of the four rows ``4·groups + 0..3`` at columns ``cols``: four (G, C) float32 blocks.

    ``groups`` (G,) and ``cols`` (C,) are int32 or int64 index blocks; the counter is computed in
    int64 so draws with more than 2**31 elements are safe.
    """
    counter = offset + groups.to(tl.int64)[:, None] * M + cols[None, :].to(tl.int64)
    return tl.rand4x(seed, counter)


@triton.jit
def load_seed(seed_ptr, seed, SEED_FROM_PTR: tl.constexpr):
    """The Philox key: read from a one-element int64 tensor (CUDA-graph friendly) or the scalar argument."""
    if SEED_FROM_PTR:
        return tl.load(seed_ptr).to(tl.int64)
    else:
        return seed.to(tl.int64)


@triton.jit(do_not_specialize=["seed", "offset"])
def _philox_uniform_kernel(out_ptr, seed_ptr, seed, offset, R, M, SEED_FROM_PTR: tl.constexpr,
                           BLOCK_G: tl.constexpr, BLOCK_M: tl.constexpr):
    pid_g = tl.program_id(0)
    pid_m = tl.program_id(1)
    groups = pid_g * BLOCK_G + tl.arange(0, BLOCK_G)
    cols = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    key = load_seed(seed_ptr, seed, SEED_FROM_PTR)
    u0, u1, u2, u3 = group_uniforms(key, offset, groups, cols, M)
    col_ok = (cols < M)[None, :]
    base = out_ptr + cols[None, :]
    rows = 4 * groups.to(tl.int64)[:, None]
    tl.store(base + (rows + 0) * M, u0, mask=col_ok & (rows + 0 < R))
    tl.store(base + (rows + 1) * M, u1, mask=col_ok & (rows + 1 < R))
    tl.store(base + (rows + 2) * M, u2, mask=col_ok & (rows + 2 < R))
    tl.store(base + (rows + 3) * M, u3, mask=col_ok & (rows + 3 < R))


def seed_args(seed: torch.Tensor | int, device: torch.device):
    """Kernel arguments ``(seed_ptr, seed, SEED_FROM_PTR)`` for an int or a one-element int64 tensor.

    A CPU tensor is read on the host (no device sync); a tensor on the kernel's device is read by
    the kernel, so a CUDA graph replays with whatever the tensor holds at replay time.
    """
    if isinstance(seed, torch.Tensor):
        if seed.device.type == "cpu" and device.type != "cpu":
            return None, int(seed.reshape(())), False
        return seed.reshape(1), 0, True
    return None, int(seed), False


def philox_uniform(seed: torch.Tensor | int, offset: int, rows: int, cols: int, *,
                   device: torch.device | str = "cuda") -> torch.Tensor:
    """The uniforms (rows, cols) float32 of a draw, computed by Triton (a test and debug output).

    Equal bit for bit to :func:`bihm_triton.reference.philox_uniform` with the same arguments.
    """
    device = torch.device(device)
    out = torch.full((rows, cols), float("nan"), device=device, dtype=torch.float32)
    check_device(out)
    seed_ptr, seed_val, from_ptr = seed_args(seed, device)
    BLOCK_G, BLOCK_M = 16, 64
    grid = (triton.cdiv(triton.cdiv(rows, 4), BLOCK_G), triton.cdiv(cols, BLOCK_M))
    if rows and cols:
        _philox_uniform_kernel[grid](out, seed_ptr if from_ptr else out, seed_val, offset, rows, cols,
                                     SEED_FROM_PTR=from_ptr, BLOCK_G=BLOCK_G, BLOCK_M=BLOCK_M)
    return out
