"""The stochastic binary layer and weight normalization in plain PyTorch (SPEC §5).

A stochastic binary (sigmoid belief network) layer maps states ``h`` (R, N) to

* logits ``a = h · Wᵀ + b`` (R, M), accumulated in float32 (float64 if any input is float64);
* a sample ``x[r, j] = 1[u[r, j] < σ(a[r, j])]`` with ``u`` the uniforms of the (seed, offset)
  draw of :mod:`bihm_triton.reference.philox`;
* the per-row log-likelihood ``Σ_j x_rj · a_rj − softplus(a_rj)`` (nats), which is
  ``Σ_j log Bern(x_rj; σ(a_rj))`` computed from the logits: exact and finite for any finite
  logits (no clipping of σ).

Weight normalization (Salimans & Kingma 2016) writes a row of ``W`` as ``g_j · v_j / ‖v_j‖``; the
layer folds it as ``a = (h · vᵀ) ⊙ (g / ‖v‖) + b``.

NaN logits: ``σ(NaN)`` is NaN, the comparison ``u < NaN`` is false, so the sample is 0 and the
row's log-likelihood is NaN. Infinite logits give samples 1 (``+inf``) or 0 (``−inf``); the
log-likelihood is computed as ``−softplus(∓a)``, so a certain outcome costs 0 nats and an
impossible one ``−inf`` (no NaN).

These functions are the specification the Triton kernels are tested against; they have the same
signatures as :mod:`bihm_triton.ops`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import (
    check_binary,
    check_layer_args,
    check_weight_norm_args,
    compute_dtype,
)
from .philox import check_offset, philox_uniform, resolve_seed

__all__ = [
    "bernoulli_log_prob",
    "bernoulli_sample",
    "sbn_logits",
    "sbn_sample",
    "sbn_log_prob",
    "sbn_sample_wn",
    "sbn_log_prob_wn",
    "weight_norm",
    "weight_norm_scale",
]


def bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-row ``Σ_j log Bern(x_rj; σ(a_rj)) = Σ_j x·a − softplus(a)`` in nats.

    Args:
        logits: (R, M) float tensor ``a``.
        x: (R, M) binary targets, any real or bool dtype (cast to ``logits.dtype``).

    Returns:
        (R,) tensor of ``logits.dtype``. Differentiable in ``logits`` (``∂/∂a = x − σ(a)``).
    """
    # x·a − softplus(a) = −softplus(−a) for x = 1 and −softplus(a) for x = 0: written that way it is
    # also exact for infinite logits (a certain outcome costs 0 nats, an impossible one −inf, no NaN)
    return -F.softplus(torch.where(x != 0, -logits, logits)).sum(-1)


def bernoulli_sample(
    logits: torch.Tensor,
    *,
    seed: int | torch.Tensor,
    offset: int = 0,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Draw ``x = 1[u < σ(logits)]`` with ``u`` the ``(seed, offset)`` uniforms of an (R, M) draw.

    Args:
        logits: (R, M) float tensor.
        seed: int in ``[0, 2**63)`` or an int64 tensor with one element.
        offset: first Philox counter of the draw (see :mod:`~bihm_triton.reference.philox`).
        out_dtype: dtype of the sample (default ``logits.dtype``).

    Returns:
        (R, M) tensor of 0/1 values, no gradient.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (R, M), got {tuple(logits.shape)}")
    R, M = logits.shape
    u = philox_uniform(seed, offset, R, M, device=logits.device)
    x = u.to(logits.dtype) < torch.sigmoid(logits.detach())
    return x.to(out_dtype or logits.dtype)


def weight_norm_scale(weight_v: torch.Tensor, weight_g: torch.Tensor) -> torch.Tensor:
    """Row scale ``s_j = g_j / ‖v_j‖`` (M,) of weight normalization over rows (``dim=0``)."""
    g = check_weight_norm_args(weight_v, weight_g, 0)
    dt = compute_dtype(weight_v, weight_g)
    return g.to(dt) / weight_v.to(dt).norm(dim=1)


def weight_norm(weight_v: torch.Tensor, weight_g: torch.Tensor, dim: int | None = 0) -> torch.Tensor:
    """Weight normalization ``W = g · v / ‖v‖`` (Salimans & Kingma 2016, eq. 2).

    The semantics of ``torch.nn.utils.parametrizations.weight_norm(module, dim=dim)`` for a 2-D
    weight: with ``dim=0`` (or −2) every row ``j`` is normalized, ``W_j = g_j v_j / ‖v_j‖``; with
    ``dim=1`` every column; with ``dim=-1`` or None the whole tensor, ``W = g · v / ‖v‖_F``.

    Args:
        weight_v: (M, N) direction ``v``.
        weight_g: magnitude ``g``, (M,) or (M, 1) for ``dim=0``; (N,) or (1, N) for ``dim=1``; a
            scalar for ``dim=-1``/None.
        dim: 0 (rows, the layout of SPEC §5), 1 (columns), −1/None (whole tensor); −2 is 0.

    Returns:
        (M, N) weight in the promoted dtype of the inputs. Differentiable in both inputs.

    Raises:
        ValueError / TypeError: shapes, dims or dtypes that do not fit (named in the message).
    """
    g = check_weight_norm_args(weight_v, weight_g, dim)
    dt = torch.promote_types(weight_v.dtype, weight_g.dtype)
    v = weight_v.to(dt)
    if dim in (-1, None):
        return v * (g.to(dt) / v.norm())
    if dim % 2 == 0:
        return v * (g.to(dt) / v.norm(dim=1)).unsqueeze(1)
    return v * (g.to(dt) / v.norm(dim=0)).unsqueeze(0)


def sbn_logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *, scale: torch.Tensor | None = None):
    """Logits ``a = (h · Wᵀ) ⊙ scale + b`` (R, M); ``scale`` (M,) folds weight normalization."""
    dt = compute_dtype(h, weight, bias)
    a = h.to(dt) @ weight.to(dt).t()
    if scale is not None:
        a = a * scale.to(dt)
    return a + bias.to(dt)


def sbn_sample(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    *,
    seed: int | torch.Tensor | None = None,
    offset: int = 0,
    out_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample a stochastic binary layer and score the sample (SPEC §5).

    Args:
        h: (R, N) input states, bool, uint8, or float (real values allowed).
        weight: (M, N) weight ``W``.
        bias: (M,) bias ``b``.
        seed: Philox key in ``[0, 2**63)``, or an int64 tensor with one element; ``None`` draws
            one from torch's default generator (so ``torch.manual_seed`` reproduces a run).
        offset: first Philox counter of the draw; the draw uses ``ceil(R/4)·M`` counters.
        out_dtype: dtype of the sample ``x``.

    Returns:
        ``(x, log_prob)``: x (R, M) of ``out_dtype`` with values in {0, 1} and no gradient;
        log_prob (R,) float32 (float64 if an input is float64) in nats,
        ``Σ_j log Bern(x_rj; σ(a_rj))``, differentiable in h, weight and bias with x held fixed.

    Raises:
        ValueError / TypeError: mismatched shapes, devices or dtypes, or a bad seed / offset.
    """
    check_layer_args(h, weight, bias)
    seed = resolve_seed(seed)
    check_offset(offset)
    a = sbn_logits(h, weight, bias)
    x = bernoulli_sample(a, seed=seed, offset=offset)
    return x.to(out_dtype), bernoulli_log_prob(a, x)


def sbn_log_prob(h: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Per-row log-likelihood ``Σ_j x·a − softplus(a)`` (R,) of binary targets x (R, M), in nats.

    Args:
        h: (R, N) input states; weight: (M, N); bias: (M,); x: (R, M) with values in {0, 1}.

    Returns:
        (R,) float32 (float64 if an input is float64), differentiable in h, weight and bias.

    Raises:
        ValueError: non-binary x, or mismatched shapes/devices (named in the message).
    """
    check_layer_args(h, weight, bias, x)
    check_binary(x, "x")
    return bernoulli_log_prob(sbn_logits(h, weight, bias), x)


def sbn_sample_wn(
    h: torch.Tensor,
    weight_v: torch.Tensor,
    weight_g: torch.Tensor,
    bias: torch.Tensor,
    *,
    seed: int | torch.Tensor | None = None,
    offset: int = 0,
    out_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sbn_sample` with a weight-normalized weight ``W_j = g_j v_j / ‖v_j‖`` (never built).

    Args:
        weight_v: (M, N) directions; weight_g: (M,) or (M, 1) magnitudes. Other arguments and the
            returns as in :func:`sbn_sample`; gradients flow to weight_v and weight_g.
    """
    check_layer_args(h, weight_v, bias, weight_name="weight_v")
    scale = weight_norm_scale(weight_v, weight_g)
    seed = resolve_seed(seed)
    check_offset(offset)
    a = sbn_logits(h, weight_v, bias, scale=scale)
    x = bernoulli_sample(a, seed=seed, offset=offset)
    return x.to(out_dtype), bernoulli_log_prob(a, x)


def sbn_log_prob_wn(
    h: torch.Tensor, x: torch.Tensor, weight_v: torch.Tensor, weight_g: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """:func:`sbn_log_prob` with a weight-normalized weight (``weight_v`` (M, N), ``weight_g`` (M,))."""
    check_layer_args(h, weight_v, bias, x, weight_name="weight_v")
    check_binary(x, "x")
    scale = weight_norm_scale(weight_v, weight_g)
    return bernoulli_log_prob(sbn_logits(h, weight_v, bias, scale=scale), x)
