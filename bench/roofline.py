"""Roofline floors of the benchmark cases (SPEC §7), against nominal or measured GPU ceilings.

For every case the *floor* is the least time the GPU needs for the work the case must do,
whatever the implementation:

* **FLOPs** — ``2·R·N·M`` per layer evaluation over R rows (N inputs, M outputs); a backward
  adds ``2·R·N·M`` for the weight gradient (the inputs are binary samples: no input gradient).
  At the tf32 tensor-core rate when ``torch.get_float32_matmul_precision()`` was ``"high"`` (the
  GPU runs record it), at the fp32 FMA rate when it was ``"highest"``.
* **Bytes** — 1-byte binary states in and out (``R·N + R·M`` per layer evaluation; the fused
  ancestral sampler keeps the intermediate states on chip, so only the states it returns count),
  4-byte log-likelihoods, and every weight once (read; a backward also writes its gradient).
* **Instructions** — about 20 integer instructions per uniform (Philox4x32-10 with all four
  outputs used, SPEC §7) plus the sigmoid/softplus epilogue per sampled element, and the epilogue
  alone per *scored* element (log-likelihood of given states, and the ``x − σ(a)`` of a backward).

``floor = max(t_flops, t_bytes, t_instructions)``: the three use different units (tensor cores,
HBM, the SM's issue slots) that can overlap, so the largest is a lower bound and names the
binding resource. A provider's *fraction of the floor* is ``floor / measured time`` (1 = at the
limit).

Ceilings: nominal H200 SXM figures by default, clearly labelled; with ``--measure`` (on the GPU)
they are measured: a device-to-device copy (HBM bandwidth), large matmuls in fp32/tf32/bf16, and
Triton kernels that only draw Philox numbers with ``tl.rand4x`` (uniforms/s), draw and apply the
Bernoulli epilogue (sampled elements/s), or apply the epilogue alone (scored elements/s).

Usage::

    python bench/roofline.py --json bench/results/gpu.json [--json more.jsonl] [--measure]
                             [--save-ceilings ceilings.json | --ceilings ceilings.json]

Importable: :func:`work_for`, :func:`floor`, :func:`nominal_ceilings`, :func:`measure_ceilings`,
:func:`load_results`, :func:`ceilings_from_dict`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field

#: The benchmark providers, in table order (bench/benchlib.py).
PROVIDERS = ("torch", "torch_compile", "torch_compile_ro", "triton", "cpu")

# ------------------------------------------------------------------------------ instruction model

#: Integer instructions per uniform: Philox4x32-10 with all four outputs used (SPEC §7).
PHILOX_INT_INSTR_PER_UNIFORM = 20
#: Epilogue of a sampled element: bias add, exp(−|a|), 1 + e, select, a precise divide (σ), the
#: compare with u, select, max, log(1 + e), two subtractions, masking, the row sum: ~16 FP32
#: instructions and 3 MUFU (ex2, lg2, rcp).
SAMPLE_EPILOGUE = {"fp32": 16, "mufu": 3}
#: Epilogue of a scored element (no draw, no divide): ~8 FP32 and 2 MUFU (ex2, lg2).
SCORE_EPILOGUE = {"fp32": 8, "mufu": 2}

#: H200 SXM (GH100, compute capability 9.0), nominal. Sources: NVIDIA H200 datasheet (141 GB
#: HBM3e, 4.8 TB/s; TF32 tensor core 989 TFLOPS and BF16 1,979 TFLOPS *with sparsity*, i.e.
#: 494.7 and 989.4 dense; FP32 67 TFLOPS), the Hopper whitepaper (132 SMs in the SXM5 part,
#: 1.98 GHz boost, 128 FP32 lanes per SM), the CUDA C++ Programming Guide's throughput table for
#: compute capability 9.0 (per SM per clock: 64 32-bit integer add/logic/multiply results, 16
#: special-function results; 4 schedulers issuing one warp instruction each = 128 lane-instructions).
H200_NOMINAL = {
    "name": "NVIDIA H200 SXM (nominal datasheet figures, not measured)",
    "sms": 132,
    "clock_hz": 1.98e9,
    "hbm_bytes_per_s": 4.8e12,
    "matmul_flop_per_s": {"ieee": 66.9e12, "tf32": 494.7e12, "bf16": 989.4e12},
    "lanes_per_sm": {"issue": 128, "fp32": 128, "int32": 64, "mufu": 16},
}


@dataclass
class Ceilings:
    """What the GPU can do per second. ``measured`` False: nominal figures (labelled in ``name``)."""

    name: str
    measured: bool
    hbm_bytes_per_s: float
    matmul_flop_per_s: dict  # {"ieee": fp32 FMA, "tf32": ..., "bf16": ...}
    sampled_per_s: float  # Philox draw + Bernoulli epilogue, per element
    scored_per_s: float  # epilogue alone, per element
    uniforms_per_s: float  # Philox alone (informational)
    details: dict = field(default_factory=dict)

    def matmul_rate(self, precision: str) -> float:
        """FLOP/s of an fp32 matmul under ``torch.get_float32_matmul_precision()`` = precision."""
        key = "ieee" if precision in ("highest", "ieee") else ("bf16" if precision == "bf16" else "tf32")
        return self.matmul_flop_per_s[key]


def _cycles_per_element(int_instr: float, ep: dict, lanes: dict) -> float:
    """SM cycles per element: the busiest of the issue port and the integer, FP32 and MUFU pipes."""
    total = int_instr + ep["fp32"] + ep["mufu"]
    return max(total / lanes["issue"], int_instr / lanes["int32"], ep["fp32"] / lanes["fp32"],
               ep["mufu"] / lanes["mufu"])


def nominal_ceilings(spec: dict = H200_NOMINAL) -> Ceilings:
    """Ceilings from datasheet figures and the instruction model above (no GPU needed)."""
    sm_cycles_per_s = spec["sms"] * spec["clock_hz"]
    lanes = spec["lanes_per_sm"]
    sampled = sm_cycles_per_s / _cycles_per_element(PHILOX_INT_INSTR_PER_UNIFORM, SAMPLE_EPILOGUE, lanes)
    scored = sm_cycles_per_s / _cycles_per_element(0, SCORE_EPILOGUE, lanes)
    uniforms = sm_cycles_per_s / _cycles_per_element(PHILOX_INT_INSTR_PER_UNIFORM, {"fp32": 0, "mufu": 0}, lanes)
    return Ceilings(name=spec["name"], measured=False, hbm_bytes_per_s=spec["hbm_bytes_per_s"],
                    matmul_flop_per_s=dict(spec["matmul_flop_per_s"]), sampled_per_s=sampled,
                    scored_per_s=scored, uniforms_per_s=uniforms,
                    details={"model": {"philox_int_per_uniform": PHILOX_INT_INSTR_PER_UNIFORM,
                                       "sample_epilogue": SAMPLE_EPILOGUE, "score_epilogue": SCORE_EPILOGUE,
                                       **{k: spec[k] for k in ("sms", "clock_hz", "lanes_per_sm")}}})


def ceilings_from_dict(d: dict) -> Ceilings:
    return Ceilings(**d)


# ------------------------------------------------------------------------------ work of a case


@dataclass
class Work:
    flops: float = 0.0
    bytes: float = 0.0
    sampled: float = 0.0  # elements drawn (Philox + epilogue)
    scored: float = 0.0  # elements through the epilogue alone
    params: dict = field(default_factory=dict)  # distinct weight matrices (d_out, d_in), read once

    def layer(self, rows: int, d_in: int, d_out: int, *, sampled: bool, backward: bool = False,
              state_bytes: bool = True, key=None) -> None:
        """One stochastic-layer evaluation over ``rows`` (a draw if ``sampled``, else a score)."""
        self.flops += 2.0 * rows * d_in * d_out * (2 if backward else 1)
        if state_bytes:
            self.bytes += rows * (d_in + d_out) + 4.0 * rows
        if sampled:
            self.sampled += rows * d_out
        else:
            self.scored += rows * d_out
        if backward:
            self.scored += rows * d_out  # x − σ(a) for the gradient
            if state_bytes:
                self.bytes += rows * (d_in + d_out) + 4.0 * rows  # the backward reads h, x, dL/dlog_prob
        k = key if key is not None else (d_out, d_in)
        w_bytes = 4.0 * (d_out * d_in + d_out)
        self.params[k] = max(self.params.get(k, 0.0), w_bytes * (3 if backward else 1))

    def finish(self) -> "Work":
        self.bytes += sum(self.params.values())
        return self


def _ancestral_work(sizes, n: int, state_bytes: int = 1, log_p: bool = True) -> Work:
    """The fused sampler's work: every layer drawn; only x (``state_bytes`` per unit) and log p leave the chip."""
    w = Work()
    widths = sizes[::-1]  # prior h_L, then h_{L-1} … x
    for i, d in enumerate(widths):
        w.layer(n, widths[i - 1] if i else 0, d, sampled=True, state_bytes=False, key=("p", i))
    w.bytes += n * sizes[0] * state_bytes + (4.0 * n if log_p else 0.0)
    return w.finish()


def _q_pass(w: Work, sizes, rows: int, backward: bool = False) -> None:
    for l in range(len(sizes) - 1):
        w.layer(rows, sizes[l], sizes[l + 1], sampled=True, backward=backward, key=("q", l))


def _p_score(w: Work, sizes, rows: int, backward: bool = False) -> None:
    L = len(sizes) - 1
    w.layer(rows, 0, sizes[L], sampled=False, backward=backward, key=("p", L))
    for l in range(L):
        w.layer(rows, sizes[l + 1], sizes[l], sampled=False, backward=backward, key=("p", l))


def _train_work(sizes, batch: int, k: int) -> Work:
    """q pass (draws, log q, its backward) and log p(x, h) (scores and backward) over B·K rows."""
    w = Work()
    rows = batch * k
    _q_pass(w, sizes, rows, backward=True)
    _p_score(w, sizes, rows, backward=True)
    return w.finish()


def _loglik_work(sizes, batch: int, k: int) -> Work:
    """q pass (draws) and log p(x, h) (scores) over B·K rows, no backward."""
    w = Work()
    _q_pass(w, sizes, batch * k)
    _p_score(w, sizes, batch * k)
    return w.finish()


def _gibbs_work(sizes, n: int, k: int, n_inner: int = 1) -> Work:
    """One exact-mode sweep of :func:`bihm_triton.samplers.gibbs_sample` (module docstring there)."""
    w = Work()
    L = len(sizes) - 1

    def log_s(rows):  # log Ŝ(x): a q pass and log p(x, h) over rows·n_inner
        _q_pass(w, sizes, rows * n_inner)
        _p_score(w, sizes, rows * n_inner)

    log_s(n)  # the initial state's estimate
    for parity in (1, 0):
        for l in range(parity, L + 1, 2):
            if l == 0:
                rows = n * k
                w.layer(rows, sizes[1], sizes[0], sampled=True, key=("p", 0))  # candidates from p(x | h_1)
                log_s(rows)
                w.layer(rows, sizes[1], sizes[0], sampled=False, key=("p", 0))
                w.layer(rows, sizes[0], sizes[1], sampled=False, key=("q", 0))
                continue
            rows = n * 2 * k
            top = l == L
            p_in = 0 if top else sizes[l + 1]
            w.layer(rows, p_in, sizes[l], sampled=True, key=("p", l))  # proposals from p
            w.layer(rows, sizes[l - 1], sizes[l], sampled=True, key=("q", l - 1))  # proposals from q
            w.sampled += rows  # the coin choosing between them
            w.layer(rows, p_in, sizes[l], sampled=False, key=("p", l))
            w.layer(rows, sizes[l - 1], sizes[l], sampled=False, key=("q", l - 1))
            w.layer(rows, sizes[l], sizes[l - 1], sampled=False, key=("p", l - 1))
            if not top:
                w.layer(rows, sizes[l], sizes[l + 1], sampled=False, key=("q", l))
    return w.finish()


def work_for(case: str, params: dict) -> Work:
    """The work of a benchmark case, from the ``case`` and ``params`` its result records."""
    if case == "layer":
        R, N, M = params["R"], params["N"], params["M"]
        w = Work()
        w.layer(R, N, M, sampled=params["op"] == "sample", backward=params["pass"] == "fwd_bwd")
        return w.finish()
    if case == "ancestral":
        return _ancestral_work(params["sizes"], params["n"], 4 if params.get("state_dtype") == "float32" else 1,
                               params.get("log_p", True))
    if case == "loglik":
        return _loglik_work(params["sizes"], params["batch"], params["k"])
    if case == "train_step":
        return _train_work(params["sizes"], params["batch"], params["k"])
    if case == "gibbs_sweep":
        return _gibbs_work(params["sizes"], params["chains"], params["k"], params.get("n_inner", 1))
    raise ValueError(f"unknown case {case!r}")


@dataclass
class Floor:
    seconds: float
    binding: str  # "flops" | "bytes" | "instructions"
    terms: dict  # seconds of each resource


def floor(work: Work, ceilings: Ceilings, matmul_precision: str = "high") -> Floor:
    terms = {
        "flops": work.flops / ceilings.matmul_rate(matmul_precision),
        "bytes": work.bytes / ceilings.hbm_bytes_per_s,
        "instructions": work.sampled / ceilings.sampled_per_s + work.scored / ceilings.scored_per_s,
    }
    binding = max(terms, key=terms.get)
    return Floor(terms[binding], binding, terms)


# ------------------------------------------------------------------------------ results


def _entry_from_benchmark(b: dict) -> dict | None:
    info = dict(b.get("extra_info") or {})
    if "case" not in info:
        return None
    if info.get("median_s") is None and b.get("stats"):
        info["median_s"] = b["stats"].get("median")
    info.setdefault("test", b.get("fullname") or b.get("name"))
    return info


def load_results(paths) -> list[dict]:
    """Result entries (the ``extra_info`` the suites record, with ``median_s``) from pytest-benchmark
    JSON files (``--benchmark-json``) and/or the suites' JSONL logs (``BIHM_BENCH_JSONL``).
    A later entry for the same (case_id, provider) replaces an earlier one."""
    by_key: dict = {}
    for path in paths:
        with open(path) as f:
            text = f.read()
        entries = []
        stripped = text.lstrip()
        if stripped.startswith("{") and '"benchmarks"' in text[:100000] and not path.endswith(".jsonl"):
            data = json.loads(text)
            entries = [e for e in (_entry_from_benchmark(b) for b in data.get("benchmarks", [])) if e]
        else:
            for line in text.splitlines():
                line = line.strip()
                if line:
                    d = json.loads(line)
                    if "case" in d:
                        entries.append(d)
        for e in entries:
            by_key[(e["case_id"], e["provider"])] = e
    return list(by_key.values())


def is_gpu_result(entry: dict) -> bool:
    return not str(entry.get("device", "cpu")).startswith("cpu")


def analyse(entries: list[dict], ceilings: Ceilings) -> list[dict]:
    """One row per case: the floor and, per provider, time, items/s and fraction of the floor."""
    cases: dict = {}
    for e in entries:
        row = cases.setdefault(e["case_id"], {"case_id": e["case_id"], "name": e["name"], "shape": e["shape"],
                                              "case": e["case"], "params": e["params"], "unit": e.get("unit"),
                                              "providers": {}})
        t = e.get("median_s")
        gpu = is_gpu_result(e)
        prov = {"median_s": t, "items_per_s": e.get("items_per_s"), "gpu": gpu,
                "matmul_precision": e.get("matmul_precision", "high")}
        row["providers"][e["provider"]] = prov
    out = []
    for row in cases.values():
        work = work_for(row["case"], row["params"])
        precisions = {p["matmul_precision"] for p in row["providers"].values()}
        fl = floor(work, ceilings, sorted(precisions)[0] if precisions else "high")
        row["work"] = asdict(work) | {"params": len(work.params)}
        row["floor"] = asdict(fl)
        for prov in row["providers"].values():
            t = prov["median_s"]
            prov["fraction_of_floor"] = (fl.seconds / t) if (t and prov["gpu"]) else None
        out.append(row)
    return sorted(out, key=lambda r: (r["name"], _shape_key(r)))


def _shape_key(row):
    p = row["params"]
    return tuple(p.get(k, 0) for k in ("R", "N", "M", "n", "batch", "chains"))


# ------------------------------------------------------------------------------ measuring


def _timer(device):
    """Median seconds of ``fn``: CUDA events (triton.testing.do_bench) on a GPU, wall clock otherwise."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return lambda fn: do_bench(fn, warmup=25, rep=200, return_mode="median") / 1e3

    def wall(fn, reps=3):
        fn()
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return sorted(ts)[len(ts) // 2]

    return wall


def measure_ceilings(device=None, *, quick: bool = False) -> Ceilings:
    """Measure the ceilings on ``device`` (default: the current CUDA device).

    On a CPU (``TRITON_INTERPRET=1``, ``quick``) the same code runs at toy sizes: a check of the
    code path, not a ceiling (labelled so).
    """
    import torch

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = device.type == "cuda"
    timeit = _timer(device)
    details = {}

    # HBM bandwidth: a device-to-device copy reads and writes every byte
    nbytes = (2 << 30) if gpu and not quick else (1 << 20)
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    t = timeit(lambda: dst.copy_(src))
    bw = 2 * nbytes / t
    details["copy_bytes"] = nbytes
    del src, dst

    # matmul FLOP/s
    n = 8192 if gpu and not quick else 128
    rates = {}
    old = torch.get_float32_matmul_precision()
    try:
        for key, dtype, prec in (("ieee", torch.float32, "highest"), ("tf32", torch.float32, "high"),
                                 ("bf16", torch.bfloat16, "high")):
            if key == "ieee" and gpu and not quick:
                m = n // 2  # fp32 FMA is ~8x slower than tf32: a smaller problem is enough
            else:
                m = n
            torch.set_float32_matmul_precision(prec)
            a = torch.randn(m, m, device=device, dtype=dtype)
            b = torch.randn(m, m, device=device, dtype=dtype)
            t = timeit(lambda: torch.mm(a, b))
            rates[key] = 2.0 * m**3 / t
            details[f"matmul_{key}_n"] = m
            del a, b
    finally:
        torch.set_float32_matmul_precision(old)

    # Philox / epilogue rates (Triton kernels)
    from _ceiling_kernels import bernoulli, philox_only, score_only

    BLOCK = 1024 if gpu else 64
    programs = 8192 if gpu and not quick else 4
    per_prog = (1 << 15) if gpu and not quick else BLOCK * 2
    out = torch.empty(programs * BLOCK, device=device, dtype=torch.float32)
    counters = programs * per_prog
    seed = 12345
    t = timeit(lambda: philox_only[(programs,)](out, seed, per_prog, BLOCK=BLOCK))
    uniforms = 4 * counters / t
    t = timeit(lambda: bernoulli[(programs,)](out, seed, per_prog, BLOCK=BLOCK))
    sampled = 4 * counters / t
    t = timeit(lambda: score_only[(programs,)](out, per_prog, BLOCK=BLOCK))
    scored = 4 * counters / t
    details["rng_counters"] = counters
    if not math.isfinite(float(out.sum())):
        raise RuntimeError("the ceiling kernels produced non-finite sums")

    if gpu:
        name = f"{torch.cuda.get_device_name(device)} (measured)"
    else:
        name = "cpu / Triton interpreter (code-path check only: NOT a GPU ceiling)"
    details["torch"] = torch.__version__
    return Ceilings(name=name, measured=gpu, hbm_bytes_per_s=bw, matmul_flop_per_s=rates, sampled_per_s=sampled,
                    scored_per_s=scored, uniforms_per_s=uniforms, details=details)


# ------------------------------------------------------------------------------ printing


def si(x: float | None, unit: str = "") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    for p, s in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= p:
            return f"{x / p:.3g}{s}{unit}"
    return f"{x:.3g}{unit}"


def seconds(x: float | None) -> str:
    if x is None:
        return "—"
    for p, s in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if x >= p:
            return f"{x / p:.3g} {s}"
    return f"{x * 1e9:.3g} ns"


def describe_ceilings(c: Ceilings) -> str:
    m = c.matmul_flop_per_s
    return (f"ceilings: {c.name}\n"
            f"  HBM {si(c.hbm_bytes_per_s, 'B/s')}; matmul fp32 {si(m['ieee'], 'FLOP/s')}, tf32 {si(m['tf32'], 'FLOP/s')}, "
            f"bf16 {si(m['bf16'], 'FLOP/s')}\n"
            f"  Philox uniforms {si(c.uniforms_per_s, '/s')}; sampled elements (Philox + epilogue) "
            f"{si(c.sampled_per_s, '/s')}; scored elements (epilogue) {si(c.scored_per_s, '/s')}")


def print_roofline(rows: list[dict], ceilings: Ceilings, file=None) -> None:
    file = file or sys.stdout
    print(describe_ceilings(ceilings), file=file)
    head = ["case", "shape", "floor", "binding", "t_flops", "t_bytes", "t_instr", *PROVIDERS]
    lines = [head]
    for r in rows:
        fl = r["floor"]
        cells = [r["name"], r["shape"], seconds(fl["seconds"]), fl["binding"],
                 seconds(fl["terms"]["flops"]), seconds(fl["terms"]["bytes"]), seconds(fl["terms"]["instructions"])]
        for p in PROVIDERS:
            v = r["providers"].get(p)
            if v is None or v["median_s"] is None:
                cells.append("—")
            elif v["fraction_of_floor"] is None:
                cells.append(f"{seconds(v['median_s'])} (cpu)")
            else:
                cells.append(f"{seconds(v['median_s'])} ({v['fraction_of_floor']:.1%})")
        lines.append(cells)
    widths = [max(len(str(l[i])) for l in lines) for i in range(len(head))]
    for i, l in enumerate(lines):
        print("  ".join(str(c).ljust(w) for c, w in zip(l, widths)), file=file)
        if i == 0:
            print("  ".join("-" * w for w in widths), file=file)
    print("provider cells: median time (fraction of the floor = floor / time; only for GPU results)", file=file)


def get_ceilings(measure: bool = False, path: str | None = None) -> Ceilings:
    if path:
        with open(path) as f:
            return ceilings_from_dict(json.load(f))
    if measure:
        return measure_ceilings()
    return nominal_ceilings()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="append", default=[], help="pytest-benchmark JSON or JSONL results (repeatable)")
    ap.add_argument("--measure", action="store_true", help="measure the ceilings on this machine's GPU")
    ap.add_argument("--ceilings", help="read ceilings saved by --save-ceilings instead")
    ap.add_argument("--save-ceilings", help="write the ceilings used to this JSON file")
    args = ap.parse_args(argv)
    if args.measure:
        import torch

        if not torch.cuda.is_available():
            ap.error("--measure needs a CUDA GPU (the ceilings are the GPU's)")
    ceilings = get_ceilings(args.measure, args.ceilings)
    if args.save_ceilings:
        os.makedirs(os.path.dirname(os.path.abspath(args.save_ceilings)), exist_ok=True)
        with open(args.save_ceilings, "w") as f:
            json.dump(asdict(ceilings), f, indent=1)
    if not args.json:
        print(describe_ceilings(ceilings))
        return 0
    rows = analyse(load_results(args.json), ceilings)
    print_roofline(rows, ceilings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
