"""Samplers of the BiHM distribution p*(x, h) (SPEC §4): block Gibbs, importance resampling, inpainting.

Every function takes a model with the layout and primitives of :class:`bihm_triton.reference.BiHM`
(``layer_sample``, ``layer_log_prob``, ``q_pass``, ``p_pass``, ``log_p_joint``, ``log_q_cond``),
so it runs on the reference or on the Triton ops alike, and draws every random number from one
Philox stream (:class:`~bihm_triton.reference.RandomStream`): a run is a function of
``(seed, offset)``.

**Block Gibbs (the paper's sampler, made exact).** A sweep updates the odd layers, then the even
ones (x is layer 0); layers of one parity are conditionally independent. The conditional of a
middle layer is ``∝ sqrt(p(h_l|h_{l+1}) p(h_{l−1}|h_l) q(h_l|h_{l−1}) q(h_{l+1}|h_l))``, of the top
``∝ sqrt(p(h_L) p(h_{L−1}|h_L) q(h_L|h_{L−1}))``, and of x
``∝ sqrt(p(x|h_1) q(h_1|x)) · sqrt(p̃*(x))``. Each is sampled by importance resampling:

* hidden layers: 2K candidates; proposal ``r = ½ p(h_l|h_{l+1}) + ½ q(h_l|h_{l−1})`` (the
  prior for the top layer), weights ``π̃(c) / r(c)`` (the balance heuristic);
* x: K candidates from ``p(x|h_1)``, ``sqrt(p̃*(x))`` replaced by the unbiased estimate
  ``Ŝ(x) = mean_i sqrt(ω(x, h'_i))`` with ``n_inner`` samples ``h'_i ~ q(h|x)``.

*Exact mode* (default) is conditional importance resampling (i-SIR, Andrieu, Doucet & Holenstein
2010): the current state is candidate 0 and the other candidates are fresh draws from ``r``, so
each block update leaves p* invariant for any K ≥ 1 (x needs K ≥ 2 to move). For x the state
carries its ``Ŝ`` (pseudo-marginal, Andrieu & Roberts 2009): the chain targets an extended
distribution whose x-marginal is exactly p*(x).

*Paper-compatible mode* is the authors' plain resampling: K fresh candidates from each proposal,
no current state, ``Ŝ`` recomputed for every x candidate, and the top-layer conditional without
the factor ``p(h_{L−1}|h_L)``; it is biased for finite K.

**SIR** draws ``oversample·n`` pairs ``(x, h) ~ p`` and resamples n of them with weights
``Ŝ(x) · sqrt(q(h|x) / p(x, h))`` (SPEC §4).
"""

from __future__ import annotations

import contextlib
import math
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from .engines import _params_key
from .progress import bar_disable
from .reference import RandomStream
from .reference._checks import check_binary, check_positive_int, check_tensor, nonfinite_parameters
from .reference.estimators import effective_sample_size, log_mean_exp
from .reference.philox import DRAW_STRIDE, check_draw_fits, check_offset, check_seed, draw_seed

__all__ = ["GibbsResult", "SIRResult", "gibbs_sample", "inpaint", "sir_sample", "log_sqrt_p_tilde_star"]


class GibbsResult(NamedTuple):
    """Final Gibbs states: ``x`` (n, d_0), ``hidden`` [h_1 … h_L] each (n, d_l), and ``chain``
    (steps + 1, n, d_0): x after each sweep (index 0 is the initial state), or None."""

    x: torch.Tensor
    hidden: list
    chain: torch.Tensor | None


class SIRResult(NamedTuple):
    """Resampled ``x`` (n, d_0), ``hidden`` [h_1 … h_L], and the effective sample size of the weights."""

    x: torch.Tensor
    hidden: list
    ess: float


def _select(log_w: torch.Tensor, stream: RandomStream) -> torch.Tensor:
    """One index per row of ``log_w`` (R, N), drawn ∝ exp(log_w) by inverse CDF with the stream's uniforms.

    A row whose weights are all zero (every ``log_w = −inf``: no candidate is possible, which only the
    paper-compatible sampler can meet) keeps candidate 0.
    """
    R, N = log_w.shape
    log_w = log_w.float()
    dead = torch.isneginf(log_w).all(dim=1, keepdim=True)
    first = torch.arange(N, device=log_w.device) == 0
    p = torch.softmax(torch.where(dead, torch.where(first, 0.0, -math.inf), log_w), dim=1)
    cdf = torch.cumsum(p, dim=1)
    u = stream.uniform(R, 1).to(cdf.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, side="right").clamp_max(N - 1).squeeze(1)


def _gather(candidates: torch.Tensor, idx: torch.Tensor, n_cand: int) -> torch.Tensor:
    """Rows ``r·N + idx[r]`` of candidates (R·N, d) -> (R, d)."""
    base = torch.arange(idx.shape[0], device=idx.device) * n_cand
    return candidates[base + idx]


def log_sqrt_p_tilde_star(model, x: torch.Tensor, n_inner: int, stream: RandomStream) -> torch.Tensor:
    """``log Ŝ(x)`` (R,), nats: the log of ``Ŝ(x) = mean_i sqrt(ω(x, h'_i))``, ``h'_i ~ q(h | x)``,
    an unbiased estimate of ``sqrt(p̃*(x))`` (SPEC §2, §4).

    Args:
        x: (R, d_0) binary states. n_inner: q-samples per row. stream: advanced past the q pass
            over the ``R·n_inner`` rows it draws.
    """
    R = x.shape[0]
    rows = R * n_inner
    offset = stream.take(model.n_layers)  # the q pass: L draws
    log_p, log_q = model._chunk_log_weights(x, n_inner, rows, stream.seed, offset, row_start=0)
    return log_mean_exp(0.5 * (log_p - log_q).view(R, n_inner), dim=1)


def _sample_layer(model, layer, h, n_cand: int, stream: RandomStream):
    """n_cand samples of ``layer`` for each row of h: (R·n_cand, d_out), rows chain-major."""
    rep = h.repeat_interleave(n_cand, dim=0)
    check_draw_fits(rep.shape[0], layer.d_out)
    x, _ = model.layer_sample(layer, rep, stream.seed, stream.take())
    return x


def _update_hidden(model, states, l: int, K: int, paper: bool, stream: RandomStream):
    """Importance-resampling update of h_l (1 ≤ l ≤ L) given its neighbours; returns the new h_l."""
    engine = getattr(model, "engine", None)
    if not paper and engine is not None:  # the engine's own update (Triton: one fused launch; CPU: shared logits)
        new = engine.gibbs_hidden(states, l, K, stream)
        if new is not None:
            return new
    N = 2 * K
    top = l == model.n_layers
    p_layer = model.p_top if top else model.p_layers[l]
    p_in = model.empty_input(states[0].shape[0]) if top else states[l + 1]
    q_layer, q_in = model.q_layers[l - 1], states[l - 1]
    from_p = _sample_layer(model, p_layer, p_in, N, stream)
    from_q = _sample_layer(model, q_layer, q_in, N, stream)
    rep = lambda t: t.repeat_interleave(N, dim=0)  # noqa: E731
    p_in_r, q_in_r = rep(p_in), rep(q_in)
    return _resample_hidden(model, states, l, K, paper, stream, from_p, from_q,
                            lambda cand: (model.layer_log_prob(p_layer, p_in_r, cand),
                                          model.layer_log_prob(q_layer, q_in_r, cand)))


def _resample_hidden(model, states, l: int, K: int, paper: bool, stream: RandomStream, from_p, from_q,
                     proposal_log_probs):
    """The update of h_l once its 2K proposals per chain are drawn (every backend's: the engines draw and score
    the proposals their own way). from_p, from_q: (R·2K, d_l) draws of p(h_l | h_l+1) and q(h_l | h_l-1),
    chain-major; proposal_log_probs(cand) -> (log p, log q) (R·2K,) of the candidates under those two
    proposals. Exact mode: a fair coin picks each candidate's proposal and candidate 0 of each chain is the
    current state (conditional importance resampling); paper mode: the first K from p, the rest from q.
    Returns the new h_l (R, d_l)."""
    R, N, top = states[0].shape[0], 2 * K, l == model.n_layers
    slot = torch.arange(R * N, device=from_p.device) % N
    if paper:
        use_p = (slot < K).unsqueeze(1)
    else:
        use_p = (stream.uniform(R * N, 1).to(from_p.device) < 0.5)
    cand = torch.where(use_p, from_p, from_q)
    rep = lambda t: t.repeat_interleave(N, dim=0)  # noqa: E731
    if not paper:  # candidate 0 of each chain is the current state
        cand = torch.where((slot == 0).unsqueeze(1), rep(states[l]), cand)
    lp_prop, lq_prop = proposal_log_probs(cand)
    log_target = lp_prop + lq_prop
    if not (paper and top):
        log_target = log_target + model.layer_log_prob(model.p_layers[l - 1], cand, rep(states[l - 1]))
    if not top:
        log_target = log_target + model.layer_log_prob(model.q_layers[l], cand, rep(states[l + 1]))
    log_w = 0.5 * log_target - (torch.logaddexp(lp_prop, lq_prop) - math.log(2.0))
    idx = _select(log_w.view(R, N), stream)
    return _gather(cand, idx, N)


def _update_x(model, states, log_s, K: int, n_inner: int, paper: bool, stream: RandomStream, mask, x_obs):
    """Importance-resampling update of x given h_1; returns (new x, its log Ŝ)."""
    engine = getattr(model, "engine", None)
    if engine is not None:  # the engine's own update (Triton: three fused launches; CPU: shared logits)
        out = engine.gibbs_x(states, log_s, K, n_inner, paper, stream, mask, x_obs)
        if out is not None:
            return out
    cand = _sample_layer(model, model.p_layers[0], states[1], K, stream)
    h1r = states[1].repeat_interleave(K, dim=0)
    return _resample_x(model, states, log_s, K, n_inner, paper, stream, mask, x_obs, cand,
                       lambda c: model.layer_log_prob(model.p_layers[0], h1r, c))


def _resample_x(model, states, log_s, K: int, n_inner: int, paper: bool, stream: RandomStream, mask, x_obs,
                cand, proposal_log_prob):
    """The update of x once its K proposals per chain are drawn (every backend's). cand: (R·K, d_0) draws of
    p(x | h_1), chain-major; proposal_log_prob(cand) -> (R·K,) their log p(x | h_1) (nats; the observed
    pixels' part cancels). Exact mode: candidate 0 is the current state with its log Ŝ (log_s, (R,)) kept
    (pseudo-marginal); mask/x_obs: inpainting clamps the observed pixels. Returns (new x (R, d_0), its log Ŝ
    (R,))."""
    R = states[0].shape[0]
    slot = torch.arange(R * K, device=cand.device) % K
    if mask is not None:
        cand = torch.where(mask.repeat_interleave(K, dim=0), x_obs.repeat_interleave(K, dim=0), cand)
    if not paper:
        cand = torch.where((slot == 0).unsqueeze(1), states[0].repeat_interleave(K, dim=0), cand)
    cand_log_s = log_sqrt_p_tilde_star(model, cand, n_inner, stream)
    if not paper:
        cand_log_s = torch.where(slot == 0, log_s.repeat_interleave(K), cand_log_s)
    lp = proposal_log_prob(cand)  # proposal density (observed part cancels)
    lq = model.layer_log_prob(model.q_layers[0], cand, states[1].repeat_interleave(K, dim=0))
    log_w = 0.5 * (lq - lp) + cand_log_s
    idx = _select(log_w.view(R, K), stream)
    return _gather(cand, idx, K), cand_log_s.view(R, K).gather(1, idx[:, None]).squeeze(1)


def check_finite_parameters(model, what: str) -> None:
    """Refuse a model whose parameters make the importance weights NaN (NaN parameters, infinite weights):
    every resampling decision would be arbitrary and the states carry no NaN to show it. Read from the
    device once per change of the parameters (their autograd versions).

    Raises:
        ValueError: names the parameters.
    """
    key = _params_key(model.modules())
    cached = model.__dict__.get("_sampler_nonfinite")
    if cached is None or cached[0] != key:
        cached = (key, nonfinite_parameters(model.named_parameters()))
        if not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()):
            model.__dict__["_sampler_nonfinite"] = cached
    if cached[1]:
        raise ValueError(f"{what}: the model's parameters hold non-finite values ({', '.join(cached[1])}), so "
                         f"every importance weight would be NaN; load a checkpoint from before the parameters "
                         f"went non-finite")


def _check_common(model, steps, k, n_inner, seed, offset, min_k, what):
    check_finite_parameters(model, what)
    check_positive_int(steps, "steps", 0)
    check_positive_int(k, "k", min_k)
    check_positive_int(n_inner, "n_inner")
    if seed is None:
        seed = draw_seed()
    check_seed(seed)
    check_offset(offset)
    # the run's draws, up front (SPEC §5: at most 2**22 draws past the offset): per sweep 4 per hidden layer
    # and 1 + L + 1 for x, plus the start
    L = model.n_layers
    draws = steps * (5 * L + 2) + L + 2
    if offset + draws * DRAW_STRIDE >= 2**62:
        fit = max(0, ((2**62 - offset) // DRAW_STRIDE - L - 2) // (5 * L + 2))
        raise ValueError(f"steps={steps} needs {draws} draws of the random stream, more than a seed holds past offset "
                         f"{offset} (at most {fit} steps fit): run the chains in several calls with other seeds")
    seed = seed if isinstance(seed, torch.Tensor) else int(seed)
    return RandomStream(seed, offset, device=model.device, uniform_fn=getattr(model, "stream_uniform", None))


def _run_gibbs(model, states, steps, K, n_inner, paper, stream, mask, x_obs, progress, return_chain):
    with getattr(model, "_parameters_fixed", contextlib.nullcontext)():  # no parameter changes inside
        return _gibbs_loop(model, states, steps, K, n_inner, paper, stream, mask, x_obs, progress, return_chain)


def _gibbs_loop(model, states, steps, K, n_inner, paper, stream, mask, x_obs, progress, return_chain):
    log_s = None if paper else log_sqrt_p_tilde_star(model, states[0], n_inner, stream)
    chain = [states[0].clone()] if return_chain else None
    L = model.n_layers
    # default: a bar for 20 sweeps or more; on a terminal only (tqdm's disable=None), never in log files
    for _ in tqdm(range(steps), desc="gibbs", disable=bar_disable(progress, steps >= 20), leave=False):
        for parity in (1, 0):
            for l in range(parity, L + 1, 2):
                if l == 0:
                    states[0], log_s = _update_x(model, states, log_s, K, n_inner, paper, stream, mask, x_obs)
                else:
                    states[l] = _update_hidden(model, states, l, K, paper, stream)
        if return_chain:
            chain.append(states[0].clone())
    return GibbsResult(states[0], states[1:], torch.stack(chain) if return_chain else None)


@torch.no_grad()
def gibbs_sample(model, n: int, steps: int, k: int = 10, *, n_inner: int = 1, paper_compatible: bool = False,
                 init=None, seed=None, offset: int = 0, progress: bool | None = None,
                 return_chain: bool = False) -> GibbsResult:
    """Block Gibbs sampling of p*(x, h) (SPEC §4; the paper's sampler, exact by default).

    Args:
        model: a BiHM (reference or Triton-backed).
        n: number of chains.
        steps: sweeps (the authors ran 100–250).
        k: candidates per update: 2k for hidden layers, k for x. Exact mode needs k >= 2 (with k = 1
            the only x candidate is the current state, so x would never move).
        n_inner: q-samples per estimate of sqrt(p̃*(x)).
        paper_compatible: the authors' plain resampling (biased; see the module docstring).
        init: starting states [x, h_1, …, h_L] each (n, d_l); default an ancestral sample of p.
        seed, offset: the random stream (``seed=None``: drawn from torch's generator).
        progress: show a progress bar (default: when steps >= 20 and stderr is a terminal).
        return_chain: also return x after every sweep.

    Returns:
        :class:`GibbsResult`.

    Raises:
        ValueError / TypeError: bad n, steps, k (< 2 in exact mode), n_inner, seed, init shapes, or init
            values that are not 0 or 1 (NaN included; the message names the layer and its shape);
            ValueError: the model's parameters hold NaN (or infinite weights), named in the message.
    """
    check_positive_int(n, "n")
    stream = _check_common(model, steps, k, n_inner, seed, offset, 1 if paper_compatible else 2, "gibbs_sample")
    if init is None:
        states, _ = model.p_pass(n, stream.seed, stream.take(model.n_layers + 1))
    else:
        for l, s in enumerate(init):
            check_tensor(s, f"init[{l}]", 2, symbols=f"(n, d_{l})")
        states = [s.to(device=model.device, dtype=model.dtype).clone() for s in init]
        model._check_states(states, validate=True, name="init")
        if states[0].shape[0] != n:
            raise ValueError(f"init must hold n = {n} chains, got {states[0].shape[0]}")
    return _run_gibbs(model, states, steps, k, n_inner, paper_compatible, stream, None, None, progress,
                      return_chain)


@torch.no_grad()
def inpaint(model, x: torch.Tensor, mask: torch.Tensor, steps: int, k: int = 10, *, n_inner: int = 1,
            paper_compatible: bool = False, seed=None, offset: int = 0, progress: bool | None = None,
            return_chain: bool = False) -> GibbsResult:
    """Fill in the unobserved pixels of x by Gibbs sampling p*(x_unobserved, h | x_observed) (SPEC §4).

    Args:
        x: (B, d_0) binary data; its values where ``mask`` is False are ignored (start from p(x|h)).
        mask: (B, d_0) bool, True where a pixel is observed (clamped).
        steps, k, n_inner, paper_compatible, seed, offset, progress, return_chain: as :func:`gibbs_sample`.

    Returns:
        :class:`GibbsResult` whose x equals the input on observed pixels.

    Raises:
        ValueError: mask shape differs from x, x not binary, bad k/steps; NaN parameters (as
            :func:`gibbs_sample`).
    """
    x = model._check_x(x)
    check_tensor(mask, "mask", 2, symbols="(B, d_0)")
    if mask.shape != x.shape:
        raise ValueError(f"mask must have the shape of x {tuple(x.shape)}, got {tuple(mask.shape)}")
    check_binary(mask, "mask")
    mask = mask.to(device=model.device, dtype=torch.bool)
    stream = _check_common(model, steps, k, n_inner, seed, offset, 1 if paper_compatible else 2, "inpaint")
    B = x.shape[0]
    # start: h ~ q(h | x) with the unobserved pixels zeroed, then x's free pixels from p(x | h_1)
    x0 = torch.where(mask, x, torch.zeros_like(x))
    states, _ = model.q_pass(x0, stream.seed, stream.take(model.n_layers))
    fill = _sample_layer(model, model.p_layers[0], states[1], 1, stream)
    states[0] = torch.where(mask, x, fill)
    return _run_gibbs(model, states, steps, k, n_inner, paper_compatible, stream, mask, x, progress, return_chain)


@torch.no_grad()
def sir_sample(model, n: int, oversample: int = 100, n_inner: int = 1, *, seed=None, offset: int = 0) -> SIRResult:
    """Sampling–importance–resampling from p* (SPEC §4).

    Draws ``M = n·oversample`` pairs ``(x, h) ~ p``, weights them by
    ``log w = log Ŝ(x) + ½(log q(h|x) − log p(x, h))`` and resamples n with replacement
    (multinomial, by inverse CDF on the stream's uniforms). Consistent as ``oversample`` grows;
    biased for a finite one.

    Args:
        model: a BiHM. n: samples to return. oversample: proposals per sample (M = n·oversample).
        n_inner: q-samples per estimate Ŝ(x) of sqrt(p̃*(x)). seed, offset: the random stream.

    Returns:
        :class:`SIRResult` (x (n, d_0), hidden [h_1 … h_L] (n, d_l), ESS of the M weights).

    Raises:
        ValueError / TypeError: n, oversample or n_inner < 1, a bad seed or offset; NaN parameters (as
            :func:`gibbs_sample`).
    """
    check_positive_int(n, "n")
    check_positive_int(oversample, "oversample")
    stream = _check_common(model, 0, 1, n_inner, seed, offset, 1, "sir_sample")
    M = n * oversample
    states, log_p = model.p_pass(M, stream.seed, stream.take(model.n_layers + 1))
    log_w = log_sqrt_p_tilde_star(model, states[0], n_inner, stream) + 0.5 * (model.log_q_cond(states) - log_p)
    if bool(torch.isneginf(log_w).all()):
        raise ValueError(f"sir_sample: every one of the {M} importance weights is zero; draw more proposals "
                         f"(oversample) or check the model's parameters")
    cdf = torch.cumsum(torch.softmax(log_w.double(), dim=0), dim=0)
    u = stream.uniform(n, 1).to(cdf.device).squeeze(1).double() * cdf[-1]
    idx = torch.searchsorted(cdf, u, side="right").clamp_max(M - 1)
    return SIRResult(states[0][idx], [h[idx] for h in states[1:]], float(effective_sample_size(log_w.view(1, M))))
