"""The fast paths of a :class:`~bihm_triton.model.BiHM`, one engine per backend (SPEC §2–5).

An engine provides what the model's public methods run on: the whole-network ancestral sampler,
the log-weight passes of the estimators and the training loss (forward and backward), the Gibbs
updates, and the stream's uniforms. The model chooses its engine once per backend, device and
dtype (:func:`engine_for`), so its methods read the same whatever runs them:

* :class:`LayerEngine` (``base.py``) — the reference's layer-by-layer formulas on the model's two
  stochastic primitives (``layer_sample``, ``layer_log_prob``, which dispatch to :mod:`bihm_triton.ops`),
  for every path including the Gibbs updates; the fallback of every other engine and the engine of the
  reference backend. ``gibbs.py`` holds the resampling math every engine's Gibbs updates share.
* :class:`CpuEngine` (``cpu.py``) — the layer engine on the CPU backend's ops (matmul by BLAS, then one fused C
  pass per layer: :mod:`bihm_triton.kernels.cpu`), with the stream's uniforms from the same C code.
* :class:`TritonEngine` (``triton.py``) — the network-specialized Triton kernels: one launch for the whole p
  pass (:mod:`bihm_triton.kernels.chain`), one for the log-weights of K samples per point and two
  for their backward (:mod:`bihm_triton.kernels.passes`), one per hidden Gibbs update and three
  per x update (:mod:`bihm_triton.kernels.gibbs`). A path whose kernels fail to compile warns once
  and runs on the layer engine from then on (the :func:`~.triton.fused_path` decorator).

Every engine draws the same stream (SPEC §5, version 2): the same ``(seed, offset, row_start)``
gives the same samples on all of them, up to the rounding of σ(a) at the last bit.
"""

from __future__ import annotations

import warnings

import torch

from .. import ops
from .base import LayerEngine, params_key
from .cpu import CpuEngine
from .triton import TritonEngine

__all__ = ["LayerEngine", "CpuEngine", "TritonEngine", "engine_for", "params_key"]

_params_key = params_key  # the name the model and earlier code use


def engine_for(model) -> LayerEngine:
    """The engine of ``model``'s backend, device and dtype: Triton's fused kernels (CUDA, or
    ``backend="triton"`` under the interpreter; float32), the CPU kernels (float32 CPU tensors), else the
    layer engine on the reference ops."""
    backend = ops.resolve_backend(model.backend, model.device, model.dtype)
    fused_ok = backend == "triton" and model.dtype != torch.float64 and (model.device.type == "cuda"
                                                                          or model.backend == "triton")
    if fused_ok and getattr(model, "deterministic_layers", 0):
        warnings.warn("the fused Triton kernels do not take deterministic layers yet: this model runs layer by layer "
                      "on the Triton ops", RuntimeWarning, stacklevel=3)
    elif fused_ok:
        return TritonEngine(model)
    if backend == "cpu":
        return CpuEngine(model)
    return LayerEngine(model)
