"""Shared machinery of the benchmark suites: size tiers, the providers, input sets, the correctness
guards, timing and what each result records.

Providers (every case runs for each, side by side; speed is judged against what a user would
otherwise write, in the same process and with the same precision settings):

* ``torch`` — plain eager PyTorch written the way a user would (:mod:`baselines`: ``F.linear``,
  ``torch.rand_like``, ``torch.bernoulli``, ``softplus``, autograd, ``torch.optim.Adam``);
* ``torch_compile`` — ``torch.compile`` of exactly those functions (default mode);
* ``torch_compile_ro`` — the same with ``mode="reduce-overhead"`` (CUDA graphs; GPU only, and only
  where the function is capturable: not the Gibbs sweep);
* ``triton`` — this library on the GPU: :mod:`bihm_triton.ops` (``backend="triton"``) and
  :class:`bihm_triton.model.BiHM` (``backend="triton"``);
* ``cpu`` — this library on the CPU (the default there): the same calls with ``backend="cpu"``
  (the matmul by BLAS through torch, then one fused C pass per layer: :mod:`bihm_triton.kernels.cpu`).

``triton`` and ``cpu`` are "ours" (:data:`OURS`): their outputs must equal the reference's (same
stream); the report gives each of ours against ``torch`` and the faster ``torch_compile`` mode.

The reference (:mod:`bihm_triton.reference`, eager PyTorch with the SPEC §5 Philox stream written
as int64 tensor ops) is a correctness oracle, never timed: the ``triton`` provider's output must
equal it element for element (same stream; the ``cpu`` provider likewise), and the native providers, which draw from torch's own
generator, must match its distribution (Welch t-tests on per-row statistics, fixed seeds).

Parameters are random and *dyadic* (multiples of 2⁻⁸, |w| < 4): with binary inputs every logit is
then exact in fp32 and in tf32 whatever the summation order, so the triton provider's samples agree
with the reference element for element (a sample can still flip where ``u`` falls between two
roundings of ``σ(a)``, which the guard tolerates below 1e-3), and the weights give logits of order
1 (non-degenerate samples) instead of the authors' near-zero initialization.
"""

from __future__ import annotations

import importlib.metadata
import itertools
import json
import math
import os
import platform
import time
from collections import OrderedDict
from types import SimpleNamespace

import pytest
import torch

import bihm_triton.reference as ref

ALL_PROVIDERS = ("torch", "torch_compile", "torch_compile_ro", "triton", "cpu")
#: This library's providers (the others are what a user would write instead).
OURS = ("triton", "cpu")
#: The providers this run times: all, or the comma-separated list in ``BIHM_BENCH_PROVIDERS``.
PROVIDERS = tuple(p for p in os.environ.get("BIHM_BENCH_PROVIDERS", ",".join(ALL_PROVIDERS)).split(",") if p)
for _p in PROVIDERS:
    if _p not in ALL_PROVIDERS:
        raise ValueError(f"BIHM_BENCH_PROVIDERS: unknown provider {_p!r}; known: {ALL_PROVIDERS}")
TIER_NAMES = ("tiny", "cpu", "full")

ON_GPU = os.environ.get("BIHM_BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu") != "cpu"
DEVICE = torch.device("cuda" if ON_GPU else "cpu")

MNIST_SIZES = [784, 300, 200, 100, 75, 50, 35, 30, 25, 20, 15, 10, 10]  # the paper's best MNIST model (SPEC §3)
SMALL_SIZES = [784, 200, 100, 50]
TRAIN_K = 10
GIBBS_K = 10
MNIST_DIR = os.environ.get(
    "BIHM_MNIST_DIR",
    os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mnist")),
)

#: Row counts per tier. ``full`` is the issue's sizes (for a GPU); ``cpu`` scales the row counts
#: down so the eager reference (Philox as int64 torch ops) finishes in about a second per call on
#: a 2-core CPU; ``tiny`` is for CI (``--benchmark-disable``): every case once, correctness only.
TIERS = {
    "full": dict(
        layer=[(65536, 784, 300), (1000, 784, 300)],
        nets={"mnist": MNIST_SIZES, "784-200-100-50": SMALL_SIZES},
        ancestral=[2**10, 2**17],
        train=[100, 1000],
        gibbs=1024,
        loglik=(1000, 1000),
    ),
    "cpu": dict(  # the CPU path issue's sizes: n = 20 000; K = 500 on 20 points; B = 100, K = 10
        layer=[(4096, 784, 300), (4096, 300, 200), (4096, 50, 35), (1000, 784, 300)],
        nets={"mnist": MNIST_SIZES, "784-200-100-50": SMALL_SIZES},
        ancestral=[2**10, 20000],
        train=[100],
        gibbs=128,
        loglik=(20, 500),
    ),
    "tiny": dict(
        layer=[(64, 20, 12), (37, 9, 5)],
        # stand-ins with the layer counts of the real networks (12 and 3 latent layers)
        nets={"mnist": [24, 12, 10, 8, 7, 6, 5, 4, 4, 3, 3, 2, 2], "784-200-100-50": [24, 8, 4, 2]},
        ancestral=[8, 37],
        train=[3, 10],
        gibbs=8,
        loglik=(3, 10),
    ),
}

LAYER_VARIANTS = [("sample", "fwd"), ("sample", "fwd_bwd"), ("score", "fwd"), ("score", "fwd_bwd")]

#: Tolerated fraction of sample elements that differ from the reference (σ rounding flips).
MAX_SAMPLE_MISMATCH = 1e-3


class _State:
    tier: str = "cpu"
    benchmark_disabled: bool = False
    matmul_precision: str = "highest"
    configured: bool = False


STATE = _State()


def configure(benchmark_disabled: bool) -> None:
    """Fix the tier and the global torch settings for this session (called by ``bench/conftest.py``)."""
    STATE.benchmark_disabled = benchmark_disabled
    tier = os.environ.get("BIHM_BENCH_SIZE", "")
    if not tier:
        tier = "tiny" if benchmark_disabled else ("full" if ON_GPU else "cpu")
    if tier not in TIER_NAMES:
        raise pytest.UsageError(f"BIHM_BENCH_SIZE must be one of {TIER_NAMES}, got {tier!r}")
    STATE.tier = tier
    threads = os.environ.get("BIHM_BENCH_THREADS")
    if threads:  # torch's intra-op threads (the CPU tier is reported at 1 and at 2)
        torch.set_num_threads(int(threads))
    if ON_GPU:
        # tf32 for every provider (torch matmuls and the Triton kernels' tl.dot follow this setting)
        torch.set_float32_matmul_precision("high")
    STATE.matmul_precision = torch.get_float32_matmul_precision()

    import torch._dynamo.config as dynamo_config

    dynamo_config.force_parameter_static_shapes = False  # one graph for every layer width
    for name in ("recompile_limit", "cache_size_limit"):  # the name changed across torch versions
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), 256))
            break
    for name in ("fail_on_recompile_limit_hit", "fail_on_cache_limit_hit"):
        if hasattr(dynamo_config, name):  # never fall back to eager silently
            setattr(dynamo_config, name, True)
            break
    if not ON_GPU and benchmark_disabled and tier == "tiny":
        # CI mode times nothing; inductor's C++ vectorization doubles the code-generation time of
        # the Philox graphs (about 30 s -> 15 s each on the 2-core CPU), so it is turned off here.
        import torch._inductor.config as inductor_config

        if hasattr(inductor_config, "cpp") and hasattr(inductor_config.cpp, "vec_isa_ok"):
            inductor_config.cpp.vec_isa_ok = False
    STATE.configured = True


def tier() -> dict:
    return TIERS[STATE.tier]


def device_name() -> str:
    if ON_GPU:
        return torch.cuda.get_device_name(DEVICE)
    return f"cpu: {cpu_model()} ({os.cpu_count()} cores)"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment_info() -> dict:
    info = {
        "torch": torch.__version__,
        "triton": _version("triton"),
        "device": device_name(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "tier": STATE.tier,
        "matmul_precision": STATE.matmul_precision,
        "benchmark_disabled": STATE.benchmark_disabled,
        "triton_interpret": os.environ.get("TRITON_INTERPRET", ""),
    }
    if ON_GPU:
        info["cuda"] = torch.version.cuda
        props = torch.cuda.get_device_properties(DEVICE)
        info["sm_count"] = props.multi_processor_count
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    return info


# ------------------------------------------------------------------------------ providers


def ref_sample(h, weight, bias, seed, offset, out_dtype):
    """The body of ``ref.sbn_sample`` without its argument checks: ``(x, log_prob)`` of one layer (SPEC §5).
    The reference the triton provider's layer samples are compared with."""
    a = ref.sbn_logits(h, weight, bias)
    x = ref.bernoulli_sample(a, seed=seed, offset=offset)
    return x.to(out_dtype), ref.bernoulli_log_prob(a, x)


def ref_score(h, x, weight, bias):
    """The reference layer log-likelihood ``Σ_j x·a − softplus(a)`` (R,) without the binary check."""
    return ref.bernoulli_log_prob(ref.sbn_logits(h, weight, bias), x)


_COMPILED: dict = {}
#: ``torch.compile(dynamic=...)`` of the compile providers: static shapes (one graph per input shape,
#: the fastest code for the fixed shapes a benchmark times); shown in the pytest header.
COMPILE_DYNAMIC = False


def compiled(fn, provider: str):
    """``torch.compile`` of a baseline function for a ``torch_compile*`` provider (cached per function)."""
    key = (fn, provider)
    if key not in _COMPILED:
        mode = "reduce-overhead" if provider == "torch_compile_ro" else None
        _COMPILED[key] = torch.compile(fn, mode=mode, dynamic=COMPILE_DYNAMIC)
    return _COMPILED[key]


def native(fn, provider: str):
    """A baseline function as the provider runs it: eager for ``torch``, compiled for ``torch_compile*``."""
    if provider == "torch":
        return fn
    if provider in ("torch_compile", "torch_compile_ro"):
        return compiled(fn, provider)
    raise ValueError(f"{provider!r} is not a native-PyTorch provider")


def mark_step(provider: str) -> None:
    """Tell cudagraph trees a new iteration begins (reduce-overhead mode), so outputs of the previous
    replay may be overwritten."""
    if provider == "torch_compile_ro" and ON_GPU:
        torch.compiler.cudagraph_mark_step_begin()


def ops_primitives(backend: str = "triton"):
    """The layer ops of one of :data:`OURS`: ``(sample(h, W, b, seed, offset, out_dtype), score(h, x, W, b))``."""
    from bihm_triton import ops

    def sample(h, w, b, seed, offset, out_dtype):
        return ops.sbn_sample(h, w, b, seed=seed, offset=offset, out_dtype=out_dtype, backend=backend)

    def score(h, x, w, b):
        return ops.sbn_log_prob(h, x, w, b, backend=backend, validate=False)

    return sample, score


_STATE_DICTS: dict = {}


def dyadic_state_dict(sizes) -> dict:
    """Random dyadic parameters for a BiHM of ``sizes`` (deterministic; cached), on the CPU."""
    key = tuple(sizes)
    if key not in _STATE_DICTS:
        gen = torch.Generator().manual_seed(1234 + sum(sizes) + len(sizes))
        m = ref.BiHM(list(sizes))
        sd = {}
        for name, p in m.state_dict().items():
            if p.dim() == 2:  # weight (d_out, d_in): logits of order 1 for binary inputs
                v = torch.randn(p.shape, generator=gen) * (2.0 / math.sqrt(max(1, p.shape[1])))
            else:  # biases and the top prior's logits
                v = torch.randn(p.shape, generator=gen) * 0.5 - 0.5
            sd[name] = (torch.round(v * 256) / 256).clamp_(-3.99, 3.99)
        _STATE_DICTS[key] = sd
    return _STATE_DICTS[key]


def make_model(provider: str, sizes):
    """A BiHM with the shared dyadic parameters: the product (:class:`bihm_triton.model.BiHM`) with
    ``backend=provider`` for one of :data:`OURS` (``"cpu"`` on the CPU), the reference
    :class:`~bihm_triton.reference.BiHM` for ``"reference"`` (the oracle)."""
    sizes = list(sizes)
    if provider in OURS:
        from bihm_triton.model import BiHM

        model = BiHM(sizes, backend=provider, device=DEVICE if provider == "triton" else "cpu", chunk_rows=1 << 16)
    elif provider == "reference":
        model = ref.BiHM(sizes, device=DEVICE)
    else:
        raise ValueError(f"make_model: unknown provider {provider!r}")
    model.load_state_dict(dyadic_state_dict(sizes))
    return model


def make_net(sizes, requires_grad: bool = False):
    """The same parameters as :func:`make_model` as a :class:`baselines.Net` (plain tensors)."""
    from baselines import Net

    return Net.from_model(make_model("reference", sizes), requires_grad=requires_grad)


# ------------------------------------------------------------------------------ inputs


def n_input_sets() -> int:
    """Input sets cycled through while timing (so the L2 cache does not flatter): 4 on a GPU."""
    if STATE.benchmark_disabled:
        return 1
    default = 4 if ON_GPU else 2
    return max(1, int(os.environ.get("BIHM_BENCH_SETS", default)))


def seed_tensor(i: int) -> torch.Tensor:
    """A one-element int64 seed on the bench device: no recompiles, no host reads."""
    return torch.tensor(1_000_003 * (i + 1) + 17, dtype=torch.int64, device=DEVICE)


def device_generator(seed: int) -> torch.Generator:
    return torch.Generator(device=DEVICE).manual_seed(seed)


class _LRU(OrderedDict):
    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def get_or(self, key, make):
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = make()
        self[key] = value
        while len(self) > self.size:
            self.popitem(last=False)
        return value


_INPUTS = _LRU(2)  # input sets are shared by the three providers of a case


def cached_inputs(key, make):
    return _INPUTS.get_or((key, n_input_sets(), str(DEVICE)), make)


_MNIST: dict = {}


def data_batch(d0: int, batch: int, i: int) -> tuple[torch.Tensor, str]:
    """Binary data (batch, d0) for input set i: MNIST test images when present and d0 == 784, else random."""
    if d0 == 784 and os.path.isdir(MNIST_DIR):
        if "x" not in _MNIST:
            from bihm_triton.data import load_mnist_idx

            try:
                _MNIST["x"] = load_mnist_idx(MNIST_DIR, split="test")
            except (OSError, ValueError):
                _MNIST["x"] = None
        x = _MNIST["x"]
        if x is not None and len(x) >= batch:
            start = (i * batch) % (len(x) - batch + 1)
            return x[start:start + batch].to(DEVICE), "mnist"
    g = device_generator(50_000 + i)
    return (torch.rand(batch, d0, device=DEVICE, generator=g) < 0.2).float(), "random"


# ------------------------------------------------------------------------------ guard


def sample_mismatch(got, want) -> float:
    """Fraction of elements that differ between two lists of 0/1 tensors."""
    diff = total = 0
    for g, w in zip(got, want):
        assert tuple(g.shape) == tuple(w.shape), f"shape {tuple(g.shape)} != reference {tuple(w.shape)}"
        diff += int((g.float() != w.float()).sum())
        total += w.numel()
    return diff / max(1, total)


def assert_samples(got, want, what: str) -> float:
    frac = sample_mismatch(got, want)
    assert frac < MAX_SAMPLE_MISMATCH, f"{what}: {frac:.3g} of the sample elements differ from the reference"
    return frac


def rows_equal(got, want) -> torch.Tensor:
    """(R,) bool: rows where every tensor of the two lists agrees."""
    ok = None
    for g, w in zip(got, want):
        e = (g.float() == w.float()).all(dim=1)
        ok = e if ok is None else ok & e
    return ok


def assert_log_probs(got: torch.Tensor, want: torch.Tensor, rows_ok: torch.Tensor | None, what: str,
                     rtol: float = 1e-4) -> float:
    """Log-likelihoods agree (relative to 1 + |want|) on the rows whose samples agree."""
    g, w = got.detach().double().flatten(), want.detach().double().flatten()
    if rows_ok is not None:
        g, w = g[rows_ok], w[rows_ok]
    if w.numel() == 0:
        return 0.0
    assert torch.isfinite(g).all(), f"{what}: non-finite log-likelihoods"
    err = float(((g - w).abs() / (1 + w.abs())).max())
    assert err < rtol, f"{what}: log-likelihoods differ from the reference by {err:.3g} (relative)"
    return err


def assert_same_distribution(got, want, what: str, p_min: float = 1e-6) -> float:
    """Two independent samples of a per-row statistic come from one distribution: Welch's t-test on
    their means (``scipy.stats.ttest_ind``) must not reject at level ``p_min``. Returns the p-value.

    For the native providers, which draw from torch's generator and so cannot match the reference
    sample for sample; with fixed seeds the test is deterministic on a CPU.
    """
    from scipy import stats

    g = got.detach().double().flatten().cpu()
    w = want.detach().double().flatten().cpu()
    assert torch.isfinite(g).all(), f"{what}: non-finite values"
    if g.numel() < 2 or w.numel() < 2 or (g.std() == 0 and w.std() == 0):
        assert torch.allclose(g.mean(), w.mean(), rtol=1e-5, atol=1e-6), \
            f"{what}: means {float(g.mean()):.6g} and {float(w.mean()):.6g} differ"
        return 1.0
    p = float(stats.ttest_ind(g.numpy(), w.numpy(), equal_var=False).pvalue)
    assert p > p_min, (f"{what}: mean {float(g.mean()):.6g} vs the reference's {float(w.mean()):.6g} "
                       f"(Welch t-test p = {p:.2g} < {p_min:g})")
    return p


def assert_same_mean_paired(got, want, what: str, p_min: float = 1e-6) -> float:
    """Per-data-point estimates from independent draws (same data): their differences have mean 0
    (one-sample t-test, ``scipy.stats.ttest_1samp``). Returns the p-value."""
    from scipy import stats

    d = (got.detach().double() - want.detach().double()).flatten().cpu()
    assert torch.isfinite(d).all(), f"{what}: non-finite values"
    if d.numel() < 2 or d.std() == 0:
        assert abs(float(d.mean())) < 1e-4 * (1 + float(want.abs().mean())), f"{what}: differs by {float(d.mean()):.3g}"
        return 1.0
    p = float(stats.ttest_1samp(d.numpy(), 0.0).pvalue)
    assert p > p_min, f"{what}: mean difference {float(d.mean()):.4g} from the reference (t-test p = {p:.2g})"
    return p


def assert_grads(got: dict, want: dict, what: str, rtol: float = 2e-2) -> float:
    """Gradients agree in relative norm, ‖g − w‖ / ‖w‖ (tf32 matmuls on a GPU: ~1e-3)."""
    worst = 0.0
    for name, w in want.items():
        g = got.get(name)
        assert g is not None, f"{what}: no gradient for {name}"
        w, g = w.detach().double(), g.detach().double()
        err = float((g - w).norm() / w.norm().clamp_min(1e-30))
        assert err < rtol, f"{what}: gradient of {name} differs from the reference by {err:.3g} (relative norm)"
        worst = max(worst, err)
    return worst


# ------------------------------------------------------------------------------ timing


def sync() -> None:
    if ON_GPU:
        torch.cuda.synchronize()


def skip_unless_measurable(provider: str, *, capturable: bool = True) -> None:
    """Skip what cannot be measured here: the triton provider in a timed CPU run (the interpreter
    measures Python), ``torch_compile_ro`` without a GPU (CUDA graphs) or for a function that cannot
    be captured."""
    if provider == "triton" and not ON_GPU and not STATE.benchmark_disabled:
        pytest.skip("the Triton interpreter measures Python, not the kernel: the triton provider is timed on a "
                    "GPU only (use --benchmark-disable for a correctness run under TRITON_INTERPRET=1)")
    if provider == "torch_compile_ro" and not ON_GPU:
        pytest.skip("mode='reduce-overhead' uses CUDA graphs: GPU only")
    if provider == "cpu" and ON_GPU:
        pytest.skip("the cpu provider is this library on the CPU: timed in a CPU run (BIHM_BENCH_DEVICE=cpu)")
    if provider == "cpu":
        from bihm_triton import ops

        if not ops.cpu_available():
            pytest.skip("the CPU backend's kernels are unavailable here (no C compiler)")
    if provider == "torch_compile_ro" and not capturable:
        pytest.skip("this case is not capturable in a CUDA graph (data-dependent Python control flow)")


def _compile_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _gpu_median_seconds(fn, warm_s: float) -> float:
    """Median of CUDA-event timings (``triton.testing.do_bench``, L2 flushed before every call)."""
    from triton.testing import do_bench

    est_ms = max(warm_s * 1e3, 1e-3)
    rep = min(max(100.0, 10 * est_ms), 1500.0)  # at least ~10 timed calls, at most ~1.5 s
    return do_bench(fn, warmup=min(25.0, 2 * est_ms), rep=rep, return_mode="median") / 1e3


def record_jsonl(info: dict) -> None:
    path = os.environ.get("BIHM_BENCH_JSONL")
    if not path:
        return
    line = dict(info, nodeid=os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0])
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")


def run_benchmark(benchmark, *, provider: str, case: str, name: str, shape: str, params: dict, items: int,
                  unit: str, sets: list, call, check=None, extra: dict | None = None):
    """Guard, warm up, time and record one (case, provider).

    Args:
        benchmark: the pytest-benchmark fixture.
        provider: one of :data:`PROVIDERS`.
        case: the case kind ("layer", "ancestral", "train_step", "gibbs_sweep"): what
            :mod:`roofline` needs, with ``params``, to count the work.
        name, shape: the case's name and shape (the table's first two columns).
        items: samples (rows, importance samples, chains) one call produces, for items/s.
        unit: what ``items`` counts.
        sets: input sets; ``call(set)`` runs the provider once on one of them.
        check: ``check(output, set)`` compares the provider's output on ``sets[0]`` with the
            reference (exactly for triton, in distribution for the native providers) and returns a
            dict of agreement statistics (raises AssertionError if wrong).
    """
    skip_unless_measurable(provider)
    info = dict(
        provider=provider, case=case, name=name, shape=shape, case_id=f"{name}[{shape}]", params=params,
        items=items, unit=unit, tier=STATE.tier, device=device_name(), matmul_precision=STATE.matmul_precision,
        threads=torch.get_num_threads(),
        input_sets=len(sets), torch=torch.__version__, triton=_version("triton"),
    )
    if provider.startswith("torch_compile"):
        info["compile"] = dict(mode="reduce-overhead" if provider == "torch_compile_ro" else "default",
                               dynamic=COMPILE_DYNAMIC,
                               cpp_vectorized=not (not ON_GPU and STATE.benchmark_disabled and STATE.tier == "tiny"))
    if extra:
        info.update(extra)
    graphs0 = _compile_graphs()
    it = itertools.cycle(sets)

    def once():
        return call(next(it))

    if STATE.benchmark_disabled:
        out = benchmark(once)  # runs once, on sets[0]
        if check is not None:
            info["guard"] = check(out, sets[0])
        info["timer"] = "none (--benchmark-disable: one correctness run)"
        info["median_s"] = None
        info["items_per_s"] = None
    else:
        out = once()  # sets[0]: compiles, autotunes
        if check is not None:
            info["guard"] = check(out, sets[0])
        del out
        t0 = time.perf_counter()
        for _ in range(len(sets)):
            once()
        sync()
        warm_s = (time.perf_counter() - t0) / len(sets)
        if ON_GPU:
            median = _gpu_median_seconds(once, warm_s)

            def once_synced():
                once()
                torch.cuda.synchronize()

            # pytest-benchmark's own wall-clock stats (synchronized calls) go into the JSON too
            benchmark.pedantic(once_synced, rounds=3, iterations=1)
            info["timer"] = "cuda events (triton.testing.do_bench median, L2 flushed)"
        else:
            benchmark(once)
            median = benchmark.stats.stats.median
            info["timer"] = "wall clock (pytest-benchmark median)"
        info["median_s"] = median
        info["items_per_s"] = items / median if median > 0 else None
    info["compile_graphs_built"] = _compile_graphs() - graphs0
    benchmark.extra_info.update(info)
    record_jsonl(info)
    return info


def inputs_namespace(**kw) -> SimpleNamespace:
    return SimpleNamespace(**kw)
