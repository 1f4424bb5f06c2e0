"""The random stream (SPEC §5): published Philox vectors, Triton == reference bit for bit, invariances."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from bihm_triton.reference import philox as P

# Random123's kat_vectors, "philox4x32 10": counter (4 words), key (2 words) -> output (4 words).
KAT = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF),
     (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("ctr,key,want", KAT)
def test_reference_philox_known_answers(ctr, key, want):
    c = [torch.tensor([w], dtype=torch.int64) for w in ctr]
    out = P.philox4x32(*c, key[0], key[1])
    assert tuple(int(o) for o in out) == want


@pytest.mark.parametrize("ctr,key,want", KAT)
def test_triton_philox_known_answers(ctr, key, want, device):
    """Triton's own ``tl.random.philox`` (what ``tl.rand4x`` calls) on the same vectors."""
    import triton
    import triton.language as tl

    def i32(w):  # the kernel takes the words as int32 bit patterns
        return w - 2**32 if w >= 2**31 else w

    seed = key[1] << 32 | key[0]
    seed = seed - 2**64 if seed >= 2**63 else seed
    out = torch.zeros(4, dtype=torch.int64, device=device)
    c = [torch.tensor(i32(w), dtype=torch.int32, device=device) for w in ctr]

    @triton.jit
    def kat_kernel_t(out_ptr, seed, c_ptr):
        c0 = tl.load(c_ptr + 0)
        c1 = tl.load(c_ptr + 1)
        c2 = tl.load(c_ptr + 2)
        c3 = tl.load(c_ptr + 3)
        o0, o1, o2, o3 = tl.random.philox(seed, c0, c1, c2, c3)
        tl.store(out_ptr + 0, o0.to(tl.int64) & 0xFFFFFFFF)
        tl.store(out_ptr + 1, o1.to(tl.int64) & 0xFFFFFFFF)
        tl.store(out_ptr + 2, o2.to(tl.int64) & 0xFFFFFFFF)
        tl.store(out_ptr + 3, o3.to(tl.int64) & 0xFFFFFFFF)

    kat_kernel_t[(1,)](out, torch.tensor(seed, dtype=torch.int64, device=device).item(), torch.stack(c))
    assert tuple(int(o) & 0xFFFFFFFF for o in out.cpu()) == want


def test_uniform_conversion_matches_triton_rule():
    # Words 0 and 2**32 - 1 both map to 0; 2**31 - 1 and 2**31 to the largest value below 1.
    w = torch.tensor([0, 2**32 - 1, 2**31 - 1, 2**31, 1], dtype=torch.int64)
    u = P.uniform_from_uint32(w)
    assert u[0] == 0 and u[1] == 0
    assert u[2] == u[3] and u[2] < 1.0 and u[2] > 0.9999
    assert u.dtype == torch.float32


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 2**63 - 1),
    offset=st.one_of(st.integers(0, 1000), st.integers(2**32 - 300, 2**32 + 300), st.integers(0, 2**61)),
    rows=st.integers(1, 13),
    cols=st.integers(1, 37),
)
def test_triton_stream_equals_reference(seed, offset, rows, cols):
    from bihm_triton.kernels.philox import philox_uniform
    from helpers import DEVICE

    got = philox_uniform(seed, offset, rows, cols, device=DEVICE).cpu()
    want = P.philox_uniform(seed, offset, rows, cols)
    assert torch.equal(got, want)


def test_seed_tensor_equals_int_seed(device):
    from bihm_triton.kernels.philox import philox_uniform

    s = 2**40 + 12345
    a = philox_uniform(torch.tensor(s, device=device), 3, 9, 5, device=device)
    b = philox_uniform(s, 3, 9, 5, device=device)
    assert torch.equal(a, b)


def test_row_chunks_reproduce_the_draw():
    """Chunks starting at multiples of 4 with offset + (r0 // 4) * M reproduce the whole draw."""
    seed, offset, R, M = 77, 1234, 23, 7
    full = P.philox_uniform(seed, offset, R, M)
    parts = [P.philox_uniform(seed, offset + (r0 // 4) * M, min(8, R - r0), M) for r0 in range(0, R, 8)]
    assert torch.equal(torch.cat(parts), full)


def test_draw_prefix_and_consumption():
    # Fewer rows read a prefix of the same stream; the draw uses ceil(R/4) * M counters.
    assert torch.equal(P.philox_uniform(5, 0, 10, 6)[:7], P.philox_uniform(5, 0, 7, 6))
    assert P.counters_used(10, 6) == 18
    nxt = P.philox_uniform(5, P.counters_used(10, 6), 4, 6)
    both = P.philox_uniform(5, 0, 16, 6)
    assert torch.equal(both[12:16], nxt)


def test_stream_is_uniform():
    """Kolmogorov–Smirnov against U(0, 1) (fixed seed; p-value threshold 1e-3)."""
    u = P.philox_uniform(2024, 0, 400, 250).double().flatten().numpy()
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    # Lanes and neighbours uncorrelated: |corr| within 5 standard errors (1/sqrt(n)).
    x = torch.from_numpy(u).view(400, 250)
    for a, b in ((x[0::4], x[1::4]), (x[:, :-1], x[:, 1:])):
        c = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]
        assert abs(float(c)) < 5 / a.numel() ** 0.5


@pytest.mark.parametrize("seed,err", [(-1, ValueError), (2**63, ValueError), (1.5, TypeError), (True, TypeError)])
def test_bad_seed(seed, err):
    with pytest.raises(err, match="seed"):
        P.philox_uniform(seed, 0, 2, 2)


def test_bad_offset():
    with pytest.raises(ValueError, match="offset"):
        P.philox_uniform(0, -1, 2, 2)
