"""The block-Gibbs resampling math of SPEC §4, shared by every engine (the engines draw and score the proposals
their own way, then call these): choosing one candidate per chain by the stream's uniforms, the updates of a
hidden layer and of x once their proposals are drawn, and log Ŝ(x), the estimate of sqrt(p̃*(x)) that the
pseudo-marginal update of x carries. Plain PyTorch on the model's primitives; imports nothing of the package
above the reference."""

from __future__ import annotations

import math

import torch

from ..reference import RandomStream
from ..reference.estimators import log_mean_exp
from ..reference.philox import check_draw_fits

__all__ = ["select", "gather", "log_sqrt_p_tilde_star", "sample_layer", "resample_hidden", "resample_x"]


def select(log_w: torch.Tensor, stream: RandomStream) -> torch.Tensor:
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


def gather(candidates: torch.Tensor, idx: torch.Tensor, n_cand: int) -> torch.Tensor:
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


def sample_layer(model, layer, h, n_cand: int, stream: RandomStream):
    """n_cand samples of ``layer`` for each row of h: (R·n_cand, d_out), rows chain-major."""
    rep = h.repeat_interleave(n_cand, dim=0)
    check_draw_fits(rep.shape[0], layer.d_out)
    x, _ = model.layer_sample(layer, rep, stream.seed, stream.take())
    return x


def resample_hidden(model, states, l: int, K: int, paper: bool, stream: RandomStream, from_p, from_q,
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
    idx = select(log_w.view(R, N), stream)
    return gather(cand, idx, N)


def resample_x(model, states, log_s, K: int, n_inner: int, paper: bool, stream: RandomStream, mask, x_obs,
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
    idx = select(log_w.view(R, K), stream)
    return gather(cand, idx, K), cand_log_s.view(R, K).gather(1, idx[:, None]).squeeze(1)
