"""One block-Gibbs sweep of p*(x, h) (SPEC §4; :func:`bihm_triton.samplers.gibbs_sample`, exact mode).

On the paper's MNIST network: odd layers, then even layers, each by importance resampling among 2K
candidates (x: K candidates and a q-pass estimate of sqrt(p̃*(x)) per candidate). The starting
states are a fixed ancestral sample, so the time is one sweep (plus the exact mode's estimate for
the initial x). ``triton``: :func:`bihm_triton.samplers.gibbs_sample` on
:class:`bihm_triton.model.BiHM`; ``torch``: :func:`baselines.gibbs_sweep`, the same algorithm
written directly (``torch.bernoulli``, ``torch.multinomial``); ``torch_compile`` compiles it
(not capturable in a CUDA graph: ``torch_compile_ro`` is skipped). Chains per second = n / time.
"""

from __future__ import annotations

import pytest
import torch

import baselines
import benchlib as bl
from bihm_triton.samplers import gibbs_sample

NETS = bl.tier()["nets"]
CHAINS = bl.tier()["gibbs"]
K = bl.GIBBS_K


def _inputs(sizes, n: int):
    def make():
        ref_model = bl.make_model("reference", sizes)
        sets = []
        for i in range(bl.n_input_sets()):
            with torch.no_grad():
                states, _ = ref_model.p_pass(n, bl.seed_tensor(i + 200), 0)
            sets.append(bl.inputs_namespace(init=states, seed=bl.seed_tensor(i)))
        return sets

    return bl.cached_inputs(("gibbs", tuple(sizes), n), make)


def _make_call(provider: str, sizes, n: int):
    if provider in (*bl.OURS, "reference"):
        model = bl.make_model(provider, sizes)
        return lambda s: gibbs_sample(model, n, 1, K, init=s.init, seed=s.seed, progress=False)
    net = bl.make_net(sizes)
    sweep = bl.native(baselines.gibbs_sweep, provider)

    def call(s):
        with torch.no_grad():
            log_s = baselines.initial_log_s(net.prior, net.p, net.q, s.init[0])
            states, _ = sweep(net.prior, net.p, net.q, list(s.init), log_s, K)
        return states

    return call


@pytest.mark.parametrize("provider", bl.PROVIDERS)
@pytest.mark.parametrize("net", list(NETS))
def test_gibbs_sweep(benchmark, provider, net):
    bl.skip_unless_measurable(provider, capturable=False)
    sizes = NETS[net]
    n = CHAINS
    sets = _inputs(sizes, n)

    def check(out, s):
        """triton: the same chains as the reference. One resampling decision can legitimately flip
        where two candidates' log-weights differ only in the last bits (fp32 sums over ~1,650 units),
        and a flipped decision changes that chain; so a few chains may differ, not more. The native
        providers draw differently: the mean of x after the sweep must match in distribution."""
        want = _make_call("reference", sizes, n)(s)
        if provider not in bl.OURS:
            return {"x_p": bl.assert_same_distribution(out[0].float().mean(1), want.x.float().mean(1),
                                                       f"{provider} x after a sweep")}
        got_states, want_states = [out.x, *out.hidden], [want.x, *want.hidden]
        mismatch = bl.sample_mismatch(got_states, want_states)
        differ = 1.0 - float(bl.rows_equal(got_states, want_states).float().mean())
        allowed = max(0.01, 3.0 / n)
        assert differ <= allowed and mismatch < 1e-2, (
            f"{provider} Gibbs sweep: {differ:.3g} of the chains ({mismatch:.3g} of the elements) differ from "
            f"the reference (allowed {allowed:.3g} of the chains)")
        return {"sample_mismatch": mismatch, "rows_identical": 1.0 - differ}

    bl.run_benchmark(
        benchmark, provider=provider, case="gibbs_sweep", name=f"gibbs_sweep.{net}", shape=f"chains={n},k={K}",
        params=dict(sizes=list(sizes), chains=n, k=K, steps=1, n_inner=1), items=n, unit="chains",
        sets=sets, call=_make_call(provider, sizes, n), check=check,
    )
