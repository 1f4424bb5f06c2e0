"""The fused log-weight pass and its backward (kernels/passes.py) against the reference, and the model
paths that use them (training loss, chunked estimators, log Z²).

Dyadic weights make every logit exact, so samples and log-weights equal the reference's; the
gradients are compared with autograd through the reference layers.
"""

from __future__ import annotations

import math

import pytest
import torch

from bihm_triton.kernels.passes import FusedPasses
from bihm_triton.model import BiHM
from helpers import dyadic_model, random_model


@pytest.mark.parametrize("sizes", [[5, 3], [17, 3, 100, 1], [30, 17, 9, 3], [70, 130, 20]], ids=str)
def test_log_weights_and_gradients_equal_the_reference(sizes, device, poison_empty):
    m = dyadic_model(sizes, seed=3)
    layers = [*m.q_layers, *m.p_layers, m.p_top]
    fp = FusedPasses(sizes, device)
    fp.pack([l.weight.to(device) for l in layers], [l.bias.to(device) for l in layers])
    k, R = 3, 21
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(8, sizes[0], generator=g) < 0.5).float()
    # a chunk in the middle of a longer pass: rows 8 … 29, reading x[r // 3 − 2]
    log_p, log_q, st = fp.forward(x.to(device), R, seed=99, offset=5, row0=8, in_repeat=k, in_row0=2)
    want_p, want_q = m._chunk_log_weights(x, k, R, 99, 5, row_start=8, x_row0=2)
    torch.testing.assert_close(log_q.cpu(), want_q)
    torch.testing.assert_close(log_p.cpu(), want_p)

    coef_p, coef_q = torch.randn(R, generator=g), torch.randn(R, generator=g)
    grads = fp.backward(x.to(device), st, R, coef_p.to(device), coef_q.to(device), row0=8, in_repeat=k, in_row0=2)
    params = [t for l in layers[:-1] for t in (l.weight, l.bias)] + [m.p_top.logits]
    with torch.enable_grad():
        lp, lq = m._chunk_log_weights(x, k, R, 99, 5, row_start=8, x_row0=2)
        want = torch.autograd.grad((coef_p * lp).sum() + (coef_q * lq).sum(), params)
    got = [t for dw, db in grads[:-1] for t in (dw, db)] + [grads[-1][1]]
    assert grads[-1][0].shape == (sizes[-1], 0)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        torch.testing.assert_close(a.cpu(), b, rtol=1e-5, atol=1e-5)


def test_model_estimators_take_the_fused_pass(device, monkeypatch):
    """log p̃*, ESS and log Ẑ² on the Triton backend (fused passes, tiny chunks) equal the reference's."""
    r = dyadic_model([6, 5, 3], seed=41)
    m = BiHM(r.sizes, backend="triton", device=device, chunk_rows=12)
    m.load_state_dict(r.state_dict())
    calls = []
    real = FusedPasses.forward
    monkeypatch.setattr(FusedPasses, "forward", lambda self, *a, **kw: calls.append(1) or real(self, *a, **kw))
    x = r.sample_p(7, seed=1)
    for k in (1, 5, 13):
        a, b = m.log_likelihood(x.to(device), k, seed=2), r.log_likelihood(x, k, seed=2)
        for u, v in zip(a[:2], b[:2]):
            torch.testing.assert_close(u.cpu(), v)
        for u, v in zip(m.effective_sample_size(x.to(device), k, seed=3), r.effective_sample_size(x, k, seed=3)):
            torch.testing.assert_close(u.cpu(), v)
    za, zb = m.estimate_log_z2(40, n_inner=3, seed=5), r.estimate_log_z2(40, n_inner=3, seed=5)
    assert math.isclose(za.value, zb.value, rel_tol=1e-5, abs_tol=1e-6)
    assert len(calls) > 10  # every chunk went through the fused pass


def test_weight_norm_training_gradients_through_the_fused_pass(device):
    r = random_model([9, 6, 4], seed=8, dtype=torch.float32, scale=1.0, weight_norm=True)
    m = BiHM(r.sizes, weight_norm=True, backend="triton", device=device)
    m.load_state_dict(r.state_dict())
    x = (torch.rand(5, 9, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    lm, sm = m.loss(x.to(device), 4, seed=6)
    lr_, sr = r.loss(x, 4, seed=6)
    torch.testing.assert_close(lm.cpu(), lr_, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(sm["bound"].cpu(), sr["bound"], rtol=1e-5, atol=1e-4)
    for (name, a), b in zip(m.named_parameters(), torch.autograd.grad(lr_, list(r.parameters()))):
        (ga,) = torch.autograd.grad(lm, [a], retain_graph=True)
        torch.testing.assert_close(ga.cpu(), b, rtol=1e-4, atol=1e-4, msg=name)


def test_counters_past_2_to_the_31(device):
    """A chunk deep inside a q pass, at row 2**28 + 20 (counters past 2**31), equals the reference's chunk."""
    m = dyadic_model([70, 130, 20], seed=4)
    layers = [*m.q_layers, *m.p_layers, m.p_top]
    fp = FusedPasses(m.sizes, device)
    fp.pack([l.weight.to(device) for l in layers], [l.bias.to(device) for l in layers])
    k, rows, row0 = 5, 40, 2**28 + 20
    x = (torch.rand(9, 70, generator=torch.Generator().manual_seed(2)) < 0.5).float()
    x_row0 = row0 // k  # the chunk's rows read x[r // k − x_row0]: data points 0 … 8
    log_p, log_q, _ = fp.forward(x.to(device), rows, seed=3, offset=2**40, row0=row0, in_repeat=k, in_row0=x_row0)
    want_p, want_q = m._chunk_log_weights(x, k, rows, 3, 2**40, row_start=row0, x_row0=x_row0)
    torch.testing.assert_close(log_q.cpu(), want_q)
    torch.testing.assert_close(log_p.cpu(), want_p)
