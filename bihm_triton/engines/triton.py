"""The Triton engine: the network-specialized kernels of :mod:`bihm_triton.kernels` behind the engine interface
(:class:`~.base.LayerEngine`), each path falling back to the layer engine where its kernels fail to compile."""

from __future__ import annotations

import contextlib
import functools
import sys
import warnings

import torch

from .. import reference as ref
from ..reference import RandomStream
from ..reference.philox import aligned_start, check_draw_fits
from .base import LayerEngine, params_key

__all__ = ["TritonEngine", "fused_path"]

#: (path, backend) pairs already warned about in this process
_WARNED: set = set()
_PASS_THROUGH = ("bihm_triton", "torch", "contextlib", "functools")


def _is_compile_failure(e: Exception) -> bool:
    """A Triton compilation error or an out-of-resources launch (shared memory, registers)."""
    return type(e).__name__ in ("CompilationError", "OutOfResources", "CompileTimeAssertionFailure")


def _warn_at_caller(message: str) -> None:
    """Warn at the first frame outside the package (and torch's and the standard library's decorators around its
    methods): the user's line that reached the path."""
    frame, level = sys._getframe(0), 1
    while frame is not None and str(frame.f_globals.get("__name__", "")).split(".")[0] in _PASS_THROUGH:
        frame, level = frame.f_back, level + 1
    warnings.warn(message, RuntimeWarning, stacklevel=level)


def fused_path(name: str, *, also: tuple = ()):
    """Decorate an engine method whose body runs fused kernels (the path ``name``). On a compile failure (a
    Triton compilation error, out of resources) the path is marked failed on the engine, one warning per
    (path, backend) and process names it at the user's line, the random stream given to the method (a
    :class:`~bihm_triton.reference.RandomStream` argument) is put back where it was, and
    :class:`~.base.LayerEngine`'s method of the same name runs with the same arguments; it runs directly from
    then on, and also when a path in ``also`` failed. Other errors propagate."""
    def decorate(method):
        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            fallback = getattr(LayerEngine, method.__name__)
            if name in self.failed or any(a in self.failed for a in also):
                return fallback(self, *args, **kwargs)
            stream = next((a for a in (*args, *kwargs.values()) if isinstance(a, RandomStream)), None)
            start = None if stream is None else stream.offset
            try:
                return method(self, *args, **kwargs)
            except Exception as e:  # noqa: BLE001 - a compiler failure on an untested GPU/Triton pair
                if not _is_compile_failure(e):
                    raise
                self.failed[name] = repr(e)
                if (name, self.name) not in _WARNED:
                    _WARNED.add((name, self.name))
                    first = str(e).splitlines()[0] if str(e) else ""
                    _warn_at_caller(f"the fused {name} kernels failed to compile for this network "
                                    f"({type(e).__name__}: {first}); running layer by layer instead")
                if stream is not None:
                    stream.offset = start  # the layer engine takes the same draws from the same position
                return fallback(self, *args, **kwargs)
        return wrapper
    return decorate


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
    def _pass_layers(self) -> list:
        m = self.model
        return [*m.q_layers, *m.p_layers, m.p_top]

    def passes(self, pack: bool):
        """The fused log-weight passes (:class:`bihm_triton.kernels.passes.FusedPasses`), cached; with ``pack``
        the weights are repacked when a parameter changed."""
        from ..kernels.passes import FusedPasses

        m = self.model
        if self._passes is None or self._passes[1].device != m.device:
            self._passes = [None, FusedPasses(m.sizes, m.device)]
        if pack and not self._fixed:
            layers = self._pass_layers()
            key = params_key(layers)
            if self._passes[0] != key:
                self._passes[1].pack([l.weight for l in layers], [l.bias for l in layers])
                self._passes[0] = key
            if self._fixed is False:
                self._fixed = True
        return self._passes[1]

    def p_chain(self):
        """The p network packed for the fused sampler (:class:`bihm_triton.kernels.chain.FusedChain`), cached
        and repacked only when a parameter changed (``data_ptr`` and autograd's ``_version`` counter)."""
        from ..kernels.chain import FusedChain

        m = self.model
        order = [m.p_top, *list(m.p_layers._modules.values())[::-1]]  # (ModuleList indexing is slow)
        key = params_key(order)
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
    @fused_path("sampler")
    def sample_p(self, n, seed, offset, row_start, return_hidden, want_lp, out_dtype):
        """The whole p pass in one launch per chunk of ``chunk_rows`` (:mod:`bihm_triton.kernels.chain`)."""
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

    def uniform(self, seed, offset, rows, cols):
        from ..kernels.philox import philox_uniform

        return philox_uniform(seed, offset, rows, cols, device=self.model.device)

    # ------------------------------------------------------------ log-weights
    @fused_path("passes")
    def log_weights(self, x, k, seed, offset, row_start):
        """One fused forward launch and a two-launch backward (:mod:`bihm_triton.kernels.passes`); the states
        are not returned (None)."""
        m = self.model
        layers = self._pass_layers()
        a0, s = aligned_start(row_start * k)
        pts = -(-s // k)  # data points in front of x that the leading rows of an unaligned start read
        log_p, log_q = _FusedLogWeights.apply(self.passes(pack=False), ref.bihm.pad_rows(x, pts), k,
                                              x.shape[0] * k + s, seed, offset, a0, row_start - pts,
                                              len(layers), *[l.weight for l in layers], *[l.bias for l in layers])
        return log_p[s:].to(m.dtype).view(-1, k), log_q[s:].to(m.dtype).view(-1, k), None

    @fused_path("passes")
    def chunk_log_weights(self, x, k, rows, seed, offset, row_start, x_row0):
        m = self.model
        log_p, log_q, _ = self.passes(pack=True).forward(x, rows, seed=seed, offset=offset, row0=row_start,
                                                         in_repeat=k, in_row0=x_row0)
        return log_p.to(m.dtype), log_q.to(m.dtype)

    # ------------------------------------------------------------------ Gibbs
    @fused_path("gibbs")
    def gibbs_hidden(self, states, l, k, paper, stream):
        """The exact update of h_l in one launch (:mod:`bihm_triton.kernels.gibbs`), drawing the reference's
        stream; the paper's update and odd K (the fused update takes whole Philox row groups per chain) run on
        the layer engine."""
        if paper or k % 2:
            return LayerEngine.gibbs_hidden(self, states, l, k, paper, stream)
        from ..kernels.chain import precision_terms
        from ..kernels.gibbs import gibbs_hidden_update

        m = self.model
        passes = self.passes(pack=True)
        plan, L, top = passes.plan, m.n_layers, l == m.n_layers
        plans = {"q": plan.q[l - 1], "p": plan.p[L] if top else plan.p[l], "down": plan.p[l - 1],
                 "up": None if top else plan.q[l]}
        R, N, d = states[0].shape[0], 2 * k, m.sizes[l]
        check_draw_fits(R * N, d)
        offsets = (stream.take(), stream.take(), stream.take(), stream.take())  # from p, from q, coin, choice
        return gibbs_hidden_update(passes.weights, plans, l, top, states, k, seed=stream.seed, offsets=offsets,
                                   terms=precision_terms())

    @fused_path("gibbs_x", also=("passes",))  # the x update rides on the fused passes
    def gibbs_x(self, states, log_s, k, n_inner, paper, stream, mask, x_obs):
        """The update of x in three launches (:func:`bihm_triton.kernels.gibbs.gibbs_x_update`), drawing the
        reference's stream."""
        from ..kernels.chain import precision_terms
        from ..kernels.gibbs import gibbs_x_update

        m = self.model
        passes = self.passes(pack=True)
        check_draw_fits(states[0].shape[0] * k * n_inner, max(m.sizes))
        off_cand = stream.take()
        off_inner = stream.take(m.n_layers)  # the inner q pass
        off_choice = stream.take()
        new, new_s = gibbs_x_update(passes.weights, {"p": passes.plan.p[0], "q": passes.plan.q[0]}, passes,
                                    states, log_s, k, n_inner, seed=stream.seed,
                                    offsets=(off_cand, off_inner, off_choice), terms=precision_terms(),
                                    exact=not paper, mask=mask, x_obs=x_obs)
        return new.to(m.dtype), new_s.to(m.dtype)
