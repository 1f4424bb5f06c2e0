"""Ancestral sampling of the top-down model p (SPEC §4): the prior, then every layer down to x.

Networks: the paper's MNIST model ``784-300-200-100-75-50-35-30-25-20-15-10-10`` and
``784-200-100-50``. Two variants: ``x+logp`` returns x (float32) and log p(x, h); ``x`` returns x
alone. ``torch``: :func:`baselines.sample_p` (a loop of ``F.linear``, ``torch.rand_like <
sigmoid`` and ``softplus``; the x-only loop is ``torch.bernoulli(torch.sigmoid(F.linear(...)))``),
``torch_compile*`` compiles it; ``triton``: :meth:`bihm_triton.model.BiHM.sample_p`
(``return_log_p=True`` for ``x+logp``), one launch of the fused whole-network kernel.
Samples per second = n / time.
"""

from __future__ import annotations

import pytest
import torch

import baselines
import benchlib as bl

NETS = bl.tier()["nets"]
BATCHES = bl.tier()["ancestral"]
VARIANTS = ("x+logp", "x")


def _make_call(provider: str, sizes, n: int, with_log_p: bool):
    if provider in bl.OURS:
        model = bl.make_model(provider, sizes)
        if with_log_p:
            return lambda s: model.sample_p(n, seed=s.seed, return_log_p=True)
        return lambda s: (model.sample_p(n, seed=s.seed), None)
    net = bl.make_net(sizes)
    fn = bl.native(baselines.sample_p, provider)

    def call(s):
        bl.mark_step(provider)
        with torch.no_grad():
            return fn(net.prior, net.p, n, with_log_p)

    return call


@pytest.mark.parametrize("provider", bl.PROVIDERS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("n", BATCHES, ids=[f"n{n}" for n in BATCHES])
@pytest.mark.parametrize("net", list(NETS))
def test_ancestral(benchmark, provider, net, n, variant):
    bl.skip_unless_measurable(provider)
    sizes = NETS[net]
    with_log_p = variant == "x+logp"
    sets = [bl.inputs_namespace(seed=bl.seed_tensor(i)) for i in range(bl.n_input_sets())]
    call = _make_call(provider, sizes, n, with_log_p)

    def check(out, s):
        x, log_p = out
        want = bl.make_model("reference", sizes).sample_p(n, seed=s.seed, return_hidden=True)
        if provider not in bl.OURS:  # torch's generator: compare distributions
            guard = {"x_p": bl.assert_same_distribution(x.float().mean(1), want.x.mean(1), f"{provider} x")}
            if with_log_p:
                guard["log_p_p"] = bl.assert_same_distribution(log_p, want.log_p, f"{provider} log p(x, h)")
            return guard
        got = bl.make_model(provider, sizes).sample_p(n, seed=s.seed, return_hidden=True)
        assert torch.equal(x.float(), got.x.float()), f"{provider}: sample_p is not deterministic for a fixed seed"
        got_states, want_states = [got.x, *got.hidden], [want.x, *want.hidden]
        guard = {"sample_mismatch": bl.assert_samples(got_states, want_states, f"{provider} ancestral sample")}
        rows_ok = bl.rows_equal(got_states, want_states)
        guard["rows_identical"] = float(rows_ok.float().mean())
        guard["log_p_rel_err"] = bl.assert_log_probs(got.log_p, want.log_p, rows_ok, f"{provider} log p(x, h)")
        if with_log_p:
            torch.testing.assert_close(log_p, got.log_p)
        return guard

    bl.run_benchmark(
        benchmark, provider=provider, case="ancestral", name=f"ancestral.{net}.{variant}", shape=f"n={n}",
        params=dict(sizes=list(sizes), n=n, log_p=with_log_p, state_dtype="float32"),
        items=n, unit="samples", sets=sets, call=call, check=check,
    )
