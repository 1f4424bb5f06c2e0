"""The fused chain sampler (kernels/chain.py) against the per-layer reference pass, element for element.

Weights are dyadic (multiples of 2**-8) so every logit is exact in any summation order and the
samples must be identical (under the interpreter; a GPU allows the rounding flips of its
approximate exp/divide). The networks exercise both placements of a layer's states (registers for
widths padded to <= 64, memory above) and widths that are not multiples of the tiles.
"""

from __future__ import annotations

import pytest
import torch

from bihm_triton.kernels.chain import FusedChain, chain_source, launch_config, make_plan
from bihm_triton.model import BiHM
from helpers import assert_few_rounding_flips, assert_samples_match, dyadic_model, random_model

NETS = [[1, 1], [17, 3, 100, 1], [300, 200, 17, 3], [30, 17, 9, 3], [40, 130, 70, 20]]


def _chain(m, device, **cfg):
    order = [m.p_top, *reversed(m.p_layers)]
    config = dict(launch_config(), **cfg)
    return FusedChain([x.weight.to(device) for x in order], [x.bias.to(device) for x in order], config=config)


def _run(chain, n, device, *, seed, offset, hidden=False, log_p=True, out_dtype=torch.float32, chunk=None,
         terms=None):
    x = torch.empty(n, chain.plan.widths[-1], device=device, dtype=out_dtype)
    lp = torch.empty(n, device=device) if log_p else None
    hid = torch.empty(n * chain.plan.hidden_width, device=device, dtype=out_dtype) if hidden else None
    chunk = chunk or n
    for r0 in range(0, n, chunk):
        chain.launch(min(chunk, n - r0), final=x, log_prob=lp, seed=seed, offset=offset, total_rows=n, row0=r0,
                     hidden=hid, terms=terms)
    states = None
    if hidden:
        states = [hid[n * L.hoff:n * (L.hoff + L.M)].view(n, L.M) for L in chain.plan.layers[:-1]]
    return x, states, lp


@pytest.mark.parametrize("sizes", NETS, ids=str)
@pytest.mark.parametrize("rows", [1, 5, 70])
def test_fused_equals_reference_pass(sizes, rows, device, poison_empty):
    m = dyadic_model(sizes, seed=len(sizes) + rows)
    chain = _chain(m, device)
    want, want_lp = m.p_pass(rows, 2**40 + 3, 11)
    x, states, lp = _run(chain, rows, device, seed=2**40 + 3, offset=11, hidden=True)
    assert_samples_match(x, want[0])
    for s, r in zip(states, want[::-1][:-1]):  # drawing order: h_L first
        assert_samples_match(s, r)
    torch.testing.assert_close(lp.cpu(), want_lp)
    # without the hidden states (scratch layout) and without log p: the same x
    x2, _, lp2 = _run(chain, rows, device, seed=2**40 + 3, offset=11)
    assert torch.equal(x2, x) and torch.equal(lp2, lp)
    x3, _, _ = _run(chain, rows, device, seed=2**40 + 3, offset=11, log_p=False, out_dtype=torch.uint8)
    assert torch.equal(x3.float(), x)


@pytest.mark.parametrize("cfg", [dict(block_r=32), dict(block_r=64, reg_max=0, bm_max=16, bk_max=16),
                                 dict(reg_max=128, bm_max=128, bk_max=128)], ids=str)
def test_tiling_does_not_change_the_samples(cfg, device):
    """Tile sizes, register/memory placement and chunking are invisible in the output."""
    m = dyadic_model([40, 130, 70, 20], seed=9)
    base = _run(_chain(m, device), 70, device, seed=5, offset=2**33, hidden=True)
    other = _run(_chain(m, device, **cfg), 70, device, seed=5, offset=2**33, hidden=True, chunk=36)
    assert torch.equal(base[0], other[0])
    assert all(torch.equal(a, b) for a, b in zip(base[1], other[1]))
    torch.testing.assert_close(base[2], other[2])  # log p: sums over column tiles in another order


def test_plan_places_narrow_layers_in_registers():
    plan = make_plan([0, 10, 10, 15, 100, 300], [10, 10, 15, 100, 300, 784], reg_max=64)
    assert [L.out_reg for L in plan.layers] == [True, True, True, False, False, False]
    assert [L.in_reg for L in plan.layers] == [False, True, True, True, False, False]
    for L in plan.layers:
        assert L.ldw % L.BM == 0 and (L.N == 0 or L.KP % L.BK == 0)
        assert L.sld % 16 == 0 and L.sld >= L.M
    src = chain_source(plan, store_hidden=False)
    assert src.count("tl.debug_barrier()") == 2  # after the two memory-resident hidden layers
    with pytest.raises(ValueError, match="layer 1 takes 9 inputs"):
        make_plan([0, 9], [10, 5])


@pytest.mark.parametrize("terms", [1, 2, 3])
def test_weight_terms(terms, device):
    """W = hi + mid + lo in bf16: 3 terms reproduce fp32 weights, 1 term is W rounded to bf16."""
    torch.manual_seed(0)
    m = random_model([24, 12, 6], seed=2, dtype=torch.float32, scale=1.0)  # non-dyadic weights
    chain = _chain(m, device)
    x, _, lp = _run(chain, 64, device, seed=3, offset=0, terms=terms)
    ref_model = m
    if terms == 1:
        ref_model = random_model([24, 12, 6], seed=2, dtype=torch.float32, scale=1.0)
        with torch.no_grad():
            for name, p in ref_model.named_parameters():
                if name.endswith("weight"):
                    p.copy_(p.bfloat16().float())
    want, want_lp = ref_model.p_pass(64, 3, 0)
    assert_few_rounding_flips(x, want[0])
    if terms == 2:  # 16 significant bits: logits within ~2^-16 relative
        torch.testing.assert_close(lp.cpu(), want_lp, rtol=1e-4, atol=1e-3)
    else:
        torch.testing.assert_close(lp.cpu(), want_lp, rtol=1e-5, atol=1e-4)


def test_seed_tensor_and_large_counters(device):
    m = dyadic_model([30, 17, 9, 3], seed=3)
    chain = _chain(m, device)
    a = _run(chain, 33, device, seed=2**62 + 5, offset=2**32 - 50)
    b = _run(chain, 33, device, seed=torch.tensor(2**62 + 5, device=device), offset=2**32 - 50)
    assert torch.equal(a[0], b[0])
    want, _ = m.p_pass(33, 2**62 + 5, 2**32 - 50)
    assert_samples_match(a[0], want[0])


def test_saturated_logits_keep_their_log_likelihood(device):
    """log(1 + e) for e < 6e-8 is not 0 (issue 10, item 4): 1000 units at logit 17, all 1."""
    w = torch.zeros(1000, 0, device=device)
    b = torch.full((1000,), 17.0, device=device)
    chain = FusedChain([w], [b])
    x, _, lp = _run(chain, 8, device, seed=1, offset=0)
    assert bool((x == 1).all())
    want = -1000 * torch.log1p(torch.exp(torch.tensor(-17.0, dtype=torch.float64)))
    torch.testing.assert_close(lp.double().cpu(), want.expand(8), rtol=1e-5, atol=0)


# ------------------------------------------------------------------------------- the model


def test_model_sample_p_is_the_reference_in_chunks(device):
    ref_model = dyadic_model([20, 9, 5], seed=4)
    fast = BiHM(ref_model.sizes, backend="triton", device=device, chunk_rows=16)
    fast.load_state_dict(ref_model.state_dict())
    got = fast.sample_p(50, seed=7, offset=2, return_hidden=True)
    want = ref_model.sample_p(50, seed=7, offset=2, return_hidden=True)
    assert_samples_match(got.x, want.x)
    for a, b in zip(got.hidden, want.hidden):
        assert a.shape == b.shape and a.is_contiguous()
        assert_samples_match(a, b)
    torch.testing.assert_close(got.log_p.cpu(), want.log_p)
    x, lp = fast.sample_p(50, seed=7, offset=2, return_log_p=True)
    assert torch.equal(x, got.x) and torch.equal(lp, got.log_p)
    assert torch.equal(fast.sample_p(50, seed=7, offset=2, out_dtype=torch.uint8).float(), got.x)
    assert fast.sample_p(8, seed=1, out_dtype=torch.bool).dtype == torch.bool


def test_packed_weights_are_cached_and_refreshed(device, monkeypatch):
    ref_model = dyadic_model([20, 9, 5], seed=4)
    fast = BiHM(ref_model.sizes, backend="triton", device=device)
    fast.load_state_dict(ref_model.state_dict())
    packs = []
    real = FusedChain.pack
    monkeypatch.setattr(FusedChain, "pack", lambda self, *a: packs.append(1) or real(self, *a))
    fast.sample_p(8, seed=1)
    fast.sample_p(8, seed=2)
    assert len(packs) == 1  # packed once, reused
    # an optimizer-style in-place update is seen (autograd version counter) ...
    with torch.no_grad():
        fast.p_top.logits.add_(5.0)
    ref_model.load_state_dict(fast.state_dict())
    assert_samples_match(fast.sample_p(64, seed=1), ref_model.sample_p(64, seed=1))
    assert len(packs) == 2
    # ... an edit through .data is not, until refresh_fused_cache()
    fast.p_layers[0].bias.data.fill_(-30.0)
    fast.sample_p(8, seed=1)
    assert len(packs) == 2
    fast.refresh_fused_cache()
    assert bool((fast.sample_p(64, seed=1) == 0).all())


def test_weight_norm_model_fused(device):
    ref_model = dyadic_model([20, 9, 5], seed=5, weight_norm=True)
    fast = BiHM(ref_model.sizes, weight_norm=True, backend="triton", device=device)
    fast.load_state_dict(ref_model.state_dict())
    # ‖v‖ is not dyadic (and the fused path builds g·v/‖v‖ explicitly): last-bit logit differences only
    assert_few_rounding_flips(fast.sample_p(64, seed=3), ref_model.sample_p(64, seed=3))


def test_a_compile_failure_falls_back_to_the_layer_path(device, monkeypatch):
    import bihm_triton.engines.triton as triton_engine
    import bihm_triton.kernels.chain as chain_mod

    class CompilationError(Exception):
        pass

    def broken(*args, **kwargs):
        raise CompilationError("no such instruction on this GPU")

    ref_model = dyadic_model([20, 9, 5], seed=4)
    fast = BiHM(ref_model.sizes, backend="triton", device=device)
    fast.load_state_dict(ref_model.state_dict())
    monkeypatch.setattr(chain_mod.FusedChain, "launch", broken)
    monkeypatch.setattr(triton_engine, "_WARNED", set())  # once per (path, backend) and process
    with pytest.warns(RuntimeWarning, match="fused sampler kernels failed to compile.*layer by layer") as seen:
        x = fast.sample_p(16, seed=3)
    assert seen[0].filename == __file__  # at the user's line, not inside the package
    assert_samples_match(x, ref_model.sample_p(16, seed=3))
    monkeypatch.setattr(chain_mod.FusedChain, "launch", lambda *a, **k: (_ for _ in ()).throw(KeyError("bug")))
    fresh = BiHM(ref_model.sizes, backend="triton", device=device)
    with pytest.raises(KeyError):  # anything that is not a compile failure still surfaces
        fresh.sample_p(4, seed=1)


def test_counters_past_2_to_the_31(device):
    """Rows deep inside a pass (row 2**33 + 8 of a 100-wide draw: counters past 2**40 + 2**35 within the draw)
    equal the reference's rows there: the generated source forms the counters in int64."""
    m = dyadic_model([100, 30, 5], seed=7)
    chain = _chain(m, device)
    n, start = 13, 2**33 + 8
    x = torch.empty(n, 100, device=device)
    lp = torch.empty(n, device=device)
    chain.launch(n, final=x, log_prob=lp, seed=5, offset=2**41, total_rows=n, row0=0, stream_row0=start)
    want, want_lp = m.p_pass(n, 5, 2**41, row_start=start)
    assert_samples_match(x, want[0])
    torch.testing.assert_close(lp.cpu(), want_lp)
    src = chain_source(make_plan([0, 10, 20], [10, 20, 30]), store_hidden=False)
    assert "tile0 = pid.to(tl.int64)" in src
