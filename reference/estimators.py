"""Importance-sampling estimators of SPEC §2 as pure functions of log-weights.

All inputs are log-weights ``log ω_k = log p(x, h^(k)) − log q(h^(k) | x)`` with
``h^(k) ~ q(h | x)``, laid out (B, K): one row per data point, K samples. Outputs are in nats.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

__all__ = [
    "log_mean_exp",
    "log_p_tilde_star_estimate",
    "log_p_estimate",
    "effective_sample_size",
    "normalized_weights",
    "weighted_sum",
    "bhattacharyya_estimate",
    "MeanWithSE",
    "log_mean_exp_with_se",
]


def log_mean_exp(t: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``log mean_k exp(t_k)`` along ``dim``, computed with logsumexp."""
    return torch.logsumexp(t, dim=dim) - math.log(t.shape[dim])


def log_p_tilde_star_estimate(log_w: torch.Tensor) -> torch.Tensor:
    """``log p̃*(x) ≈ 2·(logsumexp_k(½ log ω_k) − log K)`` (B,): the BiHM bound (paper eq. 6, SPEC §2).

    ``mean_k sqrt(ω_k)`` is unbiased for ``sqrt(p̃*(x))``; the log is biased low and converges as
    K grows.
    """
    return 2.0 * log_mean_exp(0.5 * log_w, dim=-1)


def log_p_estimate(log_w: torch.Tensor) -> torch.Tensor:
    """``log p(x) ≈ logsumexp_k(log ω_k) − log K`` (B,): the top-down model alone (as RWS reports it)."""
    return log_mean_exp(log_w, dim=-1)


def normalized_weights(log_w: torch.Tensor) -> torch.Tensor:
    """``softmax_k(log_w)`` (B, K) along the last dimension, with rows whose weights are all zero
    (every ``log_w = −inf``) mapped to zeros instead of NaN (SPEC §3's ``w_k``)."""
    w = torch.softmax(log_w, dim=-1)
    return torch.where(torch.isnan(w) & torch.isneginf(log_w).all(-1, keepdim=True), 0.0, w)


def weighted_sum(w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``Σ w·t`` where a zero weight contributes nothing, in value or gradient, even against ``t = ±inf``
    (``0 · −inf`` would be NaN). A NaN weight (NaN parameters) makes the sum NaN: it is not a zero weight."""
    return torch.where(w == 0, 0.0, w * t).sum()


def effective_sample_size(log_w: torch.Tensor) -> torch.Tensor:
    """Effective sample size ``(Σ w)² / Σ w² = 1 / Σ ŵ²`` of weights ``w_k ∝ exp(log_w_k)`` (B,).

    Computed from the normalized weights ``ŵ`` (any magnitudes, no cancellation) and kept in
    [1, K]; 0 for a row whose weights are all zero. Pass ``log ω`` for the p-weights of
    reweighted wake-sleep and ``½ log ω`` for the p*-weights of the BiHM (SPEC §2).
    """
    w = normalized_weights(log_w)
    ess = 1.0 / (w * w).sum(-1)
    return torch.where(torch.isinf(ess), 0.0, ess.clamp(1.0, log_w.shape[-1]))


def bhattacharyya_estimate(log_w: torch.Tensor) -> torch.Tensor:
    """Plug-in estimate of ``D_B(x) = ½(log p(x) − log p̃*(x))`` (B,) from the same log-weights (nats).

    Follows from ``log p̃*(x) = log p(x) − 2 D_B(x)`` (SPEC §1). Both estimates are biased low at
    finite K; the difference converges to ``D_B(x)`` as K grows.
    """
    return 0.5 * (log_p_estimate(log_w) - log_p_tilde_star_estimate(log_w))


class MeanWithSE(NamedTuple):
    """A log-mean estimate and its standard error (nats): ``value ± se``."""

    value: float
    se: float


def log_mean_exp_with_se(log_terms: torch.Tensor) -> MeanWithSE:
    """``log mean_n exp(t_n)`` of N i.i.d. terms and the standard error of that log (delta method).

    With ``m`` the sample mean and ``s`` the sample standard deviation of ``exp(t_n)``, the
    standard error of ``m`` is ``s / sqrt(N)`` and that of ``log m`` is ``s / (m · sqrt(N))``.

    Args:
        log_terms: (N,) tensor of log terms, N >= 2.

    Returns:
        :class:`MeanWithSE` of Python floats; ``(-inf, inf)`` when every term is 0 (log −inf), NaN
        when a term is NaN.
    """
    t = log_terms.detach().double().reshape(-1)
    n = t.numel()
    if n < 2:
        raise ValueError(f"need at least 2 terms for a standard error, got {n}")
    if bool(torch.isnan(t).any()):
        return MeanWithSE(math.nan, math.nan)
    shift = t.max()
    if not bool(torch.isfinite(shift)):  # every term 0 (−inf): the mean is 0; +inf: infinite
        return MeanWithSE(float(shift), math.inf)
    e = torch.exp(t - shift)
    m = e.mean()
    s = e.std(unbiased=True)
    return MeanWithSE(float(shift + torch.log(m)), float(s / (m * math.sqrt(n))))
