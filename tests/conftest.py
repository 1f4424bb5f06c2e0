"""Test setup: Triton's interpreter on machines without a GPU, the GPU tier, shared fixtures.

``TRITON_INTERPRET=1`` must be set before anything imports triton (kernels decorated before that
stay compiled), so it is set here, at collection time, unless a CUDA device is present. Set
``BIHM_TEST_DEVICE=cuda`` to insist on the GPU; the tests then run the kernels compiled.

``BIHM_TEST_TIER=gpu`` selects the GPU tier (:data:`GPU_TIER`): one test of every compiled kernel
and path, chosen so that few distinct kernels are compiled (every new shape class or dtype
compiles a kernel: about a second each, ten for the 13-layer fused sampler), to finish in about a
minute on a GPU. The full suite runs everywhere else.
"""

from __future__ import annotations

import os
import sys


def _has_cuda() -> bool:
    import torch  # torch does not import triton

    return torch.cuda.is_available()


if os.environ.get("BIHM_TEST_DEVICE", "cuda" if _has_cuda() else "cpu") == "cpu":
    assert "triton" not in sys.modules, "triton was imported before tests/conftest.py could set TRITON_INTERPRET"
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from helpers import DEVICE  # noqa: E402  (after TRITON_INTERPRET is decided)

#: The GPU tier: node-id prefixes (relative to tests/).
GPU_TIER = (
    "test_philox.py::test_triton_philox_known_answers",
    "test_philox.py::test_triton_stream_equals_reference",
    "test_kernels.py::test_samples_identical_to_reference[100-300-17]",
    "test_kernels.py::test_log_prob_and_gradients_vs_float64_reference[plain-100-300-17]",
    "test_kernels.py::test_log_prob_and_gradients_vs_float64_reference[weight_norm-100-300-17]",
    "test_kernels.py::test_weight_norm_op_vs_torch[0-17-300]",
    "test_kernels.py::test_large_counters_cross_the_32_bit_boundary",
    "test_kernels.py::test_infinite_logits_match_the_reference",
    "test_chain.py::test_fused_equals_reference_pass[70-[300, 200, 17, 3]]",
    "test_chain.py::test_saturated_logits_keep_their_log_likelihood",
    "test_chain.py::test_model_sample_p_is_the_reference_in_chunks",
    "test_passes.py::test_log_weights_and_gradients_equal_the_reference[[70, 130, 20]]",
    "test_passes.py::test_model_estimators_take_the_fused_pass",
    "test_samplers.py::test_fused_gibbs_update_draws_the_reference_chains[[20, 9, 70, 3]-4]",
    "test_samplers.py::test_fused_x_update_draws_the_reference_chains[inpaint]",
    "test_samplers.py::test_fused_gibbs_matches_p_star[2]",
    "test_chain.py::test_counters_past_2_to_the_31",
    "test_passes.py::test_counters_past_2_to_the_31",
    "test_train.py::test_cuda_graph_step_equals_eager",
    "test_compile.py::test_compiled_sampler_matches_eager",
    # issue 16: float64 where "auto" means Triton; NaN propagation through the compiled fused kernels
    # (a GPU's max.f32 drops NaN where numpy's maximum keeps it: the interpreter cannot tell)
    "test_issue16.py::test_float64_under_auto_is_computed_in_float64[sbn_log_prob]",
    "test_issue16.py::test_a_nan_parameter_gives_nan_estimates_not_minus_inf[p_layers.1.weight-triton]",
    "test_issue16.py::test_samplers_refuse_nan_parameters_and_sample_p_warns[triton]",
)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("BIHM_TEST_TIER", "") != "gpu":
        return
    keep = [it for it in items if it.nodeid.split("tests/", 1)[-1].startswith(GPU_TIER)]
    config.hook.pytest_deselected(items=[it for it in items if it not in keep])
    items[:] = keep


@pytest.fixture
def device() -> torch.device:
    """Where the Triton backend runs: the GPU, or the CPU under the interpreter."""
    return DEVICE


class _NaNEmpty:
    """``torch.empty`` that fills floating outputs with NaN and integer ones with a non-binary value (7)."""

    def __init__(self, real):
        self.real = real

    def __call__(self, *args, **kwargs):
        t = self.real(*args, **kwargs)
        if t.is_floating_point():
            t.fill_(float("nan"))
        elif t.dtype == torch.bool:
            t.view(torch.uint8).fill_(7)
        else:
            t.fill_(7)
        return t


@pytest.fixture
def poison_empty(monkeypatch):
    """Make every ``torch.empty`` in the code under test return poisoned memory, so an output element a
    kernel forgets to write shows up as NaN (or 7) instead of hiding behind zeros."""
    monkeypatch.setattr(torch, "empty", _NaNEmpty(torch.empty))
    yield
