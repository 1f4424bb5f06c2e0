"""Public functional ops: stochastic binary layers and weight normalization, autograd-aware.

Backends: ``backend="auto"`` runs the Triton kernels (:mod:`bihm_triton.kernels`) on CUDA tensors,
the CPU kernels (:mod:`bihm_triton.kernels.cpu`: the matmul by BLAS through torch, then one fused C
pass for Philox, sigmoid, the draw and the log-likelihood) on float32 CPU tensors, and the
reference (:mod:`bihm_triton.reference`) on float64 inputs (both kernels compute in float32;
``"triton"`` and ``"cpu"`` refuse float64 with a TypeError) or where the CPU kernels cannot be built;
``"triton"``, ``"cpu"`` or ``"reference"`` forces one (the Triton backend accepts CPU tensors when
``TRITON_INTERPRET=1``, which is how the tests run it without a GPU). The Triton and CPU ops are
registered with ``torch.library`` (namespace ``bihm_triton``), with fake implementations and
autograd formulas, so ``torch.compile(fullgraph=True)`` traces code that calls them.

Random numbers follow SPEC §5 (:mod:`bihm_triton.reference.philox`): the same ``(seed, offset)``
gives the same sample on every backend, up to the rounding of the logits (a sample can differ only
where ``u`` falls between two roundings of ``σ(a)``; with tf32 dots on a GPU that is roughly one
element in 10⁴–10⁶).

Gradients: the sample ``x`` is a constant; ``log_prob`` is differentiable in ``h`` (when floating),
``weight`` (or ``weight_v`` and ``weight_g``) and ``bias``, with ``∂ log_prob_r / ∂a_rj = x_rj − σ(a_rj)``.
"""

from __future__ import annotations

import importlib.util
from typing import Optional

import torch

from . import reference as ref
from .reference._checks import (
    check_binary,
    check_layer_args,
    check_tensor,
    check_weight_norm_args,
    compute_dtype,
)
from .reference.philox import MAX_SEED, check_offset, check_seed, resolve_seed

__all__ = [
    "sbn_sample",
    "sbn_log_prob",
    "sbn_sample_wn",
    "sbn_log_prob_wn",
    "weight_norm",
    "resolve_backend",
    "cpu_available",
    "BACKENDS",
]

BACKENDS = ("auto", "triton", "cpu", "reference")

_TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None


def _kernels():
    """Import the Triton launchers on first use (keeps ``import bihm_triton`` free of Triton)."""
    from .kernels import sbn, weight_norm as wn

    return sbn, wn


def _cpu():
    """The CPU kernels' launcher (builds them on first use; see :mod:`bihm_triton.kernels.cpu`)."""
    from .kernels import cpu

    return cpu


def cpu_available() -> bool:
    """True when the CPU backend's kernels are built (the first call builds them: about a second, once per
    machine); False without a C compiler (one line on stderr says so)."""
    return _cpu().available()


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype | None = None) -> str:
    """Map ``"auto"`` to ``"triton"`` (CUDA tensors), ``"cpu"`` (float32 CPU tensors, when the CPU kernels
    build) or ``"reference"`` (float64, or anything else); check the choice.

    Raises:
        ValueError: an unknown backend name.
        RuntimeError: ``"triton"`` without Triton installed; ``"cpu"`` for non-CPU tensors or without
            its kernels (no C compiler).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if device.type == "cuda" and _TRITON_AVAILABLE:
            return "triton"
        if device.type == "cpu" and dtype != torch.float64 and _cpu().available():
            return "cpu"
        return "reference"
    if backend == "triton" and not _TRITON_AVAILABLE:
        raise RuntimeError("backend='triton' needs the triton package (Linux); use backend='reference'")
    if backend == "cpu":
        if device.type != "cpu":
            raise RuntimeError(f"backend='cpu' runs on CPU tensors, got a tensor on {device}; use backend='auto'")
        if not _cpu().available():
            raise RuntimeError(f"backend='cpu' is unavailable ({_cpu().unavailable_reason()}); use "
                               f"backend='reference'")
    return backend


def _backend_for(backend: str, device: torch.device, **tensors) -> str:
    """The backend that runs an op on ``tensors`` (the inputs that set its compute dtype): as
    :func:`resolve_backend`, except for float64. The Triton and CPU kernels compute in float32, so float64
    inputs run on the reference under ``"auto"`` (float64 math) and are refused under ``"triton"`` and
    ``"cpu"`` (a float32 result returned as float64 would pass for float64 precision).

    Raises:
        TypeError: ``backend="triton"`` or ``"cpu"`` with a float64 input (the message names it and the
            alternatives).
    """
    wide = [name for name, t in tensors.items() if t is not None and t.dtype == torch.float64]
    resolved = resolve_backend(backend, device, torch.float64 if wide else torch.float32)
    if resolved in ("triton", "cpu") and wide:
        if backend == "auto":
            return "reference"
        raise TypeError(f"backend={resolved!r} computes in float32, but {wide[0]} is float64; pass float32 "
                        f"tensors, or use backend='reference' (or 'auto', which runs float64 inputs on the "
                        f"reference) for float64 results")
    return resolved


def _validating(validate: bool) -> bool:
    return validate and not torch.compiler.is_compiling()


def _seed_arg(seed):
    """The seed as the Triton path takes it: an int or a one-element int64 tensor (always a tensor under
    ``torch.compile``, whose custom op takes a tensor); ``None`` draws one from torch's default generator."""
    return _seed_tensor(seed) if torch.compiler.is_compiling() else _reference_seed(seed)


def _reference_seed(seed):
    """The seed for the reference path: ints stay ints (under torch.compile the reference then keeps
    the constant-keyed Philox opaque instead of unrolling it), None draws one, tensors as given."""
    if seed is None and torch.compiler.is_compiling():
        return _seed_tensor(None)
    return resolve_seed(seed)


def _seed_tensor(seed) -> torch.Tensor:
    """A one-element int64 tensor for the op; ``None`` draws one from torch's default generator."""
    if seed is None:
        return torch.randint(0, MAX_SEED - 1, (), dtype=torch.int64)
    check_seed(seed)
    if isinstance(seed, torch.Tensor):
        return seed.reshape(())
    return torch.tensor(int(seed), dtype=torch.int64)


# ============================================================================ one definition per op


def _dual_op(name: str, impl, fake, setup, backward):
    """An op defined once, with two paths: the ``torch.library`` custom op ``bihm_triton::<name>`` (what
    ``torch.compile`` traces: fake tensors from ``fake``) and an ``autograd.Function`` that calls ``impl`` directly
    (eager: a custom op's dispatch costs hundreds of µs of host time per call; this costs the kernel). Both save
    with ``setup(ctx, inputs, output)`` and differentiate with ``backward(ctx, *grads, eager=...)`` (``eager``: call
    the launchers directly rather than the backward's own custom ops; the same kernels). Returns ``call(*inputs)``,
    which takes the op under ``torch.compile`` and the Function otherwise; ``call.op`` and ``call.eager`` are the
    two."""
    op = torch.library.custom_op(f"bihm_triton::{name}", mutates_args=())(impl)
    op.register_fake(fake)
    op.register_autograd(lambda ctx, *grads: backward(ctx, *grads, eager=False), setup_context=setup)

    class Eager(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *inputs):
            output = impl(*inputs)
            setup(ctx, inputs, output)
            return output

        @staticmethod
        def backward(ctx, *grads):
            return backward(ctx, *grads, eager=True)

    Eager.__name__ = Eager.__qualname__ = f"_{name}_eager"

    def call(*inputs):
        return op(*inputs) if torch.compiler.is_compiling() else Eager.apply(*inputs)

    call.op, call.eager = op, Eager
    return call


# ============================================================================ torch.library ops


def _sbn_sample_impl(
    h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, weight_g: Optional[torch.Tensor],
    seed: torch.Tensor, offset: int, out_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    sbn, _ = _kernels()
    x, lp = sbn.sbn_forward(h, weight, bias, weight_g=weight_g, seed=seed, offset=offset, out_dtype=out_dtype)
    return x, lp.to(compute_dtype(h, weight, bias, weight_g))


def _sbn_sample_fake(h, weight, bias, weight_g, seed, offset, out_dtype):
    R, M = h.shape[0], weight.shape[0]
    return h.new_empty((R, M), dtype=out_dtype), h.new_empty((R,), dtype=compute_dtype(h, weight, bias, weight_g))


def _sbn_log_prob_impl(
    h: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, weight_g: Optional[torch.Tensor],
) -> torch.Tensor:
    sbn, _ = _kernels()
    _, lp = sbn.sbn_forward(h, weight, bias, weight_g=weight_g, x=x)
    return lp.to(compute_dtype(h, weight, bias, weight_g))


def _sbn_log_prob_fake(h, x, weight, bias, weight_g):
    return h.new_empty((h.shape[0],), dtype=compute_dtype(h, weight, bias, weight_g))


@torch.library.custom_op("bihm_triton::sbn_grad_logits", mutates_args=())
def _sbn_grad_logits_op(
    grad_log_prob: torch.Tensor, h: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
    weight_g: Optional[torch.Tensor],
) -> torch.Tensor:
    sbn, _ = _kernels()
    return sbn.sbn_grad_logits(grad_log_prob, h, x, weight, bias, weight_g=weight_g)


@_sbn_grad_logits_op.register_fake
def _(grad_log_prob, h, x, weight, bias, weight_g):
    return h.new_empty((h.shape[0], weight.shape[0]), dtype=torch.float32)


@torch.library.custom_op("bihm_triton::weight_norm", mutates_args=())
def _weight_norm_op(weight_v: torch.Tensor, weight_g: torch.Tensor) -> torch.Tensor:
    _, wn = _kernels()
    w, _ = wn.weight_norm_forward(weight_v, weight_g, out_dtype=torch.promote_types(weight_v.dtype, weight_g.dtype))
    return w


@_weight_norm_op.register_fake
def _(weight_v, weight_g):
    return weight_v.new_empty(weight_v.shape, dtype=torch.promote_types(weight_v.dtype, weight_g.dtype))


@torch.library.custom_op("bihm_triton::weight_norm_backward", mutates_args=())
def _weight_norm_backward_op(
    grad_weight: torch.Tensor, weight_v: torch.Tensor, weight_g: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    _, wn = _kernels()
    gv, gg = wn.weight_norm_backward(grad_weight, weight_v, weight_g)
    return gv, gg.to(weight_g.dtype).reshape(weight_g.shape)


@_weight_norm_backward_op.register_fake
def _(grad_weight, weight_v, weight_g):
    # the launcher works on contiguous copies, so its outputs are contiguous whatever v's strides
    return weight_v.new_empty(weight_v.shape), weight_g.new_empty(weight_g.shape)


# ------------------------------------------------------------------------------------ autograd


def _layer_backward(grad_lp, h, x, weight, bias, weight_g, need_h: bool, *, eager: bool = False):
    """Gradients (h, weight_or_v, bias, g) of Σ_r grad_lp[r] · log_prob[r]; logits recomputed in the kernel.

    ``eager``: call the launchers directly (the autograd.Function path) instead of the custom ops
    (the path ``torch.compile`` traces); the same kernels either way.
    """
    if eager:
        sbn, wn = _kernels()
        grad_a = sbn.sbn_grad_logits(grad_lp, h, x, weight, bias, weight_g=weight_g)
        wn_backward = lambda gw, v, g: _wn_backward_eager(gw, v, g)  # noqa: E731
        wn_forward = lambda v, g: wn.weight_norm_forward(v, g)[0]  # noqa: E731
    else:
        grad_a = _sbn_grad_logits_op(grad_lp, h, x, weight, bias, weight_g)  # (R, M) fp32
        wn_backward, wn_forward = _weight_norm_backward_op, _weight_norm_op
    grad_bias = grad_a.sum(0).to(bias.dtype)
    h32 = h.to(torch.float32)
    grad_w = grad_a.t() @ h32  # ∂L/∂W_eff (M, N)
    grad_g = None
    if weight_g is not None:
        grad_v, grad_g = wn_backward(grad_w, weight, weight_g)
        grad_w = grad_v
    grad_h = None
    if need_h:
        w_eff = (wn_forward(weight, weight_g) if weight_g is not None else weight).to(torch.float32)
        grad_h = (grad_a @ w_eff).to(h.dtype)
    return grad_h, grad_w.to(weight.dtype), grad_bias, grad_g


def _wn_backward_eager(grad_w, v, g):
    _, wn = _kernels()
    gv, gg = wn.weight_norm_backward(grad_w, v, g)
    return gv, gg.to(g.dtype).reshape(g.shape)


def _sample_setup(ctx, inputs, output):
    h, weight, bias, weight_g, seed, offset, out_dtype = inputs
    x, _ = output
    ctx.mark_non_differentiable(x)  # the sample is a constant: no gradient flows through it
    ctx.set_materialize_grads(False)  # no (R, M) zero gradient for x is made, only to be ignored
    ctx.save_for_backward(h, x, weight, bias, weight_g)


def _sample_backward(ctx, grad_x, grad_lp, *, eager: bool):
    if grad_lp is None:
        return None, None, None, None, None, None, None
    h, x, weight, bias, weight_g = ctx.saved_tensors
    need_h = ctx.needs_input_grad[0] and h.is_floating_point()
    gh, gw, gb, gg = _layer_backward(grad_lp, h, x, weight, bias, weight_g, need_h, eager=eager)
    return gh, gw, gb, gg, None, None, None


def _log_prob_setup(ctx, inputs, output):
    h, x, weight, bias, weight_g = inputs
    ctx.save_for_backward(h, x, weight, bias, weight_g)


def _log_prob_backward(ctx, grad_lp, *, eager: bool):
    h, x, weight, bias, weight_g = ctx.saved_tensors
    need_h = ctx.needs_input_grad[0] and h.is_floating_point()
    gh, gw, gb, gg = _layer_backward(grad_lp, h, x, weight, bias, weight_g, need_h, eager=eager)
    return gh, None, gw, gb, gg


#: one stochastic layer, Triton kernels: sample + log-prob, and log-prob of given targets
_sample = _dual_op("sbn_sample", _sbn_sample_impl, _sbn_sample_fake, _sample_setup, _sample_backward)
_log_prob = _dual_op("sbn_log_prob", _sbn_log_prob_impl, _sbn_log_prob_fake, _log_prob_setup, _log_prob_backward)
_sbn_sample_op, _sbn_log_prob_op = _sample.op, _log_prob.op  # the custom ops (tests call them directly)


def _wn_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _wn_backward(ctx, grad_w):
    v, g = ctx.saved_tensors
    gv, gg = _weight_norm_backward_op(grad_w, v, g)
    return gv, gg


_weight_norm_op.register_autograd(_wn_backward, setup_context=_wn_setup)


# ======================================================================= the CPU backend's ops
#
# The layer is F.linear (BLAS, differentiated by torch's autograd) followed by one fused C pass over
# the logits: the draw (or the given targets), Σ_j log Bern per row, and d = x − σ(a) for the backward
# (∂ log_prob / ∂a = d). Only the pass is a custom op: torch.compile traces F.linear as usual.


def _cpu_sample_impl(logits: torch.Tensor, seed: torch.Tensor, offset: int, out_dtype: torch.dtype,
                     want_d: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x, lp, d = _cpu().sample(logits.contiguous(), seed, offset, out_dtype=out_dtype, want_d=want_d)
    return x, lp, (d if want_d else logits.new_empty(0))


def _cpu_sample_fake(logits, seed, offset, out_dtype, want_d):
    R, M = logits.shape
    return (logits.new_empty((R, M), dtype=out_dtype), logits.new_empty((R,)),
            logits.new_empty((R, M) if want_d else (0,)))


def _cpu_log_prob_impl(logits: torch.Tensor, x: torch.Tensor, want_d: bool) -> tuple[torch.Tensor, torch.Tensor]:
    lp, d = _cpu().score(logits.contiguous(), x, want_d=want_d)
    return lp, (d if want_d else logits.new_empty(0))


def _cpu_log_prob_fake(logits, x, want_d):
    R, M = logits.shape
    return logits.new_empty((R,)), logits.new_empty((R, M) if want_d else (0,))


def _cpu_sample_setup(ctx, inputs, output):
    x, _, d = output
    ctx.mark_non_differentiable(x, d)
    ctx.set_materialize_grads(False)  # x and d get no gradient: no (R, M) zeros made for them (a third of the
    ctx.save_for_backward(d)          # non-matmul time of a training step's 784-wide layer at two threads)


def _cpu_sample_backward(ctx, grad_x, grad_lp, grad_d, *, eager: bool):
    (d,) = ctx.saved_tensors
    return None if grad_lp is None else grad_lp.unsqueeze(1) * d, None, None, None, None


def _cpu_log_prob_setup(ctx, inputs, output):
    _, d = output
    ctx.mark_non_differentiable(d)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(d)


def _cpu_log_prob_backward(ctx, grad_lp, grad_d, *, eager: bool):
    (d,) = ctx.saved_tensors
    return None if grad_lp is None else grad_lp.unsqueeze(1) * d, None, None


#: the CPU backend's pass on given logits: draw + log-prob (+ d = x − σ(a) for the backward), or score targets
_cpu_sample_pass = _dual_op("cpu_bernoulli_sample", _cpu_sample_impl, _cpu_sample_fake, _cpu_sample_setup,
                            _cpu_sample_backward)
_cpu_log_prob_pass = _dual_op("cpu_bernoulli_log_prob", _cpu_log_prob_impl, _cpu_log_prob_fake, _cpu_log_prob_setup,
                              _cpu_log_prob_backward)


def _cpu_logits(h, weight, bias, weight_g):
    """``a = h·Wᵀ + b`` in float32 through torch (BLAS; autograd as usual), W = g·v/‖v‖ when weight-normalized."""
    w = ref.weight_norm(weight, weight_g, 0) if weight_g is not None else weight
    return torch.nn.functional.linear(h.to(torch.float32), w.to(torch.float32), bias.to(torch.float32))


def cpu_sample_logits(logits: torch.Tensor, seed, offset: int, out_dtype: torch.dtype = torch.float32):
    """The CPU backend's fused pass on given logits (R, M) float32: ``(x (R, M) out_dtype, log_prob (R,))`` with
    ``x = 1[u < σ(a)]`` for the ``(seed, offset)`` uniforms (row 0 starts a Philox row group) and ``log_prob``
    differentiable in the logits (``∂/∂a = x − σ(a)``), in nats; the draw and stream of SPEC §1 and §5, the
    same as :func:`sbn_sample`'s after its matmul. The engines call it where one row's logits serve several
    draws (computed once per data point or chain, then repeated).

    Raises:
        RuntimeError: the CPU kernels are unavailable.
    """
    want_d = logits.requires_grad
    seed = _seed_tensor(seed) if torch.compiler.is_compiling() else _reference_seed(seed)
    x, lp, _ = _cpu_sample_pass(logits, seed, offset, out_dtype, want_d)
    return x, lp


def _cpu_sample(h, weight, bias, weight_g, seed, offset, out_dtype):
    return cpu_sample_logits(_cpu_logits(h, weight, bias, weight_g), seed, offset, out_dtype)


def _cpu_log_prob(h, x, weight, bias, weight_g):
    a = _cpu_logits(h, weight, bias, weight_g)
    return _cpu_log_prob_pass(a, x, a.requires_grad)[0]


# ================================================================================ public API


def sbn_sample(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    *,
    seed: int | torch.Tensor | None = None,
    offset: int = 0,
    out_dtype: torch.dtype = torch.float32,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample a stochastic binary layer and score the sample, fused (SPEC §5).

    ``a = h · Wᵀ + b`` (fp32 accumulation), ``x = 1[u < σ(a)]`` with ``u`` the ``(seed, offset)``
    uniforms, ``log_prob_r = Σ_j x_rj · a_rj − softplus(a_rj)``. The logits never reach memory on
    the Triton backend.

    Args:
        h: (R, N) input states: bool, uint8, or float16/bfloat16/float32/float64 (real values allowed).
        weight: (M, N) weight, floating (fp16/bf16 are upcast after the load).
        bias: (M,) bias, floating.
        seed: Philox key, an int in ``[0, 2**63)`` or a one-element int64 tensor (a CUDA tensor is
            read by the kernel, so a CUDA graph replays with its current value); ``None`` draws a
            seed from torch's default generator (``torch.manual_seed`` reproduces the run).
        offset: first Philox counter; the draw consumes ``ceil(R/4)·M`` counters.
        out_dtype: dtype of the sample, e.g. ``torch.float32`` (default) or ``torch.uint8`` (fastest).
        backend: ``"auto"``, ``"triton"``, ``"cpu"`` or ``"reference"`` (module docstring). The Triton and
            CPU kernels compute in float32: under ``"auto"`` float64 inputs (h, weight, bias) run on the
            reference, in float64; ``"triton"`` and ``"cpu"`` refuse them.

    Returns:
        ``(x, log_prob)``: x (R, M) ``out_dtype`` in {0, 1}, no gradient; log_prob (R,) float32
        (float64 if an input is float64), nats, differentiable in h, weight, bias.

    Raises:
        ValueError: mismatched shapes (the message names the argument and the expected shape),
            tensors on different devices, a seed outside ``[0, 2**63)``, a negative offset.
        TypeError: unsupported dtypes; a float64 input with ``backend="triton"``.
        RuntimeError: ``backend="triton"`` on CPU tensors without ``TRITON_INTERPRET=1``.
    """
    check_layer_args(h, weight, bias)
    check_offset(offset)
    backend = _backend_for(backend, h.device, h=h, weight=weight, bias=bias)
    if backend == "reference":
        return ref.sbn_sample(h, weight, bias, seed=_reference_seed(seed), offset=offset, out_dtype=out_dtype)
    if backend == "cpu":
        return _cpu_sample(h, weight, bias, None, seed, offset, out_dtype)
    return _sample(h, weight, bias, None, _seed_arg(seed), offset, out_dtype)


def sbn_log_prob(
    h: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    *,
    backend: str = "auto",
    validate: bool = True,
) -> torch.Tensor:
    """Per-row log-likelihood ``Σ_j x_rj · a_rj − softplus(a_rj)`` of binary targets (SPEC §5), fused.

    Args:
        h: (R, N) input states; x: (R, M) targets in {0, 1} (bool, uint8 or float);
        weight: (M, N); bias: (M,); backend: as in :func:`sbn_sample`.
        validate: also check that x is binary (reads x: one device sync; skipped under
            ``torch.compile``). Non-binary targets are otherwise read as ``x != 0``.

    Returns:
        (R,) float32 (float64 if an input is float64), nats, differentiable in h, weight, bias.

    Raises:
        ValueError / TypeError / RuntimeError: as :func:`sbn_sample`; ValueError for non-binary x.
    """
    check_layer_args(h, weight, bias, x)
    if _validating(validate):
        check_binary(x, "x")
    backend = _backend_for(backend, h.device, h=h, weight=weight, bias=bias)
    if backend == "reference":
        return ref.bernoulli_log_prob(ref.sbn_logits(h, weight, bias), x)
    if backend == "cpu":
        return _cpu_log_prob(h, x, weight, bias, None)
    return _log_prob(h, x, weight, bias, None)


def sbn_sample_wn(
    h: torch.Tensor,
    weight_v: torch.Tensor,
    weight_g: torch.Tensor,
    bias: torch.Tensor,
    *,
    seed: int | torch.Tensor | None = None,
    offset: int = 0,
    out_dtype: torch.dtype = torch.float32,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sbn_sample` with weight normalization folded in: ``a = (h · vᵀ) ⊙ (g / ‖v‖) + b``.

    ``W = g · v / ‖v‖`` (Salimans & Kingma 2016) is never materialized: the kernel accumulates
    ``‖v_j‖²`` from the same weight tiles it multiplies.

    Args:
        weight_v: (M, N) directions; weight_g: (M,) or (M, 1) magnitudes. The rest as
            :func:`sbn_sample`. Gradients flow to weight_v and weight_g.
    """
    check_layer_args(h, weight_v, bias, weight_name="weight_v")
    g = check_weight_norm_args(weight_v, weight_g, 0)
    check_offset(offset)
    backend = _backend_for(backend, h.device, h=h, weight_v=weight_v, weight_g=g, bias=bias)
    if backend == "reference":
        return ref.sbn_sample_wn(h, weight_v, g, bias, seed=_reference_seed(seed), offset=offset, out_dtype=out_dtype)
    if backend == "cpu":
        return _cpu_sample(h, weight_v, bias, g, seed, offset, out_dtype)
    return _sample(h, weight_v, bias, g, _seed_arg(seed), offset, out_dtype)


def sbn_log_prob_wn(
    h: torch.Tensor,
    x: torch.Tensor,
    weight_v: torch.Tensor,
    weight_g: torch.Tensor,
    bias: torch.Tensor,
    *,
    backend: str = "auto",
    validate: bool = True,
) -> torch.Tensor:
    """:func:`sbn_log_prob` with a weight-normalized weight (``weight_v`` (M, N), ``weight_g`` (M,) or (M, 1))."""
    check_layer_args(h, weight_v, bias, x, weight_name="weight_v")
    g = check_weight_norm_args(weight_v, weight_g, 0)
    if _validating(validate):
        check_binary(x, "x")
    backend = _backend_for(backend, h.device, h=h, weight_v=weight_v, weight_g=g, bias=bias)
    if backend == "reference":
        return ref.bernoulli_log_prob(ref.sbn_logits(h, weight_v, bias, scale=ref.weight_norm_scale(weight_v, g)), x)
    if backend == "cpu":
        return _cpu_log_prob(h, x, weight_v, bias, g)
    return _log_prob(h, x, weight_v, bias, g)


def weight_norm(weight_v: torch.Tensor, weight_g: torch.Tensor, dim: int | None = 0, *,
                backend: str = "auto") -> torch.Tensor:
    """Weight normalization ``W = g · v / ‖v‖`` (Salimans & Kingma 2016, eq. 2).

    The semantics of ``torch.nn.utils.parametrizations.weight_norm(module, dim=dim)`` for a 2-D
    weight, for every dim torch accepts: ``dim=0`` (or −2) normalizes every row, ``dim=1`` every
    column, ``dim=-1`` or None the whole tensor (its Frobenius norm; computed with torch ops on every
    backend).

    Args:
        weight_v: (M, N) floating directions.
        weight_g: magnitudes, (M,) or (M, 1) for ``dim=0``; (N,) or (1, N) for ``dim=1``; a scalar
            for ``dim=-1``/None.
        dim: 0, 1, −1, −2 or None.
        backend: as in :func:`sbn_sample`.

    Returns:
        (M, N) weight in the promoted dtype of the inputs (fp32 arithmetic on the Triton backend, which
        therefore takes no float64 input: ``"auto"`` runs those on the reference), differentiable in
        both inputs.

    Raises:
        ValueError: a bad dim or a weight_g shape that does not fit weight_v (named in the message).
        TypeError: non-floating inputs; a float64 input with ``backend="triton"``.
    """
    check_tensor(weight_v, "weight_v", 2, symbols="(M, N)")
    g = check_weight_norm_args(weight_v, weight_g, dim)
    backend = _backend_for(backend, weight_v.device, weight_v=weight_v, weight_g=g)
    if backend in ("reference", "cpu") or dim in (-1, None):  # the CPU backend: torch's ops (the reference)
        return ref.weight_norm(weight_v, weight_g, dim)
    if dim % 2 == 0:
        return _weight_norm_op(weight_v, g)
    return _weight_norm_op(weight_v.t(), g).t()
