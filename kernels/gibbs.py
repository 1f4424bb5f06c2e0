"""One block-Gibbs update of a hidden layer of a BiHM in one launch (SPEC §4; the exact sampler of
:func:`bihm_triton.samplers.gibbs_sample`).

For chains ``c`` with neighbours ``h_{l−1}`` (below) and ``h_{l+1}`` (above; the top layer has the
prior instead), the update of ``h_l`` draws N = 2K candidates per chain from the mixture of
``p(h_l | h_{l+1})`` and ``q(h_l | h_{l−1})`` (a coin per candidate), puts the current state in slot
0, weighs every candidate by the balance heuristic
``½·log[p(c|h_{l+1}) q(c|h_{l−1}) p(h_{l−1}|c) q(h_{l+1}|c)] − log(½ p(c|h_{l+1}) + ½ q(c|h_{l−1}))``
and resamples one per chain by inverse CDF. The reference does this with some thirty tensor
operations; here one program owns ``G`` chains and their candidates (``NP`` ≥ N rows per chain,
the padding masked):

1. for each column tile of h_l: both proposals' logits (dots), both draws and the coin from the
   SPEC §5 stream at exactly the reference's counters, the candidate tile, its two proposal
   log-likelihoods; the candidate tile goes to a uint8 scratch (L1/L2-resident);
2. the two neighbour log-likelihoods ``log p(h_{l−1} | c)`` and ``log q(h_{l+1} | c)`` with the
   candidates as the dot's input;
3. per chain: softmax of the log-weights, the inverse-CDF choice with the stream's uniform, and
   the chosen candidate copied to the new state.

The stream draws are the reference's, in the same order: from p (R·N, d_l), from q (R·N, d_l),
the coin (R·N, 1), the choice (R, 1). The candidate rows ``r = c·N + s`` share Philox calls in
groups of four, so a tile's groups are whole when N is a multiple of 4 (K even); the launcher
refuses other K (the caller keeps the reference path for them).

The update of x (:func:`gibbs_x_update`) takes three launches for any K: the candidates kernel
draws K candidates per chain from ``p(x | h_1)`` (observed pixels clamped when inpainting, slot 0
the current state in exact mode) with their ``½(log q(h_1|c) − log p(c|h_1))``; the fused q pass
of :mod:`.passes` scores the ``n_inner`` inner samples of every candidate; the choice kernel forms
``log Ŝ(c)`` (log-mean-exp of ``½ log ω``), the log-weights, and the inverse-CDF choice per chain.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._config import as_loadable, check_device, dot_operand
from .codegen import round_up
from .philox import load_seed, seed_args
from .sbn import bernoulli_elementwise
from .tiles import dot_terms, interleave4, load_bits_masked, tile_uniforms


@triton.jit
def _group_uniforms(key, off, rg, cols, M):
    """(4·len(rg), C) uniforms: tile group q holds rows 4q…4q+3, which are the stream's row group rg[q]."""
    u0, u1, u2, u3 = tl.rand4x(key, off + rg.to(tl.int64)[:, None] * M + cols[None, :].to(tl.int64))
    return interleave4(u0, u1, u2, u3)


@triton.jit
def _row_logits(in_ptr, in_rows, row_limit, D: tl.constexpr, LD: tl.constexpr, w_ptr, W_OFF: tl.constexpr,
                KP: tl.constexpr, BK: tl.constexpr, LDW: tl.constexpr, b_ptr, B_OFF: tl.constexpr, cols,
                PLANE: tl.constexpr, BLOCK_R: tl.constexpr, BM: tl.constexpr, TERMS: tl.constexpr, OP: tl.constexpr):
    """``in[in_rows] · Wᵀ[:, cols] + b[cols]`` (BLOCK_R, BM) for a packed layer with D inputs (0: bias
    only), read from rows ``in_rows < row_limit`` of ``in`` (row stride LD)."""
    acc = tl.zeros((BLOCK_R, BM), dtype=tl.float32)
    if D > 0:
        for k0 in range(0, KP, BK):
            ks = k0 + tl.arange(0, BK)
            h = load_bits_masked(in_ptr, in_rows, ks, row_limit, D, LD, OP)
            acc = dot_terms(h, w_ptr + W_OFF, ks, cols, LDW, PLANE, acc, TERMS, OP)
    return acc + tl.load(b_ptr + B_OFF + cols)[None, :]


@triton.jit
def _score(a, x, cols, M):
    """Σ_j log Bern(x_j; σ(a_j)) over the columns j < M (BLOCK_R,)."""
    _, lp = bernoulli_elementwise(a, a, x, False, True)
    return tl.sum(tl.where((cols < M)[None, :], lp, 0.0), axis=1)


@triton.jit
def _neighbour_score(in_ptr, in_rows, row_limit, N: tl.constexpr, LD: tl.constexpr, tgt_ptr, chain, R,
                     D: tl.constexpr, w_ptr, W_OFF: tl.constexpr, KP: tl.constexpr, BK: tl.constexpr,
                     LDW: tl.constexpr, BM: tl.constexpr, b_ptr, B_OFF: tl.constexpr, PLANE: tl.constexpr,
                     BLOCK_R: tl.constexpr, TERMS: tl.constexpr, OP: tl.constexpr):
    """``log p(target[chain] | candidate)`` (BLOCK_R,) for a packed layer whose N inputs are the
    candidates (rows ``in_rows`` of ``in``, row stride LD) and whose D outputs are the chain's
    neighbour state ``target`` ((R, D) binary)."""
    total = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for m0 in range(0, D, BM):
        cols = m0 + tl.arange(0, BM)
        a = _row_logits(in_ptr, in_rows, row_limit, N, LD, w_ptr, W_OFF, KP, BK, LDW, b_ptr, B_OFF, cols, PLANE,
                        BLOCK_R, BM, TERMS, OP)
        t = tl.load(tgt_ptr + chain.to(tl.int64)[:, None] * D + cols[None, :],
                    mask=(chain < R)[:, None] & (cols < D)[None, :], other=0) != 0
        total += _score(a, t, cols, D)
    return total


@triton.jit(do_not_specialize=["seed", "off_p", "off_q", "off_c", "off_s"])
def _gibbs_hidden_kernel(
    w_ptr, b_ptr, lo_ptr, hi_ptr, cur_ptr, new_ptr, scratch_ptr, seed_ptr, seed, off_p, off_q, off_c, off_s, R,
    M: tl.constexpr, D_LO: tl.constexpr, D_HI: tl.constexpr, TOP: tl.constexpr,
    QW: tl.constexpr, QB: tl.constexpr, QKP: tl.constexpr, QBK: tl.constexpr, QLDW: tl.constexpr,
    PW: tl.constexpr, PB: tl.constexpr, PKP: tl.constexpr, PBK: tl.constexpr, PLDW: tl.constexpr,
    DW: tl.constexpr, DB: tl.constexpr, DKP: tl.constexpr, DBK: tl.constexpr, DLDW: tl.constexpr, DBM: tl.constexpr,
    UW: tl.constexpr, UB: tl.constexpr, UKP: tl.constexpr, UBK: tl.constexpr, ULDW: tl.constexpr, UBM: tl.constexpr,
    BM: tl.constexpr, SLD: tl.constexpr, PLANE: tl.constexpr, N: tl.constexpr, NP: tl.constexpr, G: tl.constexpr,
    SEED_FROM_PTR: tl.constexpr, TERMS: tl.constexpr, OP: tl.constexpr,
):
    BLOCK_R: tl.constexpr = G * NP
    pid = tl.program_id(0)
    key = load_seed(seed_ptr, seed, SEED_FROM_PTR)
    r_loc = tl.arange(0, BLOCK_R)
    slot = r_loc % NP
    chain = pid * G + r_loc // NP
    valid = (slot < N) & (chain < R)
    # the stream's row group of tile group q (rows 4q … 4q+3): chain·N/4 + slot/4
    q = tl.arange(0, BLOCK_R // 4)
    rg = (pid * G + q // (NP // 4)).to(tl.int64) * (N // 4) + q % (NP // 4)
    coin = _group_uniforms(key, off_c, rg, tl.arange(0, 1), 1)  # (BLOCK_R, 1)
    use_p = coin < 0.5
    scratch = scratch_ptr + pid.to(tl.int64) * BLOCK_R * SLD
    lp_prop = tl.zeros((BLOCK_R,), dtype=tl.float32)
    lq_prop = tl.zeros((BLOCK_R,), dtype=tl.float32)
    # 1. candidates, tile by tile of h_l's columns
    for m0 in range(0, M, BM):
        cols = m0 + tl.arange(0, BM)
        if TOP:
            a_p = tl.zeros((BLOCK_R, BM), dtype=tl.float32) + tl.load(b_ptr + PB + cols)[None, :]
        else:
            a_p = _row_logits(hi_ptr, chain, R, D_HI, D_HI, w_ptr, PW, PKP, PBK, PLDW, b_ptr, PB, cols, PLANE,
                              BLOCK_R, BM, TERMS, OP)
        a_q = _row_logits(lo_ptr, chain, R, D_LO, D_LO, w_ptr, QW, QKP, QBK, QLDW, b_ptr, QB, cols, PLANE,
                          BLOCK_R, BM, TERMS, OP)
        x_p, _ = bernoulli_elementwise(a_p, _group_uniforms(key, off_p, rg, cols, M), a_p, True, False)
        x_q, _ = bernoulli_elementwise(a_q, _group_uniforms(key, off_q, rg, cols, M), a_q, True, False)
        cur = tl.load(cur_ptr + chain.to(tl.int64)[:, None] * M + cols[None, :],
                      mask=(chain < R)[:, None] & (cols < M)[None, :], other=0) != 0
        cand = tl.where((slot == 0)[:, None], cur, tl.where(use_p, x_p, x_q))
        lp_prop += _score(a_p, cand, cols, M)
        lq_prop += _score(a_q, cand, cols, M)
        tl.store(scratch + r_loc[:, None] * SLD + cols[None, :], cand.to(tl.uint8))
    tl.debug_barrier()  # the neighbour scores read the candidates back
    # 2. the neighbours' log-likelihoods given each candidate
    target = lp_prop + lq_prop
    target += _neighbour_score(scratch, r_loc, BLOCK_R, M, SLD, lo_ptr, chain, R, D_LO, w_ptr, DW, DKP, DBK, DLDW,
                               DBM, b_ptr, DB, PLANE, BLOCK_R, TERMS, OP)
    if not TOP:
        target += _neighbour_score(scratch, r_loc, BLOCK_R, M, SLD, hi_ptr, chain, R, D_HI, w_ptr, UW, UKP, UBK,
                                   ULDW, UBM, b_ptr, UB, PLANE, BLOCK_R, TERMS, OP)
    mx = tl.maximum(lp_prop, lq_prop)
    mx = tl.where(mx == -float("inf"), 0.0, mx)  # both −inf: the mixture is −inf, not NaN
    mixture = mx + tl.log(tl.exp(lp_prop - mx) + tl.exp(lq_prop - mx)) - 0.6931471805599453
    log_w = tl.where(valid, 0.5 * target - mixture, -float("inf"))
    # 3. per chain: softmax, inverse CDF with the stream's uniform (R, 1) draw, copy the choice
    chains = pid * G + tl.arange(0, G)
    pick = _pick(tl.reshape(log_w, (G, NP)), chains, key, off_s, N)
    src = scratch + (tl.arange(0, G) * NP + pick).to(tl.int64) * SLD
    for m0 in range(0, M, BM):
        cols = m0 + tl.arange(0, BM)
        bits = tl.load(src[:, None] + cols[None, :])
        tl.store(new_ptr + chains.to(tl.int64)[:, None] * M + cols[None, :], bits.to(new_ptr.dtype.element_ty),
                 mask=(chains < R)[:, None] & (cols < M)[None, :])


def gibbs_hidden_supported(k: int) -> bool:
    """The fused update needs N = 2K candidates in whole groups of four rows: K even."""
    return k % 2 == 0


def gibbs_hidden_meta(plans: dict, dims: tuple, top: bool, k: int, plane: int,
                      chains_per_program: int | None = None) -> dict:
    """The constexprs of the hidden-layer kernel but SEED_FROM_PTR, TERMS and OP: tile and scratch
    geometry and the packed layers' offsets (the launcher's, and what bench/compile_check.py compiles).

    Args:
        plans, top: as :func:`gibbs_hidden_update`.
        dims: ``(d_{l−1}, d_l, d_{l+1})`` widths, the last 0 for the top layer.
        k: candidates per proposal (N = 2K rows per chain). plane: the pack's plane stride.
    """
    D_LO, M, D_HI = dims
    N = 2 * k
    NP = max(4, 1 << (N - 1).bit_length())
    G = max(chains_per_program or max(1, 64 // NP), -(-16 // NP))  # a tile of at least 16 rows (tl.dot)
    q, p, down, up = plans["q"], plans["p"], plans["down"], plans.get("up")
    u = up or down  # placeholders when top (unused)
    return dict(M=M, D_LO=D_LO, D_HI=D_HI, TOP=top,
                QW=q.w_off, QB=q.b_off, QKP=q.KP, QBK=q.BK, QLDW=q.ldw,
                PW=p.w_off, PB=p.b_off, PKP=p.KP, PBK=max(p.BK, 16), PLDW=p.ldw,
                DW=down.w_off, DB=down.b_off, DKP=down.KP, DBK=down.BK, DLDW=down.ldw, DBM=down.BM,
                UW=u.w_off, UB=u.b_off, UKP=u.KP, UBK=u.BK, ULDW=u.ldw, UBM=u.BM,
                BM=q.BM, SLD=round_up(max(round_up(M, q.BM), down.KP, up.KP if up is not None else 0), 16),
                PLANE=plane, N=N, NP=NP, G=G)


def gibbs_hidden_update(pack, plans: dict, l: int, top: bool, states, k: int, *, seed, offsets, terms: int,
                        chains_per_program: int | None = None) -> torch.Tensor:
    """The new h_l (R, d_l) of the exact block-Gibbs update, in one launch.

    Args:
        pack: :class:`~bihm_triton.kernels.chain.WeightPack` holding the layers named in ``plans``.
        plans: ``{"q": q_{l−1}, "p": p_l (or the prior), "down": p_{l−1}, "up": q_l (None if top)}``,
            :class:`~bihm_triton.kernels.codegen.LayerPlan` of each within ``pack``.
        states: ``[h_0, …, h_L]`` (R, d_i) each, binary, contiguous.
        k: candidates per proposal (N = 2K per chain; K must be even).
        offsets: ``(from_p, from_q, coin, choice)`` offsets of the four stream draws.
    """
    if not gibbs_hidden_supported(k):
        raise ValueError(f"the fused Gibbs update needs an even k, got {k}")
    cur = states[l].contiguous()
    check_device(cur)
    R, M = cur.shape
    lo = states[l - 1].contiguous()
    hi = lo if top else states[l + 1].contiguous()
    meta = gibbs_hidden_meta(plans, (lo.shape[1], M, 0 if top else hi.shape[1]), top, k, pack.plane,
                             chains_per_program)
    grid = (triton.cdiv(R, meta["G"]),)
    scratch = torch.empty(grid[0] * meta["G"] * meta["NP"] * meta["SLD"], device=cur.device, dtype=torch.uint8)
    new = torch.empty_like(cur)
    seed_ptr, seed_val, from_ptr = seed_args(seed, cur.device)
    _gibbs_hidden_kernel[grid](
        pack.planes, pack.bias, as_loadable(lo), as_loadable(hi), as_loadable(cur), as_loadable(new), scratch,
        seed_ptr if from_ptr else pack.bias, seed_val, *offsets, R,
        **meta, SEED_FROM_PTR=from_ptr, TERMS=terms, OP=dot_operand(),
    )
    return new


@triton.jit
def _pick(log_w, chains, key, off_s, N):
    """Per chain (row of log_w (G, NP), −inf in the padding): softmax, and the inverse-CDF choice with
    the uniform of the stream's (R, 1) draw at ``off_s``; a chain whose weights are all zero keeps 0."""
    top_w = tl.max(log_w, axis=1)
    dead = top_w == -float("inf")
    e = tl.exp(log_w - tl.where(dead, 0.0, top_w)[:, None])
    p = e / tl.where(dead, 1.0, tl.sum(e, axis=1))[:, None]
    cdf = tl.cumsum(p, axis=1)
    u0, u1, u2, u3 = tl.rand4x(key, off_s + (chains // 4).to(tl.int64))
    lane = chains % 4
    u = tl.where(lane == 0, u0, tl.where(lane == 1, u1, tl.where(lane == 2, u2, u3)))
    total = tl.max(cdf, axis=1)  # the last entry: cdf is non-decreasing
    pick = tl.sum((cdf <= (u * total)[:, None]).to(tl.int32), axis=1)
    return tl.where(dead, 0, tl.minimum(pick, N - 1))


@triton.jit(do_not_specialize=["seed", "off_p", "R", "RK", "K"])
def _gibbs_x_candidates_kernel(
    w_ptr, b_ptr, h1_ptr, cur_ptr, mask_ptr, obs_ptr, cand_ptr, half_ptr, seed_ptr, seed, off_p, R, RK, K,
    D0: tl.constexpr, D1: tl.constexpr,
    PW: tl.constexpr, PB: tl.constexpr, PKP: tl.constexpr, PBK: tl.constexpr, PLDW: tl.constexpr, PBM: tl.constexpr,
    QW: tl.constexpr, QB: tl.constexpr, QKP: tl.constexpr, QBK: tl.constexpr, QLDW: tl.constexpr, QBM: tl.constexpr,
    PLANE: tl.constexpr, BLOCK_R: tl.constexpr, HAS_MASK: tl.constexpr, EXACT: tl.constexpr,
    SEED_FROM_PTR: tl.constexpr, TERMS: tl.constexpr, OP: tl.constexpr,
):
    """Rows ``r = c·K + s`` (chain c, slot s) of the x candidates: the draw from p(x | h_1[c]) at the
    reference's counters, clamps, the candidate (uint8, (R·K, D0)) and ``½(log q(h_1|x) − log p(x|h_1))``."""
    pid = tl.program_id(0)
    key = load_seed(seed_ptr, seed, SEED_FROM_PTR)
    row0 = pid.to(tl.int64) * BLOCK_R
    rows = row0 + tl.arange(0, BLOCK_R)
    chain = rows // K
    slot = rows % K
    live = rows < RK
    has_chain = chain < R
    lp = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for m0 in range(0, D0, PBM):
        cols = m0 + tl.arange(0, PBM)
        a = _row_logits(h1_ptr, chain, R, D1, D1, w_ptr, PW, PKP, PBK, PLDW, b_ptr, PB, cols, PLANE, BLOCK_R, PBM,
                        TERMS, OP)
        x, _ = bernoulli_elementwise(a, tile_uniforms(key, off_p + (row0 // 4) * D0, cols, D0, BLOCK_R), a,
                                     True, False)
        at = chain[:, None] * D0 + cols[None, :]
        in_x = has_chain[:, None] & (cols < D0)[None, :]
        if HAS_MASK:
            observed = tl.load(mask_ptr + at, mask=in_x, other=0) != 0
            x = tl.where(observed, tl.load(obs_ptr + at, mask=in_x, other=0) != 0, x)
        if EXACT:
            x = tl.where((slot == 0)[:, None], tl.load(cur_ptr + at, mask=in_x, other=0) != 0, x)
        lp += _score(a, x, cols, D0)
        tl.store(cand_ptr + rows[:, None] * D0 + cols[None, :], x.to(tl.uint8),
                 mask=live[:, None] & (cols < D0)[None, :])
    tl.debug_barrier()  # log q(h_1 | x) reads the candidates back
    lq = _neighbour_score(cand_ptr, rows, RK, D0, D0, h1_ptr, chain, R, D1, w_ptr, QW, QKP, QBK, QLDW, QBM, b_ptr,
                          QB, PLANE, BLOCK_R, TERMS, OP)
    tl.store(half_ptr + rows, 0.5 * (lq - lp), mask=live)


@triton.jit(do_not_specialize=["seed", "off_s", "R", "K", "n_inner"])
def _gibbs_x_choose_kernel(
    cand_ptr, half_ptr, lp_ptr, lq_ptr, cur_s_ptr, new_ptr, new_s_ptr, seed_ptr, seed, off_s, R, K, n_inner,
    log_n_inner, D0: tl.constexpr, KP: tl.constexpr, G: tl.constexpr, BM: tl.constexpr, EXACT: tl.constexpr,
    SEED_FROM_PTR: tl.constexpr,
):
    """Per chain: ``log Ŝ`` of each candidate (log-mean-exp over its n_inner rows of ``½(log p − log q)``;
    slot 0 keeps the chain's own in exact mode), the log-weights, the choice, the chosen x and its log Ŝ."""
    pid = tl.program_id(0)
    key = load_seed(seed_ptr, seed, SEED_FROM_PTR)
    chains = pid.to(tl.int64) * G + tl.arange(0, G)
    s = tl.arange(0, KP)
    valid = (chains < R)[:, None] & (s < K)[None, :]
    r = chains[:, None] * K + s[None, :]
    top_t = tl.full((G, KP), -float("inf"), tl.float32)
    for i in range(n_inner):
        t = 0.5 * (tl.load(lp_ptr + r * n_inner + i, mask=valid, other=0.0)
                   - tl.load(lq_ptr + r * n_inner + i, mask=valid, other=0.0))
        top_t = tl.maximum(top_t, t)
    shift = tl.where(top_t == -float("inf"), 0.0, top_t)
    acc = tl.zeros((G, KP), dtype=tl.float32)
    for i in range(n_inner):
        t = 0.5 * (tl.load(lp_ptr + r * n_inner + i, mask=valid, other=0.0)
                   - tl.load(lq_ptr + r * n_inner + i, mask=valid, other=0.0))
        acc += tl.exp(t - shift)
    log_s = shift + tl.log(acc) - log_n_inner
    if EXACT:
        log_s = tl.where((s == 0)[None, :], tl.load(cur_s_ptr + chains, mask=chains < R, other=0.0)[:, None], log_s)
    log_w = tl.where(valid, tl.load(half_ptr + r, mask=valid, other=0.0) + log_s, -float("inf"))
    pick = _pick(log_w, chains, key, off_s, K)
    tl.store(new_s_ptr + chains, tl.max(tl.where(s[None, :] == pick[:, None], log_s, -float("inf")), axis=1),
             mask=chains < R)
    src = cand_ptr + (chains * K + pick) * D0
    for m0 in range(0, D0, BM):
        cols = m0 + tl.arange(0, BM)
        inside = (chains < R)[:, None] & (cols < D0)[None, :]
        bits = tl.load(src[:, None] + cols[None, :], mask=inside, other=0)
        tl.store(new_ptr + chains[:, None] * D0 + cols[None, :], bits.to(new_ptr.dtype.element_ty), mask=inside)


def gibbs_x_meta(plans: dict, dims: tuple, k: int, plane: int, block_r: int = 64) -> tuple[dict, dict]:
    """The constexprs of the x update's candidates kernel (but HAS_MASK, EXACT, SEED_FROM_PTR, TERMS,
    OP) and of its choice kernel (but EXACT, SEED_FROM_PTR), for ``plans = {"p": p_0, "q": q_0}``,
    ``dims = (d_0, d_1)`` and K candidates per chain (the launcher's, and what bench/compile_check.py
    compiles)."""
    D0, D1 = dims
    p, q = plans["p"], plans["q"]
    KP = max(2, 1 << (k - 1).bit_length())
    candidates = dict(D0=D0, D1=D1, PW=p.w_off, PB=p.b_off, PKP=p.KP, PBK=p.BK, PLDW=p.ldw, PBM=p.BM,
                      QW=q.w_off, QB=q.b_off, QKP=q.KP, QBK=q.BK, QLDW=q.ldw, QBM=q.BM, PLANE=plane, BLOCK_R=block_r)
    return candidates, dict(D0=D0, KP=KP, G=max(1, 128 // KP), BM=64)


def gibbs_x_update(pack, plans: dict, passes, states, log_s, k: int, n_inner: int, *, seed, offsets, terms: int,
                   exact: bool = True, mask=None, x_obs=None, block_r: int = 64):
    """The new x (R, d_0) and its ``log Ŝ`` (R,) float32 of a block-Gibbs update of x, in three launches.

    Args:
        pack: :class:`~bihm_triton.kernels.chain.WeightPack` holding the layers of ``plans`` (and of
            ``passes``). plans: ``{"p": p_0 (h_1 -> x), "q": q_0 (x -> h_1)}`` :class:`LayerPlan`.
        passes: the network's fused passes (:class:`~bihm_triton.kernels.passes.FusedPasses`), packed.
        states: ``[x, h_1, …]`` (R, d_i) binary. log_s: (R,) ``log Ŝ`` of the current x (exact mode).
        k: candidates per chain (≥ 1). n_inner: q samples per ``Ŝ``.
        offsets: ``(candidates, inner q pass, choice)`` offsets of the three stream draws.
        exact: candidate 0 is the current state (i-SIR); False: the paper's plain resampling.
        mask, x_obs: (R, d_0) observed pixels (True) and their values, or None.

    Raises:
        ValueError: exact mode without log_s; block_r not a multiple of 16.
        RuntimeError: tensors on the CPU without ``TRITON_INTERPRET=1``.
    """
    if exact and log_s is None:
        raise ValueError("exact mode needs log_s, the (R,) log Ŝ of the current x")
    if block_r % 16:
        raise ValueError(f"block_r must be a multiple of 16 (whole Philox row groups, tl.dot), got {block_r}")
    x, h1 = states[0].contiguous(), states[1].contiguous()
    check_device(x)
    R, D0 = x.shape
    RK = R * k
    cand_meta, choose_meta = gibbs_x_meta(plans, (D0, h1.shape[1]), k, pack.plane, block_r)
    cand = torch.empty(RK, D0, device=x.device, dtype=torch.uint8)
    half = torch.empty(RK, device=x.device, dtype=torch.float32)
    seed_ptr, seed_val, from_ptr = seed_args(seed, x.device)
    seed_ptr = seed_ptr if from_ptr else half
    has_mask = mask is not None
    _gibbs_x_candidates_kernel[(triton.cdiv(RK, block_r),)](
        pack.planes, pack.bias, as_loadable(h1), as_loadable(x),
        as_loadable(mask.contiguous()) if has_mask else half, as_loadable(x_obs.contiguous()) if has_mask else half,
        cand, half, seed_ptr, seed_val, offsets[0], R, RK, k,
        **cand_meta, HAS_MASK=has_mask, EXACT=exact, SEED_FROM_PTR=from_ptr, TERMS=terms, OP=dot_operand(),
    )
    rows = RK * n_inner
    lp, lq, _ = passes.forward(cand, rows, seed=seed, offset=offsets[1], row0=0, in_repeat=n_inner,
                               terms=terms)
    new = torch.empty_like(x)
    new_s = torch.empty(R, device=x.device, dtype=torch.float32)
    cur_s = log_s.float().contiguous() if exact else new_s
    _gibbs_x_choose_kernel[(triton.cdiv(R, choose_meta["G"]),)](
        cand, half, lp, lq, cur_s, as_loadable(new), new_s, seed_ptr, seed_val, offsets[2], R, k, n_inner,
        math.log(n_inner), **choose_meta, EXACT=exact, SEED_FROM_PTR=from_ptr,
    )
    return new, new_s


__all__ = ["gibbs_hidden_meta", "gibbs_hidden_supported", "gibbs_hidden_update", "gibbs_x_meta", "gibbs_x_update"]
