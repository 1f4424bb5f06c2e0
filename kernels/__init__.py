"""Triton kernels and their launchers (installed as ``bihm_triton.kernels``). Importing this imports Triton."""
