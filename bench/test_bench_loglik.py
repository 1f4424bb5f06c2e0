"""Likelihood evaluation: log p̃*(x) and log p(x) of a batch of test images from K importance samples each (SPEC §2).

``triton``: :meth:`bihm_triton.model.BiHM.log_likelihood` (K samples per point, streamed in row
chunks). ``torch``: :func:`baselines.log_likelihood` (q pass with ``F.linear``/``torch.rand_like``,
log p(x, h), ``logsumexp``) over chunks of data points of at most 2¹⁶ rows; ``torch_compile*``
compiles it. Importance samples per second = B·K / time.
"""

from __future__ import annotations

import pytest
import torch

import baselines
import benchlib as bl

NETS = bl.tier()["nets"]
B, K = bl.tier()["loglik"]


def _points_per_chunk(b: int, k: int, max_rows: int = 1 << 16) -> int:
    """The largest divisor of b whose chunk has at most max_rows rows (one compiled shape)."""
    return max(d for d in range(1, b + 1) if b % d == 0 and (d * k <= max_rows or d == 1))


def _make_call(provider: str, sizes):
    if provider in (*bl.OURS, "reference"):
        if provider == "reference":
            from bihm_triton.model import BiHM

            model = BiHM(sizes, backend="reference", device=bl.DEVICE, chunk_rows=1 << 16)
            model.load_state_dict(bl.dyadic_state_dict(sizes))
        else:
            model = bl.make_model(provider, sizes)
        return lambda s: model.log_likelihood(s.x, K, seed=s.seed, progress=False).log_p_tilde_star
    net = bl.make_net(sizes)
    fn = bl.native(baselines.log_likelihood, provider)
    per = _points_per_chunk(B, K)

    def call(s):
        out = []
        with torch.no_grad():
            for b0 in range(0, B, per):
                bl.mark_step(provider)
                out.append(fn(net.prior, net.p, net.q, s.x[b0:b0 + per], K)[0].clone())
        return torch.cat(out)

    return call


@pytest.mark.parametrize("provider", bl.PROVIDERS)
@pytest.mark.parametrize("net", list(NETS))
def test_log_likelihood(benchmark, provider, net):
    bl.skip_unless_measurable(provider)
    sizes = NETS[net]
    sets = bl.cached_inputs(("loglik", tuple(sizes), B), lambda: [
        bl.inputs_namespace(x=bl.data_batch(sizes[0], B, i)[0], seed=bl.seed_tensor(i))
        for i in range(bl.n_input_sets())])

    def check(out, s):
        want = _make_call("reference", sizes)(s)
        if provider not in bl.OURS:
            return {"bound_p": bl.assert_same_mean_paired(out, want, f"{provider} log p~*(x)")}
        return {"bound_rel_err": bl.assert_log_probs(out, want, None, f"{provider} log p~*(x)", rtol=1e-4)}

    bl.run_benchmark(
        benchmark, provider=provider, case="loglik", name=f"log_likelihood.{net}", shape=f"B={B},K={K}",
        params=dict(sizes=list(sizes), batch=B, k=K), items=B * K, unit="importance samples",
        sets=sets, call=_make_call(provider, sizes), check=check,
    )
