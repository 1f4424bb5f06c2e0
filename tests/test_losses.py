"""The training surrogates of SPEC §3: their expected gradients against exact gradients by enumeration.

Each surrogate gradient is averaged over R independent repetitions; every parameter component must
lie within 5 standard errors of the exact gradient (two-sided 5-SE tails have probability < 6e-7
each, so the family of ~50 components fails by chance with probability < 1e-4). K = 500 keeps the
O(1/K) self-normalization bias well below one standard error.
"""

from __future__ import annotations

import pytest
import torch

import bihm_triton.reference as ref
from helpers import random_model

REPS, K = 60, 500


def _flat_grad(model, loss):
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten()
                      for g, p in zip(grads, model.parameters())])


def _all_states(model, x):
    """States for every hidden configuration with x fixed: x (1, d_0) -> list of (2**d_h, d_l)."""
    hs = ref.all_binary(sum(model.sizes[1:]), dtype=model.dtype)
    states, start = [x.expand(hs.shape[0], -1)], 0
    for d in model.sizes[1:]:
        states.append(hs[:, start:start + d])
        start += d
    return states


def _assert_within_se(samples: torch.Tensor, exact: torch.Tensor):
    mean = samples.mean(0)
    se = samples.std(0) / samples.shape[0] ** 0.5
    z = (mean - exact).abs() / se.clamp_min(1e-12)
    active = se > 1e-10  # components with no noise must match exactly
    assert (z[active] <= 5).all(), f"max z = {float(z[active].max()):.2f}"
    torch.testing.assert_close(mean[~active], exact[~active], atol=1e-8, rtol=0)


@pytest.fixture(scope="module")
def setup():
    model = random_model([4, 3, 2], seed=31, scale=1.0)
    x = torch.tensor([[1.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
    return model, x


@pytest.fixture(scope="module")
def setup_deterministic():
    """The authors' --deterministic-layers 1: every conditional is a one-hidden-layer tanh MLP."""
    model = random_model([4, 3, 2], seed=32, scale=1.0, deterministic_layers=1)
    x = torch.tensor([[0.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    return model, x


@pytest.mark.parametrize("which", ["plain", "deterministic"])
def test_bihm_surrogate_gradient_is_grad_log_p_tilde_star(setup, setup_deterministic, which):
    model, x = setup if which == "plain" else setup_deterministic
    states = _all_states(model, x)
    exact_obj = 2 * torch.logsumexp(0.5 * (model.log_p_joint(states) + model.log_q_cond(states)), 0)
    exact = -_flat_grad(model, exact_obj)
    reps = torch.stack([_flat_grad(model, model.loss(x, K, "bihm", seed=s)[0]) for s in range(REPS)])
    _assert_within_se(reps, exact)


def test_rws_surrogate_gradient(setup):
    """p: −∇ log p(x). q: −½ E_{p(h|x)}[∇ log q(h|x)] − ½ E_{p(x', h')}[∇ log q(h'|x')] (wake + sleep)."""
    model, x = setup
    states = _all_states(model, x)
    lp = model.log_p_joint(states)
    post = torch.softmax(lp, 0).detach()
    e = ref.exact_enumeration(model)
    joint = torch.exp(e.log_p_joint).flatten().detach()  # p(x', h') over all configurations
    X = e.x.repeat_interleave(e.h.shape[0], 0)
    H = e.h.repeat(e.x.shape[0], 1)
    all_states, start = [X], 0
    for d in model.sizes[1:]:
        all_states.append(H[:, start:start + d])
        start += d
    exact_obj = (torch.logsumexp(lp, 0)
                 + 0.5 * (post * model.log_q_cond(states)).sum()
                 + 0.5 * (joint * model.log_q_cond(all_states)).sum())
    exact = -_flat_grad(model, exact_obj)
    reps = torch.stack([_flat_grad(model, model.loss(x, K, "rws", seed=s)[0]) for s in range(REPS)])
    _assert_within_se(reps, exact)


def test_loss_stats_and_batch_sum(setup):
    model, x = setup
    xb = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    loss, stats = model.loss(xb, 10, seed=1)
    assert loss.dim() == 0 and set(stats) == {"bound", "log_p", "ess"}
    assert all(v.shape == (3,) for v in stats.values())
    assert bool(((stats["ess"] >= 1.0) & (stats["ess"] <= 10.0)).all())
    # K = 1: w = 1 and the q term vanishes, so the loss is −Σ_b log p(x_b, h_b) summed over the batch
    loss1, _ = model.loss(xb, 1, seed=2)
    states, _ = model.q_pass(xb, 2, 0)
    torch.testing.assert_close(loss1, -model.log_p_joint(states).sum())


def test_loss_bad_objective(setup):
    model, x = setup
    with pytest.raises(ValueError, match="objective"):
        model.loss(x, 3, "vae")
    with pytest.raises(ValueError, match="k must be"):
        model.loss(x, 0)


def test_weight_penalty_is_the_authors_l1_l2(setup_deterministic):
    """l1·Σ|W| + l2·ΣW² over every weight matrix (MLP hidden layers included), never biases or the prior."""
    model, _ = setup_deterministic
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    assert len(weights) == 4 * (len(model.sizes) - 1)  # p and q, output and one hidden layer each
    want = sum(0.3 * w.abs().sum() + 0.02 * (w ** 2).sum() for w in weights)
    torch.testing.assert_close(model.weight_penalty(0.3, 0.02), want)
    assert float(model.weight_penalty()) == 0.0
    g = torch.autograd.grad(model.weight_penalty(0.0, 0.5), [model.p_top.logits, model.q_layers[0].bias],
                            allow_unused=True)
    assert all(t is None for t in g)
