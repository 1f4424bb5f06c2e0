"""bihm_triton: Triton kernels for Bidirectional Helmholtz Machines (Bornschein et al., ICML 2016).

* :mod:`bihm_triton.reference` — the pure-PyTorch specification (no Triton needed);
* :mod:`bihm_triton.kernels` — the Triton kernels and their launchers;
* :mod:`bihm_triton.ops` — the autograd-aware public ops (Triton on CUDA, reference on CPU).

Importing this package does not import Triton; the kernels load on first use.
"""

__version__ = "0.1.0"
