"""The random stream of SPEC §5: Philox4x32-10 exactly as Triton's ``tl.randint4x`` / ``tl.rand4x``.

This module is the single place that defines how a uniform number is attached to an element of a
draw. Every sampler in the package (the reference, the Triton kernels, the fused samplers) follows
it, so the same ``(seed, offset)`` gives the same samples bit for bit on every backend.

Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011) maps a
128-bit counter ``(c0, c1, c2, c3)`` and a 64-bit key ``(k0, k1)`` to four 32-bit words. Triton
calls it with

* key     ``k0 = seed mod 2**32``, ``k1 = seed >> 32`` (the 64-bit seed),
* counter ``c0 = counter mod 2**32``, ``c1 = counter >> 32``, ``c2 = c3 = 0`` (a 64-bit counter),

and turns each 32-bit word ``w`` into a float32 uniform in ``[0, 1)`` by reading it as a signed
int32 ``i``, replacing a negative ``i`` by ``~i`` (so ``0 <= i < 2**31``) and multiplying
``float32(i)`` by the float32 constant ``4.6566127342e-10`` (both roundings to nearest even).

**The mapping of a draw** (the contract of SPEC §5). An ``(R, M)`` draw with ``(seed, offset)``
gives element ``(r, j)`` the uniform

    ``u[r, j] = uniform( philox(key=seed, counter=offset + (r // 4) * M + j)[r % 4] )``

i.e. four consecutive rows share one Philox call per column and use its four outputs in order.
In terms of the flat element index ``e = r * M + j`` the counter is
``offset + (e // (4 M)) * M + e % M`` and the output lane ``(e // M) % 4``: a pure function of
``(seed, offset, e)`` for the draw's width ``M``, independent of block sizes, grids and
autotuning. A draw of rows ``[0, R)`` consumes ``ceil(R / 4) * M`` counters (:func:`counters_used`).
Rows ``[r0, r0 + R)`` of a larger draw (r0 a multiple of 4) are the draw of R rows at
``offset + (r0 // 4) * M``.

**The draws of a pass** (stream version 2, batch-invariant; SPEC §5). A pass (the q pass, the p
pass, one Gibbs update, ...) with ``(seed, offset)`` gives its d-th draw (d = 0, 1, ... in the
order the draws happen) the counters from ``offset + d * DRAW_STRIDE`` on, whatever the number of
rows: :func:`draw_offset`. So the uniforms of row r depend only on ``(seed, offset, r, d)``, never
on how many rows the call has or how it is chunked: ``sample_p(n)[:m] == sample_p(m)``, and rows
``[a, b)`` of a call are computed exactly by a call for those rows alone (``row_start=a``).
A draw may use at most ``DRAW_STRIDE = 2**40`` counters, i.e. ``ceil(rows / 4) * M <= 2**40``
(about 5.6e9 rows of a 784-wide layer; :func:`check_draw_fits`); offsets lie in ``[0, 2**62)``,
so a seed holds at least ``2**22`` consecutive draws (about 4 million) past any starting offset
before a counter could exceed 2**63 (:class:`RandomStream` refuses to go further). Within these
limits no counter is used twice by one seed's stream.

Everything here is plain PyTorch on ``int64`` tensors (the 32-bit words are kept in
``[0, 2**32)``), so it runs on any device without Triton.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

__all__ = [
    "MAX_SEED",
    "STREAM_VERSION",
    "PHILOX_ROUNDS",
    "counters_used",
    "DRAW_STRIDE",
    "draw_offset",
    "check_draw_fits",
    "aligned_start",
    "philox4x32",
    "uniform_from_uint32",
    "philox_uniform",
    "draw_seed",
    "resolve_seed",
    "check_seed",
    "check_offset",
    "RandomStream",
]

#: Seeds are 64-bit keys; they must lie in ``[0, MAX_SEED)`` (= ``[0, 2**63)``).
MAX_SEED = 2**63
#: Number of Philox rounds (Philox4x32-10).
PHILOX_ROUNDS = 10

_MASK32 = 0xFFFFFFFF
_ROUND_A = 0xD2511F53  # multiplier applied to c0
_ROUND_B = 0xCD9E8D57  # multiplier applied to c2
_KEY_A = 0x9E3779B9  # Weyl increment of k0 (golden ratio)
_KEY_B = 0xBB67AE85  # Weyl increment of k1 (sqrt(3) - 1)
_UNIFORM_SCALE = 4.6566127342e-10  # Triton's scale: largest float with (2**31 - 1) * scale < 1


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of ``a * b`` for ``a`` a 32-bit constant and ``b`` in ``[0, 2**32)``.

    The 64-bit product is formed from 16-bit halves so that no intermediate leaves the signed
    int64 range.
    """
    a_lo, a_hi = a & 0xFFFF, a >> 16
    b_lo, b_hi = b & 0xFFFF, b >> 16
    lo_lo = a_lo * b_lo
    mid = a_hi * b_lo + (lo_lo >> 16)  # < 2**48
    mid2 = a_lo * b_hi + (mid & 0xFFFF)
    hi = a_hi * b_hi + (mid >> 16) + (mid2 >> 16)
    lo = ((mid2 & 0xFFFF) << 16) | (lo_lo & 0xFFFF)
    return hi & _MASK32, lo


def philox4x32(
    c0: torch.Tensor,
    c1: torch.Tensor,
    c2: torch.Tensor,
    c3: torch.Tensor,
    k0: int | torch.Tensor,
    k1: int | torch.Tensor,
    rounds: int = PHILOX_ROUNDS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Philox4x32 with ``rounds`` rounds on int64 tensors holding 32-bit words.

    Args:
        c0, c1, c2, c3: the counter words, int64 tensors of one broadcastable shape, values in
            ``[0, 2**32)``.
        k0, k1: the key words, Python ints or int64 scalar tensors in ``[0, 2**32)``.
        rounds: number of rounds (10 for Philox4x32-10, the only variant the package uses).

    Returns:
        The four output words, int64 tensors with values in ``[0, 2**32)``.

    Source: Salmon et al. 2011, checked against the Random123 known-answer vectors
    (``tests/test_philox.py``).
    """
    for _ in range(rounds):
        hi0, lo0 = _mulhilo(_ROUND_A, c0)
        hi1, lo1 = _mulhilo(_ROUND_B, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + _KEY_A) & _MASK32
        k1 = (k1 + _KEY_B) & _MASK32
    return c0, c1, c2, c3


def uniform_from_uint32(word: torch.Tensor) -> torch.Tensor:
    """Triton's ``uint_to_uniform_float`` for 32-bit words: int64 in ``[0, 2**32)`` -> float32 in ``[0, 1)``.

    The word is read as a signed int32 ``i``; negative ``i`` becomes ``~i``; the result is
    ``float32(i) * float32(4.6566127342e-10)``.
    """
    signed = torch.where(word >= 2**31, word - 2**32, word)
    signed = torch.where(signed < 0, -signed - 1, signed)
    return signed.to(torch.float32) * torch.tensor(_UNIFORM_SCALE, dtype=torch.float32, device=word.device)


def counters_used(rows: int, cols: int) -> int:
    """Philox counters an ``(rows, cols)`` draw consumes: ``ceil(rows / 4) * cols``."""
    return -(-rows // 4) * cols


#: Counters reserved for each draw of a pass (SPEC §5, stream version 2): draw d of a pass with
#: offset ``o`` starts at counter ``o + d * DRAW_STRIDE``.
DRAW_STRIDE = 2**40
#: The version of the stream layout (1: each draw started after the previous one's counters, so
#: the stream depended on the number of rows; 2: a fixed stride per draw, batch-invariant).
STREAM_VERSION = 2


def draw_offset(offset: int, draw: int, row_start: int = 0, cols: int = 0) -> int:
    """First counter of rows ``row_start…`` (a multiple of 4) of the ``draw``-th draw of a pass at ``offset``:
    ``offset + draw · DRAW_STRIDE + (row_start // 4) · cols`` (the draw is ``cols`` wide)."""
    return offset + draw * DRAW_STRIDE + (row_start // 4) * cols


def check_draw_fits(rows_end: int, cols: int, what: str = "a draw") -> None:
    """Raise unless rows ``[0, rows_end)`` of a ``cols``-wide draw fit in its ``DRAW_STRIDE`` counters.

    Raises:
        ValueError: ``ceil(rows_end / 4) · cols > 2**40``; the message says how many rows fit.
    """
    if counters_used(rows_end, cols) > DRAW_STRIDE:
        raise ValueError(f"{what} reaches row {rows_end} of a {cols}-wide layer: more than the 2**40 Philox counters "
                         f"a draw may use (at most {4 * (DRAW_STRIDE // max(cols, 1))} rows); use another seed for "
                         f"the rows beyond")


def aligned_start(row_start: int) -> tuple[int, int]:
    """``(row_start − s, s)`` with ``s = row_start % 4``: where a computation of rows ``row_start…`` must
    begin so that its first row starts a Philox row group (the ``s`` leading rows are dropped after)."""
    if isinstance(row_start, bool) or not isinstance(row_start, int) or row_start < 0:
        raise ValueError(f"row_start must be a non-negative int, got {row_start!r}")
    s = row_start % 4
    return row_start - s, s


def check_seed(seed, name: str = "seed") -> None:
    """Raise unless ``seed`` is an integer in ``[0, 2**63)``: a Python or numpy int, or an int64 tensor
    with one element.

    One rule for ints and tensors: a negative value is refused either way. The value of a tensor on
    the CPU is checked (no synchronization); a CUDA tensor's value is not read (that would make the
    host wait for the GPU and break CUDA-graph capture): its 64 bits are the key as they are.

    Raises:
        TypeError: ``seed`` is neither an integer nor an integer tensor (e.g. a float or a bool).
        ValueError: a value outside ``[0, 2**63)``, or a tensor with more than one element.
    """
    if isinstance(seed, torch.Tensor):
        if seed.dtype != torch.int64:
            raise TypeError(f"{name} must be an int64 tensor, got dtype {seed.dtype}")
        if seed.numel() != 1:
            raise ValueError(f"{name} must hold exactly one element, got shape {tuple(seed.shape)}")
        if seed.device.type == "cpu" and not torch.compiler.is_compiling() and int(seed.reshape(())) < 0:
            raise ValueError(f"{name} must lie in [0, 2**63), got {int(seed.reshape(()))}")
        return
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{name} must be an int in [0, 2**63) or an int64 tensor, got {type(seed).__name__}")
    if not 0 <= int(seed) < MAX_SEED:
        raise ValueError(f"{name} must lie in [0, 2**63), got {seed}")


def check_offset(offset, name: str = "offset") -> None:
    """Raise unless ``offset`` is an int in ``[0, 2**62)`` (room for the draw's counters).

    Raises:
        TypeError: not an int.
        ValueError: negative or ``>= 2**62``.
    """
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise TypeError(f"{name} must be a non-negative int, got {type(offset).__name__}")
    if not 0 <= offset < 2**62:
        raise ValueError(f"{name} must lie in [0, 2**62), got {offset}")


def draw_seed(generator: torch.Generator | None = None) -> int:
    """A fresh seed in ``[0, 2**63)`` from torch's default (or the given) CPU generator.

    ``torch.manual_seed(s)`` therefore makes every ``seed=None`` call of the package reproducible.
    """
    return int(torch.randint(0, MAX_SEED - 1, (), generator=generator, dtype=torch.int64))


def resolve_seed(seed):
    """The seed as every entry point takes it (SPEC §5), the one rule of the package: ``None`` draws one with
    :func:`draw_seed` (so ``torch.manual_seed`` reproduces the call), anything else must pass :func:`check_seed`;
    returns a Python int, or a one-element int64 tensor as a 0-dim view (a CUDA seed stays on its device).

    Raises:
        TypeError / ValueError: see :func:`check_seed`.
    """
    if seed is None:
        return draw_seed()
    check_seed(seed)
    return seed.reshape(()) if isinstance(seed, torch.Tensor) else int(seed)


def _seed_words(seed, device) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(seed, torch.Tensor):
        s = seed.reshape(()).to(device=device, dtype=torch.int64)
        return s & _MASK32, (s >> 32) & _MASK32
    return (
        torch.tensor(seed & _MASK32, dtype=torch.int64, device=device),
        torch.tensor(seed >> 32, dtype=torch.int64, device=device),
    )


def philox_uniform(
    seed: int | torch.Tensor,
    offset: int,
    rows: int,
    cols: int,
    *,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The uniforms of an ``(rows, cols)`` draw: ``u[r, j]`` as defined in this module's docstring.

    Args:
        seed: int in ``[0, 2**63)`` or an int64 tensor with one element (the Philox key).
        offset: int in ``[0, 2**62)``, the first counter of the draw.
        rows, cols: the draw's shape ``(R, M)``.
        device: where to compute (default: the seed tensor's device, else CPU).

    Returns:
        float32 tensor of shape ``(rows, cols)`` with values in ``[0, 1)``.

    Raises:
        TypeError / ValueError: a bad ``seed``, ``offset`` or shape (named in the message).
    """
    check_seed(seed)
    check_offset(offset)
    for name, v in (("rows", rows), ("cols", cols)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be a non-negative int, got {v!r}")
    if device is None:
        device = seed.device if isinstance(seed, torch.Tensor) else torch.device("cpu")
    if torch.compiler.is_compiling() and not isinstance(seed, torch.Tensor):
        # an opaque op under torch.compile for a constant seed: inductor would otherwise try to fold (or
        # generate code for) all ten Philox rounds of the whole draw, for minutes. A tensor seed is a
        # graph input: the rounds compile into one fused loop (seconds) and run several times faster.
        return _philox_uniform_op(torch.tensor(int(seed), device=device), offset, rows, cols)
    return _philox_uniform_impl(seed, offset, rows, cols, device)


def _philox_uniform_impl(seed, offset: int, rows: int, cols: int, device) -> torch.Tensor:
    groups = -(-rows // 4)
    k0, k1 = _seed_words(seed, device)
    counter = offset + torch.arange(groups * cols, dtype=torch.int64, device=device)
    c0 = counter & _MASK32
    c1 = counter >> 32
    zero = torch.zeros_like(c0)
    words = philox4x32(c0, c1, zero, zero, k0, k1)
    # words[lane][g * cols + j] belongs to row 4 g + lane, column j.
    u = torch.stack([uniform_from_uint32(w).view(groups, cols) for w in words], dim=1)
    return u.reshape(groups * 4, cols)[:rows]


@torch.library.custom_op("bihm_triton::reference_philox_uniform", mutates_args=())
def _philox_uniform_op(key: torch.Tensor, offset: int, rows: int, cols: int) -> torch.Tensor:
    return _philox_uniform_impl(key, offset, rows, cols, key.device)


@_philox_uniform_op.register_fake
def _(key, offset, rows, cols):
    return key.new_empty((rows, cols), dtype=torch.float32)


class RandomStream:
    """A cursor over the Philox stream in whole draws: consecutive draws get consecutive draw slots.

    ``take(draws)`` returns the offset of the next pass of ``draws`` draws and advances past it
    (``draws · DRAW_STRIDE`` counters, whatever the rows); ``uniform(rows, cols)`` takes one draw and
    returns its uniforms (computed by the reference on the stream's device). Samplers that make many
    draws (Gibbs sweeps, resampling) use one of these, so a whole run is a function of
    ``(seed, offset)``, and row (chain) r of a run does not depend on the number of rows.

    Args:
        seed: int in ``[0, 2**63)`` or a one-element int64 tensor.
        offset: first counter.
        device: where :meth:`uniform` computes.
        uniform_fn: ``uniform_fn(seed, offset, rows, cols)`` computing the same draw faster (e.g. the
            Triton kernel :func:`bihm_triton.kernels.philox.philox_uniform`, equal bit for bit);
            default :func:`philox_uniform` on ``device``.

    Raises:
        ValueError: from :meth:`take`, when the cursor would pass ``2**62`` (about 4 million draws).
    """

    def __init__(self, seed, offset: int = 0, device=None, uniform_fn=None):
        check_seed(seed)
        check_offset(offset)
        self.seed, self.offset, self.device = seed, offset, device
        self._uniform_fn = uniform_fn

    def take(self, draws: int = 1) -> int:
        """Offset of the next pass of ``draws`` draws; the cursor moves ``draws · DRAW_STRIDE`` counters on."""
        off = self.offset
        check_offset(off + draws * DRAW_STRIDE, "the stream's offset after this draw")
        self.offset += draws * DRAW_STRIDE
        return off

    def uniform(self, rows: int, cols: int) -> torch.Tensor:
        """(rows, cols) float32 uniforms of the next draw."""
        check_draw_fits(rows, cols)
        if self._uniform_fn is not None:
            return self._uniform_fn(self.seed, self.take(), rows, cols)
        return philox_uniform(self.seed, self.take(), rows, cols, device=self.device)
