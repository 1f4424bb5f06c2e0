"""Exact enumeration on tiny models: the identities of SPEC §1, and the reference samplers' distributions."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

import bihm_triton.reference as ref
from helpers import random_model

SIZES = [[3, 2], [4, 3, 2], [3, 2, 2, 2]]


@pytest.mark.parametrize("sizes", SIZES, ids=str)
@pytest.mark.parametrize("weight_norm,deterministic", [(False, 0), (True, 0), (False, 2)],
                         ids=["plain", "weight_norm", "2-deterministic"])
def test_enumeration_identities(sizes, weight_norm, deterministic):
    model = random_model(sizes, seed=len(sizes), weight_norm=weight_norm, deterministic_layers=deterministic)
    e = ref.exact_enumeration(model)
    n = 2 ** sizes[0]
    assert e.x.shape == (n, sizes[0]) and e.log_p.shape == (n,)
    torch.testing.assert_close(torch.logsumexp(e.log_p, 0), torch.tensor(0.0, dtype=torch.float64))
    torch.testing.assert_close(torch.logsumexp(e.log_p_star, 0), torch.tensor(0.0, dtype=torch.float64))
    assert e.log_z2 <= 0  # Cauchy–Schwarz
    torch.testing.assert_close(e.log_p_tilde_star, e.log_p - 2 * e.bhattacharyya)
    assert (e.bhattacharyya >= -1e-12).all()
    assert (e.log_p_tilde_star <= e.log_p_star).all()
    # the joint p*(x, h) sums to one and its x-marginal is p*(x)
    torch.testing.assert_close(torch.logsumexp(e.log_p_star_joint.flatten(), 0), torch.tensor(0.0, dtype=torch.float64))


@pytest.mark.parametrize("deterministic", [0, 1, 3])
def test_tables_agree_with_the_model(deterministic):
    """The model's primitives (for deterministic layers: the MLP through the layer ops) against the
    enumeration's own float64 evaluation of every table entry."""
    model = random_model([4, 3, 2], seed=7, deterministic_layers=deterministic)
    e = ref.exact_enumeration(model)
    sample = model.sample_p(50, seed=1, return_hidden=True)
    states = [sample.x, *sample.hidden]
    ix = ref.binary_index(sample.x)
    ih = ref.binary_index(torch.cat(sample.hidden, dim=1))
    torch.testing.assert_close(model.log_p_joint(states), e.log_p_joint[ix, ih])
    torch.testing.assert_close(sample.log_p, e.log_p_joint[ix, ih])
    torch.testing.assert_close(model.log_q_cond(states), e.log_q_cond[ix, ih])


def test_p_equal_q_gives_no_bhattacharyya_gap():
    """A one-latent model whose q is p's exact posterior: D_B = 0 and p̃* = p*, Z² = 1."""
    model = random_model([1, 1], seed=3)
    with torch.no_grad():
        # p(h) = σ(c), p(x|h) = σ(w h + b); choose q(h|x) = p(h|x) exactly.
        c, w, b = model.p_top.logits[0], model.p_layers[0].weight[0, 0], model.p_layers[0].bias[0]
        def log_joint(x, h):
            lh = h * c - torch.nn.functional.softplus(c)
            a = w * h + b
            return lh + x * a - torch.nn.functional.softplus(a)
        for x in (0.0, 1.0):
            post_logit = log_joint(x, 1.0) - log_joint(x, 0.0)
            if x == 0.0:
                b0 = post_logit
            else:
                b1 = post_logit
        model.q_layers[0].bias.fill_(b0)
        model.q_layers[0].weight.fill_(b1 - b0)
    e = ref.exact_enumeration(model)
    torch.testing.assert_close(e.bhattacharyya, torch.zeros(2, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(e.log_z2, torch.tensor(0.0, dtype=torch.float64), atol=1e-12, rtol=0)


def test_too_large_model_refused():
    with pytest.raises(ValueError, match="at most"):
        ref.exact_enumeration(ref.BiHM([20, 5]))


def _chisquare_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    keep = expected > 5  # pool the rare cells so the chi-square approximation holds
    obs = torch.cat([counts[keep], counts[~keep].sum().reshape(1)]).double()
    exp = torch.cat([expected[keep], expected[~keep].sum().reshape(1)]).double()
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    return float(stats.chisquare(obs.numpy(), exp.numpy() * obs.sum().item() / exp.sum().item()).pvalue)


def test_ancestral_samples_follow_p():
    """Chi-square goodness of fit of sample_p's x-histogram to the exact p(x) (fixed seed, p-value > 1e-3)."""
    model = random_model([4, 3, 2], seed=11)
    e = ref.exact_enumeration(model)
    x = model.sample_p(20000, seed=5)
    counts = torch.bincount(ref.binary_index(x), minlength=16)
    assert _chisquare_pvalue(counts, e.log_p.exp()) > 1e-3


def test_bottom_up_samples_follow_q():
    model = random_model([3, 2, 2], seed=12)
    e = ref.exact_enumeration(model)
    i = 5
    s = model.sample_q(e.x[i:i + 1], 20000, seed=6)
    counts = torch.bincount(ref.binary_index(torch.cat(s.hidden, 1)), minlength=16)
    assert _chisquare_pvalue(counts, e.log_q_cond[i].exp()) > 1e-3
    # and log_q is the log-probability of the sampled configuration
    torch.testing.assert_close(s.log_q[0], e.log_q_cond[i, ref.binary_index(torch.cat(s.hidden, 1))])


def test_all_binary_order():
    x = ref.all_binary(3)
    assert x.tolist()[:3] == [[0, 0, 0], [0, 0, 1], [0, 1, 0]]
    assert torch.equal(ref.binary_index(x), torch.arange(8))
    assert math.isclose(float(x.sum()), 12.0)
