"""Fused chain sampler: every stochastic layer of a pass (the p pass, or the q pass) in one launch.

One program owns ``BLOCK_R`` consecutive rows (samples) and walks the layers of the chain in order.
For each layer it computes the logits of a column tile with **one** ``tl.dot`` over all its rows
(``BLOCK_R × BK`` by ``BK × BM``), adds the bias, draws the Bernoulli samples from the SPEC §5
stream and accumulates ``Σ_j log Bern`` per row in registers. The stream gives four consecutive
rows one Philox call per column (lane ``r % 4``): the four outputs of ``tl.rand4x`` over the
tile's ``BLOCK_R/4 × BM`` counters are interleaved into a ``BLOCK_R × BM`` block, so the dot is
not split into four 16-row problems.

The kernel is **specialized per network** (source generated from the layer widths, compiled once
and cached): every width, weight offset and tile size is a compile-time constant, so

* narrow layers (padded width ≤ ``REG_MAX``) keep their states in registers: the sample tile of
  one layer is the ``A`` operand of the next layer's dot, with no memory round trip and no
  barrier (the paper's MNIST net keeps h_12 … h_3 (10 … 100 units) on chip);
* wide layers write their uint8 (or output-dtype) states to memory, tile by tile; the next layer
  reads them back after a CTA barrier (L1/L2-resident: the program just wrote them);
* tile sizes fit each layer (a 10-unit layer uses a 16-wide tile, not a 64-wide one).

**Weights as bf16 terms.** The states are binary, so ``h · W`` is exact in any precision that
represents W. The packed weights hold W (fp32) as the sum of three bf16 terms
``W = hi + mid + lo`` (exact: 8 + 8 + 8 significant bits); the kernel runs ``TERMS`` bf16 dots
with fp32 accumulation: 3 terms reproduce fp32 weights exactly (``torch`` matmul precision
"highest"), 2 terms keep 16 significant bits (better than tf32's 11; "high"), 1 term is bf16
("medium"). Tensor cores run bf16 at twice the tf32 rate, so "high" costs what one tf32 dot costs.
Under ``TRITON_INTERPRET=1`` the terms are converted to fp32 before the dot (same values).

The random stream is exactly the per-layer path's (:func:`bihm_triton.reference.pass_offsets`):
layer i of a pass over ``total`` rows draws from counter
``offset + ceil(total/4)·Σ_{i'<i} M_{i'} + (r // 4)·M_i + j``. Samples equal the per-layer
path's and the reference's element for element where the logits agree (dyadic test weights make
them exact); ``log_prob`` equals the sum of the per-layer log-likelihoods up to fp32 rounding.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
import threading
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._config import as_loadable, check_device, interpreting, next_pow2
from .philox import seed_args
from .sbn import bernoulli_elementwise

#: Layers whose padded width is at most this keep their states in registers between layers.
REG_MAX = 64
#: Alignment (elements) of every layer's block in the packed weight and bias buffers.
_ALIGN = 64

# --------------------------------------------------------------------------- device functions


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


# ------------------------------------------------------------------------------- the plan


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _pick_block(n: int, choices=(16, 32, 64), per_step: int = 8) -> int:
    """The tile width for an n-wide loop: least padded work plus a per-iteration cost, larger on ties."""
    best = None
    for b in choices:
        steps = -(-n // b)
        cost = steps * b + per_step * steps
        if best is None or cost < best[0] or (cost == best[0] and b > best[1]):
            best = (cost, b)
    return best[1]


@dataclass(frozen=True)
class LayerPlan:
    """Compile-time facts of one layer of a chain (all counts in elements)."""

    N: int  # inputs (0: the prior, logits = bias)
    M: int  # outputs
    P: int  # padded width of a register-resident output tile
    BM: int  # output tile width
    BK: int  # input tile width (0 for the prior)
    KP: int  # inputs padded to the tile grid (rows of the packed W^T)
    ldw: int  # row stride of the packed W^T: outputs padded to the tile grid
    in_reg: bool  # input states come from the previous layer's registers
    out_reg: bool  # output states stay in registers for the next layer
    w_off: int  # offset of W^T (KP, ldw) in each weight plane
    b_off: int  # offset of the (zero-padded) bias in the bias buffer
    pfx: int  # Σ of the widths drawn before this layer (its counters start at ceil(total/4)·pfx)
    hoff: int  # region offset (per row of the pass) in the stored-hidden layout: Σ of earlier widths
    soff: int  # region offset (per scratch row) in the scratch layout: Σ of earlier scratch strides
    sld: int  # row stride in the scratch layout (covers this layer's and the next layer's tile grids)


@dataclass(frozen=True)
class ChainPlan:
    widths: tuple  # M_i, in the order the layers are drawn
    in_widths: tuple  # N_i
    external_input: bool  # layer 0 reads given states (the q pass) instead of being a prior
    layers: tuple
    plane: int  # elements per weight plane
    n_bias: int
    hidden_width: int  # Σ M_i over the layers before the last (stored-hidden layout, per row)
    scratch_width: int  # Σ sld_i over the layers before the last (scratch layout, per row)

    @property
    def n_layers(self) -> int:
        return len(self.widths)


def make_plan(in_widths, widths, *, external_input: bool = False, reg_max: int = REG_MAX, bm_max: int = 64,
              bk_max: int = 64) -> ChainPlan:
    """Tile sizes, register/memory placement and buffer offsets of a chain of layers.

    Args:
        in_widths, widths: N_i and M_i of each layer in drawing order; N_0 = 0 unless
            ``external_input`` (layer 0 then reads given (rows, N_0) states); N_i = M_{i−1} after.
        reg_max: largest padded width kept in registers between layers.
        bm_max, bk_max: largest output / input tile widths of memory-resident layers.
    """
    in_widths, widths = tuple(int(n) for n in in_widths), tuple(int(m) for m in widths)
    if len(in_widths) != len(widths) or not widths:
        raise ValueError("in_widths and widths must list the same, non-zero number of layers")
    for i in range(1, len(widths)):
        if in_widths[i] != widths[i - 1]:
            raise ValueError(f"layer {i} takes {in_widths[i]} inputs but layer {i - 1} has {widths[i - 1]} units")
    if external_input != (in_widths[0] > 0):
        raise ValueError("layer 0 must have inputs exactly when the chain reads external input")
    bm_choices = tuple(b for b in (16, 32, 64, 128) if b <= bm_max)
    bk_choices = tuple(b for b in (16, 32, 64, 128) if b <= bk_max)
    last = len(widths) - 1
    P = [max(16, next_pow2(M)) for M in widths]
    out_reg = [i < last and P[i] <= reg_max for i in range(len(widths))]
    BM = [P[i] if out_reg[i] else min(P[i], _pick_block(M, bm_choices)) for i, M in enumerate(widths)]
    BK = [0 if N == 0 else (P[i - 1] if i > 0 and out_reg[i - 1] else _pick_block(N, bk_choices))
          for i, N in enumerate(in_widths)]
    layers, w_off, b_off, pfx, hoff, soff = [], 0, 0, 0, 0, 0
    for i, (N, M) in enumerate(zip(in_widths, widths)):
        KP = 0 if N == 0 else _round_up(N, BK[i])
        ldw = _round_up(M, BM[i])
        nxt = BK[i + 1] if i < last else 16
        sld = _round_up(max(_round_up(M, BM[i]), _round_up(M, nxt)), 16)
        in_reg = i > 0 and out_reg[i - 1]
        layers.append(LayerPlan(N, M, P[i], BM[i], BK[i], KP, ldw, in_reg, out_reg[i], w_off, b_off, pfx, hoff,
                                soff, sld))
        w_off += _round_up(KP * ldw, _ALIGN)
        b_off += _round_up(ldw, _ALIGN)
        pfx += M
        if i < last:
            hoff += M
            soff += sld
    return ChainPlan(widths, in_widths, external_input, tuple(layers), max(w_off, _ALIGN), max(b_off, _ALIGN),
                     hoff, soff)


# ------------------------------------------------------------------------------ code generation

_HEADER = '''"""Generated by bihm_triton.kernels.chain for the chain {widths} (inputs {in_widths}); do not edit."""
import triton
import triton.language as tl

from bihm_triton.kernels.chain import dot_terms, draw_tile, load_bits, load_bits_masked
from bihm_triton.kernels.philox import load_seed


@triton.jit(do_not_specialize=["seed", "offset", "groups_total", "group_start", "row0", "hid_row0"])
def fused_chain(
    w_ptr, b_ptr, in_ptr, final_ptr, hid_ptr, lp_ptr, seed_ptr,
    seed, offset, groups_total, group_start, R, row0, hid_rows, hid_row0, in_repeat,
    SEED_FROM_PTR: tl.constexpr, TERMS: tl.constexpr, OP: tl.constexpr, WANT_LP: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    # rows: chunk-local; chunk row r is row row0 + r of the pass and of the outputs
    pid = tl.program_id(0)
    tile0 = pid * BLOCK_R
    r_loc = tl.arange(0, BLOCK_R)
    rows = tile0 + r_loc
    row_ok = rows < R
    out_rows = (row0 + rows).to(tl.int64)
    hid_base = hid_rows.to(tl.int64)
    h_rows = hid_row0 + rows
    g_tile = group_start + pid.to(tl.int64) * (BLOCK_R // 4)
    key = load_seed(seed_ptr, seed, SEED_FROM_PTR)
    lp = tl.zeros((BLOCK_R,), dtype=tl.float32)
'''


def _layer_source(plan: ChainPlan, i: int, store_hidden: bool) -> str:
    L = plan.layers[i]
    last = i == plan.n_layers - 1
    N, M = L.N, L.M
    where_in = "registers" if L.in_reg else ("nothing" if N == 0 else "memory")
    lines = [f"    # ---- layer {i}: {N} -> {M} (input in {where_in}, output in {'registers' if L.out_reg else 'memory'})",
             f"    base{i} = offset + groups_total * {L.pfx} + g_tile * {M}"]
    if not L.out_reg and not last and not store_hidden:
        lines.append(f"    out{i} = hid_ptr + hid_base * {L.soff} + tile0 * {L.sld}")
    loop = not L.out_reg
    ind = "        " if loop else "    "
    if loop:
        lines.append(f"    for m{i} in range(0, {M}, {L.BM}):")
        lines.append(f"{ind}cols{i} = m{i} + tl.arange(0, {L.BM})")
    else:
        lines.append(f"{ind}cols{i} = tl.arange(0, {L.BM})")
    lines.append(f"{ind}acc{i} = tl.zeros((BLOCK_R, {L.BM}), dtype=tl.float32)")
    w = f"w_ptr + {L.w_off}"
    if N > 0 and L.in_reg:
        lines.append(f"{ind}acc{i} = dot_terms(s{i - 1}, {w}, tl.arange(0, {L.BK}), cols{i}, {L.ldw}, {plan.plane}, "
                     f"acc{i}, TERMS, OP)")
    elif N > 0:
        if i == 0:  # external input: chunk row r reads row (row0 + r) // in_repeat
            load = (f"load_bits_masked(in_ptr, out_rows // in_repeat, ks{i}, (R + row0 + in_repeat - 1) // in_repeat, "
                    f"{N}, {N}, OP)")
        elif store_hidden:
            P = plan.layers[i - 1]
            load = f"load_bits_masked(hid_ptr + hid_base * {P.hoff}, h_rows, ks{i}, R + hid_row0, {N}, {P.M}, OP)"
        else:
            load = f"load_bits(out{i - 1}, r_loc, ks{i}, {plan.layers[i - 1].sld}, OP)"
        lines += [f"{ind}for k{i} in range(0, {L.KP}, {L.BK}):",
                  f"{ind}    ks{i} = k{i} + tl.arange(0, {L.BK})",
                  f"{ind}    acc{i} = dot_terms({load}, {w}, ks{i}, cols{i}, {L.ldw}, {plan.plane}, acc{i}, TERMS, OP)"]
    lines.append(f"{ind}x{i}, lpt{i} = draw_tile(acc{i}, b_ptr + {L.b_off}, cols{i}, {M}, key, base{i}, BLOCK_R, WANT_LP)")
    lines.append(f"{ind}lp += lpt{i}")
    mask = f"row_ok[:, None] & (cols{i} < {M})[None, :]"
    if last:
        lines.append(f"{ind}tl.store(final_ptr + out_rows[:, None] * {M} + cols{i}[None, :], "
                     f"x{i}.to(final_ptr.dtype.element_ty), mask={mask})")
    elif store_hidden:
        lines.append(f"{ind}tl.store(hid_ptr + hid_base * {L.hoff} + h_rows.to(tl.int64)[:, None] * {M} + cols{i}[None, :], "
                     f"x{i}.to(hid_ptr.dtype.element_ty), mask={mask})")
    elif not L.out_reg:
        lines.append(f"{ind}tl.store(out{i} + r_loc[:, None] * {L.sld} + cols{i}[None, :], "
                     f"x{i}.to(hid_ptr.dtype.element_ty))")
    if L.out_reg:
        lines.append(f"    s{i} = x{i}.to(OP)")
    elif not last:
        lines.append("    tl.debug_barrier()  # the next layer reads the states this program just wrote")
    return "\n".join(lines) + "\n"


def chain_source(plan: ChainPlan, store_hidden: bool) -> str:
    """Python source of the kernel specialized to ``plan``. ``store_hidden``: every layer's states go
    to the output layout (masked); otherwise only the memory-resident ones, to the padded scratch
    layout (maskless)."""
    body = [_HEADER.format(widths=list(plan.widths), in_widths=list(plan.in_widths))]
    body += [_layer_source(plan, i, store_hidden) for i in range(plan.n_layers)]
    body.append("    if WANT_LP:\n        tl.store(lp_ptr + out_rows, lp, mask=row_ok)\n")
    return "\n".join(body)


_KERNELS: dict = {}
_LOCK = threading.Lock()


def _cache_dir() -> str:
    for d in (os.environ.get("BIHM_TRITON_CACHE_DIR"),
              os.path.join(os.path.expanduser("~"), ".cache", "bihm_triton", "chains"),
              os.path.join(tempfile.gettempdir(), f"bihm_triton_chains_{os.getuid() if hasattr(os, 'getuid') else 0}")):
        if not d:
            continue
        try:
            os.makedirs(d, exist_ok=True)
            if os.access(d, os.W_OK):
                return d
        except OSError:
            continue
    raise OSError("no writable folder for the generated kernels; set BIHM_TRITON_CACHE_DIR")


def chain_kernel(plan: ChainPlan, store_hidden: bool):
    """The jitted kernel for ``plan`` (its source is written to a cache folder once: Triton reads a
    kernel's source from its file)."""
    fn = _KERNELS.get((plan, store_hidden))
    if fn is not None:
        return fn
    src = chain_source(plan, store_hidden)
    digest = hashlib.sha256(src.encode()).hexdigest()[:20]
    with _LOCK:
        path = os.path.join(_cache_dir(), f"chain_{digest}.py")
        try:
            with open(path) as f:
                current = f.read()
        except OSError:
            current = None
        if current != src:
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                f.write(src)
            os.replace(tmp, path)
        name = f"bihm_triton_chain_{digest}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        _KERNELS[(plan, store_hidden)] = module.fused_chain
        return module.fused_chain


# --------------------------------------------------------------------------------- launcher


def precision_terms() -> int:
    """bf16 terms per weight under ``torch.get_float32_matmul_precision()``: highest 3, high 2, medium 1."""
    return {"highest": 3, "high": 2, "medium": 1}.get(torch.get_float32_matmul_precision(), 3)


_CONFIG: dict = {}


def launch_config() -> dict:
    """Tiling and launch configuration of the fused chains: ``block_r`` (rows per program), ``warps``,
    ``stages`` (software pipelining), ``maxnreg`` (register cap, 0 for none), ``reg_max``,
    ``bm_max``, ``bk_max`` (see :func:`make_plan`). ``BIHM_CHAIN_CONFIG`` overrides any of them,
    e.g. ``BIHM_CHAIN_CONFIG="block_r=128,warps=8,maxnreg=168"`` (read when a chain is built)."""
    env = os.environ.get("BIHM_CHAIN_CONFIG", "")
    key = (env, interpreting())
    if key not in _CONFIG:
        cfg = {"block_r": 16, "warps": 4, "stages": 1, "maxnreg": 0} if interpreting() else \
              {"block_r": 64, "warps": 4, "stages": 2, "maxnreg": 0}
        cfg.update(reg_max=REG_MAX, bm_max=64, bk_max=64)
        for item in env.split(","):
            if "=" in item:
                k, v = (t.strip() for t in item.split("=", 1))
                if k not in cfg:
                    raise ValueError(f"BIHM_CHAIN_CONFIG: unknown key {k!r}; known: {sorted(cfg)}")
                cfg[k] = int(v)
        if cfg["block_r"] < 16 or cfg["block_r"] & (cfg["block_r"] - 1):
            raise ValueError(f"block_r must be a power of two >= 16, got {cfg['block_r']}")
        _CONFIG[key] = cfg
    return _CONFIG[key]


class FusedChain:
    """A chain of stochastic layers packed for the fused kernel: weights as bf16 terms, biases as fp32.

    Args:
        weights: per layer in drawing order, (M_i, N_i) tensors (the prior's is (M_0, 0)).
        biases: per layer, (M_i,) tensors (the prior's is its logits).
        external_input: layer 0 reads given states (``N_0 > 0``): the q pass.
        config: tiling and launch settings (default :func:`launch_config`).

    :meth:`pack` refreshes the packed copies from new weights of the same shapes;
    :meth:`launch` runs the kernel over a chunk of rows.
    """

    def __init__(self, weights, biases, *, external_input: bool = False, config: dict | None = None):
        self.device = weights[0].device
        check_device(weights[0])
        self.config = dict(config or launch_config())
        self.plan = make_plan([int(w.shape[1]) for w in weights], [int(w.shape[0]) for w in weights],
                              external_input=external_input, reg_max=self.config["reg_max"],
                              bm_max=self.config["bm_max"], bk_max=self.config["bk_max"])
        self.planes = torch.zeros(3 * self.plan.plane, device=self.device, dtype=torch.bfloat16)
        self.bias = torch.zeros(self.plan.n_bias, device=self.device, dtype=torch.float32)
        self._w32 = torch.zeros(self.plan.plane, device=self.device, dtype=torch.float32)
        self.pack(weights, biases)

    @torch.no_grad()
    def pack(self, weights, biases) -> None:
        """Copy W^T of every layer into the fp32 staging buffer and split it into three bf16 terms."""
        for L, w, b in zip(self.plan.layers, weights, biases):
            if tuple(w.shape) != (L.M, L.N) or tuple(b.shape) != (L.M,):
                raise ValueError(f"layer shapes changed: expected ({L.M}, {L.N}) and ({L.M},), got "
                                 f"{tuple(w.shape)} and {tuple(b.shape)}")
            if L.N:  # the padding (rows N..KP, columns M..ldw) stays zero
                self._w32[L.w_off:L.w_off + L.KP * L.ldw].view(L.KP, L.ldw)[:L.N, :L.M].copy_(w.detach().t())
            self.bias[L.b_off:L.b_off + L.M].copy_(b.detach())
        w = self._w32
        hi = w.to(torch.bfloat16)
        rest = torch.where(torch.isfinite(w), w - hi.float(), 0.0)
        mid = rest.to(torch.bfloat16)
        lo = (rest - mid.float()).to(torch.bfloat16)
        n = self.plan.plane
        self.planes[:n].copy_(hi)
        self.planes[n:2 * n].copy_(mid)
        self.planes[2 * n:].copy_(lo)

    def launch(self, rows: int, *, final: torch.Tensor, log_prob: torch.Tensor | None, seed, offset: int,
               total_rows: int, row0: int, hidden: torch.Tensor | None = None, inputs: torch.Tensor | None = None,
               in_repeat: int = 1, terms: int | None = None) -> None:
        """Draw rows ``row0 … row0 + rows`` of a pass over ``total_rows`` rows (row0 a multiple of 4).

        Args:
            final: (total_rows, M_last) contiguous output of the last layer (rows row0… are written).
            log_prob: (total_rows,) float32 for the Σ of every layer's log-likelihood, or None (not computed).
            seed, offset: the stream (SPEC §5).
            hidden: None, or a flat contiguous buffer of ``total_rows × plan.hidden_width`` elements that
                receives every other layer's states as layer-major regions (region i is
                (total_rows, M_i) contiguous, in drawing order). Without it the memory-resident layers
                use a scratch buffer allocated here.
            inputs: (B, N_0) states of an external-input chain; chunk row r reads
                ``inputs[(row0 + r) // in_repeat]``.
            terms: bf16 terms per weight (default: from torch's fp32 matmul precision).
        """
        plan = self.plan
        cfg = self.config
        if row0 % 4:
            raise ValueError(f"row0 must be a multiple of 4, got {row0}")
        if rows <= 0:
            return
        store_hidden = hidden is not None
        kernel = chain_kernel(plan, store_hidden)
        seed_ptr, seed_val, from_ptr = seed_args(seed, self.device)
        block_r = cfg["block_r"]
        if store_hidden:
            hid, hid_rows, hid_row0 = as_loadable(hidden), total_rows, row0
        else:
            hid_rows, hid_row0 = _round_up(rows, block_r), 0
            hid = torch.empty(max(1, hid_rows * plan.scratch_width), device=self.device, dtype=torch.uint8)
        kernel[(triton.cdiv(rows, block_r),)](
            self.planes, self.bias, as_loadable(inputs) if inputs is not None else final, as_loadable(final), hid,
            log_prob if log_prob is not None else self.bias, seed_ptr if from_ptr else self.bias,
            seed_val, offset, -(-total_rows // 4), row0 // 4, rows, row0, hid_rows, hid_row0, in_repeat,
            SEED_FROM_PTR=from_ptr, TERMS=terms or precision_terms(),
            OP=tl.float32 if interpreting() else tl.bfloat16, WANT_LP=log_prob is not None, BLOCK_R=block_r,
            num_warps=cfg["warps"], num_stages=cfg["stages"], **({"maxnreg": cfg["maxnreg"]} if cfg.get("maxnreg") else {}),
        )


__all__ = ["FusedChain", "ChainPlan", "LayerPlan", "make_plan", "chain_source", "chain_kernel", "precision_terms",
           "launch_config"]
