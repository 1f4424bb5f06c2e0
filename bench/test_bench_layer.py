"""The stochastic binary layer (SPEC §5): sample and score, forward and forward+backward.

``h`` is a binary uint8 (R, N) batch (1-byte states, as the roofline counts them), the weight
(M, N) and bias (M,) are fp32 and require gradients. *sample*: ``x, log_prob`` of a fresh uint8
sample; *score*: ``log_prob`` of given targets. *fwd_bwd* adds ``log_prob.sum().backward()``
(gradients of W and b; the sample is a constant); *fwd* runs with the same weights requiring
gradients (autograd records, as in training) but does not call backward.

Providers: ``torch`` is :func:`baselines.layer_sample` / :func:`baselines.layer_score`
(``F.linear``, ``torch.rand_like``, ``sigmoid``, ``softplus``), ``torch_compile*`` compiles them,
``triton`` is :func:`bihm_triton.ops.sbn_sample` / :func:`~bihm_triton.ops.sbn_log_prob`.
Samples per second = rows per second.
"""

from __future__ import annotations

import pytest
import torch

import baselines
import benchlib as bl

SHAPES = bl.tier()["layer"]


def _weights(N: int, M: int):
    gen = torch.Generator().manual_seed(97 * N + M)
    w = torch.round(torch.randn(M, N, generator=gen) * (2.0 / N**0.5) * 256) / 256
    b = torch.round((torch.randn(M, generator=gen) * 0.5 - 0.5) * 256) / 256
    return w.clamp_(-3.99, 3.99).to(bl.DEVICE).requires_grad_(), b.to(bl.DEVICE).requires_grad_()


def _inputs(R: int, N: int, M: int):
    def make():
        w, b = _weights(N, M)
        sets = []
        for i in range(bl.n_input_sets()):
            g = bl.device_generator(10_000 + i)
            h = (torch.rand(R, N, device=bl.DEVICE, generator=g) < 0.5).to(torch.uint8)
            seed = bl.seed_tensor(i)
            with torch.no_grad():  # score targets: a reference sample from another seed
                x, _ = bl.ref.sbn_sample(h, w, b, seed=bl.seed_tensor(i + 100), out_dtype=torch.uint8)
            sets.append(bl.inputs_namespace(h=h, x=x, seed=seed))
        return w, b, sets

    return bl.cached_inputs(("layer", R, N, M), make)


def _primitives(provider: str):
    if provider in bl.OURS:
        return bl.ops_primitives(provider)
    if provider == "reference":
        return bl.ref_sample, bl.ref_score
    sample = bl.native(baselines.layer_sample, provider)
    return (lambda h, w, b, seed, offset, out_dtype: sample(h, w, b)), bl.native(baselines.layer_score, provider)


def _make_call(provider: str, op: str, pas: str, w, b):
    sample, score = _primitives(provider)

    def call(s):
        bl.mark_step(provider)
        if op == "sample":
            x, lp = sample(s.h, w, b, s.seed, 0, torch.uint8)
        else:
            x, lp = s.x, score(s.h, s.x, w, b)
        if pas == "fwd":
            return x, lp.detach(), None
        w.grad = None
        b.grad = None
        lp.sum().backward()
        return x, lp.detach(), {"weight": w.grad, "bias": b.grad}

    return call


@pytest.mark.parametrize("provider", bl.PROVIDERS)
@pytest.mark.parametrize("op,pas", bl.LAYER_VARIANTS, ids=[f"{o}-{p}" for o, p in bl.LAYER_VARIANTS])
@pytest.mark.parametrize("R,N,M", SHAPES, ids=[f"R{r}-N{n}-M{m}" for r, n, m in SHAPES])
def test_layer(benchmark, provider, op, pas, R, N, M):
    bl.skip_unless_measurable(provider)
    w, b, sets = _inputs(R, N, M)
    call = _make_call(provider, op, pas, w, b)
    reference = _make_call("reference", op, pas, w, b)

    def check(out, s):
        x, lp, grads = out
        want_x, want_lp, want_grads = reference(s)
        guard, rows_ok = {}, None
        if provider not in bl.OURS and op == "sample":  # independent draws: same distribution
            guard["x_p"] = bl.assert_same_distribution(x.float().mean(1), want_x.float().mean(1), f"{provider} x")
            guard["log_prob_p"] = bl.assert_same_distribution(lp, want_lp, f"{provider} log_prob")
            return guard
        if op == "sample":
            guard["sample_mismatch"] = bl.assert_samples([x], [want_x], f"{provider} sample")
            rows_ok = bl.rows_equal([x], [want_x])
        guard["log_prob_rel_err"] = bl.assert_log_probs(lp, want_lp, rows_ok, f"{provider} log_prob")
        if grads is not None:
            guard["grad_rel_err"] = bl.assert_grads(grads, want_grads, f"{provider} backward")
        return guard

    bl.run_benchmark(
        benchmark, provider=provider, case="layer", name=f"layer.{op}.{pas}", shape=f"R={R},N={N},M={M}",
        params=dict(R=R, N=N, M=M, op=op, **{"pass": pas}, h_dtype="uint8", x_dtype="uint8", weight_dtype="float32"),
        items=R, unit="rows", sets=sets, call=call, check=check,
    )
