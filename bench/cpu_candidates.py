"""How the CPU backend's fused layer pass was chosen: three ways to build it, measured side by side.

The pass: given logits ``a`` (R, M) float32, draw the SPEC §5 uniforms (Philox4x32-10, four rows per
call), sample ``x = 1[u < σ(a)]`` and sum the row log-likelihoods ``Σ_j x·a − softplus(a)``. The
matmul before it is BLAS through torch in every candidate, so only the pass is compared:

* ``c`` — the shipped one: ``kernels/cpu/bihm_cpu.c`` built with the system C compiler
  (``-O3 -march=native``, vectorized by the compiler) and called through ctypes;
* ``numba`` — the same algorithm (the same polynomials) written for ``numba.njit`` (``pip install
  numba``; skipped when it is not installed);
* ``inductor`` — ``torch.compile`` (inductor's C++ backend) of the reference's int64-tensor Philox
  and the layer epilogue, dynamic shapes;
* ``torch`` — what a user writes instead: ``torch.rand_like(a) < torch.sigmoid(a)`` and
  ``x·a − softplus(a)`` (torch's own generator, not the stream).

For each: the pass's median time per shape (one thread), whether its uniforms equal the
reference's bit for bit, and the first-call latency in a fresh process with an empty cache (build
or JIT compile) and with a warm cache.

Usage::

    python bench/cpu_candidates.py [--shapes 20000x300,20000x784,20000x20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NUMBA_SRC = r'''
import math
import numpy as np
import numba as nb

M32 = np.uint64(0xFFFFFFFF)


@nb.njit(cache=True, inline="always")
def _exp_nonpos(x):
    xc = np.float32(-104.0) if x < np.float32(-104.0) else x
    n = np.floor(xc * np.float32(1.44269504088896341) + np.float32(0.5))
    r = xc - n * np.float32(0.693359375)
    r = r - n * np.float32(-2.12194440e-4)
    r2 = r * r
    p = np.float32(1.9875691500E-4)
    p = p * r + np.float32(1.3981999507E-3)
    p = p * r + np.float32(8.3334519073E-3)
    p = p * r + np.float32(4.1665795894E-2)
    p = p * r + np.float32(1.6666665459E-1)
    p = p * r + np.float32(5.0000001201E-1)
    p = p * r2 + r + np.float32(1.0)
    return np.float32(math.ldexp(p, int(n)))


@nb.njit(cache=True, inline="always")
def _log1p_unit(e):
    s = e / (np.float32(2.0) + e)
    z = s * s
    p = np.float32(1.0 / 15.0)
    for c in (1.0 / 13.0, 1.0 / 11.0, 1.0 / 9.0, 1.0 / 7.0, 1.0 / 5.0, 1.0 / 3.0, 1.0):
        p = p * z + np.float32(c)
    return np.float32(2.0) * s * p


@nb.njit(cache=True, inline="always")
def _unif(c):
    i = np.int64(c)
    i = i - 4294967296 if i >= 2147483648 else i
    i = -i - 1 if i < 0 else i
    return np.float32(i) * np.float32(4.6566127342e-10)


@nb.njit(cache=True)
def _philox_block(base, n, k0, k1, u):
    for j in range(n):
        ctr = base + np.uint64(j)
        c0 = ctr & M32
        c1 = ctr >> np.uint64(32)
        c2 = np.uint64(0)
        c3 = np.uint64(0)
        a0 = k0
        a1 = k1
        for _ in range(10):
            p0 = np.uint64(0xD2511F53) * c0
            p1 = np.uint64(0xCD9E8D57) * c2
            n0 = (p1 >> np.uint64(32)) ^ c1 ^ a0
            n2 = (p0 >> np.uint64(32)) ^ c3 ^ a1
            c1 = p1 & M32
            c3 = p0 & M32
            c0 = n0
            c2 = n2
            a0 = (a0 + np.uint64(0x9E3779B9)) & M32
            a1 = (a1 + np.uint64(0xBB67AE85)) & M32
        u[0, j] = _unif(c0)
        u[1, j] = _unif(c1)
        u[2, j] = _unif(c2)
        u[3, j] = _unif(c3)


@nb.njit(cache=True)
def sample(a, x, lp, seed, offset):
    R, M = a.shape
    u = np.empty((4, 256), dtype=np.float32)
    k0 = np.uint64(seed) & M32
    k1 = np.uint64(seed) >> np.uint64(32)
    for g in range((R + 3) // 4):
        for l in range(4):
            if 4 * g + l < R:
                lp[4 * g + l] = 0.0
        for j0 in range(0, M, 256):
            n = min(256, M - j0)
            _philox_block(np.uint64(offset) + np.uint64(g * M + j0), n, k0, k1, u)
            for l in range(4):
                r = 4 * g + l
                if r >= R:
                    break
                s = np.float32(0.0)
                for j in range(n):
                    aj = a[r, j0 + j]
                    e = _exp_nonpos(-abs(aj))
                    sig = (np.float32(1.0) if aj >= 0 else e) / (np.float32(1.0) + e)
                    xi = u[l, j] < sig
                    x[r, j0 + j] = np.float32(1.0) if xi else np.float32(0.0)
                    z = -aj if xi else aj
                    s -= (z if z > 0 else np.float32(0.0)) + _log1p_unit(e)
                lp[r] += s
'''


def _numba_module(cache_dir: str):
    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(cache_dir, "bihm_numba_candidate.py")
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write(NUMBA_SRC)
    sys.path.insert(0, cache_dir)
    import bihm_numba_candidate

    return bihm_numba_candidate


def candidate(name: str, cache_dir: str):
    """``fn(a, seed, offset) -> (x, lp)`` of a candidate (None when it cannot run here)."""
    if name == "c":
        from bihm_triton.kernels import cpu

        if not cpu.available():
            return None
        return lambda a, seed, offset: cpu.sample(a, seed, offset)[:2]
    if name == "numba":
        try:
            import numba  # noqa: F401
        except ImportError:
            return None
        os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(cache_dir, "numba"))
        mod = _numba_module(cache_dir)

        def run(a, seed, offset):
            x = torch.empty_like(a)
            lp = torch.empty(a.shape[0])
            mod.sample(a.numpy(), x.numpy(), lp.numpy(), seed, offset)
            return x, lp

        return run
    if name == "inductor":
        from bihm_triton.reference.philox import _philox_uniform_impl

        def epi(a, key, offset: int):
            u = _philox_uniform_impl(key, offset, a.shape[0], a.shape[1], a.device)
            x = (u < torch.sigmoid(a)).float()
            return x, -F.softplus(torch.where(x != 0, -a, a)).sum(-1)

        fn = torch.compile(epi, dynamic=True, fullgraph=True)
        return lambda a, seed, offset: fn(a, torch.tensor(seed), offset)
    if name == "torch":
        def plain(a, seed, offset):
            x = (torch.rand_like(a) < torch.sigmoid(a)).float()
            return x, (x * a - F.softplus(a)).sum(-1)

        return plain
    raise ValueError(name)


def first_call(name: str, cache_dir: str) -> float | None:
    """Seconds from a fresh process's first call of candidate ``name`` (imports, build or JIT) to its result."""
    code = (f"import sys, time; sys.path.insert(0, {os.path.join(ROOT, 'bench')!r}); import torch; "
            f"import cpu_candidates as cc; a = torch.randn(64, 300); t0 = time.perf_counter(); "
            f"fn = cc.candidate({name!r}, {cache_dir!r}); "
            f"print('none' if fn is None else time.perf_counter() - t0 + (lambda t: (fn(a, 1, 0), "
            f"time.perf_counter() - t)[1])(time.perf_counter()))")
    env = dict(os.environ, BIHM_TRITON_CACHE_DIR=os.path.join(cache_dir, "bihm"),
               TORCHINDUCTOR_CACHE_DIR=os.path.join(cache_dir, "inductor"),
               NUMBA_CACHE_DIR=os.path.join(cache_dir, "numba"), OMP_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=1800)
    last = out.stdout.strip().splitlines()[-1:] or ["error: " + out.stderr.strip()[-300:]]
    return None if last[0] == "none" else (float(last[0]) if not last[0].startswith("error") else last[0])


def median_seconds(fn, reps: int = 5) -> float:
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[reps // 2]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="20000x300,20000x784,20000x20")
    ap.add_argument("--candidates", default="c,numba,inductor,torch")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from bihm_triton.reference.philox import philox_uniform

    names = args.candidates.split(",")
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    results = {"torch": torch.__version__, "threads": 1, "candidates": {}}
    with tempfile.TemporaryDirectory() as cold, tempfile.TemporaryDirectory() as warm:
        for name in names:
            entry = {}
            entry["first_call_cold_s"] = first_call(name, cold)
            entry["first_call_warm_s"] = first_call(name, cold)  # the same cache, now filled
            fn = candidate(name, warm)
            if fn is None:
                entry["available"] = False
                results["candidates"][name] = entry
                continue
            a = torch.randn(101, 333) * 3
            x, _ = fn(a, 12345, 2**40 + 3)
            u = philox_uniform(12345, 2**40 + 3, 101, 333)
            entry["same_samples_as_reference"] = bool(torch.equal(x, (u < torch.sigmoid(a)).float()))
            for R, M in shapes:
                a = torch.randn(R, M)
                entry[f"{R}x{M}_ms"] = round(1e3 * median_seconds(lambda: fn(a, 1, 0)), 2)
            results["candidates"][name] = entry
    print(json.dumps(results, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
