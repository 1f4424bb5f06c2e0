"""Ancestral sampling of the top-down model p (SPEC §4): the prior, then every layer down to x.

Networks: the paper's MNIST model ``784-300-200-100-75-50-35-30-25-20-15-10-10`` and
``784-200-100-50``. ``reference``/``compile``: :meth:`bihm_triton.reference.BiHM.sample_p` (one
stochastic-layer call per layer, float32 states); ``triton``: :meth:`bihm_triton.model.BiHM.sample_p`
with ``out_dtype=torch.uint8``, one launch of the fused whole-network kernel
(:mod:`bihm_triton.kernels.ancestral`). Every call computes all the states and ``log p(x, h)``;
it returns x. Samples per second = n / time.
"""

from __future__ import annotations

import pytest
import torch

import benchlib as bl

NETS = bl.tier()["nets"]
BATCHES = bl.tier()["ancestral"]


def _make_call(provider: str, model, n: int):
    if provider == "triton":
        return lambda s: model.sample_p(n, seed=s.seed, out_dtype=torch.uint8)
    return lambda s: model.sample_p(n, seed=s.seed)


@pytest.mark.parametrize("provider", bl.PROVIDERS)
@pytest.mark.parametrize("n", BATCHES, ids=[f"n{n}" for n in BATCHES])
@pytest.mark.parametrize("net", list(NETS))
def test_ancestral(benchmark, provider, net, n):
    bl.skip_unless_measurable(provider)
    sizes = NETS[net]
    model = bl.make_model(provider, sizes)
    sets = [bl.inputs_namespace(seed=bl.seed_tensor(i)) for i in range(bl.n_input_sets())]

    def check(out, s):
        ref_model = bl.make_model("reference", sizes)
        got = model.sample_p(n, seed=s.seed, return_hidden=True)
        want = ref_model.sample_p(n, seed=s.seed, return_hidden=True)
        assert torch.equal(out.float(), got.x.float()), f"{provider}: sample_p is not deterministic for a fixed seed"
        got_states, want_states = [got.x, *got.hidden], [want.x, *want.hidden]
        guard = {"sample_mismatch": bl.assert_samples(got_states, want_states, f"{provider} ancestral sample")}
        rows_ok = bl.rows_equal(got_states, want_states)
        guard["rows_identical"] = float(rows_ok.float().mean())
        guard["log_p_rel_err"] = bl.assert_log_probs(got.log_p, want.log_p, rows_ok, f"{provider} log p(x, h)")
        return guard

    bl.run_benchmark(
        benchmark, provider=provider, case="ancestral", name=f"ancestral.{net}", shape=f"n={n}",
        params=dict(sizes=list(sizes), n=n, state_dtype="uint8" if provider == "triton" else "float32"),
        items=n, unit="samples", sets=sets, call=_make_call(provider, model, n), check=check,
    )
