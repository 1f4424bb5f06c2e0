"""The batch-invariant random stream (SPEC §5, stream version 2) on every backend.

A row's random numbers depend on the seed, the offset, the row's global index and the draw number
within its pass, never on how many rows the call has or how it is chunked. So samples and
per-point estimates of a call for rows [a, b) equal those rows of a larger call, for any a, and a
pass never uses a counter twice.
"""

from __future__ import annotations

import math

import pytest
import torch

import bihm_triton.reference as ref
import bihm_triton.reference.layers as ref_layers
from bihm_triton.model import BiHM
from helpers import assert_samples_match, dyadic_model

SIZES = [9, 6, 5, 3]
BACKENDS = ["reference", "cpu", "triton"]


def _model(backend, device, chunk_rows=1 << 16):
    r = dyadic_model(SIZES, seed=11)
    m = BiHM(SIZES, backend=backend, device=device if backend == "triton" else "cpu", chunk_rows=chunk_rows)
    m.load_state_dict(r.state_dict())
    return m


@pytest.mark.parametrize("backend", BACKENDS)
def test_sample_p_prefix_equals_a_smaller_call(backend, device):
    """`sample_p(8, seed=7)[:2] == sample_p(2, seed=7)` (stream version 1 failed this), hidden states and log p too."""
    m = _model(backend, device)
    big = m.sample_p(8, seed=7, return_hidden=True)
    small = m.sample_p(2, seed=7, return_hidden=True)
    assert torch.equal(big.x[:2], small.x)
    for a, b in zip(big.hidden, small.hidden):
        assert torch.equal(a[:2], b)
    torch.testing.assert_close(big.log_p[:2], small.log_p)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("a,b", [(0, 5), (3, 11), (6, 7), (13, 21)])
def test_sample_p_row_start_computes_rows_of_a_larger_call(backend, a, b, device):
    """Rows [a, b) of a 23-row call, from a call for those rows alone (any a, also inside a row group)."""
    m = _model(backend, device, chunk_rows=8)
    whole, whole_lp = m.sample_p(23, seed=3, offset=5, return_log_p=True)
    part, part_lp = m.sample_p(b - a, seed=3, offset=5, row_start=a, return_log_p=True)
    assert torch.equal(part, whole[a:b])
    torch.testing.assert_close(part_lp, whole_lp[a:b])


def test_sample_p_backends_agree_with_row_start(device):
    """The fused sampler's rows at an unaligned row_start are the reference's."""
    r, t = _model("reference", device), _model("triton", device, chunk_rows=4)
    assert_samples_match(t.sample_p(9, seed=1, row_start=6), r.sample_p(9, seed=1, row_start=6))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [1, 3, 4])
def test_log_likelihood_of_a_point_does_not_depend_on_its_batch(backend, k, device):
    """A data point's estimates (seed fixed) are the same alone, in a batch, in a shard with row_start, and for
    any chunk size (stream version 1 moved them by 0.03 nats on a small model)."""
    m = _model(backend, device, chunk_rows=8)
    x = ref.BiHM.sample_p(dyadic_model(SIZES, seed=11), 7, seed=2).to(m.device)
    whole = m.log_likelihood(x, k, seed=9)
    for a, b in [(0, 1), (2, 5), (5, 7), (1, 7)]:
        part = m.log_likelihood(x[a:b], k, seed=9, row_start=a)
        torch.testing.assert_close(part.log_p_tilde_star, whole.log_p_tilde_star[a:b])
        torch.testing.assert_close(part.log_p, whole.log_p[a:b])
    m.chunk_rows = 4
    other = m.log_likelihood(x, k, seed=9)
    torch.testing.assert_close(other.log_p_tilde_star, whole.log_p_tilde_star)
    ess = m.effective_sample_size(x[3:], k, seed=9, row_start=3)
    torch.testing.assert_close(ess.p, m.effective_sample_size(x, k, seed=9).p[3:])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("objective", ["bihm", "rws"])
def test_shard_losses_sum_to_the_batch_loss(backend, objective, device):
    """loss(x[:a]) + loss(x[a:], row_start=a) == loss(x), per-point statistics and gradients too: what a
    data-parallel step relies on. Computed in float64 on the reference, float32 on the Triton backend."""
    m = _model(backend, device)
    x = ref.BiHM.sample_p(dyadic_model(SIZES, seed=11), 7, seed=4).to(m.device)

    def loss_and_grads(xs, row_start):
        m.zero_grad()
        loss, stats = m.loss(xs, 3, objective, seed=5, row_start=row_start)
        loss.backward()
        return loss.detach(), stats, [p.grad.clone() for p in m.parameters()]

    whole, st, g = loss_and_grads(x, 0)
    parts = [loss_and_grads(x[a:b], a) for a, b in [(0, 3), (3, 7)]]
    torch.testing.assert_close(parts[0][0] + parts[1][0], whole, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(torch.cat([parts[0][1]["bound"], parts[1][1]["bound"]]), st["bound"])
    for ga, gb, gw in zip(parts[0][2], parts[1][2], g):
        torch.testing.assert_close(ga + gb, gw, rtol=1e-4, atol=1e-4)


def test_log_z2_shards_reproduce_the_whole_estimate():
    """The Ẑ² terms of samples [a, b) are those of the whole estimate (row_start), with n_inner > 1."""
    m = dyadic_model(SIZES, seed=11)
    whole = m._log_z2_terms(11, 3, 8, 0)
    parts = [m._log_z2_terms(b - a, 3, 8, 0, row_start=a) for a, b in [(0, 3), (3, 10), (10, 11)]]
    torch.testing.assert_close(torch.cat(parts), whole)
    z = BiHM(SIZES, chunk_rows=8)
    z.load_state_dict(m.state_dict())
    est = z.estimate_log_z2(11, n_inner=3, seed=8)
    want = ref.log_mean_exp_with_se(whole)
    assert math.isclose(est.value, want.value, rel_tol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gibbs_chains_do_not_depend_on_the_number_of_chains(backend, device):
    """Chain c of a Gibbs run (exact mode: the fused updates on the Triton backend) is the same in a run of 2
    chains and in one of 6."""
    m = _model(backend, device)
    big = m.gibbs_sample(6, steps=2, k=4, seed=2, progress=False)
    small = m.gibbs_sample(2, steps=2, k=4, seed=2, progress=False)
    assert torch.equal(big.x[:2], small.x)


# ---------------------------------------------------------------------------------- no counter twice

class _Recorder:
    """Records the Philox counters of every (seed, offset, rows, cols) draw the reference makes."""

    def __init__(self, monkeypatch):
        self.draws = []
        real = ref_layers.philox_uniform

        def spy(seed, offset, rows, cols, **kw):
            self.draws.append((offset, rows, cols))
            return real(seed, offset, rows, cols, **kw)

        monkeypatch.setattr(ref_layers, "philox_uniform", spy)

    def counters(self) -> list:
        out = []
        for offset, rows, cols in self.draws:
            out += [offset + g * cols + j for g in range(-(-rows // 4)) for j in range(cols)]
        return out


@pytest.mark.parametrize("what", ["q_pass", "p_pass", "log_z2", "rws_loss"])
def test_no_counter_is_used_twice_within_a_pass(what, monkeypatch):
    m = dyadic_model([13, 7, 5, 2], seed=1)
    rec = _Recorder(monkeypatch)
    x = (torch.rand(9, 13, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    if what == "q_pass":
        m.q_pass(x.repeat_interleave(5, 0), 3, 0)
    elif what == "p_pass":
        m.p_pass(21, 3, 0)
    elif what == "log_z2":
        m.estimate_log_z2(21, n_inner=3, seed=3)
    else:
        m.loss(x, 5, "rws", seed=3)
    used = rec.counters()
    assert len(rec.draws) >= 3 and len(used) == len(set(used))
    # every draw stays inside its own 2**40 slot
    for offset, rows, cols in rec.draws:
        assert offset // ref.DRAW_STRIDE == (offset + ref.counters_used(rows, cols) - 1) // ref.DRAW_STRIDE


def test_draw_offsets_follow_the_spec():
    assert ref.draw_offset(5, 0) == 5
    assert ref.draw_offset(5, 2, row_start=12, cols=7) == 5 + 2 * 2**40 + 3 * 7
    assert ref.aligned_start(13) == (12, 1)
    with pytest.raises(ValueError, match="row_start"):
        ref.aligned_start(-1)
    with pytest.raises(ValueError, match="2\\*\\*40"):
        ref.check_draw_fits(4 * 2**40 // 784 + 8, 784)
    s = ref.RandomStream(1, 0)
    assert (s.take(3), s.take(), s.offset) == (0, 3 * 2**40, 4 * 2**40)
    with pytest.raises(ValueError, match="offset"):
        ref.RandomStream(1, 2**62 - 2**40).take(2)
    m = dyadic_model([4, 2], seed=0)
    with pytest.raises(ValueError, match="rows"):
        m.sample_p(4, seed=1, row_start=2**41)
