"""The fast paths of a :class:`~bihm_triton.model.BiHM`, one engine per backend (SPEC §2–5).

An engine provides what the model's public methods run on: the whole-network ancestral sampler,
the log-weight passes of the estimators and the training loss (forward and backward), the Gibbs
updates, and the stream's uniforms. The model chooses its engine once per backend, device and
dtype (:func:`engine_for`), so its methods read the same whatever runs them:

* :class:`LayerEngine` — the reference's layer-by-layer formulas on the model's two stochastic
  primitives (``layer_sample``, ``layer_log_prob``, which dispatch to :mod:`bihm_triton.ops`);
  the fallback of every other engine and the engine of the reference backend.
* :class:`CpuEngine` — the layer engine on the CPU backend's ops (matmul by BLAS, then one fused C
  pass per layer: :mod:`bihm_triton.kernels.cpu`), with the stream's uniforms from the same C code.
* :class:`TritonEngine` — the network-specialized Triton kernels: one launch for the whole p
  pass (:mod:`bihm_triton.kernels.chain`), one for the log-weights of K samples per point and two
  for their backward (:mod:`bihm_triton.kernels.passes`), one per hidden Gibbs update and three
  per x update (:mod:`bihm_triton.kernels.gibbs`). A path whose kernels fail to compile warns once
  and runs on the layer engine from then on.

Every engine draws the same stream (SPEC §5, version 2): the same ``(seed, offset, row_start)``
gives the same samples on all of them, up to the rounding of σ(a) at the last bit.
"""

from __future__ import annotations

import contextlib
import math
import warnings

import torch

from . import ops
from . import reference as ref
from .reference.bihm import WeightNormStochasticLayer, layer_input
from .reference.philox import aligned_start, check_draw_fits, draw_offset

__all__ = ["LayerEngine", "CpuEngine", "TritonEngine", "engine_for"]


class LayerEngine:
    """Layer by layer, on the model's stochastic primitives: the reference's formulas (the fallback).

    Methods that return None mean "not available on this engine": the caller runs the reference
    code (the samplers' Gibbs updates).
    """

    name = "layers"

    def __init__(self, model):
        self.model = model

    # ---------------------------------------------------------------- sampling
    def sample_p(self, n: int, seed, offset: int, row_start: int, return_hidden: bool, want_lp: bool,
                 out_dtype: torch.dtype):
        """Ancestral samples ``row_start … row_start + n − 1`` of p: ``(x (n, d_0), hidden [h_1 … h_L] or None,
        log p (n,) or None)`` in row chunks of ``model.chunk_rows``."""
        m = self.model
        parts = []
        for r0 in range(0, n, m.chunk_rows):
            parts.append(ref.BiHM.p_pass(m, min(m.chunk_rows, n - r0), seed, offset, row_start=row_start + r0))

        def joined(l: int) -> torch.Tensor:  # one chunk: no copy beyond the dtype conversion
            chunks = [p[0][l] for p in parts]
            return (chunks[0] if len(chunks) == 1 else torch.cat(chunks)).to(out_dtype)

        log_p = parts[0][1] if len(parts) == 1 else torch.cat([p[1] for p in parts])
        return joined(0), [joined(l) for l in range(1, len(m.sizes))], log_p

    def uniform(self, seed, offset: int, rows: int, cols: int) -> torch.Tensor:
        """The (rows, cols) uniforms of a draw (the samplers' coin and resampling draws)."""
        return ref.philox_uniform(seed, offset, rows, cols, device=self.model.device)

    # ------------------------------------------------------------ log-weights
    def log_weights(self, x: torch.Tensor, k: int, seed, offset: int, row_start: int):
        """``(log p(x, h), log q(h | x), states)``: (B, K) each, differentiable in every parameter; states
        ``[x, h_1 …]`` of the B·K rows, or None where an engine does not materialize them."""
        return ref.BiHM._log_weights_and_states(self.model, x, k, seed, offset, row_start)

    def chunk_log_weights(self, x: torch.Tensor, k: int, rows: int, seed, offset: int, row_start: int, x_row0: int):
        """``(log p, log q)`` (rows,) of q-pass rows ``row_start …`` (a multiple of 4), row r reading data point
        ``x[r // k − x_row0]`` (no gradient needed)."""
        return ref.BiHM._aligned_chunk_log_weights(self.model, x, k, rows, seed, offset, row_start=row_start,
                                                   x_row0=x_row0)

    # ------------------------------------------------------------------ Gibbs
    def gibbs_hidden(self, states, l: int, k: int, stream):
        """The new h_l of the exact block-Gibbs update, or None (the sampler's reference code runs)."""
        return None

    def gibbs_x(self, states, log_s, k: int, n_inner: int, paper: bool, stream, mask, x_obs):
        """``(new x, its log Ŝ)`` of the block-Gibbs update of x, or None (the reference code runs)."""
        return None

    # ------------------------------------------------------------ bookkeeping
    @contextlib.contextmanager
    def parameters_fixed(self):
        """Within: the parameters do not change (a sampler's own loop)."""
        yield

    def refresh(self) -> None:
        """Forget cached copies of the parameters (after edits the autograd version counters do not see)."""


def _layer_logits(layer, h: torch.Tensor) -> torch.Tensor:
    """float32 logits ``a = z·Wᵀ + b`` (R, M) of a layer for inputs h (R, N), differentiable: z is h (or an MLP
    layer's hidden activations), W the effective weight (``g·v/‖v‖`` when weight-normalized)."""
    if isinstance(layer, WeightNormStochasticLayer):
        return ops._cpu_logits(h, layer.weight_v, layer.bias, layer.weight_g)
    return ops._cpu_logits(layer_input(layer, h), layer.weight, layer.bias, None)


class CpuEngine(LayerEngine):
    """The layer engine on the CPU backend (:mod:`bihm_triton.kernels.cpu`): every layer is ``F.linear`` then
    one fused C pass; the stream's uniforms come from the same C code.

    Where several draws share one row's logits, they are computed once and repeated instead of multiplying
    repeated rows (the draws and their order are the reference's, so the samples are too):

    * the first q layer of the log-weight passes (training, estimators): K samples per data point share
      ``q(h_1 | x)``'s logits (the layer with the most inputs: 784 × 300 of the 12-layer MNIST net);
    * the Gibbs updates: the 2K candidates of a hidden layer share both proposals' logits, the K
      candidates of x share ``p(x | h_1)``'s, and each candidate's proposal log-likelihoods are scored
      on those logits (no second matmul).
    """

    name = "cpu"

    #: Rows of the ancestral sampler's blocks: every layer of a block stays in cache between its matmul and its
    #: pass, and the block's buffers are reused (a new large tensor costs a page fault per 4 KiB: a third of the
    #: time of ``sample_p(20000)`` unblocked). A multiple of 4 (a Philox row group).
    SAMPLE_BLOCK = 2048

    def uniform(self, seed, offset: int, rows: int, cols: int) -> torch.Tensor:
        from .kernels import cpu

        return cpu.uniform(seed, offset, rows, cols)

    @torch.no_grad()
    def sample_p(self, n, seed, offset, row_start, return_hidden, want_lp, out_dtype):
        """The reference's p pass (the same draws) in blocks of :attr:`SAMPLE_BLOCK` rows through the whole network:
        each layer's logits by BLAS, then the fused pass writing x straight into the output."""
        from .kernels import cpu

        m = self.model
        a0, s = aligned_start(row_start)
        n_al = n + s  # an unaligned start: the s rows before it in its Philox row group are drawn, then dropped
        widths = m.sizes[::-1]  # the prior h_L first, x last
        layers = [m.p_top, *list(m.p_layers._modules.values())[::-1]]
        native = out_dtype in (torch.float32, torch.uint8, torch.bool)
        x = torch.empty((n_al, m.sizes[0]), dtype=out_dtype)
        hidden = [torch.empty((n_al, d), dtype=out_dtype) for d in m.sizes[1:]] if return_hidden else None
        log_p = torch.zeros(n_al, dtype=torch.float32) if want_lp else None
        block = min(self.SAMPLE_BLOCK, n_al)
        bufs = [torch.empty((block, d), dtype=torch.float32) for d in widths[:-1]]
        lp_buf = torch.empty(block, dtype=torch.float32)
        prior = m.p_top.logits.detach().to(torch.float32)
        for r0 in range(0, n_al, block):
            r = min(block, n_al - r0)
            h = None
            for i, (layer, d) in enumerate(zip(layers, widths)):
                a = prior.expand(r, d).contiguous() if i == 0 else _layer_logits(layer, h)
                last = i == len(widths) - 1
                if last and native:
                    dst = x[r0:r0 + r]
                elif not last and return_hidden and out_dtype == torch.float32:
                    dst = hidden[-1 - i][r0:r0 + r]
                else:
                    dst = bufs[i][:r] if not last else torch.empty((r, d), dtype=torch.float32)
                cpu.sample(a, seed, draw_offset(offset, i, a0 + r0, d), want_lp=want_lp, out=dst,
                           lp_out=lp_buf[:r] if want_lp else None)
                if want_lp:
                    log_p[r0:r0 + r] += lp_buf[:r]
                if last and not native:
                    x[r0:r0 + r] = dst
                elif not last and return_hidden and dst.data_ptr() != hidden[-1 - i][r0:r0 + r].data_ptr():
                    hidden[-1 - i][r0:r0 + r] = dst
                h = dst
        return x[s:], ([t[s:] for t in hidden] if return_hidden else None), (log_p[s:] if want_lp else None)

    def _q_pass_from(self, a1: torch.Tensor, seed, offset: int, row_start: int):
        """The q pass of rows ``row_start …`` (a multiple of 4) given the first q layer's logits a1 (rows, d_1):
        ``(states [h_1 … h_L], log q (rows,))``, differentiable where a1 and the parameters are."""
        m = self.model
        h, log_q = ops.cpu_sample_logits(a1, seed, draw_offset(offset, 0, row_start, m.sizes[1]), m.dtype)
        states = [h]
        for l in range(1, m.n_layers):
            d = m.sizes[l + 1]
            h, lq = m.layer_sample(m.q_layers[l], states[-1], seed, draw_offset(offset, l, row_start, d))
            states.append(h)
            log_q = log_q + lq
        return states, log_q

    def log_weights(self, x, k, seed, offset, row_start):
        m = self.model
        a0, s = aligned_start(row_start * k)
        rows = x.shape[0] * k
        for d in m.sizes[1:]:
            check_draw_fits(row_start * k + rows, d, "the q pass")
        a1 = _layer_logits(m.q_layers[0], x).repeat_interleave(k, dim=0)  # one matmul per data point
        hidden, log_q = self._q_pass_from(ref.bihm.pad_rows(a1, s), seed, offset, a0)
        states = [x.repeat_interleave(k, dim=0), *(h[s:] for h in hidden)]
        log_p = m.log_p_joint(states)
        return log_p.view(-1, k), log_q[s:].view(-1, k), states

    @torch.no_grad()
    def chunk_log_weights(self, x, k, rows, seed, offset, row_start, x_row0):
        """The reference's q pass and log p(x, h) (the same draws) in blocks of :attr:`SAMPLE_BLOCK` rows: the first
        q layer's logits once per data point, every other layer's by BLAS on the block, then the fused pass
        (draws and log q) or the score pass (log p, x scored as bytes); the block's buffers are reused."""
        from .kernels import cpu

        m = self.model
        L = m.n_layers
        b_lo, b_hi = row_start // k - x_row0, (row_start + rows - 1) // k - x_row0
        a1_points = _layer_logits(m.q_layers[0], x[b_lo:b_hi + 1])  # one matmul per data point of the chunk
        x_u8 = (x[b_lo:b_hi + 1] != 0).to(torch.uint8)
        prior = m.p_top.logits.detach().to(torch.float32)
        log_p, log_q = torch.empty(rows, dtype=torch.float32), torch.empty(rows, dtype=torch.float32)
        block = min(self.SAMPLE_BLOCK, rows)
        bufs = [torch.empty((block, d), dtype=torch.float32) for d in m.sizes[1:]]
        lp = torch.empty(block, dtype=torch.float32)
        for r0 in range(0, rows, block):
            r = min(block, rows - r0)
            b = torch.arange(row_start + r0, row_start + r0 + r) // k - x_row0 - b_lo
            states = [x_u8[b]]
            for l in range(L):
                a = a1_points[b] if l == 0 else _layer_logits(m.q_layers[l], states[-1])
                cpu.sample(a, seed, draw_offset(offset, l, row_start + r0, m.sizes[l + 1]), out=bufs[l][:r],
                           lp_out=lp[:r])
                states.append(bufs[l][:r])
                if l == 0:
                    log_q[r0:r0 + r] = lp[:r]
                else:
                    log_q[r0:r0 + r] += lp[:r]
            # log p(x, h) in log_p_joint's order: the prior, then p(h_l | h_{l+1}) for l = 0 … L − 1
            log_p[r0:r0 + r] = cpu.score(prior.expand(r, m.sizes[-1]).contiguous(), states[-1])[0]
            for l in range(L):
                log_p[r0:r0 + r] += cpu.score(_layer_logits(m.p_layers[l], states[l + 1]), states[l])[0]
        return log_p.to(m.dtype), log_q.to(m.dtype)

    def gibbs_hidden(self, states, l, k, stream):
        """The exact update of h_l as :func:`bihm_triton.samplers._update_hidden`, the proposals' logits computed
        once per chain and the candidates scored on them."""
        from .kernels import cpu
        from .samplers import _resample_hidden

        m = self.model
        R, N, d, top = states[0].shape[0], 2 * k, m.sizes[l], l == m.n_layers
        a_p = (m.p_top.logits.to(torch.float32).expand(R, d) if top else _layer_logits(m.p_layers[l], states[l + 1]))
        a_p = a_p.repeat_interleave(N, dim=0).contiguous()
        a_q = _layer_logits(m.q_layers[l - 1], states[l - 1]).repeat_interleave(N, dim=0).contiguous()
        check_draw_fits(R * N, d)
        from_p = cpu.sample(a_p, stream.seed, stream.take(), out_dtype=m.dtype, want_lp=False)[0]
        from_q = cpu.sample(a_q, stream.seed, stream.take(), out_dtype=m.dtype, want_lp=False)[0]
        return _resample_hidden(m, states, l, k, False, stream, from_p, from_q,
                                lambda cand: (cpu.score(a_p, cand)[0], cpu.score(a_q, cand)[0]))

    def gibbs_x(self, states, log_s, k, n_inner, paper, stream, mask, x_obs):
        """The update of x as :func:`bihm_triton.samplers._update_x`, ``p(x | h_1)``'s logits computed once per
        chain and reused for the candidates' proposal log-likelihoods."""
        from .kernels import cpu
        from .samplers import _resample_x

        m = self.model
        a_p = _layer_logits(m.p_layers[0], states[1]).repeat_interleave(k, dim=0).contiguous()
        check_draw_fits(a_p.shape[0], m.sizes[0])
        cand = cpu.sample(a_p, stream.seed, stream.take(), out_dtype=m.dtype, want_lp=False)[0]
        return _resample_x(m, states, log_s, k, n_inner, paper, stream, mask, x_obs, cand,
                           lambda c: cpu.score(a_p, c)[0].to(m.dtype))


def _params_key(modules) -> tuple:
    """Identity, storage and autograd version of every parameter of ``modules``: changes whenever a
    parameter is replaced, re-pointed (``.data = …``) or updated in place through autograd-visible ops."""
    return tuple((id(p), p.data_ptr(), p._version) for m in modules for p in m._parameters.values() if p is not None)


def _is_compile_failure(e: Exception) -> bool:
    """A Triton compilation error or an out-of-resources launch (shared memory, registers)."""
    return type(e).__name__ in ("CompilationError", "OutOfResources", "CompileTimeAssertionFailure")


class _FusedLogWeights(torch.autograd.Function):
    """log p(x, h), log q(h | x) (R,) of the fused pass, with the fused two-launch backward.

    Inputs after the fixed ones: the packed layers' weights, then their biases (q layers, p layers,
    the prior); the weights are packed on every forward (so a CUDA graph replays the packing too).
    """

    @staticmethod
    def forward(ctx, passes, x, k, rows, seed, offset, row0, in_row0, n_layers, *tensors):
        weights, biases = tensors[:n_layers], tensors[n_layers:]
        passes.pack(weights, biases)
        log_p, log_q, st = passes.forward(x, rows, seed=seed, offset=offset, row0=row0, in_repeat=k, in_row0=in_row0)
        ctx.passes, ctx.k, ctx.n_layers, ctx.rows, ctx.row0, ctx.in_row0 = passes, k, n_layers, rows, row0, in_row0
        ctx.shapes = [(t.shape, t.dtype) for t in tensors]
        ctx.save_for_backward(x, st)
        return log_p, log_q

    @staticmethod
    def backward(ctx, grad_log_p, grad_log_q):
        x, st = ctx.saved_tensors
        zeros = x.new_zeros(ctx.rows, dtype=torch.float32)
        grads = ctx.passes.backward(x, st, ctx.rows, zeros if grad_log_p is None else grad_log_p,
                                    zeros if grad_log_q is None else grad_log_q, row0=ctx.row0, in_repeat=ctx.k,
                                    in_row0=ctx.in_row0)
        n = ctx.n_layers
        out_w = [None if 0 in shape else dw.to(dtype) for (dw, _), (shape, dtype) in zip(grads, ctx.shapes[:n])]
        out_b = [db.to(dtype) for (_, db), (_, dtype) in zip(grads, ctx.shapes[n:])]
        return (None,) * 9 + (*out_w, *out_b)


class TritonEngine(LayerEngine):
    """The network-specialized Triton kernels (module docstring). Packed weights are cached and repacked when
    a parameter changes (autograd's version counters); :meth:`refresh` after edits they do not see."""

    name = "triton"

    def __init__(self, model):
        super().__init__(model)
        self.failed: dict = {}  # path name -> the compile error that sent it to the layer engine
        self._chain = None  # (params key, FusedChain) of the p network
        self._passes = None  # [params key, FusedPasses]
        self._fixed = None  # None outside a sampler run; False/True (packed) inside one

    # ------------------------------------------------------------ the kernels
    def _run(self, name: str, fused, fallback):
        """``fused()``; on a compile failure warn once and use ``fallback()`` from then on."""
        if name not in self.failed:
            try:
                return fused()
            except Exception as e:  # noqa: BLE001 - a compiler failure on an untested GPU/Triton pair
                if not _is_compile_failure(e):
                    raise
                warnings.warn(f"the fused {name} kernels failed to compile for this network ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); running layer by layer instead",
                              RuntimeWarning, stacklevel=5)
                self.failed[name] = repr(e)
        return fallback()

    def _pass_layers(self) -> list:
        m = self.model
        return [*m.q_layers, *m.p_layers, m.p_top]

    def passes(self, pack: bool):
        """The fused log-weight passes (:class:`bihm_triton.kernels.passes.FusedPasses`), cached; with ``pack``
        the weights are repacked when a parameter changed."""
        from .kernels.passes import FusedPasses

        m = self.model
        if self._passes is None or self._passes[1].device != m.device:
            self._passes = [None, FusedPasses(m.sizes, m.device)]
        if pack and not self._fixed:
            layers = self._pass_layers()
            key = _params_key(layers)
            if self._passes[0] != key:
                self._passes[1].pack([l.weight for l in layers], [l.bias for l in layers])
                self._passes[0] = key
            if self._fixed is False:
                self._fixed = True
        return self._passes[1]

    def p_chain(self):
        """The p network packed for the fused sampler (:class:`bihm_triton.kernels.chain.FusedChain`), cached
        and repacked only when a parameter changed (``data_ptr`` and autograd's ``_version`` counter)."""
        from .kernels.chain import FusedChain

        m = self.model
        order = [m.p_top, *list(m.p_layers._modules.values())[::-1]]  # (ModuleList indexing is slow)
        key = _params_key(order)
        if self._chain is not None and self._chain[0] == key:
            return self._chain[1]
        weights, biases = [l.weight for l in order], [l.bias for l in order]
        if self._chain is not None and self._chain[1].device == m.device:
            chain = self._chain[1]
            chain.pack(weights, biases)
        else:
            chain = FusedChain(weights, biases)
        self._chain = (key, chain)
        return chain

    def refresh(self) -> None:
        if self._chain is not None:
            self._chain = (None, self._chain[1])
        if self._passes is not None:
            self._passes[0] = None

    @contextlib.contextmanager
    def parameters_fixed(self):
        """Within: the parameters do not change (a sampler's own loop), so the packed weights are checked once
        instead of at every layer update (host time per sweep)."""
        if self._fixed is not None:  # nested: the outer one holds
            yield
            return
        self._fixed = False
        try:
            yield
        finally:
            self._fixed = None

    # ---------------------------------------------------------------- sampling
    def sample_p(self, n, seed, offset, row_start, return_hidden, want_lp, out_dtype):
        def fused():
            chain = self.p_chain()
            plan, dev = chain.plan, chain.device
            a0, s = aligned_start(row_start)
            n_al = n + s  # an unaligned start: the s rows before it in its Philox row group are drawn, then dropped
            x = torch.empty((n_al, self.model.sizes[0]), device=dev, dtype=out_dtype)
            log_p = torch.empty(n_al, device=dev, dtype=torch.float32) if want_lp else None
            hidden = torch.empty(n_al * plan.hidden_width, device=dev, dtype=out_dtype) if return_hidden else None
            chunk = self.model.chunk_rows
            for r0 in range(0, n_al, chunk):
                chain.launch(min(chunk, n_al - r0), final=x, log_prob=log_p, seed=seed, offset=offset,
                             total_rows=n_al, row0=r0, hidden=hidden, stream_row0=a0)
            states = None
            if return_hidden:  # regions in drawing order: h_L first, h_1 last
                states = [hidden[n_al * L.hoff:n_al * (L.hoff + L.M)].view(n_al, L.M)[s:]
                          for L in plan.layers[:-1]][::-1]
            return x[s:], states, (log_p[s:] if want_lp else None)

        return self._run("sampler", fused,
                         lambda: super(TritonEngine, self).sample_p(n, seed, offset, row_start, return_hidden, want_lp,
                                                                    out_dtype))

    def uniform(self, seed, offset, rows, cols):
        from .kernels.philox import philox_uniform

        return philox_uniform(seed, offset, rows, cols, device=self.model.device)

    # ------------------------------------------------------------ log-weights
    def log_weights(self, x, k, seed, offset, row_start):
        """One fused forward launch and a two-launch backward (:mod:`bihm_triton.kernels.passes`); the states
        are not returned (None)."""
        m = self.model

        def fused():
            layers = self._pass_layers()
            a0, s = aligned_start(row_start * k)
            pts = -(-s // k)  # data points in front of x that the leading rows of an unaligned start read
            log_p, log_q = _FusedLogWeights.apply(self.passes(pack=False), ref.bihm.pad_rows(x, pts), k,
                                                  x.shape[0] * k + s, seed, offset, a0, row_start - pts,
                                                  len(layers), *[l.weight for l in layers],
                                                  *[l.bias for l in layers])
            return log_p[s:].to(m.dtype).view(-1, k), log_q[s:].to(m.dtype).view(-1, k), None

        return self._run("passes", fused, lambda: super(TritonEngine, self).log_weights(x, k, seed, offset, row_start))

    def chunk_log_weights(self, x, k, rows, seed, offset, row_start, x_row0):
        m = self.model

        def fused():
            log_p, log_q, _ = self.passes(pack=True).forward(x, rows, seed=seed, offset=offset, row0=row_start,
                                                             in_repeat=k, in_row0=x_row0)
            return log_p.to(m.dtype), log_q.to(m.dtype)

        return self._run("passes", fused, lambda: super(TritonEngine, self).chunk_log_weights(
            x, k, rows, seed, offset, row_start, x_row0))

    # ------------------------------------------------------------------ Gibbs
    def gibbs_hidden(self, states, l, k, stream):
        """The exact update of h_l in one launch (:mod:`bihm_triton.kernels.gibbs`), drawing the reference's
        stream; None for odd K (the fused update takes whole Philox row groups per chain)."""
        if k % 2 or "gibbs" in self.failed:
            return None
        m = self.model
        start = stream.offset

        def fused():
            from .kernels.chain import precision_terms
            from .kernels.gibbs import gibbs_hidden_update

            passes = self.passes(pack=True)
            plan, L, top = passes.plan, m.n_layers, l == m.n_layers
            plans = {"q": plan.q[l - 1], "p": plan.p[L] if top else plan.p[l], "down": plan.p[l - 1],
                     "up": None if top else plan.q[l]}
            R, N, d = states[0].shape[0], 2 * k, m.sizes[l]
            check_draw_fits(R * N, d)
            offsets = (stream.take(), stream.take(), stream.take(), stream.take())  # from p, from q, coin, choice
            return gibbs_hidden_update(passes.weights, plans, l, top, states, k, seed=stream.seed, offsets=offsets,
                                       terms=precision_terms())

        def reference_path():
            stream.offset = start  # nothing drawn: the caller's path takes the same draws
            return None

        return self._run("gibbs", fused, reference_path)

    def gibbs_x(self, states, log_s, k, n_inner, paper, stream, mask, x_obs):
        """The update of x in three launches (:func:`bihm_triton.kernels.gibbs.gibbs_x_update`), drawing the
        reference's stream."""
        if {"gibbs_x", "passes"} & self.failed.keys():
            return None  # the x update rides on the fused passes
        m = self.model
        start = stream.offset

        def fused():
            from .kernels.chain import precision_terms
            from .kernels.gibbs import gibbs_x_update

            passes = self.passes(pack=True)
            R, rows = states[0].shape[0], states[0].shape[0] * k
            check_draw_fits(rows * n_inner, max(m.sizes))
            off_cand = stream.take()
            off_inner = stream.take(m.n_layers)  # the inner q pass
            off_choice = stream.take()
            new, new_s = gibbs_x_update(passes.weights, {"p": passes.plan.p[0], "q": passes.plan.q[0]}, passes,
                                        states, log_s, k, n_inner, seed=stream.seed,
                                        offsets=(off_cand, off_inner, off_choice), terms=precision_terms(),
                                        exact=not paper, mask=mask, x_obs=x_obs)
            return new.to(m.dtype), new_s.to(m.dtype)

        def reference_path():
            stream.offset = start
            return None

        return self._run("gibbs_x", fused, reference_path)


def engine_for(model) -> LayerEngine:
    """The engine of ``model``'s backend, device and dtype: Triton's fused kernels (CUDA, or
    ``backend="triton"`` under the interpreter; float32), the CPU kernels (float32 CPU tensors), else the
    layer engine on the reference ops."""
    backend = ops.resolve_backend(model.backend, model.device, model.dtype)
    fused_ok = backend == "triton" and model.dtype != torch.float64 and (model.device.type == "cuda"
                                                                          or model.backend == "triton")
    if fused_ok and getattr(model, "deterministic_layers", 0):
        warnings.warn("the fused Triton kernels do not take deterministic layers yet: this model runs layer by layer "
                      "on the Triton ops", RuntimeWarning, stacklevel=3)
    elif fused_ok:
        return TritonEngine(model)
    if backend == "cpu":
        return CpuEngine(model)
    return LayerEngine(model)
