"""Samplers of p* (SPEC §4) against exact enumeration on a tiny model.

Total-variation bounds: with n = 20,000 chains over 16 cells the sampling noise alone gives
E[TV] ≈ Σ_x sqrt(p(x)(1−p(x))/(2πn)) ≈ 0.01; the issue's bound is 0.02.
"""

from __future__ import annotations

import pytest
import torch
from scipy import stats

import bihm_triton.reference as ref
from bihm_triton import samplers
from bihm_triton.model import BiHM
from helpers import random_model

pytestmark = pytest.mark.slow
N_CHAINS = 20000


@pytest.fixture(scope="module")
def tiny():
    model = random_model([4, 3, 2], seed=11, dtype=torch.float32)
    return model, ref.exact_enumeration(model)


def _tv(x: torch.Tensor, log_p: torch.Tensor) -> float:
    h = torch.bincount(ref.binary_index(x), minlength=log_p.numel()).double() / x.shape[0]
    return 0.5 * float((h - log_p.exp()).abs().sum())


@pytest.mark.parametrize("k,steps", [(2, 30), (10, 12)])
def test_exact_gibbs_matches_p_star(tiny, k, steps):
    model, e = tiny
    assert _tv(model.sample_p(N_CHAINS, seed=0), e.log_p_star) > 0.1  # p and p* differ: the test has teeth
    g = samplers.gibbs_sample(model, N_CHAINS, steps, k, seed=k, progress=False)
    tv = _tv(g.x, e.log_p_star)
    print(f"exact Gibbs K={k}: TV(samples, p*) = {tv:.4f}")
    assert tv < 0.02


def test_paper_compatible_gibbs_is_biased_at_small_k(tiny):
    """Reported, and checked to be measurably worse than the exact sampler at K = 2 (noise ~0.014 here)."""
    model, e = tiny
    g = samplers.gibbs_sample(model, N_CHAINS // 2, 20, 2, paper_compatible=True, seed=102, progress=False)
    tv = _tv(g.x, e.log_p_star)
    print(f"paper-compatible Gibbs K=2: TV(samples, p*) = {tv:.4f}")
    assert tv > 0.04


def test_hidden_block_updates_leave_p_star_invariant(tiny):
    """Start from exact draws of p*(x, h); one i-SIR update of every hidden layer must keep the joint
    distribution p*(x, h): chi-square goodness of fit over the 512 joint cells (p-value > 1e-3)."""
    model, e = tiny
    n = 40000
    joint = e.log_p_star_joint.exp().flatten()
    g = torch.Generator().manual_seed(0)
    idx = torch.multinomial(joint, n, replacement=True, generator=g)
    nh = e.h.shape[0]
    x, h = e.x[idx // nh].float(), e.h[idx % nh].float()
    states = [x, h[:, :3], h[:, 3:]]
    stream = ref.RandomStream(7)
    for l in (1, 2):
        states[l] = samplers._update_hidden(model, states, l, 2, False, stream)
    cell = ref.binary_index(states[0]) * nh + ref.binary_index(torch.cat(states[1:], 1))
    counts = torch.bincount(cell, minlength=joint.numel()).double()
    expected = joint * n
    keep = expected > 5
    obs = torch.cat([counts[keep], counts[~keep].sum().reshape(1)])
    exp = torch.cat([expected[keep], expected[~keep].sum().reshape(1)])
    assert stats.chisquare(obs.numpy(), exp.numpy() * obs.sum().item() / exp.sum().item()).pvalue > 1e-3
    assert (states[1] != h[:, :3]).any()  # the update moved something


def test_sir_matches_p_star(tiny):
    model, e = tiny
    s = samplers.sir_sample(model, N_CHAINS, 50, 1, seed=3)
    assert _tv(s.x, e.log_p_star) < 0.02
    assert 1.0 < s.ess <= N_CHAINS * 50


def test_inpainting_clamps_observed_and_samples_the_conditional(tiny):
    """With x_0, x_1 observed, the free pixels must follow p*(x_2, x_3 | x_0, x_1) (TV over 4 cells)."""
    model, e = tiny
    x = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(N_CHAINS, 1)
    mask = torch.tensor([[True, True, False, False]]).repeat(N_CHAINS, 1)
    r = samplers.inpaint(model, x, mask, 15, 10, seed=5, progress=False)
    assert torch.equal(r.x[:, :2], x[:, :2])
    sel = (e.x[:, 0] == 1) & (e.x[:, 1] == 0)
    cond = e.log_p_star[sel] - torch.logsumexp(e.log_p_star[sel], 0)
    tv = _tv(r.x[:, 2:], cond)
    print(f"inpainting TV = {tv:.4f}")
    assert tv < 0.02


def test_gibbs_is_reproducible_and_equal_across_backends(tiny):
    model, _ = tiny
    a = samplers.gibbs_sample(model, 12, 3, 3, seed=9, progress=False)
    b = samplers.gibbs_sample(model, 12, 3, 3, seed=9, progress=False)
    assert torch.equal(a.x, b.x)
    fast = BiHM(model.sizes, backend="triton")
    fast.load_state_dict(model.state_dict())
    c = fast.gibbs_sample(12, 3, 3, seed=9, progress=False)
    # same stream; samples may only differ where a logit's last bit flips a draw (not expected here)
    assert (c.x != a.x).float().mean() < 0.05


def test_sampler_bad_input(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        samplers.gibbs_sample(model, 4, 2, 0)
    with pytest.raises(ValueError, match="mask must have the shape of x"):
        samplers.inpaint(model, torch.zeros(2, 4), torch.ones(2, 3, dtype=torch.bool), 2)
    with pytest.raises(ValueError, match="init must hold n = 5 chains"):
        samplers.gibbs_sample(model, 5, 1, 2, init=[torch.zeros(4, 4), torch.zeros(4, 3), torch.zeros(4, 2)])
