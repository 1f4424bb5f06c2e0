"""The BiHM as an ``nn.Module`` on the fused ops: chunked estimators, samplers, checkpoints (SPEC §1–4, §6).

:class:`BiHM` inherits every formula from :class:`bihm_triton.reference.BiHM` (the specification)
and replaces only the two stochastic primitives with :mod:`bihm_triton.ops`, so its results equal
the reference's for the same ``(seed, offset)``. On top it adds what large runs need: estimators
that stream K up to 10⁵ per data point and N up to 10⁶ samples for Z through fixed-size row chunks
(the chunking reproduces the unchunked random stream exactly), progress bars, the samplers of
:mod:`bihm_triton.samplers`, and safetensors checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import warnings

import torch
from tqdm.auto import tqdm

from . import ops, samplers
from . import reference as ref
from .progress import bar_disable
from .reference._checks import check_positive_int
from .reference.bihm import WeightNormStochasticLayer, warn_nonfinite_samples
from .reference.estimators import MeanWithSE, log_mean_exp_with_se

__all__ = ["BiHM", "parse_sizes"]

_GEOMETRIC = re.compile(r"^\s*([0-9]*\.?[0-9]+)x-([0-9]+)l-([0-9]+)\s*$")


def parse_sizes(spec: str, d0: int) -> list[int]:
    """Layer widths ``[d_0, d_1, …, d_L]`` from ``"200,100,50"`` or the authors' ``"<f>x-<n>l-<last>"``.

    ``"<f>x-<n>l-<last>"`` follows the authors' code (``create_layers`` in their ``helmholtz``
    package) exactly: ``first = int(f·d_0)``, ``base = exp(log(first / last) / (n − 1))`` and the
    widths ``int(last · base^i)`` for i = n−1 … 0 (truncated, in float64 as numpy computes them), so
    ``parse_sizes("0.5x-4l-10", 784) == [784, 392, 115, 33, 10]``.

    Raises:
        ValueError: an unparseable spec, an empty entry (``"200,,50"``, ``"200,50,"``), or a width < 1
            (e.g. ``"784,0,10"``).
    """
    if not isinstance(spec, str):
        raise TypeError(f"sizes spec must be a string like '200,100,50', got {type(spec).__name__}")
    m = _GEOMETRIC.match(spec)
    if m:
        import numpy as np

        f, n, last = float(m.group(1)), int(m.group(2)), int(m.group(3))
        if n < 1:
            raise ValueError(f"sizes spec {spec!r}: the number of layers must be >= 1")
        first = int(d0 * f)
        if first < 1 or last < 1:
            raise ValueError(f"sizes spec {spec!r}: the first ({first} = int({f} * {d0})) and last ({last}) widths "
                             f"must be >= 1")
        if n == 1:
            latent = [last]
        else:
            base = np.exp(np.log(first / float(last)) / (n - 1))
            latent = [int(float(last) * base ** i) for i in reversed(range(n))]
    else:
        entries = spec.replace(" ", "").split(",")
        if entries == [""]:
            raise ValueError(f"sizes spec {spec!r} lists no latent layer")
        for i, t in enumerate(entries):
            if t == "":  # '200,,50' or a trailing comma: never drop an entry silently
                raise ValueError(f"sizes spec {spec!r}: entry {i + 1} of {len(entries)} is empty; give every latent "
                                 f"width, e.g. '200,100,50'")
        try:
            latent = [int(t) for t in entries]
        except ValueError:
            raise ValueError(f"sizes spec {spec!r} is neither 'd1,d2,...' nor '<f>x-<n>l-<last>'") from None
    for i, d in enumerate(latent):
        if d < 1:
            raise ValueError(f"sizes spec {spec!r}: latent width {i + 1} is {d}; widths must be >= 1")
    return ref.check_sizes([d0, *latent])


def _params_key(modules) -> tuple:
    """Identity, storage and autograd version of every parameter of ``modules``: changes whenever a
    parameter is replaced, re-pointed (``.data = …``) or updated in place through autograd-visible ops."""
    return tuple((id(p), p.data_ptr(), p._version) for m in modules for p in m._parameters.values() if p is not None)


def _is_compile_failure(e: Exception) -> bool:
    """A Triton compilation error or an out-of-resources launch (shared memory, registers)."""
    return type(e).__name__ in ("CompilationError", "OutOfResources", "CompileTimeAssertionFailure")


class _SegmentLSE:
    """Running per-data-point logsumexp over row chunks (rows of one data point may span chunks).

    Exact for −inf values: a data point whose values are all −inf (every weight zero) has the
    logsumexp −inf, never NaN. A NaN value makes its data point's logsumexp NaN (as ``torch.logsumexp``):
    NaN parameters never read as "probability zero".
    """

    def __init__(self, B: int, device):
        self.max = torch.full((B,), -math.inf, dtype=torch.float64, device=device)
        self.sum = torch.zeros(B, dtype=torch.float64, device=device)
        self.nan = torch.zeros(B, dtype=torch.bool, device=device)

    def update(self, b_lo: int, n: int, seg: torch.Tensor, v: torch.Tensor) -> None:
        """Add values v (rows,) whose data points are ``b_lo + seg`` (seg: 0 … n−1, contiguous; n given by
        the caller, so nothing is read back from the device)."""
        v = v.double()
        cm = torch.full((n,), -math.inf, dtype=v.dtype, device=v.device).scatter_reduce(0, seg, v, "amax")
        shift = torch.where(torch.isfinite(cm), cm, 0.0)  # exp(-inf - 0) = 0 where a chunk has no weight
        cs = torch.zeros(n, dtype=v.dtype, device=v.device).index_add_(0, seg, torch.exp(v - shift[seg]))
        m, s = self.max[b_lo:b_lo + n], self.sum[b_lo:b_lo + n]
        new = torch.maximum(m, cm)
        ref_ = torch.where(torch.isfinite(new), new, 0.0)
        self.sum[b_lo:b_lo + n] = s * torch.exp(m - ref_) * torch.isfinite(m) + cs * torch.exp(shift - ref_) * torch.isfinite(cm)
        self.max[b_lo:b_lo + n] = new
        self.nan[b_lo:b_lo + n] |= torch.isnan(cm)  # scatter_reduce's amax propagates NaN

    def value(self) -> torch.Tensor:
        lse = torch.where(self.sum > 0, self.max + torch.log(self.sum), -math.inf)
        return torch.where(self.nan, math.nan, lse)


class _FusedLogWeights(torch.autograd.Function):
    """log p(x, h), log q(h | x) (R,) of the fused pass, with the fused two-launch backward.

    Inputs after the fixed ones: the packed layers' weights, then their biases (q layers, p layers,
    the prior); the weights are packed on every forward (so a CUDA graph replays the packing too).
    """

    @staticmethod
    def forward(ctx, passes, x, k, seed, offset, n_layers, *tensors):
        weights, biases = tensors[:n_layers], tensors[n_layers:]
        passes.pack(weights, biases)
        R = x.shape[0] * k
        log_p, log_q, st = passes.forward(x, R, seed=seed, offset=offset, total_rows=R, row0=0, in_repeat=k)
        ctx.passes, ctx.k, ctx.n_layers = passes, k, n_layers
        ctx.shapes = [(t.shape, t.dtype) for t in tensors]
        ctx.save_for_backward(x, st)
        return log_p, log_q

    @staticmethod
    def backward(ctx, grad_log_p, grad_log_q):
        x, st = ctx.saved_tensors
        R = x.shape[0] * ctx.k
        zeros = x.new_zeros(R, dtype=torch.float32)
        grads = ctx.passes.backward(x, st, R, zeros if grad_log_p is None else grad_log_p,
                                    zeros if grad_log_q is None else grad_log_q, row0=0, in_repeat=ctx.k)
        n = ctx.n_layers
        out_w = [None if 0 in shape else dw.to(dtype) for (dw, _), (shape, dtype) in zip(grads, ctx.shapes[:n])]
        out_b = [db.to(dtype) for (_, db), (_, dtype) in zip(grads, ctx.shapes[n:])]
        return (None, None, None, None, None, None, *out_w, *out_b)


class BiHM(ref.BiHM):
    """Bidirectional Helmholtz Machine on the fused Triton ops (reference ops on CPU).

    Args:
        sizes: ``[d_0, d_1, …, d_L]`` (data width, then latent widths bottom to top).
        weight_norm: parameters ``weight_v``/``weight_g`` per layer (Salimans & Kingma 2016).
        backend: ``"auto"`` (Triton on CUDA, reference on CPU), ``"triton"`` or ``"reference"``.
        device, dtype: of the parameters (float32 default). The Triton kernels compute in float32, so a
            float64 model runs the reference math in float64 under ``backend="auto"`` (on CUDA too), and
            ``backend="triton"`` refuses float64.
        chunk_rows: rows per chunk in the streaming estimators (memory ∝ chunk_rows × widest layer).

    Parameter layout, initialization and every formula: :class:`bihm_triton.reference.BiHM`.

    Raises:
        ValueError / TypeError: bad sizes (``[]``, ``[784, 0, 10]``), backend or chunk_rows;
            TypeError: ``dtype=torch.float64`` with ``backend="triton"``.
    """

    def __init__(self, sizes, *, weight_norm: bool = False, backend: str = "auto", device=None,
                 dtype=torch.float32, chunk_rows: int = 1 << 16):
        if backend not in ops.BACKENDS:
            raise ValueError(f"backend must be one of {ops.BACKENDS}, got {backend!r}")
        if backend == "triton" and dtype == torch.float64:
            raise TypeError("backend='triton' computes in float32, but dtype is torch.float64; use "
                            "dtype=torch.float32, or backend='reference' (or 'auto', which runs a float64 model on "
                            "the reference, on CUDA too) for float64")
        super().__init__(sizes, weight_norm=weight_norm, device=device, dtype=dtype)
        check_positive_int(chunk_rows, "chunk_rows", 4)
        self.backend = backend
        self.chunk_rows = chunk_rows - chunk_rows % 4

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, backend={self.backend!r}"

    # ------------------------------------------------------------- primitives
    def layer_sample(self, layer, h, seed, offset):
        if isinstance(layer, WeightNormStochasticLayer):
            return ops.sbn_sample_wn(h, layer.weight_v, layer.weight_g, layer.bias, seed=seed, offset=offset,
                                     out_dtype=self.dtype, backend=self.backend)
        return ops.sbn_sample(h, layer.weight, layer.bias, seed=seed, offset=offset, out_dtype=self.dtype,
                              backend=self.backend)

    def layer_log_prob(self, layer, h, x):
        if isinstance(layer, WeightNormStochasticLayer):
            return ops.sbn_log_prob_wn(h, x, layer.weight_v, layer.weight_g, layer.bias, backend=self.backend,
                                       validate=False)
        return ops.sbn_log_prob(h, x, layer.weight, layer.bias, backend=self.backend, validate=False)

    # --------------------------------------------------------------- chunking
    def _chunks(self, rows: int, chunk: int, progress: bool | None, desc: str):
        starts = range(0, rows, chunk)
        # default: a bar for long loops; on a terminal only (tqdm's disable=None), never in log files
        return tqdm(starts, desc=desc, disable=bar_disable(progress, len(starts) > 8), leave=False)

    @torch.no_grad()
    def _importance_lse(self, x: torch.Tensor, k: int, seed, offset: int, progress) -> dict:
        """Per-data-point ``logsumexp_k(m · log ω_k)`` for m = ½, 1, 2, streamed over row chunks."""
        x = self._check_x(x)
        check_positive_int(k, "k")
        seed = self._seed(seed, offset)
        B = x.shape[0]
        R = B * k
        acc = {m: _SegmentLSE(B, x.device) for m in (0.5, 1.0, 2.0)}
        for r0 in self._chunks(R, self.chunk_rows, progress, "importance samples"):
            r1 = min(R, r0 + self.chunk_rows)
            b = torch.arange(r0, r1, device=x.device) // k
            b_lo = r0 // k
            log_p, log_q = self._chunk_log_weights(x, k, r1 - r0, seed, offset, total_rows=R, row_start=r0)
            log_w = log_p - log_q
            for m, a in acc.items():
                a.update(b_lo, (r1 - 1) // k - b_lo + 1, b - b_lo, m * log_w)
        return {m: a.value() for m, a in acc.items()}

    # ------------------------------------------------------------- estimators
    def log_likelihood(self, x: torch.Tensor, k: int, *, log_z2: float | None = None, seed=None, offset: int = 0,
                       progress: bool | None = None) -> ref.LogLikelihood:
        """Per-data-point log p̃*(x), log p(x) and (with ``log_z2``) log p*(x) from K importance samples (nats).

        Same values as :meth:`bihm_triton.reference.BiHM.log_likelihood` for the same (seed, offset),
        in memory bounded by ``chunk_rows`` for any K (SPEC §2).

        Args:
            x: (B, d_0) binary data. k: importance samples per data point (the authors used up to 10⁵).
            log_z2: log Ẑ² from :meth:`estimate_log_z2`. progress: progress bar (default: long runs, on a terminal).

        Returns:
            :class:`~bihm_triton.reference.LogLikelihood` of (B,) tensors.
        """
        lse = self._importance_lse(x, k, seed, offset, progress)
        log_k = math.log(k)
        lpt = (2.0 * (lse[0.5] - log_k)).to(self.dtype)
        return ref.LogLikelihood(lpt, (lse[1.0] - log_k).to(self.dtype), None if log_z2 is None else lpt - log_z2)

    def effective_sample_size(self, x: torch.Tensor, k: int, *, seed=None, offset: int = 0,
                              progress: bool | None = None) -> ref.EffectiveSampleSize:
        """Effective sample sizes (B,) of the p-weights (∝ ω) and the p*-weights (∝ sqrt ω), streamed (SPEC §2)."""
        lse = self._importance_lse(x, k, seed, offset, progress)

        def ess(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # (Σw)²/Σw² in [1, K]; 0 if every w = 0
            return torch.where(torch.isneginf(a), 0.0, torch.exp(2 * a - b).clamp(1.0, k)).to(self.dtype)

        return ref.EffectiveSampleSize(ess(lse[1.0], lse[2.0]), ess(lse[0.5], lse[1.0]))

    def bhattacharyya_distance(self, x: torch.Tensor, k: int, *, seed=None, offset: int = 0,
                               progress: bool | None = None) -> torch.Tensor:
        """Estimate of D_B(x) = ½(log p(x) − log p̃*(x)) (B,), nats (SPEC §1)."""
        ll = self.log_likelihood(x, k, seed=seed, offset=offset, progress=progress)
        return 0.5 * (ll.log_p - ll.log_p_tilde_star)

    @torch.no_grad()
    def estimate_log_z2(self, n_samples: int, *, n_inner: int = 1, seed=None, offset: int = 0,
                        progress: bool | None = None) -> MeanWithSE:
        """log Ẑ² ± standard error from ``n_samples`` draws of p (SPEC §2; the authors used 10⁶), streamed.

        Same value as :meth:`bihm_triton.reference.BiHM.estimate_log_z2` for the same (seed, offset).

        Returns:
            :class:`~bihm_triton.reference.MeanWithSE` of Python floats (nats).
        """
        check_positive_int(n_samples, "n_samples", 2)
        check_positive_int(n_inner, "n_inner")
        seed = self._seed(seed, offset)
        chunk = max(4, (self.chunk_rows // n_inner) // 4 * 4)
        terms = []
        for r0 in self._chunks(n_samples, chunk, progress, "log Z^2"):
            n = min(chunk, n_samples - r0)
            terms.append(self._log_z2_terms(n, n_inner, seed, offset, total_rows=n_samples, row_start=r0))
        return log_mean_exp_with_se(torch.cat(terms))

    # ----------------------------------------------------------- fused passes
    def stream_uniform(self, seed, offset: int, rows: int, cols: int) -> torch.Tensor:
        """The (rows, cols) uniforms of a draw of the SPEC §5 stream (the samplers' resampling and coin
        draws): the Triton kernel on the Triton backend, the reference elsewhere; equal bit for bit."""
        if self._uses_fused_sampler():
            from .kernels.philox import philox_uniform

            return philox_uniform(seed, offset, rows, cols, device=self.device)
        return ref.philox_uniform(seed, offset, rows, cols, device=self.device)

    def _pass_layers(self) -> list:
        """The layers of the fused passes in their packing order: q layers, p layers, the prior."""
        return [*self.q_layers, *self.p_layers, self.p_top]

    def _fused_passes(self, pack: bool):
        """The fused log-weight passes (:class:`bihm_triton.kernels.passes.FusedPasses`), cached; with
        ``pack`` the weights are repacked when a parameter changed (see :meth:`_fused_p_chain`)."""
        from .kernels.passes import FusedPasses

        cached = self.__dict__.get("_fused_passes_cache")
        if cached is None or cached[1].device != self.device:
            cached = self.__dict__["_fused_passes_cache"] = [None, FusedPasses(self.sizes, self.device)]
        if pack and not self.__dict__.get("_packed_while_fixed"):
            layers = self._pass_layers()
            key = _params_key(layers)
            if cached[0] != key:
                cached[1].pack([m.weight for m in layers], [m.bias for m in layers])
                cached[0] = key
            if "_packed_while_fixed" in self.__dict__:
                self.__dict__["_packed_while_fixed"] = True
        return cached[1]

    @contextlib.contextmanager
    def _parameters_fixed(self):
        """Within: the parameters do not change (a sampler's own loop), so the packed weights are checked
        once and the backend is resolved once instead of at every layer update (host time per sweep)."""
        if "_packed_while_fixed" in self.__dict__:  # nested: the outer one holds
            yield
            return
        self.__dict__["_packed_while_fixed"] = False
        self.__dict__["_fused_sampler_fixed"] = self._uses_fused_sampler()
        try:
            yield
        finally:
            self.__dict__.pop("_packed_while_fixed", None)
            self.__dict__.pop("_fused_sampler_fixed", None)

    def _fused(self, name: str, fused, fallback):
        """Run ``fused()``; on a compile failure warn once and use ``fallback()`` from then on."""
        flag = f"_fused_{name}_failed"
        if flag not in self.__dict__ and self._uses_fused_sampler():
            try:
                return fused()
            except Exception as e:  # noqa: BLE001 - a compiler failure on an untested GPU/Triton pair
                if not _is_compile_failure(e):
                    raise
                warnings.warn(f"the fused {name} kernels failed to compile for this network ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); running layer by layer instead",
                              RuntimeWarning, stacklevel=4)
                self.__dict__[flag] = repr(e)
        return fallback()

    def _fused_gibbs_hidden(self, states, l: int, k: int, stream):
        """The exact block-Gibbs update of h_l in one launch (:mod:`bihm_triton.kernels.gibbs`), drawing
        the reference's stream; None where it does not apply (the caller runs the reference path)."""
        if k % 2 or not self._uses_fused_sampler() or "_fused_gibbs_failed" in self.__dict__:
            return None  # the fused update takes K even (whole Philox row groups per chain)
        start = stream.offset

        def fused():
            from .kernels.chain import precision_terms
            from .kernels.gibbs import gibbs_hidden_update

            passes = self._fused_passes(pack=True)
            plan, L, top = passes.plan, self.n_layers, l == self.n_layers
            plans = {"q": plan.q[l - 1], "p": plan.p[L] if top else plan.p[l], "down": plan.p[l - 1],
                     "up": None if top else plan.q[l]}
            R, N, d = states[0].shape[0], 2 * k, self.sizes[l]
            offsets = (stream.take(R * N, d), stream.take(R * N, d), stream.take(R * N, 1), stream.take(R, 1))
            return gibbs_hidden_update(passes.weights, plans, l, top, states, k, seed=stream.seed, offsets=offsets,
                                       terms=precision_terms())

        def reference_path():
            stream.offset = start  # nothing drawn: the caller's path takes the same draws
            return None

        return self._fused("gibbs", fused, reference_path)

    def _fused_gibbs_x(self, states, log_s, k: int, n_inner: int, paper: bool, stream, mask, x_obs):
        """The block-Gibbs update of x in three launches (:func:`bihm_triton.kernels.gibbs.gibbs_x_update`),
        drawing the reference's stream; returns ``(new x, its log Ŝ)``, or None where it does not apply."""
        if not self._uses_fused_sampler() or {"_fused_gibbs_x_failed", "_fused_passes_failed"} & self.__dict__.keys():
            return None  # the x update rides on the fused passes
        start = stream.offset

        def fused():
            from .kernels.chain import precision_terms
            from .kernels.gibbs import gibbs_x_update

            passes = self._fused_passes(pack=True)
            R, rows = states[0].shape[0], states[0].shape[0] * k
            off_cand = stream.take(rows, self.sizes[0])
            off_inner = stream.offset
            for d in self.sizes[1:]:
                stream.take(rows * n_inner, d)
            off_choice = stream.take(R, 1)
            new, new_s = gibbs_x_update(passes.weights, {"p": passes.plan.p[0], "q": passes.plan.q[0]}, passes,
                                        states, log_s, k, n_inner, seed=stream.seed,
                                        offsets=(off_cand, off_inner, off_choice), terms=precision_terms(),
                                        exact=not paper, mask=mask, x_obs=x_obs)
            return new.to(self.dtype), new_s.to(self.dtype)

        def reference_path():
            stream.offset = start
            return None

        return self._fused("gibbs_x", fused, reference_path)

    def _chunk_log_weights(self, x, k, rows, seed, offset, *, total_rows, row_start, x_row0=0):
        def layers():
            return super(BiHM, self)._chunk_log_weights(x, k, rows, seed, offset, total_rows=total_rows,
                                                        row_start=row_start, x_row0=x_row0)

        def fused():
            log_p, log_q, _ = self._fused_passes(pack=True).forward(
                x, rows, seed=seed, offset=offset, total_rows=total_rows, row0=row_start, in_repeat=k, in_row0=x_row0)
            return log_p.to(self.dtype), log_q.to(self.dtype)

        if torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            return layers()  # differentiable chunks: the per-layer autograd path
        return self._fused("passes", fused, layers)

    def _log_weights_and_states(self, x, k, seed, offset):
        """log p(x, h) and log q(h | x) (B, K) of K samples per data point, differentiable in every
        parameter: on the Triton backend one fused forward launch and a two-launch backward
        (:mod:`bihm_triton.kernels.passes`); the states are not returned (None) there."""
        def fused():
            layers = self._pass_layers()
            log_p, log_q = _FusedLogWeights.apply(self._fused_passes(pack=False), x, k, seed, offset,
                                                  len(layers), *[m.weight for m in layers],
                                                  *[m.bias for m in layers])
            return log_p.to(self.dtype).view(-1, k), log_q.to(self.dtype).view(-1, k), None

        return self._fused("passes", fused, lambda: super(BiHM, self)._log_weights_and_states(x, k, seed, offset))

    # ---------------------------------------------------------------- sampling
    def _uses_fused_sampler(self) -> bool:
        """The fused kernels apply: the Triton backend on a float32 model (CUDA, or the interpreter)."""
        fixed = self.__dict__.get("_fused_sampler_fixed")
        if fixed is not None:
            return fixed
        return (ops.resolve_backend(self.backend, self.device) == "triton" and self.dtype != torch.float64
                and (self.device.type == "cuda" or self.backend == "triton"))

    def _fused_p_chain(self):
        """The p network packed for the fused sampler (:class:`bihm_triton.kernels.chain.FusedChain`),
        cached and repacked only when a parameter changed (``data_ptr`` and autograd's ``_version``
        counter: optimizer steps, ``load_state_dict``, in-place edits under ``torch.no_grad()``).

        Edits that bypass the version counter (``param.data.copy_(...)``, a CUDA-graph replay of an
        optimizer step) are not seen: call :meth:`refresh_fused_cache` after them.
        """
        from .kernels.chain import FusedChain

        order = [self.p_top, *list(self.p_layers._modules.values())[::-1]]  # (ModuleList indexing is slow)
        key = _params_key(order)
        cached = self.__dict__.get("_fused_p_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        self.__dict__["_p_nonfinite"] = (key, self._nonfinite_p())  # checked once per change (sample_p warns)
        weights, biases = [m.weight for m in order], [m.bias for m in order]
        if cached is not None and cached[1].device == self.device:
            chain = cached[1]
            chain.pack(weights, biases)
        else:
            chain = FusedChain(weights, biases)
        self.__dict__["_fused_p_cache"] = (key, chain)
        return chain

    def refresh_fused_cache(self) -> None:
        """Mark the packed weights of the fused kernels stale: the next call repacks them from the
        parameters (needed after changes the version counters do not see: ``.data`` edits, CUDA-graph
        replays of an optimizer step)."""
        cached = self.__dict__.get("_fused_p_cache")
        if cached is not None:
            self.__dict__["_fused_p_cache"] = (None, cached[1])
        passes = self.__dict__.get("_fused_passes_cache")
        if passes is not None:
            passes[0] = None
        for name in ("_p_nonfinite", "_sampler_nonfinite"):  # the parameter checks of sample_p and the samplers
            self.__dict__.pop(name, None)

    @torch.no_grad()
    def sample_p(self, n: int, *, seed=None, offset: int = 0, return_hidden: bool = False, return_log_p: bool = False,
                 out_dtype: torch.dtype | None = None):
        """Ancestral samples of p (SPEC §4), in chunks of ``chunk_rows``.

        On the Triton backend every chunk is one launch of the fused whole-network sampler
        (:mod:`bihm_triton.kernels.chain`), which draws from the same stream as the per-layer path:
        the samples agree except where a last-bit difference of a logit flips a draw (and
        weight-normalized layers use the explicit ``g·v/‖v‖`` there). It does not synchronize with
        the host: with a CUDA seed tensor the call can be captured in a CUDA graph.

        Args:
            n: number of samples. seed, offset: the random stream (the p pass of the reference).
            return_hidden: also return the hidden states and log p(x, h) as a
                :class:`~bihm_triton.reference.PSample`.
            return_log_p: return ``(x, log_p)`` (without the hidden states). When neither is asked
                for, the fused sampler skips the log-likelihood work.
            out_dtype: dtype of the states (default the model's; ``torch.uint8`` writes 1 byte per unit).

        Returns:
            x (n, d_0); or ``(x, log_p (n,) float32)``; or a :class:`~bihm_triton.reference.PSample`
            (x, hidden [h_1 … h_L] each (n, d_l), log_p (n,) float32).

        Warns:
            RuntimeWarning: p's parameters hold NaN (or infinite weights): units with NaN logits are
                sampled as 0 and log p is NaN (checked once per change of the parameters).
        """
        check_positive_int(n, "n")
        seed = self._seed(seed, offset)
        out_dtype = out_dtype or self.dtype
        want_lp = return_hidden or return_log_p
        x, hidden, log_p = self._fused(
            "sampler", lambda: self._sample_p_fused(n, seed, offset, return_hidden, want_lp, out_dtype),
            lambda: self._sample_p_layers(n, seed, offset, out_dtype))
        # both paths refreshed the check of p's parameters when they changed (no device read otherwise)
        warn_nonfinite_samples(self.__dict__.get("_p_nonfinite", (None, []))[1], "sample_p")
        if return_hidden:
            return ref.PSample(x, hidden, log_p)
        if return_log_p:
            return x, log_p
        return x

    def _sample_p_fused(self, n, seed, offset, return_hidden, want_lp, out_dtype):
        chain = self._fused_p_chain()
        plan, dev = chain.plan, chain.device
        x = torch.empty((n, self.sizes[0]), device=dev, dtype=out_dtype)
        log_p = torch.empty(n, device=dev, dtype=torch.float32) if want_lp else None
        hidden = torch.empty(n * plan.hidden_width, device=dev, dtype=out_dtype) if return_hidden else None
        for r0 in range(0, n, self.chunk_rows):
            chain.launch(min(self.chunk_rows, n - r0), final=x, log_prob=log_p, seed=seed, offset=offset,
                         total_rows=n, row0=r0, hidden=hidden)
        states = None
        if return_hidden:  # regions in drawing order: h_L first, h_1 last
            states = [hidden[n * L.hoff:n * (L.hoff + L.M)].view(n, L.M) for L in plan.layers[:-1]][::-1]
        return x, states, log_p

    def _sample_p_layers(self, n, seed, offset, out_dtype):
        key = _params_key([self.p_top, *list(self.p_layers._modules.values())[::-1]])
        if self.__dict__.get("_p_nonfinite", (None,))[0] != key:
            self.__dict__["_p_nonfinite"] = (key, self._nonfinite_p())
        parts = []
        for r0 in range(0, n, self.chunk_rows):
            parts.append(self.p_pass(min(self.chunk_rows, n - r0), seed, offset, total_rows=n, row_start=r0))

        def joined(l: int) -> torch.Tensor:  # one chunk: no copy beyond the dtype conversion
            chunks = [p[0][l] for p in parts]
            return (chunks[0] if len(chunks) == 1 else torch.cat(chunks)).to(out_dtype)

        log_p = parts[0][1] if len(parts) == 1 else torch.cat([p[1] for p in parts])
        return joined(0), [joined(l) for l in range(1, len(self.sizes))], log_p

    def gibbs_sample(self, n: int, steps: int, k: int = 10, **kwargs) -> samplers.GibbsResult:
        """Block Gibbs samples of p*(x, h): exact by default (see :func:`bihm_triton.samplers.gibbs_sample`)."""
        return samplers.gibbs_sample(self, n, steps, k, **kwargs)

    def sir_sample(self, n: int, oversample: int = 100, n_inner: int = 1, **kwargs) -> samplers.SIRResult:
        """Sampling–importance–resampling from p* (see :func:`bihm_triton.samplers.sir_sample`)."""
        return samplers.sir_sample(self, n, oversample, n_inner, **kwargs)

    def inpaint(self, x: torch.Tensor, mask: torch.Tensor, steps: int, k: int = 10, **kwargs) -> samplers.GibbsResult:
        """Fill in unobserved pixels by Gibbs sampling with the observed ones clamped (see
        :func:`bihm_triton.samplers.inpaint`). mask: (B, d_0) bool, True = observed."""
        return samplers.inpaint(self, x, mask, steps, k, **kwargs)

    # ------------------------------------------------------------ checkpoints
    def config(self) -> dict:
        """Architecture as a JSON-able dict: what :meth:`from_config` needs."""
        return {"sizes": list(self.sizes), "weight_norm": self.weight_norm,
                "dtype": str(self.dtype).replace("torch.", "")}

    @classmethod
    def from_config(cls, config: dict, **kwargs) -> "BiHM":
        """A freshly initialized model of the architecture in ``config`` (see :meth:`config`); kwargs go to ``__init__``."""
        return cls(config["sizes"], weight_norm=config["weight_norm"], dtype=getattr(torch, config["dtype"]),
                   **kwargs)

    def check_compatible(self, state_dict: dict, config: dict | None = None) -> None:
        """Raise ValueError unless ``state_dict`` (and ``config``) fit this architecture, naming the first mismatch."""
        if config is not None and (list(config["sizes"]) != self.sizes
                                   or bool(config["weight_norm"]) != self.weight_norm):
            raise ValueError(f"checkpoint is for sizes={config['sizes']}, weight_norm={config['weight_norm']}; "
                             f"this model has sizes={self.sizes}, weight_norm={self.weight_norm}")
        own = self.state_dict()
        for name, t in own.items():
            if name not in state_dict:
                raise ValueError(f"checkpoint lacks parameter {name!r} {tuple(t.shape)}")
            if tuple(state_dict[name].shape) != tuple(t.shape):
                raise ValueError(f"checkpoint parameter {name!r} has shape {tuple(state_dict[name].shape)}, "
                                 f"model expects {tuple(t.shape)}")
        extra = sorted(set(state_dict) - set(own))
        if extra:
            raise ValueError(f"checkpoint has parameters this model lacks: {extra[:5]}")

    def save(self, path: str | os.PathLike) -> None:
        """Write the weights to ``path`` (safetensors, the config in its metadata), atomically."""
        from .checkpoint import save_safetensors_atomic

        save_safetensors_atomic({k: v.detach() for k, v in self.state_dict().items()}, path,
                                metadata={"config": json.dumps(self.config())})

    @classmethod
    def load(cls, path: str | os.PathLike, *, device=None, **kwargs) -> "BiHM":
        """A model rebuilt from a file written by :meth:`save`, a trainer checkpoint, or a run
        directory (its ``best.safetensors``); kwargs (backend, chunk_rows) go to ``__init__``.

        Raises:
            FileNotFoundError: nothing at ``path``. ValueError: not a BiHM checkpoint, or corrupt.
        """
        from .checkpoint import read_safetensors

        if os.path.isdir(path):
            path = os.path.join(path, "best.safetensors")
        tensors, metadata = read_safetensors(path)
        if "config" not in metadata:
            raise ValueError(f"{path} has no BiHM config in its metadata; was it written by BiHM.save?")
        model = cls.from_config(json.loads(metadata["config"]), device=device, **kwargs)
        weights = {k: v for k, v in tensors.items() if not k.startswith("trainer.")}
        model.check_compatible(weights)
        model.load_state_dict(weights)
        return model
