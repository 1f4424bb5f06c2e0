"""torch.compile(fullgraph=True) traces code built on the ops (they are torch.library custom ops)."""

from __future__ import annotations

import pytest
import torch

from bihm_triton import ops
from helpers import binary, dyadic

pytestmark = pytest.mark.slow


class TwoLayerSBN(torch.nn.Module):
    """A tiny sigmoid belief net h2 -> h1 -> x on the ops: prior, two stochastic layers."""

    def __init__(self, d_x=12, d_1=8, d_2=4, backend="triton"):
        super().__init__()
        self.backend = backend
        self.prior = torch.nn.Parameter(torch.zeros(d_2))
        self.w1 = torch.nn.Parameter(dyadic(torch.randn(d_1, d_2) * 0.5))
        self.b1 = torch.nn.Parameter(torch.zeros(d_1))
        self.v0 = torch.nn.Parameter(dyadic(torch.randn(d_x, d_1) * 0.5))
        self.g0 = torch.nn.Parameter(torch.ones(d_x))
        self.b0 = torch.nn.Parameter(torch.zeros(d_x))

    def forward(self, n: int, seed: torch.Tensor):
        empty = self.prior.new_zeros(n, 0)
        h2, lp2 = ops.sbn_sample(empty, self.prior.new_zeros(self.prior.shape[0], 0), self.prior, seed=seed,
                                 backend=self.backend)
        h1, lp1 = ops.sbn_sample(h2, self.w1, self.b1, seed=seed, offset=10_000, backend=self.backend)
        x, lp0 = ops.sbn_sample_wn(h1, self.v0, self.g0, self.b0, seed=seed, offset=20_000, backend=self.backend)
        return x, lp2 + lp1 + lp0


@pytest.mark.parametrize("backend", ["triton", "cpu"])
def test_compiled_sampler_matches_eager(device, backend):
    """Both backends' ops trace with fullgraph=True (the CPU backend's F.linear is compiled by inductor, its
    fused pass stays the custom op); samples, log-likelihoods and gradients equal eager ones."""
    if backend == "cpu":
        if not ops.cpu_available():
            pytest.skip("no C compiler: the CPU backend is unavailable")
        device = torch.device("cpu")
    torch.manual_seed(0)
    model = TwoLayerSBN(backend=backend).to(device)
    compiled = torch.compile(model, fullgraph=True)
    seed = torch.tensor(1234, device=device)
    x, lp = compiled(64, seed)
    xe, lpe = model(64, seed)
    assert torch.equal(x, xe)
    torch.testing.assert_close(lp, lpe)
    # gradients through the compiled graph equal eager ones
    g = torch.autograd.grad(lp.sum(), list(model.parameters()))
    ge = torch.autograd.grad(lpe.sum(), list(model.parameters()))
    for a, b in zip(g, ge):
        torch.testing.assert_close(a, b)


def test_small_model_trains_under_compile(device):
    """Maximum likelihood for a one-layer SBN with visible h, compiled: the loss goes down."""
    torch.manual_seed(1)
    N, M = 10, 6
    w_true = torch.randn(M, N) * 2
    h = binary(256, N).to(device)
    x, _ = ops.sbn_sample(h, w_true.to(device), torch.zeros(M, device=device), seed=5)
    w = torch.zeros(M, N, device=device, requires_grad=True)
    b = torch.zeros(M, device=device, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.1)

    @torch.compile(fullgraph=True)
    def nll():
        return -ops.sbn_log_prob(h, x, w, b, backend="triton", validate=False).mean()

    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = nll()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0
