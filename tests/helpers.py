"""Helpers shared by the tests (importable as ``helpers``: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os

import torch

#: Where the Triton backend runs in the tests: the GPU, or the CPU under the interpreter (conftest decides).
DEVICE = torch.device("cuda" if os.environ.get("TRITON_INTERPRET", "0") in ("", "0") else "cpu")
#: The project's shared data folder (``../shared/data`` beside the clone; ``$BIHM_DATA_DIR`` where it lives
#: elsewhere): tests that read real data sets skip, with the reason, without it.
SHARED_DATA = os.path.normpath(os.path.expanduser(os.environ.get("BIHM_DATA_DIR") or os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "data")))
MNIST_DIR = os.path.join(SHARED_DATA, "mnist")


def dyadic(t: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Round to multiples of 2**-bits: sums of such numbers with binary inputs are exact in fp32 (and tf32)
    in any order, so kernel and reference logits agree bit for bit and so do their samples."""
    return torch.round(t * 2**bits) / 2**bits


def binary(*shape, p: float = 0.5, generator=None, device="cpu", dtype=torch.float32) -> torch.Tensor:
    return (torch.rand(*shape, generator=generator, device=device) < p).to(dtype)


def random_model(sizes, *, seed: int = 0, scale: float = 1.5, weight_norm: bool = False, dtype=torch.float64,
                 cls=None, **kwargs):
    """A BiHM with random parameters far from the authors' (near-zero) init, so p and q differ."""
    import bihm_triton.reference as ref

    cls = cls or ref.BiHM
    torch.manual_seed(seed)
    model = cls(sizes, weight_norm=weight_norm, dtype=dtype, **kwargs)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight_g"):
                p.uniform_(0.5, 2.0).mul_(scale)
            else:
                p.normal_(0.0, scale)
    return model


def exact_moments(enum, i: int, powers=(0.5, 1.0, 2.0)):
    """``E_q[ω^m]`` for data vector ``enum.x[i]`` from the enumeration tables, float64, for each m in powers."""
    log_q = enum.log_q_cond[i]
    log_w = enum.log_p_joint[i] - log_q
    return {m: float(torch.exp(torch.logsumexp(log_q + m * log_w, 0))) for m in powers}


def assert_samples_match(got: torch.Tensor, want: torch.Tensor) -> None:
    """Kernel samples against reference samples drawn from the same stream.

    Under the interpreter the kernel's sigmoid is numpy's and the test inputs make the logits
    exact, so the samples must be identical. Compiled on a GPU, ``tl.exp`` and the division are
    approximate (a few ulps), which flips a sample only when u falls within those ulps of σ(a):
    the issue allows a fraction below 1e-3 there.
    """
    got = got.detach().cpu().to(want.dtype)
    assert got.shape == want.shape
    if DEVICE.type == "cuda":
        frac = (got != want).double().mean().item()
        assert frac < 1e-3, f"{frac:.2e} of the samples differ"
    else:
        assert torch.equal(got, want), f"{int((got != want).sum())} samples differ"


def assert_few_rounding_flips(got: torch.Tensor, want: torch.Tensor) -> None:
    """Kernel vs reference samples whose logits are NOT exact (e.g. weight norm's ‖v‖): the two sum in
    different orders, so logits differ by a few ulps (relative ~1e-7). A draw flips with probability
    ≈ σ'(a)·|Δa| ≲ 1e-7 per element, i.e. ~0.01 expected flips in these tests' ≤ 1e5 elements: more
    than 2 has probability < 1e-6 (Poisson). On a GPU (approximate exp and division) the issue's
    bound applies: fraction < 1e-3.
    """
    got = got.detach().cpu().to(want.dtype)
    flips = int((got != want).sum())
    if DEVICE.type == "cuda":
        assert flips / want.numel() < 1e-3, f"{flips} of {want.numel()} samples differ"
    else:
        assert flips <= 2, f"{flips} of {want.numel()} samples differ"


def dyadic_model(sizes, seed: int, weight_norm: bool = False):
    """A float32 reference BiHM with random parameters rounded to multiples of 2**-8 (exact logits:
    kernel and reference samples agree element for element). Weight-normalized models keep their
    (non-dyadic) parameters."""
    m = random_model(sizes, seed=seed, dtype=torch.float32, scale=1.0, weight_norm=weight_norm)
    if not weight_norm:
        with torch.no_grad():
            for p in m.parameters():
                p.copy_(dyadic(p))
    return m
