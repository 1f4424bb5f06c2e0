"""The CPU backend (kernels/cpu: the C pass after a BLAS matmul) against the reference and torch's own ops.

Its uniforms must equal the reference's Philox stream bit for bit (and through it Triton's and the
Random123 vectors, tests/test_philox.py); with dyadic weights the logits are exact, so samples agree
element for element up to the sigmoid's last-ulp rounding (assert_samples_match); log-likelihoods
and gradients are compared with the float64 reference.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bihm_triton.reference as ref
from bihm_triton import ops
from helpers import binary, dyadic

cpu = pytest.importorskip("bihm_triton.kernels.cpu")
pytestmark = pytest.mark.skipif(not cpu.available(), reason="no C compiler: the CPU backend is unavailable")

SHAPES = [(1, 1, 1), (3, 17, 100), (17, 100, 3), (100, 300, 17), (300, 3, 300), (5, 0, 7), (1, 300, 17)]


def _layer(R, N, M, *, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = binary(R, N, generator=g)
    w = dyadic(torch.randn(M, N, generator=g) * 0.7).clamp(-2, 2)
    b = dyadic(torch.randn(M, generator=g)).clamp(-2, 2)
    return h, w, b


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**63 - 1), offset=st.integers(0, 2**62 - 1), rows=st.integers(0, 23),
       cols=st.integers(0, 300))
def test_uniforms_are_the_reference_stream(seed, offset, rows, cols):
    assert torch.equal(cpu.uniform(seed, offset, rows, cols), ref.philox_uniform(seed, offset, rows, cols))


@pytest.mark.parametrize("R,N,M", SHAPES)
def test_samples_and_log_probs_equal_the_reference(R, N, M):
    h, w, b = _layer(R, N, M, seed=R * 7 + M)
    x, lp = ops.sbn_sample(h, w, b, seed=98765, offset=2**41 + R, backend="cpu")
    xr, lpr = ref.sbn_sample(h, w, b, seed=98765, offset=2**41 + R)
    assert torch.equal(x, xr)
    torch.testing.assert_close(lp, lpr)
    torch.testing.assert_close(ops.sbn_log_prob(h, xr, w, b, backend="cpu"), lpr)
    for dt in (torch.uint8, torch.bool, torch.float16):
        xd, _ = ops.sbn_sample(h, w, b, seed=98765, offset=2**41 + R, out_dtype=dt, backend="cpu")
        assert xd.dtype == dt and torch.equal(xd.float(), xr)


@pytest.mark.parametrize("wn", [False, True], ids=["plain", "weight_norm"])
def test_log_prob_and_gradients_vs_float64_reference(wn):
    h, w, b = _layer(37, 53, 29, seed=4)
    h = h + 0.25 * torch.randn(h.shape)  # real-valued inputs (a deterministic layer's output) get a gradient too
    g = torch.rand(29) + 0.5
    x, _ = ref.sbn_sample(h, w, b, seed=5)
    leaves = [t.clone().requires_grad_() for t in (h, w, b, g)]
    leaves64 = [t.double().clone().requires_grad_() for t in (h, w, b, g)]
    if wn:
        got = ops.sbn_log_prob_wn(leaves[0], x, leaves[1], leaves[3], leaves[2], backend="cpu")
        want = ops.sbn_log_prob_wn(leaves64[0], x, leaves64[1], leaves64[3], leaves64[2], backend="reference")
    else:
        got = ops.sbn_log_prob(leaves[0], x, leaves[1], leaves[2], backend="cpu")
        want = ops.sbn_log_prob(leaves64[0], x, leaves64[1], leaves64[2], backend="reference")
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    coef = torch.randn(37)
    (coef * got).sum().backward()
    (coef.double() * want).sum().backward()
    for a, b_ in zip(leaves[:3 if not wn else 4], leaves64):
        torch.testing.assert_close(a.grad.double(), b_.grad, rtol=1e-4, atol=1e-5)
    # the sample path: the same gradient of its log-likelihood, the sample held fixed
    w1 = w.clone().requires_grad_()
    xs, lps = ops.sbn_sample(h, w1, b, seed=5, backend="cpu")
    assert torch.equal(xs, x) and not xs.requires_grad
    lps.sum().backward()
    w64 = w.double().requires_grad_()
    ops.sbn_log_prob(h.double(), x, w64, b.double(), backend="reference").sum().backward()
    torch.testing.assert_close(w1.grad.double(), w64.grad, rtol=1e-4, atol=1e-5)


def test_nan_and_infinite_logits_follow_the_reference():
    a = torch.tensor([[float("nan"), float("inf"), -float("inf"), 0.0, 90.0, -90.0, 1e-30, 17.0]])
    x, lp, d = cpu.sample(a.repeat(5, 1), 3, 0, want_d=True)
    xr = ref.bernoulli_sample(a.repeat(5, 1), seed=3)
    assert torch.equal(x, xr)
    assert torch.isnan(lp).all()  # the NaN logit makes every row's log-likelihood NaN, as the reference
    finite = a[:, 1:].repeat(5, 1)
    x2, lp2, d2 = cpu.sample(finite, 3, 0, want_d=True)
    torch.testing.assert_close(lp2, ref.bernoulli_log_prob(finite, x2))
    torch.testing.assert_close(d2, x2 - torch.sigmoid(finite))
    # score mode with an impossible target: −inf, not NaN
    lp3, _ = cpu.score(torch.tensor([[float("inf"), 3.0]]), torch.tensor([[0.0, 1.0]]))
    assert lp3.item() == -float("inf")


@pytest.mark.parametrize("M", [1, 10, 126, 127, 200, 255, 256, 300, 784, 1000])
def test_log_likelihood_sums_vs_float64(M):
    """The pass sums log(1 + e) as logs of lane products (rows up to 126 wide: one product a row): against a
    float64 softplus sum, to float32's relative precision, for every width path (narrow, product, wide)."""
    g = torch.Generator().manual_seed(M)
    a = torch.randn(41, M, generator=g) * 6
    x, lp, _ = cpu.sample(a, 9, 0)
    a64 = a.double()
    want = (x.double() * a64 - torch.nn.functional.softplus(a64)).sum(1)
    torch.testing.assert_close(lp.double(), want, rtol=2e-6, atol=0)
    assert torch.equal(cpu.score(a, x)[0], lp)  # the same sums in score mode


@pytest.mark.parametrize("M", [10, 300])
def test_log_likelihood_of_confident_rows_keeps_its_relative_accuracy(M):
    """Where 1 + e^−|a| rounds to 1 (|a| > 17), a row of certain outcomes still gets log p = −Σ log1p(e) to float
    accuracy (the part that 1 + e loses is summed apart), not 0."""
    a = torch.linspace(12.0, 40.0, M).repeat(4, 1) * torch.tensor([[1.0], [-1.0], [1.0], [-1.0]])
    x = (a > 0).float()
    lp, _ = cpu.score(a, x)
    want = -torch.log1p(torch.exp(-a.double().abs())).sum(1)
    torch.testing.assert_close(lp.double(), want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("M", [7, 200, 300])
def test_bias_and_running_sum_in_the_pass(M):
    """``bias=`` gives the bits of ``mm + b`` and ``lp_add`` adds to ``lp_out`` (what the blocked passes use)."""
    g = torch.Generator().manual_seed(M)
    h, w, b = binary(33, 50, generator=g), torch.randn(M, 50, generator=g), torch.randn(M, generator=g)
    mm = torch.mm(h, w.t())
    x, lp, _ = cpu.sample(mm + b, 4, 8)
    run = torch.full((33,), 1.5)
    x2, lp2, _ = cpu.sample(mm, 4, 8, bias=b, lp_out=run, lp_add=True)
    assert torch.equal(x2, x) and lp2 is run and torch.equal(run, lp + 1.5)
    run = torch.full((33,), -2.0)
    cpu.score(mm, x, bias=b, lp_out=run, lp_add=True)
    assert torch.equal(run, cpu.score(mm + b, x)[0] - 2.0)
    with pytest.raises(ValueError, match=r"bias must be a contiguous \(%d,\) float32" % M):
        cpu.sample(mm, 4, 8, bias=b[:-1])
    with pytest.raises(ValueError, match="lp_add needs"):
        cpu.score(mm, x, lp_add=True)


def test_bias_folds_only_where_blas_gives_addmms_bits():
    """The probe behind the fold: a shape folds only if mm + b equals addmm there; and where it folds, the
    blocked sampler's logits are addmm's (samples equal the unfolded path's)."""
    from bihm_triton.engines import cpu as engine_cpu

    for K in (10, 300, 784, 2000):
        w, b = torch.randn(50, K), torch.randn(50)
        h = binary(64, K, generator=torch.Generator().manual_seed(K))
        same = torch.equal(torch.addmm(b, h, w.t()), torch.mm(h, w.t()) + b)  # other rows than the probe's
        assert engine_cpu.bias_folds(w, b) == same, K
    layer = ref.bihm.StochasticLayer(40, 30)
    h = binary(64, 40, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, bias = engine_cpu.layer_logits_into(layer, h, torch.empty(64 * 30))
        full = a + bias if bias is not None else a
        assert torch.equal(full, torch.addmm(layer.bias, h, layer.weight.t()))


def test_threads_split_rows_without_changing_anything():
    a = torch.randn(4099, 333)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = cpu.sample(a, 11, 2**40, want_d=True)
        torch.set_num_threads(2)
        two = cpu.sample(a, 11, 2**40, want_d=True)
    finally:
        torch.set_num_threads(old)
    for u, v in zip(one, two):
        assert torch.equal(u, v)


def test_auto_backend_uses_it_for_float32_only():
    assert ops.resolve_backend("auto", torch.device("cpu"), torch.float32) == "cpu"
    assert ops.resolve_backend("auto", torch.device("cpu"), torch.float64) == "reference"
    with pytest.raises(TypeError, match="float64.*backend='reference'"):
        ops.sbn_sample(torch.zeros(2, 3, dtype=torch.float64), torch.zeros(4, 3, dtype=torch.float64),
                       torch.zeros(4, dtype=torch.float64), seed=1, backend="cpu")


def _run_python(code: str, env_extra: dict, tmp_path) -> subprocess.CompletedProcess:
    env = dict(os.environ, BIHM_TRITON_CACHE_DIR=str(tmp_path / "cache"), **env_extra)
    env.pop("TRITON_INTERPRET", None)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)


def test_no_compiler_falls_back_to_the_reference_with_one_line(tmp_path):
    """Without a C compiler: one line on stderr, no traceback, and the model runs (on the reference)."""
    empty = tmp_path / "bin"
    empty.mkdir()
    code = ("import torch\nfrom bihm_triton import ops\nfrom bihm_triton.model import BiHM\n"
            "m = BiHM([6, 4, 2])\nx = m.sample_p(5, seed=1)\n"
            "print(m.engine.name, ops.resolve_backend('auto', torch.device('cpu'), torch.float32))\n"
            "print(m.log_likelihood(x, 3, seed=2).log_p.shape)\n")
    out = _run_python(code, {"PATH": str(empty), "CC": ""}, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "layers reference"
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("bihm_triton: the CPU backend is unavailable (no C compiler"), \
        out.stderr
    assert "Traceback" not in out.stderr


def test_a_slow_first_build_is_announced_once(tmp_path):
    """A build that takes over a second says so in one line (simulated with a slow compiler wrapper); the
    next process finds the cached build and says nothing."""
    wrapper = tmp_path / "slowcc"
    real = next(c for c in ("cc", "gcc", "clang") if __import__("shutil").which(c))
    wrapper.write_text(f"#!/bin/sh\nsleep 1.2\nexec {real} \"$@\"\n")
    wrapper.chmod(0o755)
    code = "from bihm_triton.kernels import cpu\nassert cpu.available()\n"
    first = _run_python(code, {"CC": str(wrapper)}, tmp_path)
    assert first.returncode == 0, first.stderr
    lines = [ln for ln in first.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("bihm_triton: built the CPU kernels in"), first.stderr
    second = _run_python(code, {"CC": str(wrapper)}, tmp_path)
    assert second.returncode == 0 and second.stderr.strip() == "", second.stderr


@pytest.mark.parametrize("sizes", [[20, 9, 5, 3], [12, 8, 6, 4]], ids=str)
def test_cpu_engine_paths_equal_the_reference(sizes):
    """The CPU engine's own paths (first q layer's logits shared by a point's K samples; Gibbs proposals'
    logits shared by a chain's candidates) draw the reference's samples and chains: log-weights (any
    row_start), the training loss and its gradients, exact and paper-compatible Gibbs, several inner
    samples, inpainting."""
    from bihm_triton import samplers
    from bihm_triton.model import BiHM
    from helpers import dyadic_model

    r = dyadic_model(sizes, seed=1)
    m = BiHM(r.sizes)
    m.load_state_dict(r.state_dict())
    assert m.engine.name == "cpu"
    x = r.sample_p(9, seed=3)
    for k, rs in ((5, 0), (3, 3), (1, 7)):
        a, b = m.log_likelihood(x, k, seed=2, row_start=rs), r.log_likelihood(x, k, seed=2, row_start=rs)
        torch.testing.assert_close(a.log_p, b.log_p)
        torch.testing.assert_close(a.log_p_tilde_star, b.log_p_tilde_star)
    la, _ = m.loss(x, 5, seed=4, row_start=3)
    lb, _ = r.loss(x, 5, seed=4, row_start=3)
    la.backward()
    lb.backward()
    torch.testing.assert_close(la, lb)
    for (n, p), q in zip(m.named_parameters(), r.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=n)
    calls = {"gibbs_hidden": 0, "gibbs_x": 0}
    for name in calls:
        real = getattr(m.engine, name)
        setattr(m.engine, name, lambda *a, _r=real, _n=name, **kw: calls.__setitem__(_n, calls[_n] + 1) or _r(*a, **kw))
    for kw in (dict(k=4), dict(k=3, n_inner=2), dict(k=5, paper_compatible=True)):
        g1 = samplers.gibbs_sample(m, 11, 3, seed=1, progress=False, **kw)
        g2 = samplers.gibbs_sample(r, 11, 3, seed=1, progress=False, **kw)
        for u, v in zip([g1.x, *g1.hidden], [g2.x, *g2.hidden]):
            assert torch.equal(u, v), kw
    assert calls["gibbs_hidden"] > 0 and calls["gibbs_x"] > 0
    mask = torch.rand(9, sizes[0], generator=torch.Generator().manual_seed(5)) < 0.4
    assert torch.equal(samplers.inpaint(m, x, mask, 2, 3, seed=4, progress=False).x,
                       samplers.inpaint(r, x, mask, 2, 3, seed=4, progress=False).x)


def test_weight_norm_op_on_the_cpu_backend_is_torchs(monkeypatch):
    """ops.weight_norm on float32 CPU tensors (backend "auto" picks "cpu") runs torch's ops, never the Triton
    op (which would need CUDA outside the tests' interpreter mode)."""
    monkeypatch.setattr(ops, "_weight_norm_op", lambda *a: (_ for _ in ()).throw(AssertionError("Triton op")))
    v, g = torch.randn(5, 7), torch.rand(5) + 0.5
    for backend in ("auto", "cpu"):
        torch.testing.assert_close(ops.weight_norm(v, g, backend=backend), g[:, None] * v / v.norm(dim=1, keepdim=True))


def test_gibbs_refuses_more_steps_than_a_seed_holds():
    from bihm_triton.model import BiHM

    m = BiHM([4, 3, 2])
    with pytest.raises(ValueError, match=r"more than a seed holds .*at most \d+ steps fit"):
        m.gibbs_sample(2, steps=10**6, k=2, seed=1)
