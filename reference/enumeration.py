"""Exact answers for tiny BiHMs by enumerating every binary configuration (SPEC §1).

Used to prove the estimators and samplers right. Cost: ``2**(d_0 + d_1 + … + d_L)`` joint
configurations, so keep the total at about 20 units or fewer.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import torch

from ._checks import compute_dtype
from .bihm import BiHM, WeightNormStochasticLayer
from .layers import bernoulli_log_prob, sbn_logits

__all__ = ["Enumeration", "all_binary", "binary_index", "exact_enumeration", "MAX_ENUMERATION_UNITS"]

#: Largest total number of units (data plus latent) :func:`exact_enumeration` accepts.
MAX_ENUMERATION_UNITS = 22


def all_binary(d: int, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """Every vector of {0,1}^d as rows (2**d, d), in lexicographic order (first unit most significant)."""
    if d == 0:
        return torch.zeros(1, 0, dtype=dtype, device=device)
    return torch.tensor(list(itertools.product((0, 1), repeat=d)), dtype=dtype, device=device)


def binary_index(x: torch.Tensor) -> torch.Tensor:
    """Row index into :func:`all_binary` of each binary row of x (R, d): ``Σ_j x_j 2**(d−1−j)`` (R,) int64."""
    d = x.shape[-1]
    weights = 2 ** torch.arange(d - 1, -1, -1, device=x.device, dtype=torch.int64)
    return (x.to(torch.int64) * weights).sum(-1)


class Enumeration(NamedTuple):
    """Exact per-x quantities of a tiny BiHM, in nats, float64.

    Attributes:
        x: (2**d_0, d_0) every binary data vector (lexicographic order, see :func:`all_binary`).
        log_p: (2**d_0,) ``log p(x) = log Σ_h p(x, h)``.
        log_p_tilde_star: (2**d_0,) ``log p̃*(x) = 2 log Σ_h sqrt(p(x, h) q(h | x))``.
        log_z2: scalar tensor, ``log Z² = log Σ_x p̃*(x)`` (<= 0).
        log_p_star: (2**d_0,) ``log p*(x) = log p̃*(x) − log Z²``.
        bhattacharyya: (2**d_0,) ``D_B(x) = −log Σ_h sqrt(p(h | x) q(h | x))`` (>= 0).
        h: (2**(d_1+…+d_L), d_1+…+d_L) every hidden configuration, layers concatenated.
        log_p_joint: (2**d_0, 2**d_h) ``log p(x, h)``.
        log_q_cond: (2**d_0, 2**d_h) ``log q(h | x)``.
    """

    x: torch.Tensor
    log_p: torch.Tensor
    log_p_tilde_star: torch.Tensor
    log_z2: torch.Tensor
    log_p_star: torch.Tensor
    bhattacharyya: torch.Tensor
    h: torch.Tensor
    log_p_joint: torch.Tensor
    log_q_cond: torch.Tensor

    @property
    def log_p_star_joint(self) -> torch.Tensor:
        """(2**d_0, 2**d_h) ``log p*(x, h) = ½(log p(x,h) + log q(h|x) + log p̃*(x)) − log Z²`` (SPEC §1)."""
        return 0.5 * (self.log_p_joint + self.log_q_cond + self.log_p_tilde_star[:, None]) - self.log_z2


def _layer_tensors(layer):
    """(weight, bias, scale) of a layer in the reference's terms."""
    if isinstance(layer, WeightNormStochasticLayer):
        v = layer.weight_v
        dt = compute_dtype(v)
        return v, layer.bias, layer.weight_g.to(dt) / v.to(dt).norm(dim=1)
    return layer.weight, layer.bias, None


def _score(layer, h, x):
    w, b, s = _layer_tensors(layer)
    h = h.double()
    for m in getattr(layer, "hidden", ()):  # deterministic (tanh) layers of an MLPStochasticLayer, in float64
        h = torch.tanh(h @ m.weight.double().t() + m.bias.double())
    a = sbn_logits(h, w.double(), b.double(), scale=None if s is None else s.double())
    return bernoulli_log_prob(a, x)


@torch.no_grad()
def exact_enumeration(model: BiHM) -> Enumeration:
    """Exact log p(x), log p̃*(x), log Z², log p*(x) and D_B(x) for every x by enumeration, in float64.

    Args:
        model: a :class:`~bihm_triton.reference.BiHM` (or subclass) with at most
            :data:`MAX_ENUMERATION_UNITS` units in all layers together.

    Returns:
        :class:`Enumeration`.

    Raises:
        ValueError: the model is too large to enumerate.
    """
    sizes = model.sizes
    total = sum(sizes)
    if total > MAX_ENUMERATION_UNITS:
        raise ValueError(f"exact_enumeration needs at most {MAX_ENUMERATION_UNITS} units in all layers, "
                         f"got {total} (sizes = {sizes})")
    device = model.p_top.logits.device
    xs = all_binary(sizes[0], device=device)
    hs = all_binary(sum(sizes[1:]), device=device)
    nx, nh = xs.shape[0], hs.shape[0]
    # Joint rows: x index major, h index minor.
    X = xs.repeat_interleave(nh, dim=0)
    H = hs.repeat(nx, 1)
    bounds = [0]
    for d in sizes[1:]:
        bounds.append(bounds[-1] + d)
    states = [X] + [H[:, bounds[i]:bounds[i + 1]] for i in range(len(sizes) - 1)]

    empty = X.new_zeros(X.shape[0], 0)
    log_p = _score(model.p_top, empty, states[-1])
    for l, layer in enumerate(model.p_layers):
        log_p = log_p + _score(layer, states[l + 1], states[l])
    log_q = torch.zeros_like(log_p)
    for l, layer in enumerate(model.q_layers):
        log_q = log_q + _score(layer, states[l], states[l + 1])
    log_p = log_p.view(nx, nh)
    log_q = log_q.view(nx, nh)

    log_px = torch.logsumexp(log_p, dim=1)
    log_pt = 2.0 * torch.logsumexp(0.5 * (log_p + log_q), dim=1)
    log_z2 = torch.logsumexp(log_pt, dim=0)
    d_b = -torch.logsumexp(0.5 * (log_p - log_px[:, None] + log_q), dim=1)
    return Enumeration(xs, log_px, log_pt, log_z2, log_pt - log_z2, d_b, hs, log_p, log_q)
