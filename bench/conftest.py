"""Benchmark setup: Triton's interpreter on machines without a GPU, the size tier, machine info.

``TRITON_INTERPRET=1`` must be set before anything imports triton (kernels decorated before that
stay compiled), so it is set here, when pytest loads this file, unless a CUDA device is present;
``BIHM_BENCH_DEVICE=cpu`` forces the CPU path on a GPU machine (as ``BIHM_TEST_DEVICE`` does for
``tests/``). On a CPU the interpreter is used only by ``--benchmark-disable`` (correctness-only)
runs: in a timed run the Triton provider is skipped, because the interpreter measures Python, not
the kernel.

The size tier (``BIHM_BENCH_SIZE`` = ``tiny`` | ``cpu`` | ``full``) is fixed in
:func:`pytest_configure`, before the suites are collected (their parameters depend on it): by
default ``tiny`` with ``--benchmark-disable``, otherwise ``full`` on a GPU and ``cpu`` on a CPU.
"""

from __future__ import annotations

import os
import sys


def _has_cuda() -> bool:
    import torch  # torch does not import triton

    return torch.cuda.is_available()


if os.environ.get("BIHM_BENCH_DEVICE", "cuda" if _has_cuda() else "cpu") == "cpu":
    assert "triton" not in sys.modules, "triton was imported before bench/conftest.py could set TRITON_INTERPRET"
    os.environ["TRITON_INTERPRET"] = "1"
    os.environ["BIHM_BENCH_DEVICE"] = "cpu"

import benchlib  # noqa: E402  (after TRITON_INTERPRET is decided; imports torch, not triton)


def pytest_configure(config):
    disabled = bool(getattr(config.option, "benchmark_disable", False))
    benchlib.configure(benchmark_disabled=disabled)


def pytest_report_header(config):
    s = benchlib.STATE
    return (f"bihm bench: tier={s.tier} device={benchlib.device_name()} benchmarks_disabled={s.benchmark_disabled} "
            f"matmul_precision={s.matmul_precision} compile_dynamic={benchlib.COMPILE_DYNAMIC}")


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["bihm"] = benchlib.environment_info()
