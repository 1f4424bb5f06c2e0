"""The reference stochastic layer and weight normalization against torch's own ops and binomial bounds."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Bernoulli

import bihm_triton.reference as ref
from helpers import binary


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_prob_matches_torch_bernoulli(dtype):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(31, 17, generator=g, dtype=dtype) * 6
    x = binary(31, 17, generator=g, dtype=dtype)
    want = Bernoulli(logits=a).log_prob(x).sum(-1)
    torch.testing.assert_close(ref.bernoulli_log_prob(a, x), want)


def test_log_prob_extreme_logits_finite():
    a = torch.tensor([[1e4, -1e4, 80.0, -80.0, 0.0]], dtype=torch.float32).repeat(2, 1)
    x = torch.tensor([[1.0, 0.0, 1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 1.0, 0.0]])
    lp = ref.bernoulli_log_prob(a, x)
    assert torch.isfinite(lp).all()
    torch.testing.assert_close(lp, Bernoulli(logits=a).log_prob(x).sum(-1))
    # the likely outcomes cost ~0 nats, the unlikely ones |a| nats
    torch.testing.assert_close(lp[0], torch.tensor(-math.log(2.0)))
    torch.testing.assert_close(lp[1], torch.tensor(-2e4 - 160.0 - math.log(2.0)))


def test_log_prob_infinite_logits():
    """a = −inf with x = 0 (and +inf with x = 1) is a certain outcome: log-probability 0, not NaN."""
    a = torch.tensor([[-float("inf"), float("inf")]])
    assert float(ref.bernoulli_log_prob(a, torch.tensor([[0.0, 1.0]]))) == 0.0
    assert float(ref.bernoulli_log_prob(a, torch.tensor([[1.0, 1.0]]))) == -float("inf")
    assert float(ref.bernoulli_log_prob(a, torch.tensor([[0.0, 0.0]]))) == -float("inf")


def test_log_prob_gradient_is_x_minus_sigmoid():
    a = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    x = binary(5, 7, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: ref.bernoulli_log_prob(t, x), (a,))
    (g,) = torch.autograd.grad(ref.bernoulli_log_prob(a, x).sum(), a)
    torch.testing.assert_close(g, x - torch.sigmoid(a))


@pytest.mark.parametrize("dim", [0, 1])
def test_weight_norm_matches_torch_parametrization(dim):
    torch.manual_seed(1)
    lin = torch.nn.Linear(13, 7, dtype=torch.float64)
    lin = torch.nn.utils.parametrizations.weight_norm(lin, dim=dim)
    g = lin.parametrizations.weight.original0
    v = lin.parametrizations.weight.original1
    with torch.no_grad():
        g.mul_(torch.rand_like(g) + 0.5)  # move away from g = ‖v‖
    want = lin.weight
    got = ref.weight_norm(v, g, dim=dim)
    torch.testing.assert_close(got, want)
    G = torch.randn_like(want)
    torch.testing.assert_close(torch.autograd.grad((got * G).sum(), (v, g)),
                               torch.autograd.grad((lin.weight * G).sum(), (v, g)))
    # g given flat works the same
    torch.testing.assert_close(ref.weight_norm(v, g.reshape(-1), dim=dim), want)


def test_weight_norm_gradcheck():
    v = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    g = torch.rand(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ref.weight_norm, (v, g))


@pytest.mark.parametrize("fn", ["sbn_log_prob", "sbn_log_prob_wn"])
def test_layer_gradcheck(fn):
    torch.manual_seed(2)
    h = torch.rand(6, 5, dtype=torch.float64, requires_grad=True)
    x = binary(6, 4, dtype=torch.float64)
    w = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    if fn == "sbn_log_prob":
        assert torch.autograd.gradcheck(lambda h, w, b: ref.sbn_log_prob(h, x, w, b), (h, w, b))
    else:
        g = (torch.rand(4, dtype=torch.float64) + 0.5).requires_grad_()
        assert torch.autograd.gradcheck(lambda h, w, g, b: ref.sbn_log_prob_wn(h, x, w, g, b), (h, w, g, b))


def test_weight_norm_layer_equals_explicit_weight():
    torch.manual_seed(3)
    h = binary(9, 5)
    v, g, b = torch.randn(4, 5), torch.rand(4) + 0.5, torch.randn(4)
    x1, lp1 = ref.sbn_sample_wn(h, v, g, b, seed=11)
    x2, lp2 = ref.sbn_sample(h, ref.weight_norm(v, g), b, seed=11)
    assert torch.equal(x1, x2)
    torch.testing.assert_close(lp1, lp2)


def test_sample_frequencies_within_binomial_bounds():
    """Per-unit frequencies over n rows match σ(a) within 5 binomial standard errors
    (Bonferroni over the units: each two-sided tail at 5 SE has probability < 6e-7)."""
    n, M = 4000, 24
    logits = torch.linspace(-4, 4, M)
    h = torch.zeros(n, 0)
    x, _ = ref.sbn_sample(h, torch.zeros(M, 0), logits, seed=123)
    p = torch.sigmoid(logits)
    se = torch.sqrt(p * (1 - p) / n)
    assert ((x.mean(0) - p).abs() <= 5 * se).all()


def test_same_seed_offset_same_sample_and_offsets_differ():
    torch.manual_seed(4)
    h, w, b = binary(50, 8), torch.randn(30, 8), torch.zeros(30)
    x1, lp1 = ref.sbn_sample(h, w, b, seed=9, offset=100)
    x2, lp2 = ref.sbn_sample(h, w, b, seed=9, offset=100)
    x3, _ = ref.sbn_sample(h, w, b, seed=9, offset=101)
    x4, _ = ref.sbn_sample(h, w, b, seed=10, offset=100)
    assert torch.equal(x1, x2) and torch.equal(lp1, lp2)
    assert not torch.equal(x1, x3) and not torch.equal(x1, x4)


def test_seed_none_follows_torch_manual_seed():
    h, w, b = binary(20, 3), torch.randn(10, 3), torch.zeros(10)
    torch.manual_seed(5)
    x1, _ = ref.sbn_sample(h, w, b)
    torch.manual_seed(5)
    x2, _ = ref.sbn_sample(h, w, b)
    assert torch.equal(x1, x2)


def test_nan_logits_give_zero_samples_and_nan_log_prob():
    h = torch.zeros(3, 0)
    b = torch.tensor([float("nan"), 0.0])
    x, lp = ref.sbn_sample(h, torch.zeros(2, 0), b, seed=1)
    assert (x[:, 0] == 0).all() and torch.isnan(lp).all()


# ---------------------------------------------------------------------------------- bad input


def test_bad_shapes_name_the_argument():
    h, w, b = torch.zeros(4, 3), torch.zeros(5, 3), torch.zeros(5)
    with pytest.raises(ValueError, match=r"weight must have shape \(M, N\) with N = h.shape\[1\] = 3"):
        ref.sbn_sample(h, torch.zeros(5, 4), b, seed=0)
    with pytest.raises(ValueError, match=r"bias must have shape \(M,\) = \(5,\)"):
        ref.sbn_sample(h, w, torch.zeros(4), seed=0)
    with pytest.raises(ValueError, match=r"x must have shape \(R, M\) = \(4, 5\)"):
        ref.sbn_log_prob(h, torch.zeros(4, 6), w, b)
    with pytest.raises(ValueError, match=r"h must have 2 dimension\(s\) \(R, N\)"):
        ref.sbn_sample(torch.zeros(3), w, b, seed=0)
    with pytest.raises(ValueError, match=r"weight must have 2 dimension\(s\) \(M, N\)"):
        ref.sbn_sample(h, torch.zeros(5), b, seed=0)
    with pytest.raises(TypeError, match="weight has dtype torch.int64"):
        ref.sbn_sample(h, w.long(), b, seed=0)


def test_non_binary_targets_rejected():
    h, w, b = torch.zeros(2, 3), torch.zeros(5, 3), torch.zeros(5)
    x = torch.zeros(2, 5)
    x[1, 3] = 0.5
    with pytest.raises(ValueError, match=r"x must be binary.*x\[1, 3\] = 0.5"):
        ref.sbn_log_prob(h, x, w, b)


def test_weight_norm_bad_g_shape():
    with pytest.raises(ValueError, match=r"weight_g must have shape \(4,\) or \(4, 1\)"):
        ref.weight_norm(torch.zeros(4, 3), torch.zeros(3))
    with pytest.raises(ValueError, match="dim must be 0"):
        ref.weight_norm(torch.zeros(4, 3), torch.zeros(4), dim=2)
