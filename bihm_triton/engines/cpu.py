"""The CPU engine: every layer is a BLAS matmul through torch, then one fused C pass (:mod:`bihm_triton.kernels.cpu`)."""

from __future__ import annotations

import torch

from .. import ops
from .. import reference as ref
from ..reference.bihm import StochasticLayer, WeightNormStochasticLayer, layer_input
from ..reference.philox import aligned_start, check_draw_fits, draw_offset
from . import gibbs
from .base import LayerEngine

__all__ = ["CpuEngine", "layer_logits", "layer_logits_into", "bias_folds"]


def layer_logits(layer, h: torch.Tensor) -> torch.Tensor:
    """float32 logits ``a = z·Wᵀ + b`` (R, M) of a layer for inputs h (R, N), differentiable: z is h (or an MLP
    layer's hidden activations), W the effective weight (``g·v/‖v‖`` when weight-normalized)."""
    if isinstance(layer, WeightNormStochasticLayer):
        return ops._cpu_logits(h, layer.weight_v, layer.bias, layer.weight_g)
    return ops._cpu_logits(layer_input(layer, h), layer.weight, layer.bias, None)


def layer_logits_into(layer, h: torch.Tensor, scratch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`layer_logits` without grad, as ``(a, bias)``: the logits are ``a + bias`` when bias is not None.

    For a plain float32 layer the product is written into ``scratch`` (a flat float32 buffer of at least R·M
    elements): the sampler's blocks reuse one buffer instead of a new tensor per layer (a fresh large tensor
    costs page faults). Where this BLAS gives ``addmm``'s bits from ``mm`` + bias for the layer's shape
    (:func:`bias_folds`), ``a`` is ``h·Wᵀ`` and the fused pass adds the bias (``addmm`` would first copy the
    broadcast bias into the whole output). Weight-normalized and MLP layers return a new tensor and None."""
    return _BlockLogits(layer)(h, scratch)


class _BlockLogits:
    """:func:`layer_logits_into` of one layer, its transposed weight, bias and :func:`bias_folds` decision looked up
    once for all the blocks of a call."""

    def __init__(self, layer):
        self.layer, self.wt = layer, None
        if type(layer) is StochasticLayer and layer.weight.dtype == torch.float32:
            w, self.b = layer.weight.detach(), layer.bias.detach()
            self.wt, self.fold, self.M = w.t(), bias_folds(w, self.b), w.shape[0]

    def __call__(self, h: torch.Tensor, scratch: torch.Tensor):
        if self.wt is None or h.dtype != torch.float32:
            return layer_logits(self.layer, h), None
        out = scratch[:h.shape[0] * self.M].view(h.shape[0], self.M)
        if self.fold:
            return torch.mm(h, self.wt, out=out), self.b
        return torch.addmm(self.b, h, self.wt, out=out), None


_FOLDS: dict = {}


def bias_folds(weight: torch.Tensor, bias: torch.Tensor) -> bool:
    """Whether ``torch.mm(h, Wᵀ) + b`` equals ``torch.addmm(b, h, Wᵀ)`` bit for bit, for a weight (M, K) and bias
    (M,) of one floating dtype on the CPU, at the current thread count. A BLAS that splits the K sum into panels
    accumulates them onto the bias (MKL on AVX-512 does past K = 384), which rounds differently; such shapes keep
    ``addmm`` (the reference's ``F.linear``). Found once per (shape, threads) by a probe of 4 and 64 binary rows
    and cached; raises what ``torch.addmm`` raises for mismatched shapes."""
    key = (tuple(weight.shape), torch.get_num_threads())
    ok = _FOLDS.get(key)
    if ok is None:
        with torch.no_grad():
            g = torch.Generator().manual_seed(0)
            w, b = weight.detach(), bias.detach()
            ok = all(torch.equal(torch.addmm(b, h, w.t()), torch.mm(h, w.t()) + b)
                     for h in ((torch.rand(rows, w.shape[1], generator=g) < 0.5).float() for rows in (4, 64)))
        _FOLDS[key] = ok
    return ok


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
        from ..kernels import cpu

        return cpu.uniform(seed, offset, rows, cols)

    @torch.no_grad()
    def sample_p(self, n, seed, offset, row_start, return_hidden, want_lp, out_dtype):
        """The reference's p pass (the same draws) in blocks of :attr:`SAMPLE_BLOCK` rows through the whole network:
        each layer's logits by BLAS, then the fused pass writing x straight into the output."""
        from ..kernels import cpu

        m = self.model
        a0, s = aligned_start(row_start)
        n_al = n + s  # an unaligned start: the s rows before it in its Philox row group are drawn, then dropped
        widths = m.sizes[::-1]  # the prior h_L first, x last
        logits = [None, *(_BlockLogits(layer) for layer in list(m.p_layers._modules.values())[::-1])]
        native = out_dtype in (torch.float32, torch.uint8, torch.bool)
        x = cpu.advise_huge_pages(torch.empty((n_al, m.sizes[0]), dtype=out_dtype))
        hidden = [cpu.advise_huge_pages(torch.empty((n_al, d), dtype=out_dtype)) for d in m.sizes[1:]] \
            if return_hidden else None
        log_p = torch.zeros(n_al, dtype=torch.float32) if want_lp else None
        block = min(self.SAMPLE_BLOCK, n_al)
        bufs = [cpu.advise_huge_pages(torch.empty((block, d), dtype=torch.float32)) for d in widths[:-1]]
        scratch = cpu.advise_huge_pages(torch.empty(block * max(widths), dtype=torch.float32))  # each layer's logits
        prior = m.p_top.logits.detach().to(torch.float32)
        for r0 in range(0, n_al, block):
            r = min(block, n_al - r0)
            h, lp_rows = None, log_p[r0:r0 + r] if want_lp else None
            for i, d in enumerate(widths):
                last = i == len(widths) - 1
                if last and native:
                    dst = x[r0:r0 + r]
                elif not last and return_hidden and out_dtype == torch.float32:
                    dst = hidden[-1 - i][r0:r0 + r]
                else:
                    dst = bufs[i][:r] if not last else torch.empty((r, d), dtype=torch.float32)
                a, bias = (prior.expand(r, d).contiguous(), None) if i == 0 else logits[i](h, scratch)
                cpu.sample(a, seed, draw_offset(offset, i, a0 + r0, d), want_lp=want_lp, out=dst, bias=bias,
                           lp_out=lp_rows, lp_add=want_lp)
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
        a1 = layer_logits(m.q_layers[0], x).repeat_interleave(k, dim=0)  # one matmul per data point
        hidden, log_q = self._q_pass_from(ref.bihm.pad_rows(a1, s), seed, offset, a0)
        states = [x.repeat_interleave(k, dim=0), *(h[s:] for h in hidden)]
        log_p = m.log_p_joint(states)
        return log_p.view(-1, k), log_q[s:].view(-1, k), states

    @torch.no_grad()
    def chunk_log_weights(self, x, k, rows, seed, offset, row_start, x_row0):
        """The reference's q pass and log p(x, h) (the same draws) in blocks of :attr:`SAMPLE_BLOCK` rows: the first
        q layer's logits once per data point, every other layer's by BLAS on the block, then the fused pass
        (draws and log q) or the score pass (log p, x scored as bytes); the block's buffers are reused."""
        from ..kernels import cpu

        m = self.model
        L = m.n_layers
        b_lo, b_hi = row_start // k - x_row0, (row_start + rows - 1) // k - x_row0
        a1_points = layer_logits(m.q_layers[0], x[b_lo:b_hi + 1])  # one matmul per data point of the chunk
        x_u8 = (x[b_lo:b_hi + 1] != 0).to(torch.uint8)
        prior = m.p_top.logits.detach().to(torch.float32)
        log_p, log_q = torch.empty(rows, dtype=torch.float32), torch.empty(rows, dtype=torch.float32)
        block = min(self.SAMPLE_BLOCK, rows)
        bufs = [cpu.advise_huge_pages(torch.empty((block, d), dtype=torch.float32)) for d in m.sizes[1:]]
        scratch = cpu.advise_huge_pages(torch.empty(block * max(m.sizes), dtype=torch.float32))  # each layer's logits
        q_logits = [None, *(_BlockLogits(m.q_layers[l]) for l in range(1, L))]
        p_logits = [_BlockLogits(m.p_layers[l]) for l in range(L)]
        for r0 in range(0, rows, block):
            r = min(block, rows - r0)
            b = torch.arange(row_start + r0, row_start + r0 + r) // k - x_row0 - b_lo
            states, lq, lp = [x_u8[b]], log_q[r0:r0 + r], log_p[r0:r0 + r]
            for l in range(L):
                a, bias = (a1_points[b], None) if l == 0 else q_logits[l](states[-1], scratch)
                cpu.sample(a, seed, draw_offset(offset, l, row_start + r0, m.sizes[l + 1]), out=bufs[l][:r],
                           bias=bias, lp_out=lq, lp_add=l > 0)
                states.append(bufs[l][:r])
            # log p(x, h) in log_p_joint's order: the prior, then p(h_l | h_{l+1}) for l = 0 … L − 1
            cpu.score(prior.expand(r, m.sizes[-1]).contiguous(), states[-1], lp_out=lp)
            for l in range(L):
                h_in = states[l + 1] if states[l + 1].dtype == torch.float32 else states[l + 1].float()
                a, bias = p_logits[l](h_in, scratch)
                cpu.score(a, states[l], bias=bias, lp_out=lp, lp_add=True)
        return log_p.to(m.dtype), log_q.to(m.dtype)

    def gibbs_hidden(self, states, l, k, paper, stream):
        """The exact update of h_l as :meth:`LayerEngine.gibbs_hidden`, the proposals' logits computed once per
        chain and the candidates scored on them (the paper's update runs on the layer engine)."""
        if paper:
            return super().gibbs_hidden(states, l, k, paper, stream)
        from ..kernels import cpu

        m = self.model
        R, N, d, top = states[0].shape[0], 2 * k, m.sizes[l], l == m.n_layers
        a_p = (m.p_top.logits.to(torch.float32).expand(R, d) if top else layer_logits(m.p_layers[l], states[l + 1]))
        a_p = a_p.repeat_interleave(N, dim=0).contiguous()
        a_q = layer_logits(m.q_layers[l - 1], states[l - 1]).repeat_interleave(N, dim=0).contiguous()
        check_draw_fits(R * N, d)
        from_p = cpu.sample(a_p, stream.seed, stream.take(), out_dtype=m.dtype, want_lp=False)[0]
        from_q = cpu.sample(a_q, stream.seed, stream.take(), out_dtype=m.dtype, want_lp=False)[0]
        return gibbs.resample_hidden(m, states, l, k, False, stream, from_p, from_q,
                                     lambda cand: (cpu.score(a_p, cand)[0], cpu.score(a_q, cand)[0]))

    def gibbs_x(self, states, log_s, k, n_inner, paper, stream, mask, x_obs):
        """The update of x as :meth:`LayerEngine.gibbs_x`, ``p(x | h_1)``'s logits computed once per chain and
        reused for the candidates' proposal log-likelihoods."""
        from ..kernels import cpu

        m = self.model
        a_p = layer_logits(m.p_layers[0], states[1]).repeat_interleave(k, dim=0).contiguous()
        check_draw_fits(a_p.shape[0], m.sizes[0])
        cand = cpu.sample(a_p, stream.seed, stream.take(), out_dtype=m.dtype, want_lp=False)[0]
        return gibbs.resample_x(m, states, log_s, k, n_inner, paper, stream, mask, x_obs, cand,
                                lambda c: cpu.score(a_p, c)[0].to(m.dtype))
