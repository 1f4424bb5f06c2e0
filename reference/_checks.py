"""Argument checks shared by the reference and the public ops: errors name the argument and the expected shape."""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
STATE_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int32, torch.int64) + FLOAT_DTYPES


def check_tensor(t, name: str, ndim: int, dtypes=None, symbols: str = "") -> None:
    """``t`` is a tensor with ``ndim`` dimensions and, if given, one of ``dtypes``; ``symbols`` names
    the expected dimensions in the message, e.g. ``"(M, N)"``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        want = f" {symbols}" if symbols else ""
        raise ValueError(f"{name} must have {ndim} dimension(s){want}, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} has dtype {t.dtype}; expected one of {names}")


def check_shape(t: torch.Tensor, name: str, shape: tuple, symbols: str) -> None:
    """``t.shape == shape``; ``symbols`` names the dimensions, e.g. ``"(R, M)"``.

    The message is formatted only on failure, so under ``torch.compile`` with dynamic shapes the
    check does not specialize the graph on the sizes.
    """
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {symbols} = {tuple(int(d) for d in shape)}, got {tuple(t.shape)}")


def check_same_device(**tensors) -> torch.device:
    """All given tensors live on one device; returns it."""
    items = [(k, v) for k, v in tensors.items() if isinstance(v, torch.Tensor)]
    dev = items[0][1].device
    for k, v in items[1:]:
        if v.device != dev:
            raise ValueError(
                f"{k} is on {v.device} but {items[0][0]} is on {dev}; all tensors must be on one device"
            )
    return dev


def check_binary(x: torch.Tensor, name: str, detail: str = "") -> None:
    """Every element of ``x`` is 0 or 1, NaN excluded (reads the data: one device sync on a GPU);
    ``detail`` follows the name in the message, e.g. ``" (h_1, shape (5, 4))"``."""
    if x.dtype == torch.bool:
        return
    bad = (x != 0) & (x != 1)
    if bool(bad.any()):
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{name}{detail} must be binary (0 or 1); {name}{list(idx)} = {x[idx].item()}")


def check_positive_int(v, name: str, minimum: int = 1) -> None:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(v).__name__}")
    if v < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {v}")


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any floating input is float64, else float32 (fp16/bf16 are upcast)."""
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.dtype == torch.float64:
            return torch.float64
    return torch.float32


def check_layer_args(h, weight, bias, x=None, *, weight_name: str = "weight") -> tuple[int, int, int]:
    """Check the arguments of a stochastic binary layer; returns ``(R, N, M)``.

    h (R, N), weight (M, N), bias (M,), and targets x (R, M) when given.
    """
    check_tensor(h, "h", 2, STATE_DTYPES, "(R, N)")
    check_tensor(weight, weight_name, 2, FLOAT_DTYPES, "(M, N)")
    R, N = h.shape
    M = weight.shape[0]
    if weight.shape[1] != N:
        raise ValueError(
            f"{weight_name} must have shape (M, N) with N = h.shape[1] = {N}, got {tuple(weight.shape)}"
        )
    check_tensor(bias, "bias", 1, FLOAT_DTYPES, "(M,)")
    check_shape(bias, "bias", (M,), "(M,)")
    tensors = dict(h=h, **{weight_name: weight}, bias=bias)
    if x is not None:
        check_tensor(x, "x", 2, STATE_DTYPES, "(R, M)")
        check_shape(x, "x", (R, M), "(R, M)")
        tensors["x"] = x
    check_same_device(**tensors)
    return R, N, M


def check_weight_norm_args(weight_v, weight_g, dim: int | None = 0) -> torch.Tensor:
    """Check ``weight_v`` (M, N) and ``weight_g`` for weight normalization over ``dim`` with torch's
    semantics for a 2-D weight (``torch.nn.utils.parametrizations.weight_norm``): ``dim=0`` (or −2)
    rows, g (M,) or (M, 1); ``dim=1`` columns, g (N,) or (1, N); ``dim=-1`` or None the whole
    tensor, g a scalar (shape (), (1,) or (1, 1)). Returns g flattened: (M,), (N,) or (1,)."""
    check_tensor(weight_v, "weight_v", 2, FLOAT_DTYPES, "(M, N)")
    if not isinstance(weight_g, torch.Tensor):
        raise TypeError(f"weight_g must be a torch.Tensor, got {type(weight_g).__name__}")
    if dim not in (0, 1, -1, -2, None):
        raise ValueError(f"dim must be 0 (rows), 1 (columns) or -1/None (the whole tensor) for a 2-D weight_v, "
                         f"as in torch.nn.utils.parametrizations.weight_norm; got {dim}")
    if dim in (-1, None):
        if weight_g.numel() != 1 or weight_g.dim() > 2:
            raise ValueError(f"weight_g must be a scalar (shape (), (1,) or (1, 1)) for dim={dim} (the norm of the "
                             f"whole tensor), got {tuple(weight_g.shape)}")
        n = 1
    else:
        d = dim % 2
        n = weight_v.shape[d]
        ok = (n,) if weight_g.dim() == 1 else ((n, 1) if d == 0 else (1, n))
        if tuple(weight_g.shape) != ok:
            want = f"({n},) or ({n}, 1)" if d == 0 else f"({n},) or (1, {n})"
            raise ValueError(f"weight_g must have shape {want} for weight_v {tuple(weight_v.shape)} and dim={dim}, "
                             f"got {tuple(weight_g.shape)}")
    if weight_g.dtype not in FLOAT_DTYPES:
        raise TypeError(f"weight_g has dtype {weight_g.dtype}; expected a floating dtype")
    check_same_device(weight_v=weight_v, weight_g=weight_g)
    return weight_g.reshape(n)


def nonfinite_parameters(named_parameters) -> list[str]:
    """The parameters that make log-probabilities NaN, as ``"name (NaN)"`` / ``"name (inf)"``: any with a
    NaN, and weights with ±inf (``0 · inf`` in ``h · Wᵀ`` is NaN). Infinite biases and prior logits are
    legitimate (a certain or impossible unit: SPEC §2's zero weights) and are not listed.

    Args:
        named_parameters: ``(name, tensor)`` pairs, e.g. ``module.named_parameters()``.

    Reads the flags back once (one device synchronization); skipped (``[]``) while a CUDA graph is captured.
    """
    items = [(n, p.detach()) for n, p in named_parameters if p.numel()]
    if not items or (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()):
        return []
    flags = torch.stack([torch.stack([torch.isnan(p).any(), torch.isinf(p).any()]) for _, p in items]).tolist()
    out = []
    for (name, _), (nan, inf) in zip(items, flags):
        if nan:
            out.append(f"{name} (NaN)")
        elif inf and not name.endswith(("bias", "logits")):
            out.append(f"{name} (inf)")
    return out
