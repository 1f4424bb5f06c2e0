"""The CPU backend's fused layer epilogue: the C source beside this file, built once per machine, loaded with ctypes.

A stochastic binary layer on the CPU is the matmul ``a = h·Wᵀ + b`` by BLAS (through torch), then
one pass of :file:`bihm_cpu.c` over ``a`` that draws the SPEC §5 uniforms (Philox4x32-10 bit for
bit as the reference and the Triton kernels), samples ``x = 1[u < σ(a)]``, and sums the row
log-likelihoods, optionally writing ``d = x − σ(a)`` for the backward. Score mode takes given
targets. The pass is vectorized by the C compiler (``-O3 -march=native``) and runs on
``torch.get_num_threads()`` threads for large layers (ctypes releases the GIL).

**Build.** The first use compiles the source with the system C compiler (``$CC``, else ``cc``,
``gcc`` or ``clang``) into ``$BIHM_TRITON_CACHE_DIR/cpu`` (default ``~/.cache/bihm_triton/cpu``),
keyed by the source, the flags, the compiler and the CPU, so it happens once per machine (about
half a second; a build over a second is announced in one line on stderr). Without a compiler, or
if the build fails, :func:`available` is False, one line says why, and ``backend="auto"`` runs the
reference instead.

Chosen over numba and torch.compile's C++ backend after measuring all three on this project's CPU
(``bench/RESULTS.md``, "The CPU path"): no dependency beyond a C compiler, sub-second build, and
the fastest of the three by 10× on the layer epilogue.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import torch

__all__ = ["available", "unavailable_reason", "library_path", "threading_mode", "sample", "score", "uniform",
           "SOURCE"]

#: The C source of the epilogue (package data, installed beside this file).
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bihm_cpu.c")
_FLAGS = ["-O3", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off", "-std=gnu99",
          "-Wall", "-Werror=incompatible-pointer-types"]
_ABI = 3
#: Extra flags tried in order until one builds: OpenMP where the compiler has it (the launcher then runs the pass on
#: torch's own threads), 512-bit vectors where the CPU has them (GCC keeps to 256 bits on AVX-512 CPUs by default;
#: the passes gain 20-25 %, bench/RESULTS.md), -march=native where the compiler knows it. Every choice gives the
#: same bits: no fused multiply-adds, no reassociation.
_ATTEMPTS = (["-mprefer-vector-width=512", "-march=native", "-fopenmp"], ["-march=native", "-fopenmp"],
             ["-march=native"], ["-fopenmp"], [])
_WANT_LP, _WANT_D, _X_U8, _LP_ADD = 1, 2, 4, 8
#: Elements of a layer below which the pass runs on the calling thread only.
PARALLEL_MIN = 1 << 15

_state: dict = {}
_lock = threading.Lock()


def _cache_dir() -> str:
    """``$BIHM_TRITON_CACHE_DIR/cpu``, else ``~/.cache/bihm_triton/cpu`` (the library's cache rule)."""
    from ...files import cache_folder

    return cache_folder("cpu", env="BIHM_TRITON_CACHE_DIR", env_subfolder=True)


def _compiler() -> str | None:
    """``$CC``, else cc, gcc or clang: the first that exists (a ``$CC`` that does not is named once on stderr)."""
    want = os.environ.get("CC")
    for c in (want, "cc", "gcc", "clang"):
        if c and shutil.which(c.split()[0]):
            if want and c != want and not _state.get("cc_named"):
                _state["cc_named"] = True
                print(f"bihm_triton: $CC={want!r} was not found; building the CPU kernels with {c!r}", file=sys.stderr)
            return c
    return None


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _intact(path: str) -> bool:
    """The cached library is the file its build wrote: its SHA-256 matches the one stored beside it (a
    truncated shared library can crash the process inside the loader, so it is checked before loading)."""
    try:
        with open(path + ".sha256") as f:
            return f.read().strip() == _digest(path)
    except OSError:
        return False


class _BuildError(Exception):
    """Every attempt of the compiler failed (the message: its last error line)."""


def _compile(cc: str, path: str) -> str | None:
    """Build the source into ``path`` (through a temporary file, then ``os.replace``: a reader never sees half a
    library) with its SHA-256 beside it; the compiler's last error line on failure, else None."""
    from ...files import atomic_write, write_text_atomic

    t0 = time.perf_counter()

    def build(tmp):
        err = ""
        for arch in _ATTEMPTS:
            out = subprocess.run([*cc.split(), *_FLAGS, *arch, SOURCE, "-o", tmp], capture_output=True, text=True)
            if out.returncode == 0:
                write_text_atomic(path + ".sha256", _digest(tmp))  # before the library takes its name
                return
            err = ((out.stderr or out.stdout).strip().splitlines()[-1:] or [""])[0]
        raise _BuildError(f"the C compiler {cc!r} failed on {os.path.basename(SOURCE)}: {err}")

    try:
        atomic_write(path, build)
    except _BuildError as e:
        return str(e)
    took = time.perf_counter() - t0
    if took > 1.0:
        print(f"bihm_triton: built the CPU kernels in {took:.1f} s (once per machine; cached in "
              f"{os.path.dirname(path)})", file=sys.stderr)
    return None


def _cpu_id() -> str:
    """What -march=native depends on: the CPU's model and flags (a shared home across machines gets one
    build per kind of CPU)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags", "Features", "CPU part"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def _build() -> tuple[ctypes.CDLL | None, str]:
    """Compile (or find the cached build of) the C source and load it; ``(None, reason)`` when impossible."""
    cc = _compiler()
    if cc is None:
        return None, "no C compiler found ($CC, cc, gcc or clang)"
    with open(SOURCE, "rb") as f:
        src = f.read()
    try:
        version = subprocess.run([*cc.split(), "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"the C compiler {cc!r} does not run ({e})"
    flags = " ".join(_FLAGS) + " | " + " / ".join(" ".join(a) for a in _ATTEMPTS)
    key = hashlib.sha256(b"\0".join([src, flags.encode(), version.encode(), _cpu_id().encode(),
                                     platform.machine().encode()])).hexdigest()[:20]
    try:
        cache = _cache_dir()
    except OSError as e:
        return None, str(e)
    path = os.path.join(cache, f"bihm_cpu_{key}.so")
    lib = None
    for attempt in (0, 1):  # a missing, corrupt or unloadable cached library is rebuilt once
        if attempt or not os.path.exists(path) or not _intact(path):
            err = _compile(cc, path)
            if err is not None:
                return None, err
        try:
            lib = ctypes.CDLL(path)
            break
        except OSError as e:
            if attempt:
                return None, (f"the CPU kernels built at {path} do not load ({e}); delete that file and "
                              f"{os.path.basename(path)}.sha256 beside it to rebuild them")
    if lib.bihm_abi_version() != _ABI:
        return None, f"{path} has another ABI version"
    p, i64, u64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint64, ctypes.c_int
    lib.bihm_sample.argtypes = [p, p, p, p, p, i64, i64, u64, u64, i32, i64, i64]
    lib.bihm_score.argtypes = [p, p, p, p, p, i64, i64, i32, i64, i64]
    lib.bihm_uniform.argtypes = [p, i64, i64, u64, u64, i64, i64]
    lib.bihm_sample_mt.argtypes = [p, p, p, p, p, i64, i64, u64, u64, i32, i32]
    lib.bihm_score_mt.argtypes = [p, p, p, p, p, i64, i64, i32, i32]
    lib.bihm_uniform_mt.argtypes = [p, i64, i64, u64, u64, i32]
    for fn in (lib.bihm_sample, lib.bihm_score, lib.bihm_uniform, lib.bihm_sample_mt, lib.bihm_score_mt,
               lib.bihm_uniform_mt):
        fn.restype = None
    _state["openmp"] = bool(lib.bihm_openmp()) and _one_openmp_runtime()
    return lib, path


def _one_openmp_runtime() -> bool:
    """The process holds one OpenMP runtime (the library's is torch's): only then do the passes run on OpenMP
    threads. A second runtime would start its own threads, which spin against torch's on every core."""
    try:
        with open("/proc/self/maps") as f:
            runtimes = {line.split()[-1] for line in f if any(k in line for k in ("libgomp", "libiomp", "libomp"))}
    except OSError:
        return False
    return len(runtimes) <= 1


def threading_mode() -> str:
    """How the passes use more than one thread: ``"openmp"`` (torch's own OpenMP threads) or ``"pool"`` (a
    Python thread pool: the build had no OpenMP, or its runtime is not torch's); None when unavailable."""
    if _lib() is None:
        return None
    return "openmp" if _state.get("openmp") else "pool"


def _lib() -> ctypes.CDLL | None:
    if "lib" not in _state:
        with _lock:
            if "lib" not in _state:
                lib, info = _build()
                _state["lib"], _state["info"] = lib, info
                if lib is None:
                    advice = " Install a C compiler (e.g. gcc) to enable it." if _compiler() is None else ""
                    print(f"bihm_triton: the CPU backend is unavailable ({info}); CPU tensors run on the reference "
                          f"implementation (slower).{advice}", file=sys.stderr)
    return _state["lib"]


def available() -> bool:
    """True when the CPU kernels are built (or can be, now: the first call builds them)."""
    return _lib() is not None


def unavailable_reason() -> str | None:
    """Why :func:`available` is False (None when it is True)."""
    return None if _lib() is not None else _state["info"]


def library_path() -> str | None:
    """The loaded shared library's path (None when unavailable)."""
    return _state["info"] if _lib() is not None else None


def _pool(n: int) -> ThreadPoolExecutor:
    """A pool with at least n workers (grown, never shrunk or shut down under a caller)."""
    with _lock:
        pool = _state.get("pool")
        if pool is None or pool._max_workers < n:  # noqa: SLF001
            pool = _state["pool"] = ThreadPoolExecutor(max_workers=n, thread_name_prefix="bihm_cpu")
        return pool


def _run_groups(fn, n_groups: int, elements: int, *args, mt=None) -> None:
    """``fn(*args, g0, g1)`` over row groups [0, n_groups), split across torch's intra-op threads when large:
    ``mt(*args, n)`` (the pass's OpenMP form, on torch's own threads) where the build has it, else a pool."""
    n = min(torch.get_num_threads(), n_groups)
    if n <= 1 or elements < PARALLEL_MIN:
        fn(*args, 0, n_groups)
        return
    if mt is not None and _state.get("openmp"):
        mt(*args, n)
        return
    cuts = [n_groups * i // n for i in range(n + 1)]
    futures = [_pool(n).submit(fn, *args, a, b) for a, b in zip(cuts, cuts[1:]) if b > a]
    for f in futures:
        f.result()


_MADV_HUGEPAGE = 14
_HUGE = 1 << 21


def advise_huge_pages(t: torch.Tensor) -> torch.Tensor:
    """Ask Linux to back the 2 MiB-aligned part of a large, new tensor's memory with huge pages
    (``madvise(MADV_HUGEPAGE)``), before anything writes it: a fresh 63 MB output then costs 32 page faults
    instead of 15 000 (a third of the time of writing it; the kernel's ``transparent_hugepage`` setting is
    usually ``madvise``, which waits for exactly this request). Only this tensor's memory is affected, not the
    process's other allocations; elsewhere (not Linux, small tensors) it does nothing. Returns ``t``."""
    if t.numel() * t.element_size() < 4 * _HUGE or not sys.platform.startswith("linux"):
        return t
    libc = _state.get("libc")
    if libc is None:
        try:
            libc = _state["libc"] = ctypes.CDLL(None, use_errno=True)
            libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        except (OSError, AttributeError):
            libc = _state["libc"] = False
    if libc:
        start = -(-t.data_ptr() // _HUGE) * _HUGE
        end = (t.data_ptr() + t.numel() * t.element_size()) // _HUGE * _HUGE
        if end > start:
            libc.madvise(start, end - start, _MADV_HUGEPAGE)  # advice: a failure changes nothing
    return t


def _check_logits(a: torch.Tensor) -> None:
    if a.dtype != torch.float32 or a.device.type != "cpu" or a.dim() != 2 or not a.is_contiguous():
        raise ValueError(f"the CPU kernels take contiguous (R, M) float32 CPU logits, got {a.dtype} "
                         f"{tuple(a.shape)} on {a.device}")


def _check_bias(bias: torch.Tensor | None, M: int) -> None:
    if bias is not None and (tuple(bias.shape) != (M,) or bias.dtype != torch.float32 or not bias.is_contiguous()
                             or bias.device.type != "cpu"):
        raise ValueError(f"bias must be a contiguous ({M},) float32 CPU tensor, got {bias.dtype} {tuple(bias.shape)} "
                         f"on {bias.device}")


def _seed_int(seed) -> int:
    return int(seed.reshape(())) if isinstance(seed, torch.Tensor) else int(seed)


def sample(a: torch.Tensor, seed, offset: int, *, out_dtype: torch.dtype = torch.float32, want_lp: bool = True,
           want_d: bool = False, out: torch.Tensor | None = None, lp_out: torch.Tensor | None = None,
           bias: torch.Tensor | None = None, lp_add: bool = False):
    """Draw a layer given its logits: ``(x (R, M) out_dtype, lp (R,) float32 or None, d (R, M) float32 or None)``.

    ``x[r, j] = 1[u[r, j] < σ(a[r, j])]`` with the ``(seed, offset)`` uniforms of SPEC §5 (row 0 of ``a``
    starts a Philox row group), ``lp[r] = Σ_j x·a − softplus(a)`` (nats), ``d = x − σ(a)``. ``out`` (R, M)
    float32, uint8 or bool and ``lp_out`` (R,) float32, contiguous, receive x and lp instead of new tensors
    (the blocked sampler reuses its buffers: a fresh large tensor costs a page fault per 4 KiB). ``bias`` (M,)
    float32: the logits are ``a + bias`` (``torch.mm`` then the pass, instead of ``addmm``'s copy of the broadcast
    bias; the same bits as ``torch.mm(h, Wᵀ) + b``). ``lp_add``: lp is added to ``lp_out`` (a pass's running
    log-likelihood) instead of written.

    Raises:
        RuntimeError: the CPU kernels are unavailable (see :func:`unavailable_reason`).
        ValueError: logits that are not contiguous (R, M) float32 on the CPU, or an ``out``/``lp_out``/``bias``
            that does not fit.
    """
    lib = _lib()
    if lib is None:
        raise RuntimeError(f"the CPU kernels are unavailable: {_state['info']}")
    _check_logits(a)
    R, M = a.shape
    if out is not None:
        if tuple(out.shape) != (R, M) or out.dtype not in (torch.float32, torch.uint8, torch.bool) or \
                not out.is_contiguous() or out.device.type != "cpu":
            raise ValueError(f"out must be a contiguous ({R}, {M}) float32, uint8 or bool CPU tensor, got "
                             f"{out.dtype} {tuple(out.shape)}")
        out_dtype = out.dtype
    if lp_out is not None and (tuple(lp_out.shape) != (R,) or lp_out.dtype != torch.float32 or not lp_out.is_contiguous()):
        raise ValueError(f"lp_out must be a contiguous ({R},) float32 tensor, got {lp_out.dtype} {tuple(lp_out.shape)}")
    if lp_add and (lp_out is None or not want_lp):
        raise ValueError("lp_add needs want_lp and the lp_out to add to")
    _check_bias(bias, M)
    native = out_dtype in (torch.float32, torch.uint8, torch.bool)
    x = out if out is not None else torch.empty((R, M), dtype=out_dtype if native else torch.float32)
    lp = (lp_out if lp_out is not None else torch.empty(R, dtype=torch.float32)) if want_lp else None
    d = torch.empty((R, M), dtype=torch.float32) if want_d else None
    flags = (_WANT_LP if want_lp else 0) | (_WANT_D if want_d else 0) | (_X_U8 if x.dtype != torch.float32 else 0) | \
        (_LP_ADD if lp_add else 0)
    if R and M:
        _run_groups(lib.bihm_sample, -(-R // 4), R * M, a.data_ptr(), None if bias is None else bias.data_ptr(),
                    x.data_ptr(), lp.data_ptr() if want_lp else None, d.data_ptr() if want_d else None, R, M,
                    _seed_int(seed), offset, flags, mt=lib.bihm_sample_mt)
    elif want_lp and not lp_add:
        lp.zero_()
    return (x if native else x.to(out_dtype)), lp, d


def score(a: torch.Tensor, x: torch.Tensor, *, want_d: bool = False, bias: torch.Tensor | None = None,
          lp_out: torch.Tensor | None = None, lp_add: bool = False):
    """Score given targets: ``(lp (R,) float32, d (R, M) float32 or None)`` for logits a (R, M) and binary x (R, M)
    (read as ``x != 0``; float32, uint8 and bool natively, other dtypes converted); ``lp[r] = Σ_j x·a − softplus(a)``
    in nats, ``d = x − σ(a)``; ``bias`` (M,), ``lp_out`` (R,) and ``lp_add`` as in :func:`sample`.

    Raises:
        RuntimeError: the CPU kernels are unavailable.
        ValueError: logits that are not contiguous (R, M) float32 on the CPU, x of another shape or device, a
            ``bias``/``lp_out`` that does not fit, or ``lp_add`` without ``lp_out``.
    """
    lib = _lib()
    if lib is None:
        raise RuntimeError(f"the CPU kernels are unavailable: {_state['info']}")
    _check_logits(a)
    R, M = a.shape
    if tuple(x.shape) != (R, M) or x.device.type != "cpu":
        raise ValueError(f"x must be a CPU tensor of the logits' shape {(R, M)}, got {tuple(x.shape)} on {x.device}")
    if x.dtype == torch.bool:
        x = x.view(torch.uint8)
    elif x.dtype not in (torch.float32, torch.uint8):
        x = (x != 0).view(torch.uint8)
    x = x.contiguous()
    if lp_out is not None and (tuple(lp_out.shape) != (R,) or lp_out.dtype != torch.float32 or not lp_out.is_contiguous()):
        raise ValueError(f"lp_out must be a contiguous ({R},) float32 tensor, got {lp_out.dtype} {tuple(lp_out.shape)}")
    if lp_add and lp_out is None:
        raise ValueError("lp_add needs the lp_out to add to")
    _check_bias(bias, M)
    lp = lp_out if lp_out is not None else torch.zeros(R, dtype=torch.float32)
    d = torch.empty((R, M), dtype=torch.float32) if want_d else None
    flags = (_WANT_D if want_d else 0) | (_X_U8 if x.dtype == torch.uint8 else 0) | (_LP_ADD if lp_add else 0)
    if R and M:
        _run_groups(lib.bihm_score, R, R * M, a.data_ptr(), None if bias is None else bias.data_ptr(), x.data_ptr(),
                    lp.data_ptr(), d.data_ptr() if want_d else None, R, M, flags, mt=lib.bihm_score_mt)
    elif not lp_add:
        lp.zero_()
    return lp, d


def uniform(seed, offset: int, rows: int, cols: int) -> torch.Tensor:
    """The (rows, cols) float32 uniforms of a draw: equal bit for bit to :func:`bihm_triton.reference.philox_uniform`."""
    lib = _lib()
    if lib is None:
        raise RuntimeError(f"the CPU kernels are unavailable: {_state['info']}")
    out = torch.empty((rows, cols), dtype=torch.float32)
    if rows and cols:
        _run_groups(lib.bihm_uniform, -(-rows // 4), rows * cols, out.data_ptr(), rows, cols, _seed_int(seed), offset,
                    mt=lib.bihm_uniform_mt)
    return out
