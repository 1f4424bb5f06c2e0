"""The product BiHM: identical to the reference for the same stream, chunked estimators against exact
enumeration, sizes parsing, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

import bihm_triton.reference as ref
from bihm_triton.model import BiHM, parse_sizes
from helpers import assert_samples_match, dyadic, exact_moments, random_model


@pytest.fixture(scope="module")
def pair():
    r = random_model([5, 4, 3], seed=41, dtype=torch.float32)
    m = BiHM(r.sizes, chunk_rows=12)  # tiny chunks: every estimator crosses many chunk borders
    m.load_state_dict(r.state_dict())
    return r, m


def test_chunked_estimators_equal_the_reference(pair):
    r, m = pair
    x = r.sample_p(7, seed=1)
    for k in (1, 5, 13):  # data points straddle chunks when K does not divide the chunk
        a, b = m.log_likelihood(x, k, seed=2, log_z2=-0.1), r.log_likelihood(x, k, seed=2, log_z2=-0.1)
        for u, v in zip(a, b):
            torch.testing.assert_close(u, v)
        for u, v in zip(m.effective_sample_size(x, k, seed=3), r.effective_sample_size(x, k, seed=3)):
            torch.testing.assert_close(u, v)
        torch.testing.assert_close(m.bhattacharyya_distance(x, k, seed=4), r.bhattacharyya_distance(x, k, seed=4))
    za, zb = m.estimate_log_z2(50, n_inner=3, seed=5), r.estimate_log_z2(50, n_inner=3, seed=5)
    assert math.isclose(za.value, zb.value, rel_tol=1e-5) and math.isclose(za.se, zb.se, rel_tol=1e-4)
    assert torch.equal(m.sample_p(30, seed=6), r.sample_p(30, seed=6))
    sa, sb = m.sample_p(30, seed=6, return_hidden=True), r.sample_p(30, seed=6, return_hidden=True)
    torch.testing.assert_close(sa.log_p, sb.log_p)


def test_triton_backend_equals_reference(device):
    r = random_model([6, 5, 3], seed=2, dtype=torch.float32, scale=1.0)
    with torch.no_grad():
        for p in r.parameters():
            p.copy_(dyadic(p))  # exact logits: identical samples
    m = BiHM(r.sizes, backend="triton", device=device)
    m.load_state_dict(r.state_dict())
    x = r.sample_p(9, seed=3)
    assert_samples_match(m.sample_p(9, seed=3), x)
    torch.testing.assert_close(m.log_weights(x.to(device), 6, seed=4).cpu(), r.log_weights(x, 6, seed=4))
    lm, _ = m.loss(x.to(device), 6, seed=5)
    lr_, _ = r.loss(x, 6, seed=5)
    torch.testing.assert_close(lm.cpu(), lr_)
    gm = torch.autograd.grad(lm, list(m.parameters()))
    gr = torch.autograd.grad(lr_, list(r.parameters()))
    for a, b in zip(gm, gr):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-4, atol=1e-4)


def test_large_k_streams_and_agrees_with_exact():
    """K = 10⁵ importance samples for one point in 4096-row chunks: the bound within the
    delta-method bias plus 4 standard errors of the exact log p̃*(x)."""
    r = random_model([4, 3, 2], seed=21)
    m = BiHM(r.sizes, dtype=torch.float64, chunk_rows=4096)
    m.load_state_dict(r.state_dict())
    e = ref.exact_enumeration(r)
    i, K = 6, 100_000
    ll = m.log_likelihood(e.x[i:i + 1], K, seed=8, progress=False)
    mom = exact_moments(e, i)
    var = mom[1.0] - mom[0.5] ** 2
    se = 2 * math.sqrt(var / K) / mom[0.5]
    bias = var / (K * mom[0.5] ** 2)
    assert abs(float(ll.log_p_tilde_star) - (float(e.log_p_tilde_star[i]) - bias)) <= 4 * se + bias
    z = m.estimate_log_z2(200_000, n_inner=2, seed=9, progress=False)
    assert abs(z.value - float(e.log_z2)) <= 4 * z.se


def test_sample_p_histogram_matches_p():
    r = random_model([4, 3, 2], seed=11, dtype=torch.float32)
    m = BiHM(r.sizes, chunk_rows=4000)
    m.load_state_dict(r.state_dict())
    e = ref.exact_enumeration(r)
    x = m.sample_p(30000, seed=2)
    counts = torch.bincount(ref.binary_index(x), minlength=16).double()
    expected = e.log_p.exp() * 30000
    assert stats.chisquare(counts.numpy(), expected.numpy()).pvalue > 1e-3
    tv = 0.5 * float((counts / 30000 - e.log_p.exp()).abs().sum())
    assert tv < 0.02


@pytest.mark.parametrize("spec,want", [
    ("200,100,50", [784, 200, 100, 50]),
    # the authors' create_layers truncates (int) where rounding would give 34 (issue 10, item 6)
    ("0.5x-4l-10", [784, 392, 115, 33, 10]),
    ("1x-2l-10", [784, 784, 10]),
    ("2x-1l-7", [784, 7]),
])
def test_parse_sizes(spec, want):
    assert parse_sizes(spec, 784) == want


@pytest.mark.parametrize("spec,match", [("784,0,10", "latent width 2 is 0"), ("", "lists no latent"),
                                        ("a,b", "neither"),
                                        # issue 16, item 4: an empty entry is an error, never dropped
                                        ("200,,50", "entry 2 of 3 is empty"), ("200,50,", "entry 3 of 3 is empty"),
                                        (",200", "entry 1 of 2 is empty"), (" , ", "entry 1 of 2 is empty")])
def test_parse_sizes_bad(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_sizes(spec, 784)


def test_save_load_round_trip_and_mismatch(tmp_path):
    m = BiHM([6, 4, 2], weight_norm=True)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p))
    m.save(tmp_path / "m.safetensors")
    m.save(tmp_path / "best.safetensors")
    assert BiHM.load(tmp_path).sizes == [6, 4, 2]  # a run directory means its best.safetensors
    m2 = BiHM.load(tmp_path / "m.safetensors")
    assert m2.sizes == [6, 4, 2] and m2.weight_norm
    for (n, a), (_, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), n
    other = BiHM([6, 5, 2], weight_norm=True)
    with pytest.raises(ValueError, match=r"'p_layers.0.weight_v' has shape \(6, 4\), model expects \(6, 5\)"):
        other.check_compatible(m.state_dict())
    with pytest.raises(ValueError, match="checkpoint is for sizes"):
        other.check_compatible(m.state_dict(), m.config())
    (tmp_path / "bad.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        BiHM.load(tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError):
        BiHM.load(tmp_path / "missing.safetensors")


def test_model_bad_arguments():
    with pytest.raises(ValueError, match="backend must be one of"):
        BiHM([4, 2], backend="gpu")
    with pytest.raises(ValueError, match="chunk_rows"):
        BiHM([4, 2], chunk_rows=2)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_deterministic_layers_on_every_backend(backend, device):
    """A model with the authors' deterministic layers runs layer by layer on the fast ops (the fused Triton
    kernels do not take them, and say so once) and draws the reference's samples and likelihoods; it
    saves and loads with its architecture."""
    from helpers import assert_few_rounding_flips

    r = random_model([9, 6, 4], seed=5, dtype=torch.float32, scale=1.0, deterministic_layers=2)
    dev = device if backend == "triton" else torch.device("cpu")
    m = BiHM(r.sizes, deterministic_layers=2, backend=backend, device=dev)
    m.load_state_dict(r.state_dict())
    if backend == "triton":
        with pytest.warns(RuntimeWarning, match="deterministic layers"):
            assert m.engine.name == "layers"
    s, want = m.sample_p(40, seed=3, return_hidden=True), r.sample_p(40, seed=3, return_hidden=True)
    assert_few_rounding_flips(s.x, want.x)  # tanh activations: logits not exact, last-bit flips only
    x = want.x
    torch.testing.assert_close(m.log_likelihood(x.to(dev), 5, seed=1).log_p.cpu(),
                               r.log_likelihood(x, 5, seed=1).log_p, rtol=1e-4, atol=1e-4)
    loss, _ = m.loss(x.to(dev), 3, seed=2)
    loss.backward()
    assert m.p_layers[0].hidden[1].weight.grad.abs().sum() > 0


def test_deterministic_layers_checkpoint_roundtrip(tmp_path):
    m = BiHM([6, 4, 2], deterministic_layers=1)
    m.save(tmp_path / "m.safetensors")
    back = BiHM.load(tmp_path / "m.safetensors")
    assert back.deterministic_layers == 1
    assert torch.equal(back.sample_p(5, seed=1), m.sample_p(5, seed=1))
    with pytest.raises(ValueError, match="deterministic_layers"):
        BiHM([6, 4, 2]).check_compatible(m.state_dict(), m.config())
    with pytest.raises(ValueError, match="weight_norm"):
        BiHM([6, 4, 2], deterministic_layers=1, weight_norm=True)
