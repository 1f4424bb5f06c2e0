"""bihm_triton: Triton kernels for Bidirectional Helmholtz Machines (Bornschein et al., ICML 2016).

* :mod:`bihm_triton.ops` — autograd-aware fused ops (Triton on CUDA tensors, C kernels for float32 CPU
  tensors, the reference otherwise):
  :func:`sbn_sample`, :func:`sbn_log_prob`, their weight-normalized forms, :func:`weight_norm`;
* :class:`BiHM` — the model on those ops: training losses, likelihood estimators, samplers;
* :class:`Trainer` — the authors' training recipe with checkpoints;
* :mod:`bihm_triton.reference` — the pure-PyTorch specification (no Triton needed);
* :mod:`bihm_triton.kernels` — the Triton kernels and launchers;
* :mod:`bihm_triton.distributed` — data-parallel training and sharded evaluation on ``torch.distributed``
  (``torchrun``);
* :func:`pretrained` — the paper's 12-layer binarized-MNIST model, shipped with the package;
* :func:`validate` — this install's kernels checked against the reference, op by op (``bihm-triton validate``);
* :mod:`bihm_triton.data`, :mod:`bihm_triton.samplers`, :mod:`bihm_triton.cli`.

Importing this package does not import Triton; the kernels load on first use.
"""

from . import ops, reference
from .model import BiHM, parse_sizes
from .ops import sbn_log_prob, sbn_log_prob_wn, sbn_sample, sbn_sample_wn, weight_norm
from .pretrained import list_pretrained, pretrained
from .train import TrainConfig, Trainer, TrainingInterrupted
from .validation import validate

__version__ = "0.1.0"

__all__ = [
    "BiHM", "TrainConfig", "Trainer", "TrainingInterrupted", "ops", "parse_sizes", "reference", "pretrained",
    "list_pretrained", "validate",
    "sbn_log_prob", "sbn_log_prob_wn", "sbn_sample", "sbn_sample_wn", "weight_norm",
]
