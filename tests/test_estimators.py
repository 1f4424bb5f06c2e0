"""SPEC §2 estimators against exact enumeration, with bounds from standard errors and leading-order bias.

For ``n`` i.i.d. draws with mean ``μ`` and variance ``σ²``, ``log mean`` has bias ``≈ −σ²/(2nμ²)``
(delta method) and standard error ``≈ σ/(μ sqrt(n))``. The moments come exactly from the
enumeration tables (:func:`helpers.exact_moments`).
"""

from __future__ import annotations

import math

import pytest
import torch

import bihm_triton.reference as ref
from helpers import exact_moments, random_model


@pytest.fixture(scope="module")
def tiny():
    model = random_model([4, 3, 2], seed=21)
    return model, ref.exact_enumeration(model)


def test_z2_estimator_within_standard_errors(tiny):
    model, e = tiny
    for n_inner, seed in ((1, 1), (4, 2)):
        est = model.estimate_log_z2(20000, n_inner=n_inner, seed=seed)
        assert abs(est.value - float(e.log_z2)) <= 4 * est.se, (n_inner, est, float(e.log_z2))
        assert 0 < est.se < 0.1


@pytest.mark.parametrize("i", [0, 6, 15])
def test_importance_means_are_unbiased(tiny, i):
    """mean_k sqrt(ω_k) is unbiased for sqrt(p̃*(x)) and mean_k ω_k for p(x): within 4 exact SEs."""
    model, e = tiny
    K = 20000
    log_w = model.log_weights(e.x[i:i + 1], K, seed=100 + i)[0]
    mom = exact_moments(e, i)
    sqrt_pt = math.exp(0.5 * float(e.log_p_tilde_star[i]))
    se_half = math.sqrt((mom[1.0] - mom[0.5] ** 2) / K)  # Var_q sqrt(ω) = p(x) − p̃*(x)
    assert abs(float(torch.exp(0.5 * log_w).mean()) - sqrt_pt) <= 4 * se_half
    p = math.exp(float(e.log_p[i]))
    assert math.isclose(mom[1.0], p, rel_tol=1e-9)
    se_w = math.sqrt((mom[2.0] - p**2) / K)
    assert abs(float(torch.exp(log_w).mean()) - p) <= 4 * se_w


@pytest.mark.parametrize("i", [3, 12])
def test_log_estimators_approach_from_below(tiny, i):
    """The averaged log-estimates sit below the exact value by about the delta-method bias, and the
    gap closes as K grows: |mean − (exact − bias_K)| <= 4 SE + bias_K (room for higher-order terms)."""
    model, e = tiny
    mom = exact_moments(e, i)
    reps = 400
    x = e.x[i:i + 1].repeat(reps, 1)
    gaps = {}
    for K in (1, 10, 100):
        log_w = model.log_weights(x, K, seed=K)
        for name, estimate, exact, mu, var in (
            ("p_tilde_star", ref.log_p_tilde_star_estimate(log_w), float(e.log_p_tilde_star[i]),
             mom[0.5], mom[1.0] - mom[0.5] ** 2),
            ("p", ref.log_p_estimate(log_w), float(e.log_p[i]), mom[1.0], mom[2.0] - mom[1.0] ** 2),
        ):
            scale = 2.0 if name == "p_tilde_star" else 1.0  # log p̃* is 2·log mean sqrt(ω)
            bias = scale * var / (2 * K * mu**2)
            m, se = float(estimate.mean()), float(estimate.std() / math.sqrt(reps))
            assert m <= exact + 4 * se, (name, K)
            if K >= 10:
                assert abs(m - (exact - bias)) <= 4 * se + bias, (name, K, m, exact, bias, se)
            gaps[name, K] = exact - m
    for name in ("p_tilde_star", "p"):
        assert gaps[name, 100] < gaps[name, 1]


def test_log_p_star_uses_log_z2(tiny):
    model, e = tiny
    ll = model.log_likelihood(e.x, 50, log_z2=float(e.log_z2), seed=3)
    torch.testing.assert_close(ll.log_p_star, ll.log_p_tilde_star - float(e.log_z2))
    assert model.log_likelihood(e.x, 5, seed=3).log_p_star is None


def test_bhattacharyya_estimate_converges(tiny):
    model, e = tiny
    K, seeds = 20000, (8, 9, 10, 11)
    reps = torch.stack([model.bhattacharyya_distance(e.x, K, seed=s) for s in seeds])
    for i in range(16):
        # Leading-order bias and variance of ½(log p̂ − log p̃*^) = ½ log mean ω − log mean sqrt ω, from the exact
        # moments of ω under q (delta method; the sample SD of a few repeats is unreliable for heavy-tailed ω):
        # bias ½(−Var ω/(2Kp²) + (p − S²)/(K S²)), variance Var(½ω/p − sqrt(ω)/S)/K with p = E ω, S = E sqrt ω.
        mom = exact_moments(e, i, (0.5, 1.0, 1.5, 2.0))
        p, S = mom[1.0], mom[0.5]
        bias = 0.5 * (-(mom[2.0] - p ** 2) / (2 * K * p ** 2) + (p - S ** 2) / (K * S ** 2))
        se = math.sqrt((0.25 * mom[2.0] / p ** 2 - mom[1.5] / (p * S) + p / S ** 2 - 0.25) / K / len(seeds))
        assert abs(float(reps[:, i].mean()) - (float(e.bhattacharyya[i]) + bias)) <= 4 * se + abs(bias), i


def test_effective_sample_size_known_vectors():
    K = 8
    assert math.isclose(float(ref.effective_sample_size(torch.zeros(1, K))), K, rel_tol=1e-6)
    one_hot = torch.full((1, K), -1e4)
    one_hot[0, 3] = 0.0
    assert math.isclose(float(ref.effective_sample_size(one_hot)), 1.0, rel_tol=1e-6)
    # two equal weights and the rest zero
    two = one_hot.clone()
    two[0, 5] = 0.0
    assert math.isclose(float(ref.effective_sample_size(two)), 2.0, rel_tol=1e-6)


def test_effective_sample_size_limit(tiny):
    """ESS / K → (E w)² / E w² as K grows: p-weights w = ω, p*-weights w = sqrt(ω)."""
    model, e = tiny
    i, K = 9, 40000
    mom = exact_moments(e, i, powers=(0.5, 1.0, 2.0, 3.0, 4.0))
    ess = model.effective_sample_size(e.x[i:i + 1], K, seed=4)
    for got, m1, m2, m3, m4 in ((ess.p, mom[1.0], mom[2.0], mom[3.0], mom[4.0]),
                                (ess.p_star, mom[0.5], mom[1.0], None, mom[2.0])):
        want = m1**2 / m2
        # delta-method SE of r = m1²/m2 from the sample moments: dominated by the E w² term
        rel_se = math.sqrt((m4 - m2**2) / K) / m2 + 2 * math.sqrt((m2 - m1**2) / K) / m1
        assert abs(float(got) / K - want) <= 4 * rel_se * want


def test_log_mean_exp_with_se_matches_direct():
    t = torch.randn(1000, dtype=torch.float64)
    r = ref.log_mean_exp_with_se(t)
    e = t.exp()
    assert math.isclose(r.value, math.log(float(e.mean())), rel_tol=1e-12)
    assert math.isclose(r.se, float(e.std() / e.mean() / math.sqrt(1000)), rel_tol=1e-9)
    with pytest.raises(ValueError):
        ref.log_mean_exp_with_se(torch.zeros(1))


def test_estimators_on_a_hand_computed_example():
    """ω = (1, 4, 0.25, 1): mean sqrt ω = 1.125, mean ω = 1.5625 (exact arithmetic)."""
    log_w = torch.tensor([[0.0, math.log(4.0), math.log(0.25), 0.0]], dtype=torch.float64)
    assert math.isclose(float(ref.log_p_tilde_star_estimate(log_w)), 2 * math.log(1.125), rel_tol=1e-12)
    assert math.isclose(float(ref.log_p_estimate(log_w)), math.log(1.5625), rel_tol=1e-12)
    assert math.isclose(float(ref.bhattacharyya_estimate(log_w)),
                        0.5 * (math.log(1.5625) - 2 * math.log(1.125)), rel_tol=1e-12)
    # ESS of weights (1, 4, .25, 1): (6.25)² / (1 + 16 + 1/16 + 1)
    assert math.isclose(float(ref.effective_sample_size(log_w)), 6.25**2 / 18.0625, rel_tol=1e-12)
