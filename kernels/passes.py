"""Fused passes for training and likelihood estimation (SPEC §2–3): ``log ω = log p(x, h) − log q(h | x)``
for K importance samples per data point in one launch, and its backward in two.

**Forward** (:func:`log_weights_source`): one program owns ``BLOCK_R`` rows ``r = b·K + k`` and

1. runs the q pass bottom-up exactly like the fused chain sampler (:mod:`.chain`): layer l draws
   ``h_{l+1} ~ q(· | h_l)`` from the stream (``x`` is read in place: row r uses data point
   ``r // K``), narrow q layers also keep their states in registers for the next q layer, and every
   state is written to a padded uint8 state buffer (the p scores and the backward read them);
2. scores the p model top-down from that buffer: the prior ``log p(h_L)`` and every
   ``log p(h_l | h_{l+1})``, with the same dots and epilogue.

It returns ``log p(x, h)`` and ``log q(h | x)`` per row; the logits never reach memory, and the
states a program reads back are the ones it just wrote (usually still in L1/L2).

**Backward**, given per-row coefficients ``g_p = ∂L/∂log p`` and ``g_q = ∂L/∂log q``:

* :func:`grad_logits_source`: one launch recomputes the logits of every layer (q, p and the
  prior) and writes ``∂L/∂a = g_r · (x − σ(a))`` to a padded fp32 buffer;
* :func:`weight_grads_source`: one grouped matmul launch, a program per (layer, output tile,
  input tile), sums ``∂L/∂W = (∂L/∂a)ᵀ · h_in`` and ``∂L/∂b = Σ_r ∂L/∂a`` over the rows (no
  atomics: deterministic).

The random stream is the per-layer path's (the q pass of :meth:`bihm_triton.reference.BiHM.q_pass`,
SPEC §5 stream version 2: q layer l is draw l, row r of the pass reads counters
``offset + l·2**40 + (r // 4)·d_{l+1} + j``): the same (seed, offset) gives the same samples and
log-weights as the reference up to the rounding of the logits. Weights are packed as bf16 terms (:mod:`.chain`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from ._config import as_loadable, check_device, dot_precision
from .chain import _ALIGN, PROLOGUE, WeightPack, draw_base, external_input, launch_config, launch_options, make_plan
from .codegen import BARRIER, Mem, block_choices, emit_layer, load_generated, pick_block, round_up
from .philox import seed_args

#: Tile of the grouped weight-gradient matmul: (output units (at most; a layer's own BM), input units,
#: rows per step).
WGRAD_BLOCKS = (64, 64, 64)


@triton.jit
def wgrad_tile(ga_ptr, GA_LD: tl.constexpr, in_ptr, IN_LD: tl.constexpr, dw_ptr, db_ptr, mt, nt, rows_alloc,
               R, row0, in_repeat, in_row0, M: tl.constexpr, N: tl.constexpr, EXTERNAL: tl.constexpr,
               BM: tl.constexpr, BN: tl.constexpr, BR: tl.constexpr, PRECISION: tl.constexpr):
    """One (BM, BN) tile of ``dW = Σ_r ga[r, :]ᵀ · h[r, :]`` (M, N) and, for the first input tile, of
    ``db = Σ_r ga[r, :]``. ``ga`` (rows_alloc, GA_LD) is padded (maskless loads); the input h is the
    padded state buffer (rows_alloc, IN_LD), or with ``EXTERNAL`` the data x, chunk row r reading
    ``x[(row0 + r) // in_repeat − in_row0]`` (masked to r < R, columns < N). N = 0: the bias only."""
    ms = mt * BM + tl.arange(0, BM)
    ns = nt * BN + tl.arange(0, BN)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    bsum = tl.zeros((BM,), dtype=tl.float32)
    for r0 in range(0, rows_alloc, BR):
        rr = r0 + tl.arange(0, BR)
        g = tl.load(ga_ptr + rr.to(tl.int64)[:, None] * GA_LD + ms[None, :])
        bsum += tl.sum(g, axis=0)
        if N > 0:
            if EXTERNAL:
                xr = ((row0 + rr) // in_repeat - in_row0).to(tl.int64)
                v = tl.load(in_ptr + xr[:, None] * IN_LD + ns[None, :], mask=(rr < R)[:, None] & (ns < N)[None, :],
                            other=0)
            else:
                v = tl.load(in_ptr + rr.to(tl.int64)[:, None] * IN_LD + ns[None, :])
            acc = tl.dot(tl.trans(g), (v != 0).to(tl.float32), acc, input_precision=PRECISION)
    if N > 0:
        tl.store(dw_ptr + ms[:, None] * N + ns[None, :], acc, mask=(ms < M)[:, None] & (ns < N)[None, :])
    tl.store(db_ptr + ms, bsum, mask=(ms < M) & ((ms * 0 + nt) == 0))


# ------------------------------------------------------------------------------ the plan


@dataclass(frozen=True)
class PassPlan:
    """Layout of the fused passes of a BiHM with ``sizes = [d_0, …, d_L]``.

    ``q``: the q chain (layer l: d_l → d_{l+1}; external input x). ``p``: the p layers scored
    given the states, ``p[l]`` (d_{l+1} → d_l) for l < L and ``p[L]`` the prior (0 → d_L). All
    2L + 1 layers share one weight pack (q first). ``st_off``/``st_ld``: region offset and row
    stride of state l (index l − 1) in the uint8 state buffer (per padded row); ``ga_off``: the
    region of each layer (q then p) in the fp32 ``∂L/∂a`` buffer, whose row stride is the layer's
    ``ldw``.
    """

    sizes: tuple
    q: tuple
    p: tuple
    plane: int
    n_bias: int
    st_off: tuple
    st_ld: tuple
    st_width: int
    ga_off: tuple
    ga_width: int
    grad_off: tuple  # (w_offset, b_offset) of each layer's gradient in the flat fp32 gradient buffer
    grad_size: int

    @property
    def layers(self) -> tuple:
        return self.q + self.p


def make_pass_plan(sizes, *, reg_max: int, bm_max: int = 64, bk_max: int = 64) -> PassPlan:
    sizes = tuple(int(d) for d in sizes)
    L = len(sizes) - 1
    qplan = make_plan(sizes[:-1], sizes[1:], external_input=True, reg_max=reg_max, bm_max=bm_max, bk_max=bk_max)
    bm_choices, bk_choices = block_choices(bm_max), block_choices(bk_max)
    w_off, b_off = qplan.plane, qplan.n_bias
    p = []
    for l in [*range(L), L]:
        N, M = (sizes[l + 1], sizes[l]) if l < L else (0, sizes[L])
        BM = pick_block(M, bm_choices)
        BK = pick_block(N, bk_choices) if N else 0
        KP, ldw = (round_up(N, BK) if N else 0), round_up(M, BM)
        p.append(replace(qplan.layers[0], N=N, M=M, P=0, BM=BM, BK=BK, KP=KP, ldw=ldw, in_reg=False, out_reg=False,
                         w_off=w_off, b_off=b_off, draw=-1, hoff=0, soff=0, sld=0))
        w_off += round_up(KP * ldw, _ALIGN)
        b_off += round_up(ldw, _ALIGN)
    # every tile grid that touches state s (1..L): the q layer producing it and the one reading it,
    # the p layer reading it, the p layer (or prior) scoring it, the weight-gradient tiles
    st_off, st_ld, off = [], [], 0
    for s in range(1, L + 1):
        blocks = [qplan.layers[s - 1].BM, p[s - 1].BK, p[s].BM, WGRAD_BLOCKS[1], WGRAD_BLOCKS[0]]
        if s < L:
            blocks.append(qplan.layers[s].BK)
        ld = round_up(max(round_up(sizes[s], b) for b in blocks), 16)
        st_off.append(off)
        st_ld.append(ld)
        off += ld
    ga_off, goff, grad_off, gpos = [], 0, [], 0
    for lay in (*qplan.layers, *p):
        ga_off.append(goff)
        goff += lay.ldw
        grad_off.append((gpos, gpos + lay.M * lay.N))
        gpos += lay.M * lay.N + lay.M
    return PassPlan(sizes, qplan.layers, tuple(p), max(w_off, _ALIGN), max(b_off, _ALIGN), tuple(st_off),
                    tuple(st_ld), off, tuple(ga_off), goff, tuple(grad_off), gpos)


# ------------------------------------------------------------------------------ code generation

_IMPORTS = '''import triton
import triton.language as tl

from bihm_triton.kernels.philox import load_seed
from bihm_triton.kernels.tiles import dot_terms, draw_tile, grad_tile, load_bits, load_bits_masked, score_tile
'''


def _state(plan: PassPlan, s: int) -> Mem:
    """State h_s (s = 1..L) in the tile-local view of the padded state buffer."""
    return Mem(f"(st_ptr + st_base * {plan.st_off[s - 1]} + tile0 * {plan.st_ld[s - 1]})", plan.st_ld[s - 1],
               "st_ptr.dtype.element_ty")


def _data(plan: PassPlan) -> Mem:
    """x (as input or target): chunk row r is data point ``(row0 + r) // in_repeat - in_row0``."""
    d0 = plan.sizes[0]
    m = external_input(d0)
    return replace(m, rows="(out_rows // in_repeat - in_row0)", limit="(R + row0 + in_repeat - 1) // in_repeat - in_row0")


_SIGNATURE = '''(
    w_ptr, b_ptr, in_ptr, st_ptr, {outs}, seed_ptr,
    seed, offset, group_start, R, row0, st_rows, in_repeat, in_row0,
    SEED_FROM_PTR: tl.constexpr, TERMS: tl.constexpr, OP: tl.constexpr, WANT_LP: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
{prologue}
    st_base = st_rows.to(tl.int64)
'''


def log_weights_source(plan: PassPlan) -> str:
    """The forward kernel: q pass (states to the state buffer), then the p model scored; log q and log p per row."""
    L = len(plan.sizes) - 1
    body = [f'"""Generated by bihm_triton.kernels.passes for sizes {list(plan.sizes)}: log-weights forward."""',
            _IMPORTS, "", '@triton.jit(do_not_specialize=["seed", "offset", "group_start", "row0", "in_row0"])', "def fused_log_weights" + _SIGNATURE.format(outs="lq_ptr, lp_ptr", prologue=PROLOGUE),
            "    lq = tl.zeros((BLOCK_R,), dtype=tl.float32)\n"]
    for i, Lq in enumerate(plan.q):
        inp = _data(plan) if i == 0 else (f"sq{i - 1}" if Lq.in_reg else _state(plan, i))
        body.append(emit_layer(
            f"q{i}", Lq, plane=plan.plane, mode="sample", inp=inp, stores=(_state(plan, i + 1),), keep=Lq.out_reg,
            lp_var="lq", rng_base=draw_base(Lq),
            comment=f"q layer {i}: h_{i} ({Lq.N}) -> h_{i + 1} ({Lq.M})"))
        if not Lq.out_reg:  # the next q layer (or, after the last, the p scores) reads these states back
            body.append(BARRIER)
    for l in [L, *range(L - 1, -1, -1)]:
        Lp = plan.p[l]
        inp = None if l == L else _state(plan, l + 1)
        target = _data(plan) if l == 0 else _state(plan, l)
        body.append(emit_layer(f"p{l}", Lp, plane=plan.plane, mode="score", inp=inp, target=target, lp_var="lp",
                               comment=(f"prior p(h_{L})" if l == L else f"p layer {l}: h_{l + 1} -> h_{l}")))
    body.append("    tl.store(lq_ptr + rows, lq, mask=row_ok)\n    tl.store(lp_ptr + rows, lp, mask=row_ok)\n")
    return "\n".join(body)


def grad_logits_source(plan: PassPlan) -> str:
    """The first backward kernel: ∂L/∂a of every layer (q with coefficient g_q, p and prior with g_p)."""
    L = len(plan.sizes) - 1
    body = [f'"""Generated by bihm_triton.kernels.passes for sizes {list(plan.sizes)}: ∂L/∂a of every layer."""',
            _IMPORTS, "", '@triton.jit(do_not_specialize=["row0", "in_row0"])',
            "def fused_grad_logits" + _SIGNATURE.format(outs="gq_ptr, gp_ptr, ga_ptr", prologue=PROLOGUE),
            "    cq = tl.load(gq_ptr + rows, mask=row_ok, other=0.0)\n"
            "    cp = tl.load(gp_ptr + rows, mask=row_ok, other=0.0)\n"]
    for j, lay in enumerate(plan.layers):
        ld = plan.layers[j].ldw
        dest = Mem(f"(ga_ptr + st_base * {plan.ga_off[j]} + tile0 * {ld})", ld, "tl.float32")
        if j < L:  # q layer j: h_j -> h_{j+1}
            inp, target, coef, what = (_data(plan) if j == 0 else _state(plan, j)), _state(plan, j + 1), "cq", \
                f"q layer {j}"
        else:
            l = j - L
            inp = None if l == L else _state(plan, l + 1)
            target = _data(plan) if l == 0 else _state(plan, l)
            coef, what = "cp", (f"prior p(h_{L})" if l == L else f"p layer {l}")
        body.append(emit_layer(f"g{j}", lay, plane=plan.plane, mode="grad", inp=inp, target=target, coef=coef,
                               stores=(dest,), lp_var=None, comment=f"{what}: dL/da"))
    return "\n".join(body)


def weight_grads_source(plan: PassPlan) -> str:
    """The second backward kernel: one program per (layer, output tile, input tile) of every dW and db."""
    L = len(plan.sizes) - 1
    _, BN, BR = WGRAD_BLOCKS
    lines = [f'"""Generated by bihm_triton.kernels.passes for sizes {list(plan.sizes)}: grouped dW, db."""',
             "import triton", "import triton.language as tl", "",
             "from bihm_triton.kernels.passes import wgrad_tile", "", "",
             "@triton.jit",
             "def fused_weight_grads(ga_ptr, in_ptr, st_ptr, grad_ptr, st_rows, R, row0, in_repeat, in_row0,",
             "                       PRECISION: tl.constexpr):",
             "    pid = tl.program_id(0)",
             "    st_base = st_rows.to(tl.int64)"]
    start = 0
    for j, lay in enumerate(plan.layers):
        BM = lay.BM
        tm, tn = -(-lay.M // BM), max(1, -(-lay.N // BN))
        if j < L:
            src = "in_ptr" if j == 0 else f"st_ptr + st_base * {plan.st_off[j - 1]}"
            src_ld = plan.sizes[0] if j == 0 else plan.st_ld[j - 1]
        else:
            l = j - L
            src = "st_ptr" if l == L else f"st_ptr + st_base * {plan.st_off[l]}"
            src_ld = 16 if l == L else plan.st_ld[l]
        w_off, b_off = plan.grad_off[j]
        kw = "if" if j == 0 else "elif"
        lines += [f"    {kw} pid < {start + tm * tn}:  # layer {j}: {lay.N} -> {lay.M}",
                  f"        t = pid - {start}",
                  f"        wgrad_tile(ga_ptr + st_base * {plan.ga_off[j]}, {plan.layers[j].ldw}, {src}, {src_ld}, "
                  f"grad_ptr + {w_off}, grad_ptr + {b_off}, t // {tn}, t % {tn}, st_rows, R, row0, in_repeat, in_row0, "
                  f"{lay.M}, {lay.N}, {j == 0}, {BM}, {BN}, {BR}, PRECISION)"]
        start += tm * tn
    return "\n".join(lines) + "\n", start


# ------------------------------------------------------------------------------ launcher


class FusedPasses:
    """The fused log-weight pass of a BiHM and its backward, with the model's weights packed.

    Args:
        sizes: ``[d_0, …, d_L]``. device: where the kernels run. config: tiling (:func:`launch_config`).

    :meth:`pack` takes the parameters in the order of :meth:`param_order`; :meth:`forward` runs the
    forward over a chunk of rows; :meth:`backward` turns per-row coefficients into gradients.
    """

    def __init__(self, sizes, device, config: dict | None = None):
        self.device = torch.device(device)
        self.config = dict(config or launch_config())
        self.plan = make_pass_plan(sizes, reg_max=self.config["reg_max"], bm_max=self.config["bm_max"],
                                   bk_max=self.config["bk_max"])
        self.weights = WeightPack(self.plan.layers, self.plan.plane, self.plan.n_bias, self.device)
        self._kernels = None

    def kernels(self):
        if self._kernels is None:
            src, n_programs = weight_grads_source(self.plan)
            self._kernels = (load_generated(log_weights_source(self.plan), "logw").fused_log_weights,
                             load_generated(grad_logits_source(self.plan), "glogits").fused_grad_logits,
                             load_generated(src, "wgrads").fused_weight_grads, n_programs)
        return self._kernels

    def pack(self, weights, biases) -> None:
        """Weights (M, N) and biases (M,) of the q layers, then the p layers l = 0…L−1, then the prior
        (weight (d_L, 0), bias its logits)."""
        self.weights.pack(weights, biases)

    def rows_alloc(self, rows: int) -> int:
        """Rows of the padded buffers: whole tiles of the forward and of the weight-gradient loop."""
        return round_up(max(rows, 1), max(self.config["block_r"], WGRAD_BLOCKS[2]))

    def forward(self, x: torch.Tensor, rows: int, *, seed, offset: int, row0: int, in_repeat: int,
                in_row0: int = 0, terms: int | None = None):
        """log p(x, h) and log q(h | x) (rows,) float32 for rows ``row0 … row0 + rows`` of a q pass (row0, the
        index of the first row in the whole pass, a multiple of 4), and the uint8 state buffer the backward reads.

        Row r of the pass uses data point ``x[r // in_repeat − in_row0]`` (x: (B, d_0) binary, any
        dtype, made contiguous here). The packed weights (:meth:`pack`) must be current.

        Raises:
            ValueError: row0 not a multiple of 4, x of the wrong width.
            RuntimeError: tensors on the CPU without ``TRITON_INTERPRET=1``.
        """
        check_device(x)
        if row0 % 4:
            raise ValueError(f"row0 must be a multiple of 4, got {row0}")
        x = x.contiguous()
        if x.dim() != 2 or x.shape[1] != self.plan.sizes[0]:
            raise ValueError(f"x must have shape (B, {self.plan.sizes[0]}), got {tuple(x.shape)}")
        fwd, _, _, _ = self.kernels()
        ra = self.rows_alloc(rows)
        st = torch.empty(ra * self.plan.st_width, device=self.device, dtype=torch.uint8)
        lq = torch.empty(rows, device=self.device, dtype=torch.float32)
        lp = torch.empty(rows, device=self.device, dtype=torch.float32)
        seed_ptr, seed_val, from_ptr = seed_args(seed, self.device)
        cfg = self.config
        fwd[(triton.cdiv(rows, cfg["block_r"]),)](
            self.weights.planes, self.weights.bias, as_loadable(x), st, lq, lp, seed_ptr if from_ptr else lq,
            seed_val, offset, row0 // 4, rows, row0, ra, in_repeat, in_row0,
            SEED_FROM_PTR=from_ptr, WANT_LP=True, BLOCK_R=cfg["block_r"], **launch_options(cfg, terms))
        return lp, lq, st

    def backward(self, x: torch.Tensor, st: torch.Tensor, rows: int, g_p: torch.Tensor, g_q: torch.Tensor, *,
                 row0: int, in_repeat: int, in_row0: int = 0, terms: int | None = None) -> list:
        """Gradients of ``Σ_r g_p[r]·log p_r + g_q[r]·log q_r`` for every packed layer: a list of
        ``(dW (M, N), db (M,))`` float32 in :meth:`pack` order (the prior's dW is (d_L, 0)).

        Args:
            x, rows, row0, in_repeat, in_row0: as the :meth:`forward` call that returned ``st``.
            st: the state buffer :meth:`forward` returned. g_p, g_q: (rows,) coefficients.

        Raises:
            ValueError: ``st``, ``g_p`` or ``g_q`` not from a forward over ``rows`` rows.
        """
        _, glogits, wgrads, n_programs = self.kernels()
        ra = self.rows_alloc(rows)
        x = x.contiguous()
        if st.numel() != ra * self.plan.st_width or g_p.shape != (rows,) or g_q.shape != (rows,):
            raise ValueError(f"backward: st must hold {ra * self.plan.st_width} states and g_p, g_q ({rows},), got "
                             f"{st.numel()}, {tuple(g_p.shape)}, {tuple(g_q.shape)}")
        ga = torch.empty(ra * self.plan.ga_width, device=self.device, dtype=torch.float32)
        cfg = self.config
        glogits[(ra // cfg["block_r"],)](  # every padded row: rows >= R get coefficient 0, so ∂L/∂a = 0
            self.weights.planes, self.weights.bias, as_loadable(x), st, g_q.contiguous().float(),
            g_p.contiguous().float(), ga, self.weights.bias,
            0, 0, 0, rows, row0, ra, in_repeat, in_row0,
            SEED_FROM_PTR=False, WANT_LP=False, BLOCK_R=cfg["block_r"], **launch_options(cfg, terms))
        grads = torch.empty(self.plan.grad_size, device=self.device, dtype=torch.float32)
        wgrads[(n_programs,)](ga, as_loadable(x), st, grads, ra, rows, row0, in_repeat, in_row0,
                              PRECISION=dot_precision())
        out = []
        for lay, (w_off, b_off) in zip(self.plan.layers, self.plan.grad_off):
            out.append((grads[w_off:w_off + lay.M * lay.N].view(lay.M, lay.N), grads[b_off:b_off + lay.M]))
        return out


__all__ = ["FusedPasses", "PassPlan", "make_pass_plan", "log_weights_source", "grad_logits_source",
           "weight_grads_source", "wgrad_tile"]
