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

The random stream is exactly the per-layer path's (SPEC §5, stream version 2;
:func:`bihm_triton.reference.philox.draw_offset`): layer i of a pass draws row r (its index in the
whole pass) from counter ``offset + i·2**40 + (r // 4)·M_i + j``, whatever the number of rows. Samples equal the per-layer
path's and the reference's element for element where the logits agree (dyadic test weights make
them exact); ``log_prob`` equals the sum of the per-layer log-likelihoods up to fp32 rounding.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._config import as_loadable, check_device, dot_operand, interpreting
from .codegen import BARRIER, LayerPlan, Mem, block_choices, emit_layer, load_generated, padded_width, pick_block, round_up
from ..reference.philox import DRAW_STRIDE
from .philox import seed_args

#: Layers whose padded width is at most this keep their states in registers between layers.
REG_MAX = 64
#: Alignment (elements) of every layer's block in the packed weight and bias buffers.
_ALIGN = 64

# ------------------------------------------------------------------------------- the plan


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
              bk_max: int = 64, w_off: int = 0, b_off: int = 0) -> ChainPlan:
    """Tile sizes, register/memory placement and buffer offsets of a chain of layers.

    Args:
        in_widths, widths: N_i and M_i of each layer in drawing order; N_0 = 0 unless
            ``external_input`` (layer 0 then reads given (rows, N_0) states); N_i = M_{i−1} after.
        reg_max: largest padded width kept in registers between layers.
        bm_max, bk_max: largest output / input tile widths of memory-resident layers.
        w_off, b_off: where the chain's weights start in a larger packed buffer.
    """
    in_widths, widths = tuple(int(n) for n in in_widths), tuple(int(m) for m in widths)
    if len(in_widths) != len(widths) or not widths:
        raise ValueError("in_widths and widths must list the same, non-zero number of layers")
    for i in range(1, len(widths)):
        if in_widths[i] != widths[i - 1]:
            raise ValueError(f"layer {i} takes {in_widths[i]} inputs but layer {i - 1} has {widths[i - 1]} units")
    if external_input != (in_widths[0] > 0):
        raise ValueError("layer 0 must have inputs exactly when the chain reads external input")
    bm_choices, bk_choices = block_choices(bm_max), block_choices(bk_max)
    last = len(widths) - 1
    P = [padded_width(M) for M in widths]
    out_reg = [i < last and P[i] <= reg_max for i in range(len(widths))]
    BM = [P[i] if out_reg[i] else min(P[i], pick_block(M, bm_choices)) for i, M in enumerate(widths)]
    BK = [0 if N == 0 else (P[i - 1] if i > 0 and out_reg[i - 1] else pick_block(N, bk_choices))
          for i, N in enumerate(in_widths)]
    layers, hoff, soff = [], 0, 0
    for i, (N, M) in enumerate(zip(in_widths, widths)):
        KP = 0 if N == 0 else round_up(N, BK[i])
        ldw = round_up(M, BM[i])
        nxt = BK[i + 1] if i < last else 16
        sld = round_up(max(round_up(M, BM[i]), round_up(M, nxt)), 16)
        in_reg = i > 0 and out_reg[i - 1]
        layers.append(LayerPlan(N, M, P[i], BM[i], BK[i], KP, ldw, in_reg, out_reg[i], w_off, b_off, i, hoff,
                                soff, sld))
        w_off += round_up(KP * ldw, _ALIGN)
        b_off += round_up(ldw, _ALIGN)
        if i < last:
            hoff += M
            soff += sld
    return ChainPlan(widths, in_widths, external_input, tuple(layers), max(w_off, _ALIGN), max(b_off, _ALIGN),
                     hoff, soff)


# ------------------------------------------------------------------------------ code generation

_HEADER = '''"""Generated by bihm_triton.kernels.chain for the chain {widths} (inputs {in_widths}); do not edit."""
import triton
import triton.language as tl

from bihm_triton.kernels.philox import load_seed
from bihm_triton.kernels.tiles import dot_terms, draw_tile, load_bits, load_bits_masked


@triton.jit(do_not_specialize=["seed", "offset", "group_start", "row0", "hid_row0"])
def fused_chain(
    w_ptr, b_ptr, in_ptr, final_ptr, hid_ptr, lp_ptr, seed_ptr,
    seed, offset, group_start, R, row0, hid_rows, hid_row0, in_repeat,
    SEED_FROM_PTR: tl.constexpr, TERMS: tl.constexpr, OP: tl.constexpr, WANT_LP: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
{prologue}
'''

#: The per-tile prologue shared by the generated kernels: rows of the tile, the stream's key.
PROLOGUE = """    # rows: chunk-local; chunk row r is row row0 + r of the outputs, and row 4·group_start + r of the stream
    pid = tl.program_id(0)
    tile0 = pid.to(tl.int64) * BLOCK_R  # int64: tile0 · row stride can pass 2**31
    r_loc = tl.arange(0, BLOCK_R)
    rows = tile0 + r_loc
    row_ok = rows < R
    out_rows = (row0 + rows).to(tl.int64)
    g_tile = group_start + pid.to(tl.int64) * (BLOCK_R // 4)
    key = load_seed(seed_ptr, seed, SEED_FROM_PTR)
    lp = tl.zeros((BLOCK_R,), dtype=tl.float32)"""


def draw_base(L: LayerPlan) -> str:
    """The generated expression of the tile's first counter in layer L's draw (SPEC §5, stream version 2):
    ``offset + L.draw · DRAW_STRIDE + (first stream row of the tile // 4) · M``."""
    return f"offset.to(tl.int64) + {L.draw * DRAW_STRIDE} + g_tile * {L.M}"


def external_input(N: int) -> Mem:
    """Layer 0's input of an external-input chain: chunk row r reads ``in_ptr[(row0 + r) // in_repeat]``."""
    return Mem("in_ptr", N, padded=False, rows="out_rows // in_repeat",
               limit="(R + row0 + in_repeat - 1) // in_repeat", width=N)


def scratch(L: LayerPlan, base: str = "hid_ptr", rows_var: str = "hid_base", dtype: str = "hid_ptr.dtype.element_ty") -> Mem:
    """A layer's region of a padded scratch buffer (tile-local, maskless)."""
    return Mem(f"({base} + {rows_var} * {L.soff} + tile0 * {L.sld})", L.sld, dtype)


def chain_source(plan: ChainPlan, store_hidden: bool) -> str:
    """Python source of the kernel specialized to ``plan``. ``store_hidden``: every layer's states go
    to the output layout (masked); otherwise only the memory-resident ones, to the padded scratch
    layout (maskless)."""
    body = [_HEADER.format(widths=list(plan.widths), in_widths=list(plan.in_widths), prologue=PROLOGUE),
            "    hid_base = hid_rows.to(tl.int64)\n    h_rows = hid_row0 + rows\n"]
    last = plan.n_layers - 1
    out = [None] * plan.n_layers  # where each layer's states are in memory, if anywhere
    for i, L in enumerate(plan.layers):
        if i == last:
            stores = (Mem("final_ptr", L.M, "final_ptr.dtype.element_ty", padded=False, rows="out_rows", width=L.M),)
        elif store_hidden:
            out[i] = Mem(f"(hid_ptr + hid_base * {L.hoff})", L.M, "hid_ptr.dtype.element_ty", padded=False,
                         rows="h_rows", limit="R + hid_row0", width=L.M)
            stores = (out[i],)
        elif not L.out_reg:
            out[i] = scratch(L)
            stores = (out[i],)
        else:
            stores = ()
        if L.N == 0:
            inp = None
        elif L.in_reg:
            inp = f"s{i - 1}"
        else:
            inp = external_input(L.N) if i == 0 else out[i - 1]
        where_in = "registers" if L.in_reg else ("nothing" if L.N == 0 else "memory")
        body.append(emit_layer(
            str(i), L, plane=plan.plane, mode="sample", inp=inp, stores=stores, keep=L.out_reg,
            rng_base=draw_base(L),
            comment=f"layer {i}: {L.N} -> {L.M} (input in {where_in}, output in "
                    f"{'registers' if L.out_reg else 'memory'})"))
        if not L.out_reg and i < last:
            body.append(BARRIER)
    body.append("    if WANT_LP:\n        tl.store(lp_ptr + out_rows, lp, mask=row_ok)\n")
    return "\n".join(body)


_KERNELS: dict = {}


def chain_kernel(plan: ChainPlan, store_hidden: bool):
    """The jitted kernel for ``plan`` (generated and imported once per source)."""
    fn = _KERNELS.get((plan, store_hidden))
    if fn is None:
        fn = _KERNELS[(plan, store_hidden)] = load_generated(chain_source(plan, store_hidden), "chain").fused_chain
    return fn


# --------------------------------------------------------------------------------- launcher


def launch_options(cfg: dict, terms: int | None) -> dict:
    """The constexpr and launch keywords every generated kernel takes: TERMS, OP, warps, stages, maxnreg."""
    return dict(TERMS=terms or precision_terms(), OP=dot_operand(),
                num_warps=cfg["warps"], num_stages=cfg["stages"],
                **({"maxnreg": cfg["maxnreg"]} if cfg.get("maxnreg") else {}))


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


def _check_out(t: torch.Tensor, name: str, shape: tuple, device, dtype=None) -> None:
    """A buffer a kernel reads or writes: the shape, device (and dtype) the launcher assumes, contiguous."""
    if tuple(t.shape) != tuple(shape) or t.device != device or not t.is_contiguous() or (dtype and t.dtype != dtype):
        raise ValueError(f"{name} must be a contiguous {dtype or ''} tensor of shape {tuple(shape)} on {device}, got "
                         f"{t.dtype} {tuple(t.shape)} on {t.device}{'' if t.is_contiguous() else ' (not contiguous)'}")


class WeightPack:
    """Weights of a list of layers packed for the generated kernels: W^T of each layer as three bf16
    terms (``hi + mid + lo = W`` exactly; see the module docstring), biases as fp32, each zero-padded
    to its layer's tile grid (:class:`~bihm_triton.kernels.codegen.LayerPlan` offsets).

    Args:
        layers: the plans of the packed layers; plane, n_bias: the buffers' sizes (elements).
    """

    def __init__(self, layers, plane: int, n_bias: int, device):
        self.layers, self.plane = tuple(layers), plane
        self.planes = torch.zeros(3 * plane, device=device, dtype=torch.bfloat16)
        self.bias = torch.zeros(n_bias, device=device, dtype=torch.float32)
        self._w32 = torch.zeros(plane, device=device, dtype=torch.float32)

    @torch.no_grad()
    def pack(self, weights, biases) -> None:
        """Copy W^T of every layer into the fp32 staging buffer and split it into three bf16 terms."""
        for L, w, b in zip(self.layers, weights, biases):
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
        n = self.plane
        self.planes[:n].copy_(hi)
        self.planes[n:2 * n].copy_(mid)
        self.planes[2 * n:].copy_(lo)


class FusedChain:
    """A chain of stochastic layers packed for the fused kernel (:class:`WeightPack`).

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
        self.weights = WeightPack(self.plan.layers, self.plan.plane, self.plan.n_bias, self.device)
        self._kernels = {}
        self.pack(weights, biases)

    def pack(self, weights, biases) -> None:
        """Refresh the packed weights (same shapes)."""
        self.weights.pack(weights, biases)

    def launch(self, rows: int, *, final: torch.Tensor, log_prob: torch.Tensor | None, seed, offset: int,
               total_rows: int, row0: int, hidden: torch.Tensor | None = None, inputs: torch.Tensor | None = None,
               in_repeat: int = 1, terms: int | None = None, stream_row0: int = 0) -> None:
        """Draw rows ``row0 … row0 + rows`` of output buffers of ``total_rows`` rows (row0 a multiple of 4);
        output row r is row ``stream_row0 + r`` of the pass's stream (a multiple of 4 too).

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
        if row0 % 4 or stream_row0 % 4:
            raise ValueError(f"row0 and stream_row0 must be multiples of 4, got {row0} and {stream_row0}")
        if rows <= 0:
            return
        if row0 + rows > total_rows:
            raise ValueError(f"rows {row0}…{row0 + rows} lie outside the pass of {total_rows} rows")
        _check_out(final, "final", (total_rows, plan.widths[-1]), self.device)
        if log_prob is not None:
            _check_out(log_prob, "log_prob", (total_rows,), self.device, torch.float32)
        if hidden is not None:
            _check_out(hidden, "hidden", (total_rows * plan.hidden_width,), self.device)
        if inputs is not None:
            inputs = inputs.contiguous()
            _check_out(inputs, "inputs", (inputs.shape[0], plan.in_widths[0]), self.device)
        store_hidden = hidden is not None
        kernel = self._kernels.get(store_hidden)
        if kernel is None:
            kernel = self._kernels[store_hidden] = chain_kernel(plan, store_hidden)
        seed_ptr, seed_val, from_ptr = seed_args(seed, self.device)
        block_r = cfg["block_r"]
        if store_hidden:
            hid, hid_rows, hid_row0 = as_loadable(hidden), total_rows, row0
        else:
            hid_rows, hid_row0 = round_up(rows, block_r), 0
            hid = torch.empty(max(1, hid_rows * plan.scratch_width), device=self.device, dtype=torch.uint8)
        kernel[(triton.cdiv(rows, block_r),)](
            self.weights.planes, self.weights.bias, as_loadable(inputs) if inputs is not None else final,
            as_loadable(final), hid, log_prob if log_prob is not None else self.weights.bias,
            seed_ptr if from_ptr else self.weights.bias,
            seed_val, offset, (stream_row0 + row0) // 4, rows, row0, hid_rows, hid_row0, in_repeat,
            SEED_FROM_PTR=from_ptr, WANT_LP=log_prob is not None, BLOCK_R=block_r, **launch_options(cfg, terms),
        )


__all__ = ["FusedChain", "WeightPack", "ChainPlan", "LayerPlan", "make_plan", "chain_source", "chain_kernel",
           "precision_terms", "launch_config"]
