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
from helpers import DEVICE, dyadic, random_model

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


@pytest.mark.skipif(DEVICE.type != "cuda", reason="20 000 chains through the interpreted kernels take too long on "
                    "a CPU; there the fused path is checked chain for chain against the reference sampler")
@pytest.mark.parametrize("k", [2, 3])
def test_fused_gibbs_matches_p_star(tiny, k):
    """The compiled fused updates (hidden layers for even K, x for any K) sample p*: TV bound as above."""
    model, e = tiny
    fast = BiHM(model.sizes, backend="triton", device=DEVICE)
    fast.load_state_dict(model.state_dict())
    g = samplers.gibbs_sample(fast, N_CHAINS, 30, k, seed=k, progress=False)
    assert not fast.engine.failed
    tv = _tv(g.x.cpu(), e.log_p_star)
    print(f"fused exact Gibbs K={k}: TV(samples, p*) = {tv:.4f}")
    assert tv < 0.02


def test_paper_compatible_gibbs_is_biased_at_small_k(tiny):
    """Reported, and checked to be measurably biased at K = 2: its TV exceeds three times the TV that
    sampling noise alone gives, E[TV] ≈ ½ Σ_x sqrt(2 p(1−p) / (π n))."""
    model, e = tiny
    n = N_CHAINS // 2
    g = samplers.gibbs_sample(model, n, 20, 2, paper_compatible=True, seed=102, progress=False)
    tv = _tv(g.x, e.log_p_star)
    p = e.log_p_star.exp()
    noise = 0.5 * float(torch.sqrt(2 * p * (1 - p) / (torch.pi * n)).sum())
    print(f"paper-compatible Gibbs K=2: TV(samples, p*) = {tv:.4f} (sampling noise alone: {noise:.4f})")
    assert tv > 3 * noise


def _exact_draws(e, n, seed):
    """n exact draws of p*(x, h) from the enumeration: x (n, d_0), h (n, d_h), and their cell indices."""
    joint = e.log_p_star_joint.exp().flatten()
    idx = torch.multinomial(joint, n, replacement=True, generator=torch.Generator().manual_seed(seed))
    nh = e.h.shape[0]
    return e.x[idx // nh].float(), e.h[idx % nh].float(), joint


def _assert_joint_is_p_star(states, e, joint):
    """Chi-square goodness of fit of the states' (x, h) cells to p*(x, h) (rare cells pooled; p > 1e-3)."""
    nh = e.h.shape[0]
    cell = ref.binary_index(states[0]) * nh + ref.binary_index(torch.cat(states[1:], 1))
    counts = torch.bincount(cell, minlength=joint.numel()).double()
    expected = joint * cell.numel()
    keep = expected > 5
    obs = torch.cat([counts[keep], counts[~keep].sum().reshape(1)])
    exp = torch.cat([expected[keep], expected[~keep].sum().reshape(1)])
    assert stats.chisquare(obs.numpy(), exp.numpy() * obs.sum().item() / exp.sum().item()).pvalue > 1e-3


def test_hidden_block_updates_leave_p_star_invariant(tiny):
    """Start from exact draws of p*(x, h); one i-SIR update of every hidden layer must keep the joint
    distribution p*(x, h) over the 512 cells."""
    model, e = tiny
    x, h, joint = _exact_draws(e, 40000, 0)
    states = [x, h[:, :3], h[:, 3:]]
    stream = ref.RandomStream(7)
    for l in (1, 2):
        states[l] = samplers._update_hidden(model, states, l, 2, False, stream)
    _assert_joint_is_p_star(states, e, joint)
    assert (states[1] != h[:, :3]).any()  # the update moved something


@pytest.mark.parametrize("k", [2, 5])
def test_pseudo_marginal_x_update_leaves_p_star_invariant(tiny, k):
    """The x update is exact on the extended space (x, h, U) whose U-conditional is size-biased,
    π(h' | x) ∝ q(h'|x)·sqrt(ω(x, h')) = sqrt(p(x, h') q(h'|x)) for n_inner = 1. Start there exactly
    (by enumeration), apply one x update, and the (x, h) joint must still be p*."""
    model, e = tiny
    n = 100_000
    x, h, joint = _exact_draws(e, n, k)
    ix = ref.binary_index(x)
    log_size_biased = 0.5 * (e.log_p_joint + e.log_q_cond)  # (x cells, h' cells)
    hp = torch.multinomial(torch.softmax(log_size_biased[ix], 1), 1,
                           generator=torch.Generator().manual_seed(10 + k)).squeeze(1)
    log_s = (0.5 * (e.log_p_joint[ix, hp] - e.log_q_cond[ix, hp])).float()
    states = [x, h[:, :3], h[:, 3:]]
    new_x, _ = samplers._update_x(model, states, log_s, k, 1, False, ref.RandomStream(20 + k), None, None)
    assert (new_x != x).any()
    _assert_joint_is_p_star([new_x, *states[1:]], e, joint)


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
    exact = random_model(model.sizes, seed=12, dtype=torch.float32, scale=1.0)
    with torch.no_grad():
        for p in exact.parameters():
            p.copy_(dyadic(p))  # exact logits: both backends draw the same candidates
    fast = BiHM(exact.sizes, backend="triton", device=DEVICE)
    fast.load_state_dict(exact.state_dict())
    want = samplers.gibbs_sample(exact, 12, 3, 3, seed=9, progress=False).x
    got = fast.gibbs_sample(12, 3, 3, seed=9, progress=False).x.cpu()
    # The log-weights may still differ in the last bits (log-probabilities summed in another order):
    # a resampling choice then flips only if a uniform lands within ~1e-7 of a CDF boundary. Under
    # the interpreter that is not expected here; on a GPU (approximate exp) allow one chain.
    differing_chains = int((got != want).any(1).sum())
    assert differing_chains <= (1 if DEVICE.type == "cuda" else 0)


def test_sampler_bad_input(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match="k must be an int >= 2"):
        samplers.gibbs_sample(model, 4, 2, 1)
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        samplers.gibbs_sample(model, 4, 2, 0, paper_compatible=True)
    with pytest.raises(ValueError, match="mask must have the shape of x"):
        samplers.inpaint(model, torch.zeros(2, 4), torch.ones(2, 3, dtype=torch.bool), 2)
    with pytest.raises(ValueError, match="init must hold n = 5 chains"):
        samplers.gibbs_sample(model, 5, 1, 2, init=[torch.zeros(4, 4), torch.zeros(4, 3), torch.zeros(4, 2)])


def _exact_pair(sizes):
    """A reference model with dyadic parameters (exact logits) and its Triton-backed copy."""
    exact = random_model(sizes, seed=12, dtype=torch.float32, scale=1.0)
    with torch.no_grad():
        for p in exact.parameters():
            p.copy_(dyadic(p))
    fast = BiHM(sizes, backend="triton", device=DEVICE)
    fast.load_state_dict(exact.state_dict())
    return exact, fast


def _count_calls(model, name):
    calls = []
    real = getattr(model, name)
    setattr(model, name, lambda *a, **kw: calls.append(1) or real(*a, **kw))
    return calls


def _differing_chains(got, want):
    return [int((g.cpu() != w).any(1).sum()) for g, w in zip([got.x, *got.hidden], [want.x, *want.hidden])]


@pytest.mark.parametrize("sizes,k", [([6, 5, 3], 2), ([20, 9, 70, 3], 4), ([12, 8, 6, 4], 10)], ids=str)
def test_fused_gibbs_update_draws_the_reference_chains(sizes, k):
    """The one-launch hidden-layer update (kernels/gibbs.py, even K) and the three-launch x update
    take the reference's stream and choices: with exact logits (dyadic weights) every chain equals
    the reference sampler's."""
    exact, fast = _exact_pair(sizes)
    hidden_calls = _count_calls(fast.engine, "gibbs_hidden")
    x_calls = _count_calls(fast.engine, "gibbs_x")
    got = samplers.gibbs_sample(fast, 13, 3, k, seed=9, progress=False)
    want = samplers.gibbs_sample(exact, 13, 3, k, seed=9, progress=False)
    assert len(hidden_calls) == 3 * (len(sizes) - 1) and len(x_calls) == 3
    assert not fast.engine.failed
    differing = _differing_chains(got, want)
    assert max(differing) <= (1 if DEVICE.type == "cuda" else 0), differing


@pytest.mark.parametrize("mode", ["odd-k-n-inner-3", "paper", "inpaint"])
def test_fused_x_update_draws_the_reference_chains(mode):
    """The fused x update for any K, several inner samples, the paper's plain resampling and clamped
    pixels: the same chains as the reference sampler."""
    sizes = [21, 7, 5]
    exact, fast = _exact_pair(sizes)
    x_calls = _count_calls(fast.engine, "gibbs_x")
    if mode == "inpaint":
        g = torch.Generator().manual_seed(3)
        x = (torch.rand(11, 21, generator=g) < 0.5).float()
        mask = torch.rand(11, 21, generator=g) < 0.4
        got = samplers.inpaint(fast, x.to(DEVICE), mask.to(DEVICE), 3, 3, n_inner=2, seed=4, progress=False)
        want = samplers.inpaint(exact, x, mask, 3, 3, n_inner=2, seed=4, progress=False)
        assert torch.equal(got.x.cpu()[mask], x[mask])
    else:
        kw = dict(n_inner=3) if mode == "odd-k-n-inner-3" else dict(paper_compatible=True)
        got = samplers.gibbs_sample(fast, 13, 3, 5, seed=9, progress=False, **kw)
        want = samplers.gibbs_sample(exact, 13, 3, 5, seed=9, progress=False, **kw)
    assert len(x_calls) == 3 and not fast.engine.failed
    differing = _differing_chains(got, want)
    assert max(differing) <= (1 if DEVICE.type == "cuda" else 0), differing


def test_fused_gibbs_repacks_between_runs():
    """A sampler run checks the packed weights once (parameters are fixed inside it); a parameter
    changed between runs is seen by the next run."""
    sizes = [12, 8, 6, 4]
    exact, fast = _exact_pair(sizes)
    samplers.gibbs_sample(fast, 9, 1, 2, seed=1, progress=False)
    assert fast.engine._fixed is None  # the run's "parameters fixed" state ended with it
    with torch.no_grad():
        for a, b in zip(exact.parameters(), fast.parameters()):
            a.mul_(-0.5)
            b.mul_(-0.5)
    got = samplers.gibbs_sample(fast, 9, 2, 2, seed=3, progress=False)
    want = samplers.gibbs_sample(exact, 9, 2, 2, seed=3, progress=False)
    assert max(_differing_chains(got, want)) <= (1 if DEVICE.type == "cuda" else 0)
