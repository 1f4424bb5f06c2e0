"""The layer engine: the reference path of every fast path (module :mod:`bihm_triton.engines`)."""

from __future__ import annotations

import contextlib

import torch

from .. import reference as ref
from . import gibbs

__all__ = ["LayerEngine", "params_key"]


class LayerEngine:
    """Layer by layer, on the model's stochastic primitives (``layer_sample``, ``layer_log_prob``): the
    reference's formulas for every path, the fallback of the other engines and the engine of the reference
    backend (and of a :class:`bihm_triton.reference.BiHM`, which has the same primitives).

    The interface every engine implements (a faster engine overrides a method and, where its kernels cannot
    run, calls this one with the same arguments): :meth:`sample_p`, :meth:`uniform`, :meth:`log_weights`,
    :meth:`chunk_log_weights`, :meth:`gibbs_hidden`, :meth:`gibbs_x`, :meth:`parameters_fixed`,
    :meth:`refresh`. Each draws the SPEC §5 stream exactly as the reference does.
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
    def gibbs_hidden(self, states, l: int, k: int, paper: bool, stream):
        """The new h_l (R, d_l) of the block-Gibbs update (SPEC §4): 2K proposals per chain from p(h_l | h_l+1)
        and q(h_l | h_l-1), scored layer by layer, resampled by :func:`.gibbs.resample_hidden`."""
        m = self.model
        N = 2 * k
        top = l == m.n_layers
        p_layer = m.p_top if top else m.p_layers[l]
        p_in = m.empty_input(states[0].shape[0]) if top else states[l + 1]
        q_layer, q_in = m.q_layers[l - 1], states[l - 1]
        from_p = gibbs.sample_layer(m, p_layer, p_in, N, stream)
        from_q = gibbs.sample_layer(m, q_layer, q_in, N, stream)
        p_in_r, q_in_r = p_in.repeat_interleave(N, dim=0), q_in.repeat_interleave(N, dim=0)
        return gibbs.resample_hidden(m, states, l, k, paper, stream, from_p, from_q,
                                     lambda cand: (m.layer_log_prob(p_layer, p_in_r, cand),
                                                   m.layer_log_prob(q_layer, q_in_r, cand)))

    def gibbs_x(self, states, log_s, k: int, n_inner: int, paper: bool, stream, mask, x_obs):
        """``(new x (R, d_0), its log Ŝ (R,))`` of the block-Gibbs update of x (SPEC §4): K proposals per chain
        from p(x | h_1), resampled by :func:`.gibbs.resample_x` (inpainting: ``mask``/``x_obs`` clamp the
        observed pixels)."""
        m = self.model
        cand = gibbs.sample_layer(m, m.p_layers[0], states[1], k, stream)
        h1r = states[1].repeat_interleave(k, dim=0)
        return gibbs.resample_x(m, states, log_s, k, n_inner, paper, stream, mask, x_obs, cand,
                                lambda c: m.layer_log_prob(m.p_layers[0], h1r, c))

    # ------------------------------------------------------------ bookkeeping
    @contextlib.contextmanager
    def parameters_fixed(self):
        """Within: the parameters do not change (a sampler's own loop)."""
        yield

    def refresh(self) -> None:
        """Forget cached copies of the parameters (after edits the autograd version counters do not see)."""


def params_key(modules) -> tuple:
    """Identity, storage and autograd version of every parameter of ``modules``: changes whenever a
    parameter is replaced, re-pointed (``.data = …``) or updated in place through autograd-visible ops."""
    return tuple((id(p), p.data_ptr(), p._version) for m in modules for p in m._parameters.values() if p is not None)
