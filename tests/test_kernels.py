"""Triton kernels against the reference (under TRITON_INTERPRET=1 on CPU, compiled on a GPU).

Sample-identity tests use binary inputs and dyadic weights (multiples of 2**-8): every partial
sum is then exact in fp32 (and tf32) in any order, so kernel and reference logits agree bit for
bit and the samples must agree element for element. What remains is the sigmoid's last-ulp
rounding, which can flip a sample only when u falls within an ulp of σ(a) (probability ~1e-8 per
element).
"""

from __future__ import annotations

import pytest
import torch

import bihm_triton.reference as ref
from bihm_triton import ops
from helpers import assert_few_rounding_flips, assert_samples_match, binary, dyadic

# Odd and prime-sized shapes: every value of {1, 3, 17, 100, 300} appears in every position.
SHAPES = [(1, 1, 1), (3, 17, 100), (17, 100, 3), (100, 300, 17), (300, 3, 300), (1, 300, 17), (17, 1, 300),
          (300, 100, 1), (100, 17, 3), (3, 3, 3)]


def _layer(R, N, M, device, *, seed=0, dtype=torch.float32, bits=8):
    g = torch.Generator().manual_seed(seed)
    h = binary(R, N, generator=g)
    w = dyadic(torch.randn(M, N, generator=g) * 0.7, bits).clamp(-2, 2)
    b = dyadic(torch.randn(M, generator=g), bits).clamp(-2, 2)
    return h.to(device), w.to(device=device, dtype=dtype), b.to(device=device, dtype=dtype)


@pytest.mark.parametrize("R,N,M", SHAPES)
def test_samples_identical_to_reference(R, N, M, device, poison_empty):
    h, w, b = _layer(R, N, M, device, seed=R * N + M)
    x, lp = ops.sbn_sample(h, w, b, seed=1234567, offset=R, backend="triton")
    xr, lpr = ref.sbn_sample(h.cpu(), w.cpu(), b.cpu(), seed=1234567, offset=R)
    assert_samples_match(x, xr)
    torch.testing.assert_close(lp.cpu(), lpr)
    # score mode on the same targets gives the same log-likelihood
    torch.testing.assert_close(ops.sbn_log_prob(h, x, w, b, backend="triton").cpu(), lpr)


@pytest.mark.parametrize("R,N,M", [(100, 300, 17), (300, 17, 100)])
def test_samples_identical_across_block_sizes(R, N, M, device, poison_empty):
    from bihm_triton.kernels.sbn import sbn_forward

    h, w, b = _layer(R, N, M, device, seed=5)
    outs = [sbn_forward(h, w, b, seed=99, offset=3, block_g=bg, block_m=bm, block_k=bk)
            for bg, bm, bk in ((16, 16, 16), (32, 64, 32), (64, 128, 128))]
    for x, lp in outs[1:]:
        assert torch.equal(x, outs[0][0])
        torch.testing.assert_close(lp, outs[0][1])


@pytest.mark.parametrize("out_dtype", [torch.uint8, torch.bool, torch.float16, torch.float64])
def test_sample_out_dtypes(out_dtype, device, poison_empty):
    h, w, b = _layer(17, 100, 300, device)
    x, _ = ops.sbn_sample(h, w, b, seed=3, out_dtype=out_dtype, backend="triton")
    xr, _ = ref.sbn_sample(h.cpu(), w.cpu(), b.cpu(), seed=3)
    assert x.dtype == out_dtype
    assert_samples_match(x, xr)


@pytest.mark.parametrize("h_dtype", [torch.bool, torch.uint8, torch.float16, torch.float32])
def test_input_state_dtypes(h_dtype, device):
    h, w, b = _layer(17, 100, 3, device)
    x, lp = ops.sbn_sample(h.to(h_dtype), w, b, seed=8, backend="triton")
    xr, lpr = ref.sbn_sample(h.cpu(), w.cpu(), b.cpu(), seed=8)
    assert_samples_match(x, xr)
    torch.testing.assert_close(lp.cpu(), lpr)


@pytest.mark.parametrize("w_dtype,bits", [(torch.float16, 8), (torch.bfloat16, 6)])
def test_half_precision_weights(w_dtype, bits, device):
    """fp16/bf16 weights are upcast after the load and accumulated in fp32, like the reference."""
    h, w, b = _layer(100, 300, 17, device, dtype=w_dtype, bits=bits)
    x, lp = ops.sbn_sample(h, w, b, seed=4, backend="triton")
    xr, lpr = ref.sbn_sample(h.cpu(), w.cpu(), b.cpu(), seed=4)
    assert lp.dtype == torch.float32
    assert_samples_match(x, xr)
    torch.testing.assert_close(lp.cpu(), lpr)
    gw = torch.autograd.grad(ops.sbn_log_prob(h, x, w.requires_grad_(), b, backend="triton").sum(), w)[0]
    assert gw.dtype == w_dtype


@pytest.mark.parametrize("R,N,M", [(1, 1, 1), (17, 100, 3), (100, 300, 17), (3, 17, 100), (300, 3, 300)])
@pytest.mark.parametrize("wn", [False, True], ids=["plain", "weight_norm"])
def test_log_prob_and_gradients_vs_float64_reference(R, N, M, wn, device):
    """Real-valued h: the kernel's fp32 results (float32 inputs: the Triton backend refuses float64, issue 16)
    against the float64 reference of the same numbers."""
    g = torch.Generator().manual_seed(R + N + M)
    h = torch.rand(R, N, generator=g, dtype=torch.float64)
    w = torch.randn(M, N, generator=g, dtype=torch.float64) / N**0.5
    b = torch.randn(M, generator=g, dtype=torch.float64)
    x = binary(R, M, generator=g, dtype=torch.float64)
    wg = torch.rand(M, generator=g, dtype=torch.float64) + 0.5
    gout = torch.randn(R, generator=g, dtype=torch.float64)

    def run(backend, dev):
        dt = torch.float32 if backend == "triton" else torch.float64
        args = [t.to(dev, dt).requires_grad_() for t in ((h, w, wg, b) if wn else (h, w, b))]
        if wn:
            lp = ops.sbn_log_prob_wn(args[0], x.to(dev), *args[1:], backend=backend)
        else:
            lp = ops.sbn_log_prob(args[0], x.to(dev), *args[1:], backend=backend)
        grads = torch.autograd.grad((lp * gout.to(dev)).sum(), args)
        return lp.cpu(), [gr.cpu() for gr in grads]

    lp_t, g_t = run("triton", device)
    lp_r, g_r = run("reference", "cpu")
    assert lp_t.dtype == torch.float32 and all(a.dtype == torch.float32 for a in g_t)
    tol = dict(rtol=1e-4, atol=1e-4 * max(1.0, N**0.5))
    torch.testing.assert_close(lp_t.double(), lp_r, **tol)
    for name, a, c in zip(("h", "weight", "g", "bias") if wn else ("h", "weight", "bias"), g_t, g_r):
        torch.testing.assert_close(a.double(), c, **tol, msg=lambda m, n=name: f"grad {n}: {m}")


def test_sample_gradients_hold_the_sample_fixed(device):
    h, w, b = _layer(17, 100, 3, device)
    w.requires_grad_()
    x, lp = ops.sbn_sample(h, w, b, seed=6, backend="triton")
    (gw,) = torch.autograd.grad(lp.sum(), w)
    wr = w.detach().cpu().requires_grad_()
    (gwr,) = torch.autograd.grad(ref.sbn_log_prob(h.cpu(), x.cpu(), wr, b.cpu()).sum(), wr)
    torch.testing.assert_close(gw.cpu(), gwr)


@pytest.mark.parametrize("M,N", [(1, 1), (3, 17), (17, 300), (300, 100)])
@pytest.mark.parametrize("dim", [0, 1])
def test_weight_norm_op_vs_torch(M, N, dim, device, poison_empty):
    torch.manual_seed(M * N)
    lin = torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(N, M), dim=dim)
    g = lin.parametrizations.weight.original0
    v = lin.parametrizations.weight.original1
    with torch.no_grad():
        g.mul_(torch.rand_like(g) + 0.5)
    G = torch.randn(M, N)
    want = lin.weight
    want_grads = torch.autograd.grad((want * G).sum(), (v, g))
    vd, gd = v.detach().to(device).requires_grad_(), g.detach().to(device).requires_grad_()
    got = ops.weight_norm(vd, gd, dim=dim, backend="triton")
    torch.testing.assert_close(got.cpu(), want.detach())
    got_grads = torch.autograd.grad((got * G.to(device)).sum(), (vd, gd))
    for a, c in zip(got_grads, want_grads):
        assert a.shape == c.shape
        torch.testing.assert_close(a.cpu(), c, rtol=1e-5, atol=1e-5)


def test_weight_norm_layer_samples_match_reference(device, poison_empty):
    h, v, b = _layer(100, 17, 300, device)
    g = torch.rand(300).to(device) + 0.5
    x, lp = ops.sbn_sample_wn(h, v, g, b, seed=12, backend="triton")
    xr, lpr = ref.sbn_sample_wn(h.cpu(), v.cpu(), g.cpu(), b.cpu(), seed=12)
    # ‖v‖ is not dyadic, so logits may differ in the last bit: allow the ulp-level flips only
    assert_few_rounding_flips(x, xr)
    torch.testing.assert_close(lp.cpu(), lpr, rtol=1e-5, atol=1e-4)


def test_large_counters_cross_the_32_bit_boundary(device):
    h, w, b = _layer(33, 17, 100, device)
    for offset in (2**32 - 50, 2**40 + 7):
        x, _ = ops.sbn_sample(h, w, b, seed=2**62 + 5, offset=offset, backend="triton")
        xr, _ = ref.sbn_sample(h.cpu(), w.cpu(), b.cpu(), seed=2**62 + 5, offset=offset)
        assert_samples_match(x, xr)


def test_seed_tensor_and_seed_none(device):
    h, w, b = _layer(17, 3, 17, device)
    x1, _ = ops.sbn_sample(h, w, b, seed=torch.tensor(77, device=device), backend="triton")
    x2, _ = ops.sbn_sample(h, w, b, seed=77, backend="triton")
    assert torch.equal(x1, x2)
    torch.manual_seed(1)
    x3, _ = ops.sbn_sample(h, w, b, backend="triton")
    torch.manual_seed(1)
    x4, _ = ops.sbn_sample(h, w, b, backend="reference")
    assert_samples_match(x3, x4)


def test_non_contiguous_inputs(device):
    h, w, b = _layer(17, 40, 30, device)
    hn, wn, bn = h[:, ::2], w[::3, ::2], b[::3]
    assert not hn.is_contiguous() and not wn.is_contiguous()
    x, lp = ops.sbn_sample(hn, wn, bn, seed=5, backend="triton")
    xr, lpr = ref.sbn_sample(hn.cpu(), wn.cpu(), bn.cpu(), seed=5)
    assert_samples_match(x, xr)
    torch.testing.assert_close(lp.cpu(), lpr)
    wt = w.t().contiguous().t()  # (M, N) with column-major strides
    torch.testing.assert_close(ops.sbn_log_prob(h, x.new_zeros(17, 30), wt, b, backend="triton").cpu(),
                               ref.sbn_log_prob(h.cpu(), torch.zeros(17, 30), w.cpu(), b.cpu()))


def test_sample_is_not_differentiable(device):
    h, w, b = _layer(5, 3, 4, device)
    x, lp = ops.sbn_sample(h, w.requires_grad_(), b, seed=1, backend="triton")
    assert not x.requires_grad and lp.requires_grad


def test_custom_ops_pass_opcheck(device):
    """torch.library.opcheck: schema, fake (meta) implementations with the real strides, autograd
    registration — including transposed weights, where a fake impl that keeps input strides would lie."""
    from bihm_triton.ops import (
        _sbn_grad_logits_op,
        _sbn_log_prob_op,
        _sbn_sample_op,
        _weight_norm_backward_op,
        _weight_norm_op,
    )

    h, w, b = _layer(9, 6, 5, device)
    g = torch.rand(5, device=device) + 0.5
    x = (torch.rand(9, 5, device=device) < 0.5).float()
    seed = torch.tensor(3)
    wt = w.t().contiguous().t()

    def grad(t):  # a fresh leaf that requires grad
        return t.detach().clone().requires_grad_()

    cases = [
        (_sbn_sample_op, (h, w, b, None, seed, 0, torch.float32)),
        (_sbn_sample_op, (grad(h), grad(wt), grad(b), grad(g), seed, 4, torch.float16)),
        (_sbn_log_prob_op, (h, x, grad(w), grad(b), None)),
        (_sbn_log_prob_op, (grad(h), x, grad(wt), b, grad(g))),
        # the backward helpers have no autograd of their own (no double backward)
        (_sbn_grad_logits_op, (torch.randn(9, device=device), h, x, wt, b, g)),
        (_weight_norm_op, (grad(wt), grad(g))),
        (_weight_norm_backward_op, (torch.randn(5, 6, device=device), wt, g)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)
    # integer outputs: opcheck's autograd harness sums every output into one float, which fails on
    # uint8, so the uint8 sample is checked for schema and fake-tensor consistency only
    torch.library.opcheck(_sbn_sample_op, (h, wt, b, g, seed, 4, torch.uint8),
                          test_utils=("test_schema", "test_faketensor"))


def test_nan_logits_documented_behaviour(device):
    h = torch.ones(9, 3, device=device)
    w = torch.zeros(4, 3, device=device)
    w[1, 0] = float("nan")
    b = torch.zeros(4, device=device)
    x, lp = ops.sbn_sample(h, w, b, seed=1, backend="triton")
    assert (x[:, 1] == 0).all() and torch.isnan(lp).all()
    lp2 = ops.sbn_log_prob(h, torch.zeros(9, 4, device=device), w, b, backend="triton")
    assert torch.isnan(lp2).all()


def test_infinite_logits_match_the_reference(device):
    b = torch.tensor([-float("inf"), float("inf"), 0.0], device=device)
    h, w = torch.zeros(8, 0, device=device), torch.zeros(3, 0, device=device)
    x, lp = ops.sbn_sample(h, w, b, seed=2, backend="triton")
    xr, lpr = ref.sbn_sample(h.cpu(), w.cpu(), b.cpu(), seed=2)
    assert_samples_match(x, xr)
    assert (x[:, 0] == 0).all() and (x[:, 1] == 1).all() and torch.isfinite(lp).all()
    torch.testing.assert_close(lp.cpu(), lpr)
    impossible = torch.tensor([[1.0, 0.0, 0.0]], device=device).expand(8, 3)
    assert (ops.sbn_log_prob(h, impossible, w, b, backend="triton") == -float("inf")).all()


def test_empty_input_layer_is_the_prior(device):
    """N = 0: logits are the bias, the layer samples the top prior."""
    b = torch.linspace(-2, 2, 17, device=device)
    x, lp = ops.sbn_sample(torch.zeros(100, 0, device=device), torch.zeros(17, 0, device=device), b, seed=3,
                           backend="triton")
    xr, lpr = ref.sbn_sample(torch.zeros(100, 0), torch.zeros(17, 0), b.cpu(), seed=3)
    assert_samples_match(x, xr)
    torch.testing.assert_close(lp.cpu(), lpr)


# ---------------------------------------------------------------------------------- bad input


def test_bad_input_messages(device):
    h, w, b = _layer(4, 3, 5, device)
    with pytest.raises(ValueError, match=r"weight must have shape \(M, N\) with N = h.shape\[1\] = 3"):
        ops.sbn_sample(h, w.t(), b, seed=0)
    with pytest.raises(ValueError, match=r"bias must have shape \(M,\) = \(5,\)"):
        ops.sbn_log_prob(h, torch.zeros(4, 5, device=device), w, b[:4])
    with pytest.raises(ValueError, match=r"x must have shape \(R, M\) = \(4, 5\)"):
        ops.sbn_log_prob(h, torch.zeros(4, 6, device=device), w, b)
    with pytest.raises(ValueError, match="x must be binary"):
        ops.sbn_log_prob(h, torch.full((4, 5), 2.0, device=device), w, b)
    with pytest.raises(TypeError, match="weight has dtype torch.int32"):
        ops.sbn_sample(h, w.int(), b)
    with pytest.raises(ValueError, match="seed must lie"):
        ops.sbn_sample(h, w, b, seed=-3)
    with pytest.raises(ValueError, match="offset must lie"):
        ops.sbn_sample(h, w, b, offset=-1)
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.sbn_sample(h, w, b, backend="cuda")
    with pytest.raises(ValueError, match="all tensors must be on one device"):
        ops.sbn_sample(h, w, b.to("meta"))
    with pytest.raises(ValueError, match=r"weight_g must have shape \(5,\) or \(5, 1\)"):
        ops.sbn_sample_wn(h, w, torch.ones(3, device=device), b)
