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
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from .engines import LayerEngine, params_key
from .engines.gibbs import log_sqrt_p_tilde_star, sample_layer as _sample_layer
from .progress import bar_disable
from .reference import RandomStream
from .reference._checks import check_binary, check_positive_int, check_tensor, nonfinite_parameters
from .reference.estimators import effective_sample_size
from .reference.philox import DRAW_STRIDE, check_offset, resolve_seed

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


def _engine(model):
    """The model's engine, or the layer engine for a model without one (a :class:`bihm_triton.reference.BiHM`)."""
    engine = getattr(model, "engine", None)
    return engine if engine is not None else LayerEngine(model)


def _update_hidden(model, states, l: int, K: int, paper: bool, stream: RandomStream):
    """Importance-resampling update of h_l (1 ≤ l ≤ L) given its neighbours (the model's engine: Triton's one
    fused launch, the CPU's shared logits, or the layer engine); returns the new h_l."""
    return _engine(model).gibbs_hidden(states, l, K, paper, stream)


def _update_x(model, states, log_s, K: int, n_inner: int, paper: bool, stream: RandomStream, mask, x_obs):
    """Importance-resampling update of x given h_1 (the model's engine); returns (new x, its log Ŝ)."""
    return _engine(model).gibbs_x(states, log_s, K, n_inner, paper, stream, mask, x_obs)


def check_finite_parameters(model, what: str) -> None:
    """Refuse a model whose parameters make the importance weights NaN (NaN parameters, infinite weights):
    every resampling decision would be arbitrary and the states carry no NaN to show it. Read from the
    device once per change of the parameters (their autograd versions).

    Raises:
        ValueError: names the parameters.
    """
    key = params_key(model.modules())
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
    seed = resolve_seed(seed)
    check_offset(offset)
    # the run's draws, up front (SPEC §5: at most 2**22 draws past the offset): per sweep 4 per hidden layer
    # and 1 + L + 1 for x, plus the start
    L = model.n_layers
    draws = steps * (5 * L + 2) + L + 2
    if offset + draws * DRAW_STRIDE >= 2**62:
        fit = max(0, ((2**62 - offset) // DRAW_STRIDE - L - 2) // (5 * L + 2))
        raise ValueError(f"steps={steps} needs {draws} draws of the random stream, more than a seed holds past offset "
                         f"{offset} (at most {fit} steps fit): run the chains in several calls with other seeds")
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
