"""Issue 10's first kinds of fault, each example's right value as a test: NaN where the math is finite
(zero weights, saturated logits, float cancellation) and conventions that differ from what users know
(torch's weight-norm dims, the authors' layer widths, seeds, torch.compile with a constant seed)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import bihm_triton.reference as ref
from bihm_triton import ops
from bihm_triton.model import BiHM
from bihm_triton.reference.estimators import log_mean_exp_with_se


@pytest.fixture
def zero_weight_model():
    """A 3-2 BiHM where half the prior is impossible (logit −inf) and q is uniform: some of the K samples
    of a data point have p(x, h) = 0, and one chunk of 4 rows can hold only such samples."""
    m = BiHM([3, 2], backend="reference", chunk_rows=4)
    torch.manual_seed(1)
    m.reset_parameters()
    with torch.no_grad():
        m.p_top.logits[0] = -math.inf
        m.q_layers[0].weight.zero_()
        m.q_layers[0].bias.zero_()
    return m, torch.tensor([[1.0, 0.0, 1.0]])


def test_chunked_estimators_with_an_all_zero_chunk(zero_weight_model):
    m, x = zero_weight_model
    ll = m.log_likelihood(x, 8, seed=5)
    r = ref.BiHM([3, 2])
    r.load_state_dict(m.state_dict())
    want = r.log_likelihood(x, 8, seed=5)
    torch.testing.assert_close(ll.log_p_tilde_star, torch.tensor([-5.08843]), rtol=0, atol=1e-5)
    torch.testing.assert_close(ll.log_p, torch.tensor([-3.64068]), rtol=0, atol=1e-5)
    torch.testing.assert_close(ll.log_p_tilde_star, want.log_p_tilde_star)
    ess, ess_r = m.effective_sample_size(x, 8, seed=5), r.effective_sample_size(x, 8, seed=5)
    assert all(bool(torch.isfinite(e).all()) for e in ess)
    torch.testing.assert_close(ess.p, ess_r.p)
    # every weight zero (p(x = 1 | h) = 0 for x's ones): the answer is -inf (and an ESS of 0), not NaN
    with torch.no_grad():
        m.p_layers[0].bias.fill_(-math.inf)
    ll = m.log_likelihood(x, 8, seed=5)
    assert ll.log_p_tilde_star.item() == -math.inf and ll.log_p.item() == -math.inf
    assert m.effective_sample_size(x, 8, seed=5).p.item() == 0.0


@pytest.mark.parametrize("objective", ["bihm", "rws"])
def test_zero_weight_samples_contribute_nothing_to_the_loss(zero_weight_model, objective):
    m, x = zero_weight_model
    loss, stats = m.loss(x, k=8, objective=objective, seed=5)
    assert math.isfinite(loss.item())
    if objective == "bihm":
        torch.testing.assert_close(loss, torch.tensor(3.63807), rtol=0, atol=1e-5)
    loss.backward()
    for name, p in m.named_parameters():
        assert bool(torch.isfinite(p.grad).all()), name
    assert math.isfinite(stats["bound"].item())


def test_effective_sample_size_stays_in_range():
    for value in (-1000.3, 0.0, 88.7, -1e30):
        ess = ref.effective_sample_size(torch.full((1, 10), value))
        assert 1.0 <= ess.item() <= 10.0
        torch.testing.assert_close(ess, torch.tensor([10.0]))
    spread = ref.effective_sample_size(torch.tensor([[0.0, -1e4, -1e4]]))
    torch.testing.assert_close(spread, torch.tensor([1.0]))
    assert ref.effective_sample_size(torch.full((1, 4), -math.inf)).item() == 0.0


def test_log_z2_of_zero_terms_is_minus_infinity():
    value, se = log_mean_exp_with_se(torch.full((5,), -math.inf))
    assert value == -math.inf and se == math.inf


def test_saturated_logits_keep_their_log_likelihood(device):
    """1000 units at logit 17, all x = 1: −1000·log1p(e^−17) = −4.13994e−5 nats, not 0."""
    h = torch.zeros(4, 0, device=device)
    w = torch.zeros(1000, 0, device=device)
    b = torch.full((1000,), 17.0, device=device)
    want = -1000 * math.log1p(math.exp(-17.0))
    for backend in ("triton", "reference"):
        lp = ops.sbn_log_prob(h, torch.ones(4, 1000, device=device), w, b, backend=backend)
        torch.testing.assert_close(lp.double().cpu(), torch.full((4,), want, dtype=torch.float64), rtol=1e-5, atol=0)


@pytest.mark.parametrize("dim", [0, 1, -1, -2, None])
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_weight_norm_dims_are_torch_dims(dim, backend, device):
    """Every dim torch.nn.utils.parametrizations.weight_norm accepts, values and gradients (issue 10, item 5)."""
    torch.manual_seed(3)
    lin = torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(7, 5), dim=dim)
    g = lin.parametrizations.weight.original0
    v = lin.parametrizations.weight.original1
    with torch.no_grad():
        g.mul_(torch.rand_like(g) + 0.5)
    G = torch.randn(5, 7)
    want = lin.weight
    want_grads = torch.autograd.grad((want * G).sum(), (v, g))
    vd, gd = v.detach().to(device).requires_grad_(), g.detach().to(device).requires_grad_()
    got = ops.weight_norm(vd, gd, dim=dim, backend=backend)
    torch.testing.assert_close(got.cpu(), want.detach())
    for a, b in zip(torch.autograd.grad((got * G.to(device)).sum(), (vd, gd)), want_grads):
        assert a.shape == b.shape
        torch.testing.assert_close(a.cpu(), b, rtol=1e-5, atol=1e-5)


def test_weight_norm_bad_dim_and_shape():
    v = torch.randn(5, 7)
    with pytest.raises(ValueError, match="dim must be 0"):
        ops.weight_norm(v, torch.ones(5), dim=2)
    with pytest.raises(ValueError, match=r"weight_g must be a scalar .* for dim=-1"):
        ops.weight_norm(v, torch.ones(5), dim=-1)


def test_one_seed_rule_for_ints_and_tensors():
    h, w, b = torch.ones(4, 3), torch.randn(2, 3), torch.zeros(2)
    for bad in (-1, torch.tensor(-1), 2**63):
        with pytest.raises(ValueError, match=r"seed must lie in \[0, 2\*\*63\)"):
            ops.sbn_sample(h, w, b, seed=bad, backend="reference")
    with pytest.raises(TypeError, match="seed must be an int"):
        ops.sbn_sample(h, w, b, seed=1.5, backend="reference")
    x_np, _ = ops.sbn_sample(h, w, b, seed=np.int64(7), backend="reference")
    x_int, _ = ops.sbn_sample(h, w, b, seed=7, backend="reference")
    assert torch.equal(x_np, x_int)
    m = BiHM([3, 2])
    assert torch.equal(m.sample_p(5, seed=np.int64(3)), m.sample_p(5, seed=3))


@pytest.mark.slow
def test_compiling_the_reference_with_an_int_seed_finishes():
    """The constant key once let inductor fold all ten Philox rounds for minutes (issue 10, item 7):
    the reference stream is an opaque op under torch.compile."""
    torch.manual_seed(0)
    W, b = torch.randn(6, 5), torch.zeros(6)
    h = (torch.rand(8, 5) < 0.5).float()
    fn = torch.compile(lambda h: ops.sbn_sample(h, W, b, seed=5, backend="reference"), fullgraph=True)
    x, lp = fn(h)
    xe, lpe = ops.sbn_sample(h, W, b, seed=5, backend="reference")
    assert torch.equal(x, xe)
    torch.testing.assert_close(lp, lpe)
