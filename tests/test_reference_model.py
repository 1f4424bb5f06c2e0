"""The reference BiHM: parameter layout (SPEC §6), initialization (SPEC §3), stream contract, bad input."""

from __future__ import annotations

import math

import pytest
import torch

import bihm_triton.reference as ref
from helpers import random_model


def test_parameter_layout():
    m = ref.BiHM([7, 5, 3])
    shapes = {n: tuple(p.shape) for n, p in m.named_parameters()}
    assert shapes == {
        "p_layers.0.weight": (7, 5), "p_layers.0.bias": (7,),
        "p_layers.1.weight": (5, 3), "p_layers.1.bias": (5,),
        "p_top.logits": (3,),
        "q_layers.0.weight": (5, 7), "q_layers.0.bias": (5,),
        "q_layers.1.weight": (3, 5), "q_layers.1.bias": (3,),
    }
    wn = ref.BiHM([7, 5, 3], weight_norm=True)
    names = {n for n, _ in wn.named_parameters()}
    assert "p_layers.0.weight_v" in names and "p_layers.0.weight_g" in names and "p_layers.0.weight" not in names
    # the derived weight is g v / ‖v‖ and starts equal to the authors' init
    layer = wn.p_layers[0]
    torch.testing.assert_close(layer.weight, ref.weight_norm(layer.weight_v, layer.weight_g))
    torch.testing.assert_close(layer.weight, layer.weight_v)


def test_authors_initialization():
    torch.manual_seed(0)
    m = ref.BiHM([300, 200])
    w = m.q_layers[0].weight.detach()  # d_in = 300, d_out = 200
    bound = math.sqrt(6 / 500) / 300
    assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.99 * bound
    assert float(w.mean().abs()) < 4 * bound / math.sqrt(3 * w.numel())  # U(-b, b): sd b/sqrt(3)
    assert (m.q_layers[0].bias == -1).all() and (m.p_top.logits == -1).all()


@pytest.mark.parametrize("sizes,err,match", [
    ([], ValueError, "at least one latent"),
    ([784], ValueError, "at least one latent"),
    ([784, 0, 10], ValueError, r"sizes\[1\] must be >= 1"),
    ([784, 2.5], TypeError, r"sizes\[1\] must be an int"),
    ("784,100", TypeError, "sequence of ints"),
])
def test_bad_sizes(sizes, err, match):
    with pytest.raises(err, match=match):
        ref.BiHM(sizes)


def test_bad_data_and_k():
    m = ref.BiHM([4, 2])
    with pytest.raises(ValueError, match=r"x must have shape \(B, d_0\) = \(B, 4\)"):
        m.log_weights(torch.zeros(3, 5), 2)
    with pytest.raises(ValueError, match="x must be binary"):
        m.log_weights(torch.full((3, 4), 0.3), 2)
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        m.log_likelihood(torch.zeros(3, 4), 0)
    with pytest.raises(TypeError, match="k must be an int"):
        m.sample_q(torch.zeros(3, 4), 2.0)
    with pytest.raises(ValueError, match="seed must lie"):
        m.sample_p(3, seed=2**63)
    with pytest.raises(ValueError, match="n_samples must be an int >= 2"):
        m.estimate_log_z2(1)


@pytest.mark.parametrize("cuts", [(0, 4, 8), (0, 3, 5, 6, 9), (0, 1, 2, 7)], ids=str)
def test_chunked_passes_reproduce_the_whole_pass(cuts):
    """Rows split anywhere (also inside a Philox row group), each chunk with its row_start: the same samples
    as the whole pass (the batch-invariant stream, SPEC §5 version 2)."""
    m = random_model([6, 5, 3], seed=1, dtype=torch.float32)
    x = (torch.rand(10, 6) < 0.5).float()
    full, lq = m.q_pass(x, 42, 7)
    bounds = [*cuts, 10]
    parts = [m.q_pass(x[a:b], 42, 7, row_start=a) for a, b in zip(bounds, bounds[1:])]
    for l in range(3):
        assert torch.equal(torch.cat([p[0][l] for p in parts]), full[l])
    torch.testing.assert_close(torch.cat([p[1] for p in parts]), lq)
    pf, lp = m.p_pass(10, 5, 3)
    pp = [m.p_pass(b - a, 5, 3, row_start=a) for a, b in zip(bounds, bounds[1:])]
    for l in range(3):
        assert torch.equal(torch.cat([p[0][l] for p in pp]), pf[l])
    torch.testing.assert_close(torch.cat([p[1] for p in pp]), lp)


def test_sampling_is_reproducible_and_seeded():
    m = random_model([5, 4, 3], seed=2, dtype=torch.float32)
    a = m.sample_p(8, seed=3)
    assert torch.equal(a, m.sample_p(8, seed=3))
    assert not torch.equal(a, m.sample_p(8, seed=4))
    torch.manual_seed(9)
    b = m.sample_p(8)
    torch.manual_seed(9)
    assert torch.equal(b, m.sample_p(8))
    s = m.sample_p(8, seed=3, return_hidden=True)
    assert torch.equal(s.x, a) and [h.shape for h in s.hidden] == [(8, 4), (8, 3)] and s.log_p.shape == (8,)
    q = m.sample_q(a, 3, seed=1)
    assert [h.shape for h in q.hidden] == [(24, 4), (24, 3)] and q.log_q.shape == (8, 3)


def test_float64_model():
    m = random_model([4, 3], seed=3, dtype=torch.float64)
    x = m.sample_p(5, seed=1)
    assert x.dtype == torch.float64
    assert m.log_weights(x, 4, seed=1).dtype == torch.float64
