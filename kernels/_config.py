"""Launch-time facts shared by the launchers: interpreter mode, tf32 policy, dtype plumbing."""

from __future__ import annotations

import os

import torch
import triton.language as tl


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_device(*tensors: torch.Tensor) -> None:
    """The Triton backend runs on CUDA tensors, or on CPU tensors under the interpreter."""
    for t in tensors:
        if t is None:
            continue
        if t.device.type == "cuda":
            continue
        if t.device.type == "cpu" and interpreting():
            continue
        raise RuntimeError(
            f"the Triton backend needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors), got a tensor on "
            f"{t.device}; use backend='auto' or 'cpu' (the CPU kernels) or 'reference' for CPU tensors"
        )


def dot_precision() -> str:
    """``tl.dot`` input precision following torch's fp32 matmul policy.

    ``torch.get_float32_matmul_precision()`` "highest" (torch's default) gives "ieee"; "high" or
    "medium" allow "tf32", as ``torch.matmul`` does on Ampere and later GPUs.
    """
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def dot_operand():
    """The operand type of the bf16-term dots: bf16 on a GPU, fp32 under the interpreter (whose bf16
    arithmetic is wrong; the terms are exact in fp32, so the results agree)."""
    return tl.float32 if interpreting() else tl.bfloat16


def as_loadable(t: torch.Tensor) -> torch.Tensor:
    """A view Triton can load: bool tensors become uint8 (same bytes), everything else as is."""
    return t.view(torch.uint8) if t.dtype == torch.bool else t


_TL = {
    torch.float32: tl.float32,
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
    torch.float64: tl.float64,
    torch.uint8: tl.uint8,
    torch.int8: tl.int8,
    torch.int32: tl.int32,
    torch.int64: tl.int64,
    torch.bool: tl.uint8,  # stored through a uint8 view
}


def tl_dtype(dtype: torch.dtype):
    """The Triton element type a kernel should store for a torch dtype."""
    try:
        return _TL[dtype]
    except KeyError:
        raise TypeError(f"unsupported dtype {dtype} for a Triton kernel output") from None


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())
