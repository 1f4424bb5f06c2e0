"""What a PyTorch user would write without this library: the benchmark's ``torch`` provider.

Plain eager PyTorch — ``F.linear``, ``torch.rand_like``, ``torch.bernoulli``, ``torch.sigmoid``,
``F.softplus``, ``torch.multinomial``, autograd and ``torch.optim.Adam`` — written the direct way,
with no fusion and no custom random stream. The ``torch_compile`` providers run
``torch.compile`` of exactly these functions (``mode="reduce-overhead"`` adds CUDA graphs).

They draw from torch's own generator, so they cannot be compared with the library sample for
sample; the benchmark guards them statistically (:func:`benchlib.assert_same_distribution`).

Layout: :class:`Net` holds the BiHM's tensors as SPEC §6 lays them out (``p[l]`` generates h_l
from h_{l+1}; ``q[l]`` infers h_{l+1} from h_l; ``prior`` the top logits).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Net:
    prior: torch.Tensor  # (d_L,)
    p: list  # [(W (d_l, d_{l+1}), b (d_l,))], l = 0 … L−1
    q: list  # [(W (d_{l+1}, d_l), b (d_{l+1},))], l = 0 … L−1

    @classmethod
    def from_model(cls, model, requires_grad: bool = False) -> "Net":
        """Copies of a :class:`bihm_triton.reference.BiHM`'s parameters (detached; leaves if requires_grad)."""
        def t(x):
            return x.detach().clone().requires_grad_(requires_grad)

        return cls(t(model.p_top.logits), [(t(m.weight), t(m.bias)) for m in model.p_layers],
                   [(t(m.weight), t(m.bias)) for m in model.q_layers])

    def parameters(self) -> list:
        return [self.prior, *(t for wb in self.p for t in wb), *(t for wb in self.q for t in wb)]


def _bern_log_prob(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return (x * a - F.softplus(a)).sum(-1)


# ------------------------------------------------------------------------------ one layer


def layer_sample(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor):
    """``x ~ Bern(σ(h Wᵀ + b))`` and its log-likelihood: (x uint8 (R, M), log_prob (R,))."""
    a = F.linear(h.to(weight.dtype), weight, bias)
    x = (torch.rand_like(a) < torch.sigmoid(a)).to(a.dtype)
    return x.to(torch.uint8), _bern_log_prob(x, a)


def layer_score(h: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    a = F.linear(h.to(weight.dtype), weight, bias)
    return _bern_log_prob(x.to(a.dtype), a)


# ------------------------------------------------------------------------------ ancestral sampling


def sample_p(prior: torch.Tensor, p: list, n: int, with_log_p: bool = True):
    """Ancestral samples of p: the prior, then every layer down to x. Returns (x (n, d_0), log p (n,) or None).

    Without log p it is the shortest form a user would write: ``torch.bernoulli(torch.sigmoid(...))``.
    """
    a = prior.expand(n, -1)
    if not with_log_p:
        h = torch.bernoulli(torch.sigmoid(a))
        for weight, bias in reversed(p):
            h = torch.bernoulli(torch.sigmoid(F.linear(h, weight, bias)))
        return h, None
    h = (torch.rand_like(a) < torch.sigmoid(a)).to(a.dtype)
    log_p = _bern_log_prob(h, a)
    for weight, bias in reversed(p):
        a = F.linear(h, weight, bias)
        h = (torch.rand_like(a) < torch.sigmoid(a)).to(a.dtype)
        log_p = log_p + _bern_log_prob(h, a)
    return h, log_p


# ------------------------------------------------------------------------------ importance weights


def q_pass(q: list, x: torch.Tensor):
    """h ~ q(h | x), bottom-up: (states [x, h_1 … h_L], log q(h | x) (R,))."""
    states, log_q = [x], 0.0
    for weight, bias in q:
        a = F.linear(states[-1], weight, bias)
        h = (torch.rand_like(a) < torch.sigmoid(a)).to(a.dtype)
        log_q = log_q + _bern_log_prob(h, a)
        states.append(h)
    return states, log_q


def log_p_joint(prior: torch.Tensor, p: list, states: list) -> torch.Tensor:
    """log p(x, h) = log p(h_L) + Σ_l log p(h_l | h_{l+1}) (R,)."""
    out = _bern_log_prob(states[-1], prior.expand_as(states[-1]))
    for l, (weight, bias) in enumerate(p):
        out = out + _bern_log_prob(states[l], F.linear(states[l + 1], weight, bias))
    return out


def bihm_loss(prior, p, q, x: torch.Tensor, k: int):
    """The BiHM surrogate loss of SPEC §3 summed over the batch, and the per-point bound log p̃*(x) (B,)."""
    states, log_q = q_pass(q, x.repeat_interleave(k, dim=0))
    log_p = log_p_joint(prior, p, states).view(-1, k)
    log_q = log_q.view(-1, k)
    log_w = (log_p - log_q).detach()
    w = torch.softmax(0.5 * log_w, dim=-1)
    loss = -(w * log_p).sum() - ((w - 1.0 / k) * log_q).sum()
    bound = 2.0 * (torch.logsumexp(0.5 * log_w, dim=-1) - math.log(k))
    return loss, bound


def log_likelihood(prior, p, q, x: torch.Tensor, k: int):
    """log p̃*(x) and log p(x) estimates (B,) from K importance samples each (SPEC §2)."""
    states, log_q = q_pass(q, x.repeat_interleave(k, dim=0))
    log_w = (log_p_joint(prior, p, states) - log_q).view(-1, k)
    lpt = 2.0 * (torch.logsumexp(0.5 * log_w, dim=-1) - math.log(k))
    return lpt, torch.logsumexp(log_w, dim=-1) - math.log(k)


# ------------------------------------------------------------------------------ exact Gibbs sweep


def _resample(log_w: torch.Tensor) -> torch.Tensor:
    """One index per row of log_w (R, N), drawn ∝ exp(log_w)."""
    return torch.multinomial(torch.softmax(log_w, dim=-1), 1).squeeze(1)


def _pick(cand: torch.Tensor, idx: torch.Tensor, n_cand: int) -> torch.Tensor:
    return cand.view(idx.shape[0], n_cand, -1)[torch.arange(idx.shape[0], device=idx.device), idx]


def _log_s(prior, p, q, x: torch.Tensor, n_inner: int) -> torch.Tensor:
    """log of the unbiased estimate mean_i sqrt(ω(x, h_i)) of sqrt(p̃*(x)), h_i ~ q(h | x)."""
    states, log_q = q_pass(q, x.repeat_interleave(n_inner, dim=0))
    log_w = (log_p_joint(prior, p, states) - log_q).view(-1, n_inner)
    return torch.logsumexp(0.5 * log_w, dim=-1) - math.log(n_inner)


def gibbs_sweep(prior, p, q, states: list, log_s: torch.Tensor, k: int, n_inner: int = 1):
    """One sweep of the exact block Gibbs sampler of :func:`bihm_triton.samplers.gibbs_sample`
    (odd layers, then even ones; i-SIR with the current state as candidate 0; a pseudo-marginal
    x update), written directly. Returns the new (states, log_s)."""
    L = len(states) - 1
    n = states[0].shape[0]
    states = list(states)
    for parity in (1, 0):
        for l in range(parity, L + 1, 2):
            if l == 0:  # x: K candidates from p(x | h_1), weighted by sqrt(q(h_1|x)/p(x|h_1)) · Ŝ(x)
                h1 = states[1].repeat_interleave(k, dim=0)
                a_p = F.linear(h1, *p[0])
                cand = torch.bernoulli(torch.sigmoid(a_p))
                cand.view(n, k, -1)[:, 0] = states[0]
                c_log_s = _log_s(prior, p, q, cand, n_inner).view(n, k)
                c_log_s[:, 0] = log_s
                lq = _bern_log_prob(h1, F.linear(cand, *q[0]))
                log_w = 0.5 * (lq - _bern_log_prob(cand, a_p)).view(n, k) + c_log_s
                idx = _resample(log_w)
                states[0] = _pick(cand, idx, k)
                log_s = c_log_s[torch.arange(n, device=idx.device), idx]
                continue
            top = l == L
            N = 2 * k
            a_p = (prior.expand(n * N, -1) if top else F.linear(states[l + 1].repeat_interleave(N, dim=0), *p[l]))
            a_q = F.linear(states[l - 1].repeat_interleave(N, dim=0), *q[l - 1])
            coin = torch.rand(n * N, 1, device=a_p.device) < 0.5
            cand = torch.where(coin, torch.bernoulli(torch.sigmoid(a_p)), torch.bernoulli(torch.sigmoid(a_q)))
            cand.view(n, N, -1)[:, 0] = states[l]
            lp, lq = _bern_log_prob(cand, a_p), _bern_log_prob(cand, a_q)
            target = lp + lq + _bern_log_prob(states[l - 1].repeat_interleave(N, dim=0), F.linear(cand, *p[l - 1]))
            if not top:
                target = target + _bern_log_prob(states[l + 1].repeat_interleave(N, dim=0), F.linear(cand, *q[l]))
            log_w = (0.5 * target - (torch.logaddexp(lp, lq) - math.log(2.0))).view(n, N)
            states[l] = _pick(cand, _resample(log_w), N)
    return states, log_s


def initial_log_s(prior, p, q, x: torch.Tensor, n_inner: int = 1) -> torch.Tensor:
    """The pseudo-marginal estimate the exact sampler carries with its initial x."""
    return _log_s(prior, p, q, x, n_inner)
