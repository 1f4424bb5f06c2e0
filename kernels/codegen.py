"""Source generation for the network-specialized kernels (:mod:`.chain`, :mod:`.passes`).

A fused kernel walks the layers of a network for one tile of ``BLOCK_R`` rows. Its source is
generated per network so that every width, offset and tile size is a compile-time constant; each
layer is emitted by :func:`emit_layer` from a :class:`LayerPlan` and says where its input comes
from (nothing for a prior, a register tile, or memory), what it does with the logits (draw a
sample, score given targets, or write ``∂L/∂a``) and where its output goes. The generated module
is written to a cache folder and imported (Triton reads a kernel's source from its file).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import threading
from dataclasses import dataclass

from ._config import next_pow2

# ------------------------------------------------------------------------------ tiling


def round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def pick_block(n: int, choices=(16, 32, 64), per_step: int = 8) -> int:
    """The tile width for an n-wide loop: least padded work plus a per-iteration cost, larger on ties."""
    best = None
    for b in choices:
        steps = -(-n // b)
        cost = steps * b + per_step * steps
        if best is None or cost < best[0] or (cost == best[0] and b > best[1]):
            best = (cost, b)
    return best[1]


def block_choices(limit: int) -> tuple:
    """Tile widths a plan may pick: powers of two from 16 (``tl.dot``'s minimum) up to ``limit``."""
    return tuple(b for b in (16, 32, 64, 128) if b <= limit)


def padded_width(m: int) -> int:
    """Width of a register tile holding m units (a power of two >= 16, ``tl.dot``'s minimum)."""
    return max(16, next_pow2(m))


@dataclass(frozen=True)
class LayerPlan:
    """Compile-time facts of one layer of a fused kernel (all counts in elements)."""

    N: int  # inputs (0: a prior, logits = bias)
    M: int  # outputs
    P: int  # padded width of a register-resident output tile
    BM: int  # output tile width
    BK: int  # input tile width (0 for a prior)
    KP: int  # inputs padded to the tile grid (rows of the packed W^T)
    ldw: int  # row stride of the packed W^T: outputs padded to the tile grid
    in_reg: bool  # input states come from the previous layer's registers
    out_reg: bool  # output states stay in registers for the next layer
    w_off: int  # offset of W^T (KP, ldw) in each weight plane
    b_off: int  # offset of the (zero-padded) bias in the bias buffer
    draw: int  # the layer's draw number in its pass: its counters start at offset + draw · DRAW_STRIDE (SPEC §5)
    hoff: int  # region offset (per row of the pass) in the stored-hidden layout: Σ of earlier widths
    soff: int  # region offset (per scratch row) in the scratch layout: Σ of earlier scratch strides
    sld: int  # row stride in the scratch layout (covers the tile grids of every kernel that touches it)


# ------------------------------------------------------------------------------ emission


@dataclass(frozen=True)
class Mem:
    """Where a layer's states live in memory, as expressions of the generated kernel.

    ``padded``: a scratch layout padded to the tile grid in rows and columns (maskless access;
    ``ptr`` points at the tile's first row). Otherwise a user-facing layout: ``ptr`` is the
    buffer's base, ``rows`` the row indices, valid where ``rows < limit`` and columns < ``width``.
    ``dtype`` is the element type a store converts to.
    """

    ptr: str
    ld: int
    dtype: str = ""
    padded: bool = True
    rows: str = ""
    limit: str = ""
    width: int = 0

    def load(self, idx: str, op: str) -> str:
        if self.padded:
            return f"load_bits({self.ptr}, r_loc, {idx}, {self.ld}, {op})"
        return f"load_bits_masked({self.ptr}, {self.rows}, {idx}, {self.limit}, {self.width}, {self.ld}, {op})"

    def store(self, cols: str, value: str, M: int) -> str:
        if self.padded:
            return f"tl.store({self.ptr} + r_loc[:, None] * {self.ld} + {cols}[None, :], {value}.to({self.dtype}))"
        return (f"tl.store({self.ptr} + ({self.rows}).to(tl.int64)[:, None] * {self.ld} + {cols}[None, :], "
                f"{value}.to({self.dtype}), mask=row_ok[:, None] & ({cols} < {M})[None, :])")


def emit_layer(tag: str, L: LayerPlan, *, plane: int, mode: str, inp, comment: str, target: Mem | None = None,
               stores: tuple = (), keep: bool = False, lp_var: str | None = "lp", rng_base: str | None = None,
               coef: str | None = None, w_ptr: str = "w_ptr", b_ptr: str = "b_ptr") -> str:
    """Source lines of one layer.

    Args:
        tag: suffix that makes the layer's local names unique (Triton loops need stable types).
        mode: ``"sample"`` (draw from the stream at ``rng_base``; add Σ log Bern to ``lp_var``),
            ``"score"`` (add Σ log Bern of ``target`` to ``lp_var``) or ``"grad"`` (store
            ``coef · (target − σ(a))`` to ``stores[0]``).
        inp: None (a prior), the name of a register tile, or a :class:`Mem`.
        stores: where the layer's output (sample, or ∂L/∂a) goes.
        keep: keep the sample in registers as ``s{tag}`` (the next layer's dot operand).
    """
    M = L.M
    lines = [f"    # ---- {comment}"]
    if mode == "sample":
        lines.append(f"    base{tag} = {rng_base}")
    loop = L.BM < M
    ind = "        " if loop else "    "
    if loop:
        lines += [f"    for m{tag} in range(0, {M}, {L.BM}):", f"{ind}cols{tag} = m{tag} + tl.arange(0, {L.BM})"]
    else:
        lines.append(f"{ind}cols{tag} = tl.arange(0, {L.BM})")
    lines.append(f"{ind}acc{tag} = tl.zeros((BLOCK_R, {L.BM}), dtype=tl.float32)")
    w = f"{w_ptr} + {L.w_off}"
    if isinstance(inp, str):
        lines.append(f"{ind}acc{tag} = dot_terms({inp}, {w}, tl.arange(0, {L.BK}), cols{tag}, {L.ldw}, {plane}, "
                     f"acc{tag}, TERMS, OP)")
    elif inp is not None:
        lines += [f"{ind}for k{tag} in range(0, {L.KP}, {L.BK}):",
                  f"{ind}    ks{tag} = k{tag} + tl.arange(0, {L.BK})",
                  f"{ind}    acc{tag} = dot_terms({inp.load(f'ks{tag}', 'OP')}, {w}, ks{tag}, cols{tag}, {L.ldw}, "
                  f"{plane}, acc{tag}, TERMS, OP)"]
    bias = f"{b_ptr} + {L.b_off}"
    if mode == "sample":
        lines.append(f"{ind}x{tag}, lpt{tag} = draw_tile(acc{tag}, {bias}, cols{tag}, {M}, key, base{tag}, BLOCK_R, "
                     f"{'WANT_LP' if lp_var else 'False'})")
        if lp_var:
            lines.append(f"{ind}{lp_var} += lpt{tag}")
        out = f"x{tag}"
    elif mode == "score":
        lines.append(f"{ind}{lp_var} += score_tile(acc{tag}, {bias}, cols{tag}, {M}, "
                     f"{target.load(f'cols{tag}', 'tl.int1')})")
        out = None
    elif mode == "grad":
        lines.append(f"{ind}ga{tag} = grad_tile(acc{tag}, {bias}, cols{tag}, {M}, {target.load(f'cols{tag}', 'tl.int1')}, "
                     f"{coef})")
        out = f"ga{tag}"
    else:
        raise ValueError(f"unknown mode {mode!r}")
    for dest in stores:
        lines.append(f"{ind}{dest.store(f'cols{tag}', out, M)}")
    if keep:
        lines.append(f"    s{tag} = x{tag}.to(OP)")
    return "\n".join(lines) + "\n"


BARRIER = "    tl.debug_barrier()  # later layers read the states this program just wrote\n"

# ------------------------------------------------------------------------------ loading

_MODULES: dict = {}
_LOCK = threading.Lock()


def _cache_dir() -> str:
    """``$BIHM_TRITON_CACHE_DIR``, else ``~/.cache/bihm_triton/kernels`` (the library's cache rule)."""
    from ..files import cache_folder

    return cache_folder("kernels", env="BIHM_TRITON_CACHE_DIR", env_subfolder=False)


def load_generated(src: str, prefix: str):
    """Import the module whose source is ``src`` (written once to the cache folder under a content hash)."""
    digest = hashlib.sha256(src.encode()).hexdigest()[:20]
    with _LOCK:
        if digest in _MODULES:
            return _MODULES[digest]
        path = os.path.join(_cache_dir(), f"{prefix}_{digest}.py")
        try:
            with open(path) as f:
                current = f.read()
        except OSError:
            current = None
        if current != src:
            from ..files import write_text_atomic

            write_text_atomic(path, src)
        name = f"bihm_triton_{prefix}_{digest}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        _MODULES[digest] = module
        return module
