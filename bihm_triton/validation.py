"""``bihm-triton validate``: does this install compute what the reference computes, op by op, on this device?

Every op the library exposes is run on odd and prime-sized shapes by the fast backends of the device (``cuda``:
the compiled Triton kernels; ``cpu``: the CPU kernels, and the Triton kernels under Triton's interpreter on
small shapes) and compared with the plain-PyTorch reference (:mod:`bihm_triton.reference`, the specification):

* samples of a stochastic binary layer bit-identical to the reference's from the same seed and offset (also
  past 2³¹ counters; float32, float16 and bfloat16 weights; weights are multiples of 2⁻⁴, so the logits are
  exact in any summation order and any precision the kernels use);
* log-probabilities and gradients (weight, bias, ``weight_v``/``weight_g``) against the float64 reference's
  autograd, as a relative RMS error (``‖a − b‖ / ‖b‖``) under a stated tolerance;
* weight normalization against torch's own ``torch._weight_norm`` (forward and gradients);
* the fused model passes (log p̃*(x) and log p(x), log Ẑ², the training loss and its gradients for both
  objectives), the ancestral sampler (bit-identical x, log p), a Gibbs sweep and an inpainting sweep (the
  same chains), against the same model on the reference;
* on a tiny model, the estimators (log p(x), log p̃*(x), log Ẑ²) within 4 standard errors of exact
  enumeration (:func:`bihm_triton.reference.exact_enumeration`);
* batch invariance of the stream: ``sample_p(n)[:m] == sample_p(m)``.

Each check is a row ``{op, backend, shape, dtype, check, value, tolerance, passed, device}``. On a GPU the
kernels' ``exp`` and division are approximate and ``tl.dot`` uses tf32 or split bf16: a sample flips only when
``u`` falls within a few ulps of σ(a), so there the sample checks allow a fraction of 10⁻³ (chains: 1 %), values
10⁻³ and gradients 5 % relative RMS: the benchmarks' guards (every row states its tolerance). These GPU
tolerances have not yet met a GPU.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys

import torch

__all__ = ["validate", "OPS", "main"]

#: The ops a user can ask for (``--ops``), in the order they run.
OPS = ("sbn_sample", "sbn_log_prob", "sbn_sample_wn", "sbn_log_prob_wn", "weight_norm", "sample_p", "log_likelihood",
       "estimate_log_z2", "loss", "gibbs_sample", "inpaint", "exact_enumeration", "batch_invariance")
DEVICES = ("cpu", "cuda")
#: Weight dtypes of the layer checks (``--dtypes``); the model-level checks run float32 models.
DTYPES = ("float32", "float16", "bfloat16")


@dataclasses.dataclass
class _Tol:
    samples: float  # fraction of sample elements (or chains) allowed to differ
    value: float  # relative RMS error of log-probabilities and estimates
    grad: float  # relative RMS error of gradients


def _tolerances(backend: str, device: str) -> _Tol:
    if device == "cuda":  # approximate exp/division, tf32 or split-bf16 dot products (kernels/chain.py): the
        # benchmarks' guards on a GPU (bench/README.md), not yet checked on one (bench/gpu.sh runs this first)
        return _Tol(samples=1e-3, value=1e-3, grad=5e-2)
    return _Tol(samples=0.0, value=2e-6, grad=2e-5)  # float32 arithmetic against the float64 reference


def _dyadic(t: torch.Tensor, bits: int = 4) -> torch.Tensor:
    """Multiples of 2**-bits of moderate size: exact in bf16/fp16/fp32, so any order of summation gives the same
    logits (and, with binary inputs, the same samples)."""
    return torch.round(t.clamp(-3.9, 3.9) * 2**bits) / 2**bits


def _rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    if a.shape != b.shape:
        return math.inf
    finite = torch.isfinite(b)
    if not torch.equal(finite, torch.isfinite(a)) or not torch.equal(a[~finite], b[~finite]):
        return math.inf
    a, b = a[finite], b[finite]
    return float((a - b).norm() / max(float(b.norm()), 1e-30))


def _diff_fraction(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    if a.shape != b.shape:
        return 1.0
    return float((a != b).double().mean()) if a.numel() else 0.0


class _Checker:
    """Runs the checks of one backend on one device and collects their rows."""

    def __init__(self, backend: str, device: torch.device, quick: bool, bar=None, dtypes=DTYPES):
        self.backend, self.device, self.quick, self.bar = backend, device, quick, bar
        self.dtypes = [getattr(torch, d) for d in dtypes]
        self.tol = _tolerances(backend, device.type)
        self.rows: list[dict] = []
        self.interpreted = backend == "triton" and device.type == "cpu"

    def row(self, op, shape, dtype, check, value, tolerance) -> None:
        value = float(value)
        self.rows.append({"op": op, "backend": self.backend, "shape": str(tuple(shape)) if shape is not None else "",
                          "dtype": str(dtype).replace("torch.", ""), "check": check, "value": value,
                          "tolerance": float(tolerance), "passed": bool(value <= tolerance),
                          "device": self.device.type})

    def error(self, op, shape, dtype, check, e: Exception) -> None:
        self.rows.append({"op": op, "backend": self.backend, "shape": str(tuple(shape)) if shape else "",
                          "dtype": str(dtype).replace("torch.", ""), "check": check, "value": math.inf,
                          "tolerance": 0.0, "passed": False, "device": self.device.type,
                          "error": f"{type(e).__name__}: {e}"})

    # ------------------------------------------------------------------ shapes and inputs
    def layer_shapes(self) -> list[tuple[int, int, int]]:
        if self.interpreted:
            return [(37, 29, 17)] if self.quick else [(37, 29, 17), (5, 1, 3)]
        return [(101, 263, 97)] if self.quick else [(101, 263, 97), (5, 1, 3), (1031, 131, 257)]

    def layer_inputs(self, R, N, M, seed=0, dtype=torch.float32):
        g = torch.Generator().manual_seed(seed)
        h = (torch.rand(R, N, generator=g) < 0.4).float()
        w = _dyadic(torch.randn(M, N, generator=g) * 0.5)
        b = _dyadic(torch.randn(M, generator=g))
        x = (torch.rand(R, M, generator=g) < 0.5).float()
        dev = self.device
        return h.to(dev), x.to(dev), w.to(dev, dtype), b.to(dev, dtype)

    def sizes(self) -> list[int]:
        return [23, 11, 7, 3] if self.interpreted or self.quick else [53, 29, 13, 7, 3]

    def models(self, sizes, *, weight_norm=False):
        """The model on this backend and the same model on the reference (float32 parameters, dyadic)."""
        from .model import BiHM

        torch.manual_seed(1)
        fast = BiHM(sizes, backend=self.backend, device=self.device, weight_norm=weight_norm)
        with torch.no_grad():
            for name, p in fast.named_parameters():
                v = torch.rand_like(p) + 0.5 if name.endswith("weight_g") else torch.randn_like(p) * 0.7
                p.copy_(_dyadic(v))
        ref = BiHM(sizes, backend="reference", device="cpu", weight_norm=weight_norm)
        ref.load_state_dict({k: v.cpu() for k, v in fast.state_dict().items()})
        return fast, ref

    # ------------------------------------------------------------------ the ops
    def sbn_sample(self):
        from . import ops, reference as R_

        cases = [(s, torch.float32, 11) for s in self.layer_shapes()]
        cases.append((self.layer_shapes()[0], torch.float32, 2**31 - 7))  # counters cross 2**31 and 2**32 / 4
        cases += [(self.layer_shapes()[0], dt, 3) for dt in (torch.float16, torch.bfloat16)]
        cases = [c for c in cases if c[1] in self.dtypes]
        for (R, N, M), dtype, offset in cases:
            h, _, w, b = self.layer_inputs(R, N, M, dtype=dtype)
            x, lp = ops.sbn_sample(h, w, b, seed=1234, offset=offset, backend=self.backend)
            x_ref, _ = R_.sbn_sample(h.cpu(), w.cpu().float(), b.cpu().float(), seed=1234, offset=offset)
            what = "samples == reference" + (f" (offset {offset})" if offset > 2**30 else "")
            self.row("sbn_sample", (R, N, M), dtype, what, _diff_fraction(x, x_ref), self.tol.samples)
            want = R_.sbn_log_prob(h.cpu().double(), x.cpu().double(), w.cpu().double(), b.cpu().double())
            self.row("sbn_sample", (R, N, M), dtype, "log_prob of its samples vs float64", _rel_rms(lp, want),
                     self.tol.value)

    def sbn_log_prob(self):
        from . import ops, reference as R_

        for (R, N, M) in self.layer_shapes():
            for dtype in [d for d in ((torch.float32,) if self.quick else (torch.float32, torch.bfloat16))
                          if d in self.dtypes]:
                h, x, w, b = self.layer_inputs(R, N, M, seed=2, dtype=dtype)
                w, b = w.clone().requires_grad_(), b.clone().requires_grad_()
                lp = ops.sbn_log_prob(h, x, w, b, backend=self.backend)
                g = torch.linspace(-1, 1, R, device=self.device)
                (lp * g).sum().backward()
                w64, b64 = (t.detach().cpu().double().requires_grad_() for t in (w, b))
                want = R_.sbn_log_prob(h.cpu().double(), x.cpu().double(), w64, b64)
                (want * g.cpu().double()).sum().backward()
                self.row("sbn_log_prob", (R, N, M), dtype, "log_prob vs float64", _rel_rms(lp, want), self.tol.value)
                grad_tol = self.tol.grad if dtype == torch.float32 else 1e-2  # bf16 gradients are rounded
                self.row("sbn_log_prob", (R, N, M), dtype, "grad weight vs float64", _rel_rms(w.grad, w64.grad),
                         grad_tol)
                self.row("sbn_log_prob", (R, N, M), dtype, "grad bias vs float64", _rel_rms(b.grad, b64.grad),
                         grad_tol)

    def _wn_inputs(self, R, N, M):
        h, x, v, b = self.layer_inputs(R, N, M, seed=3)
        g = _dyadic(torch.rand(M, generator=torch.Generator().manual_seed(4)) + 0.5).to(self.device)
        return h, x, v, g, b

    def sbn_sample_wn(self):
        from . import ops, reference as R_

        for (R, N, M) in self.layer_shapes():
            h, _, v, g, b = self._wn_inputs(R, N, M)
            x, lp = ops.sbn_sample_wn(h, v, g, b, seed=99, offset=5, backend=self.backend)
            x_ref, _ = R_.sbn_sample_wn(h.cpu(), v.cpu(), g.cpu(), b.cpu(), seed=99, offset=5)
            # ‖v‖ is not exact: kernel and reference logits differ in the last bits, which flips a draw with
            # probability ~1e-7 per element; 10⁻⁴ of the elements is far beyond that and far below a wrong stream
            self.row("sbn_sample_wn", (R, N, M), torch.float32, "samples == reference (rounding flips)",
                     _diff_fraction(x, x_ref), max(self.tol.samples, 1e-4))
            want = R_.sbn_log_prob_wn(h.cpu().double(), x.cpu().double(), v.cpu().double(), g.cpu().double(),
                                      b.cpu().double())
            self.row("sbn_sample_wn", (R, N, M), torch.float32, "log_prob of its samples vs float64",
                     _rel_rms(lp, want), self.tol.value)

    def sbn_log_prob_wn(self):
        from . import ops, reference as R_

        for (R, N, M) in self.layer_shapes():
            h, x, v, g, b = self._wn_inputs(R, N, M)
            v, g, b = (t.clone().requires_grad_() for t in (v, g, b))
            lp = ops.sbn_log_prob_wn(h, x, v, g, b, backend=self.backend)
            up = torch.linspace(-1, 1, R, device=self.device)
            (lp * up).sum().backward()
            v64, g64, b64 = (t.detach().cpu().double().requires_grad_() for t in (v, g, b))
            want = R_.sbn_log_prob_wn(h.cpu().double(), x.cpu().double(), v64, g64, b64)
            (want * up.cpu().double()).sum().backward()
            self.row("sbn_log_prob_wn", (R, N, M), torch.float32, "log_prob vs float64", _rel_rms(lp, want),
                     self.tol.value)
            for name, a, r in (("weight_v", v, v64), ("weight_g", g, g64), ("bias", b, b64)):
                self.row("sbn_log_prob_wn", (R, N, M), torch.float32, f"grad {name} vs float64",
                         _rel_rms(a.grad, r.grad), self.tol.grad)

    def weight_norm(self):
        from . import ops

        for (_, N, M) in self.layer_shapes():
            for dim in (0, 1):
                gen = torch.Generator().manual_seed(5)
                v = torch.randn(M, N, generator=gen).to(self.device).requires_grad_()
                g_shape = (M, 1) if dim == 0 else (1, N)
                g = (torch.rand(*g_shape, generator=gen) + 0.5).to(self.device).requires_grad_()
                w = ops.weight_norm(v, g, dim, backend=self.backend)
                up = torch.randn(M, N, generator=gen).to(self.device)
                (w * up).sum().backward()
                v64, g64 = (t.detach().cpu().double().requires_grad_() for t in (v, g))
                want = torch._weight_norm(v64, g64, dim)
                (want * up.cpu().double()).sum().backward()
                shape = (M, N)
                self.row("weight_norm", shape, torch.float32, f"dim={dim} vs torch._weight_norm (float64)",
                         _rel_rms(w, want), self.tol.value)
                self.row("weight_norm", shape, torch.float32, f"dim={dim} grad weight_v", _rel_rms(v.grad, v64.grad),
                         self.tol.grad)
                self.row("weight_norm", shape, torch.float32, f"dim={dim} grad weight_g", _rel_rms(g.grad, g64.grad),
                         self.tol.grad)

    def sample_p(self):
        sizes = self.sizes()
        fast, ref = self.models(sizes)
        for n, row_start in ((37, 0), (13, 6)):
            a = fast.sample_p(n, seed=7, offset=3, row_start=row_start, return_hidden=True)
            b = ref.sample_p(n, seed=7, offset=3, row_start=row_start, return_hidden=True)
            shape = (n, *sizes)
            self.row("sample_p", shape, torch.float32, f"x == reference (row_start {row_start})",
                     _diff_fraction(a.x, b.x), self.tol.samples)
            self.row("sample_p", shape, torch.float32, "hidden == reference",
                     _diff_fraction(torch.cat(a.hidden, 1), torch.cat(b.hidden, 1)), self.tol.samples)
            self.row("sample_p", shape, torch.float32, "log p(x, h) vs reference", _rel_rms(a.log_p, b.log_p),
                     self.tol.value)

    def _points(self, d, n=7, seed=8):
        return (torch.rand(n, d, generator=torch.Generator().manual_seed(seed)) < 0.4).float()

    def log_likelihood(self):
        sizes = self.sizes()
        fast, ref = self.models(sizes)
        x = self._points(sizes[0])
        for k in (1, 10) if self.quick else (1, 10, 33):
            a = fast.log_likelihood(x.to(self.device), k, seed=5, offset=1)
            b = ref.log_likelihood(x, k, seed=5, offset=1)
            shape = (x.shape[0], *sizes)
            self.row("log_likelihood", shape, torch.float32, f"log p~*(x), K = {k}, vs reference",
                     _rel_rms(a.log_p_tilde_star, b.log_p_tilde_star), self.tol.value)
            self.row("log_likelihood", shape, torch.float32, f"log p(x), K = {k}, vs reference",
                     _rel_rms(a.log_p, b.log_p), self.tol.value)

    def estimate_log_z2(self):
        sizes = self.sizes()
        fast, ref = self.models(sizes)
        n = 200 if self.interpreted else 2000
        a = fast.estimate_log_z2(n, n_inner=3, seed=4)
        b = ref.estimate_log_z2(n, n_inner=3, seed=4)
        self.row("estimate_log_z2", (n, *sizes), torch.float32, "log Z^2 vs reference (relative)",
                 abs(a.value - b.value) / max(abs(b.value), 1e-12), 10 * self.tol.value)

    def loss(self):
        sizes = self.sizes()
        x = self._points(sizes[0], n=11)
        for objective in ("bihm", "rws"):
            fast, ref = self.models(sizes)
            la, _ = fast.loss(x.to(self.device), 5, objective, seed=3, offset=2)
            lb, _ = ref.loss(x, 5, objective, seed=3, offset=2)
            la.backward()
            lb.backward()
            shape = (x.shape[0], *sizes)
            self.row("loss", shape, torch.float32, f"{objective} loss vs reference", _rel_rms(la, lb), self.tol.value)
            ga = torch.cat([p.grad.reshape(-1).cpu() for p in fast.parameters()])
            gb = torch.cat([p.grad.reshape(-1) for p in ref.parameters()])
            self.row("loss", shape, torch.float32, f"{objective} gradients vs reference", _rel_rms(ga, gb),
                     self.tol.grad)

    def _chains_tolerance(self, n):
        return 0.0 if self.tol.samples == 0 else max(0.01, 3 / n)

    def gibbs_sample(self):
        from . import samplers

        sizes = self.sizes()
        fast, ref = self.models(sizes)
        n = 19
        a = samplers.gibbs_sample(fast, n, 2, k=4, seed=6, progress=False)
        b = samplers.gibbs_sample(ref, n, 2, k=4, seed=6, progress=False)
        differ = float((a.x.cpu() != b.x).any(1).double().mean())
        self.row("gibbs_sample", (n, *sizes), torch.float32, "chains == reference (2 exact sweeps, K = 4)", differ,
                 self._chains_tolerance(n))

    def inpaint(self):
        from . import samplers

        sizes = self.sizes()
        fast, ref = self.models(sizes)
        x = self._points(sizes[0], n=9, seed=9)
        mask = torch.arange(sizes[0]) < sizes[0] // 2
        mask = mask.expand_as(x).contiguous()
        a = samplers.inpaint(fast, x.to(self.device), mask.to(self.device), 2, k=4, seed=2, progress=False)
        b = samplers.inpaint(ref, x, mask, 2, k=4, seed=2, progress=False)
        differ = float((a.x.cpu() != b.x).any(1).double().mean())
        self.row("inpaint", (x.shape[0], *sizes), torch.float32, "chains == reference (2 sweeps, half observed)",
                 differ, self._chains_tolerance(x.shape[0]))

    def exact_enumeration(self):
        """The estimators against exact enumeration on a tiny model: |estimate − exact| / standard error <= 4."""
        from . import reference as R_
        from .model import BiHM

        sizes = [6, 4, 3]
        torch.manual_seed(3)
        fast = BiHM(sizes, backend=self.backend, device=self.device)
        with torch.no_grad():
            for p in fast.parameters():
                p.copy_(torch.randn_like(p))
        exact_model = R_.BiHM(sizes, dtype=torch.float64)
        exact_model.load_state_dict({k: v.detach().cpu().double() for k, v in fast.state_dict().items()})
        enum = R_.exact_enumeration(exact_model)
        reps, k = (64, 10) if self.interpreted else (400, 200)  # the interpreter runs a kernel ~10⁴× slower
        # the unbiased quantities behind the logs (Jensen biases a mean of logs): the IS estimate of p(x),
        # (1/K) Σ ω, and of sqrt(p~*(x)) = E_q[sqrt ω], (1/K) Σ sqrt(ω), each relative to its exact value; their
        # exact standard errors from the enumerated moments E_q[ω], E_q[ω²] (a sample SE misjudges heavy-tailed
        # weights); on the two data vectors whose weights vary least (where the mean is close to normal)
        log_w = enum.log_p_joint - enum.log_q_cond
        moment = lambda m: torch.logsumexp(enum.log_q_cond + m * log_w, 1)  # noqa: E731  log E_q[ω^m] per x
        rel_var = {1.0: torch.exp(moment(2.0) - 2 * moment(1.0)) - 1, 0.5: torch.exp(moment(1.0) - 2 * moment(0.5)) - 1}
        for i in rel_var[1.0].argsort()[:2].tolist():
            x = enum.x[i].float().expand(reps, -1).contiguous().to(self.device)
            ll = fast.log_likelihood(x, k, seed=11, offset=0)
            for name, est, want, power in (("p(x)", ll.log_p, enum.log_p[i], 1.0),
                                           ("sqrt p~*(x)", ll.log_p_tilde_star, enum.log_p_tilde_star[i], 0.5)):
                ratio = torch.exp(power * (est.double().cpu() - float(want)))
                se = math.sqrt(float(rel_var[power][i]) / (k * reps))
                self.row("exact_enumeration", (reps, *sizes), torch.float32,
                         f"IS estimate of {name}, x#{i}, K = {k}: |mean/exact - 1| / exact se",
                         abs(float(ratio.mean()) - 1.0) / max(se, 1e-12), 4.0)
        z = fast.estimate_log_z2(400 if self.interpreted else 40000, n_inner=2 if self.interpreted else 4, seed=12)
        self.row("exact_enumeration", (1, *sizes), torch.float32, "log Z^2: |estimate - exact| / se",
                 abs(z.value - float(enum.log_z2)) / max(z.se, 1e-12), 4.0)

    def batch_invariance(self):
        sizes = self.sizes()
        fast, _ = self.models(sizes)
        big = fast.sample_p(41, seed=3, return_log_p=True)
        for m in (1, 6, 23):
            small = fast.sample_p(m, seed=3, return_log_p=True)
            part = fast.sample_p(41 - m, seed=3, row_start=m, return_log_p=True)
            self.row("batch_invariance", (m, *sizes), torch.float32, f"sample_p(n)[:{m}] == sample_p({m})",
                     _diff_fraction(big[0][:m], small[0]), 0.0)
            self.row("batch_invariance", (41 - m, *sizes), torch.float32,
                     f"sample_p(n)[{m}:] == sample_p(n - {m}, row_start={m})", _diff_fraction(big[0][m:], part[0]), 0.0)

    def run(self, ops) -> list[dict]:
        for op in ops:
            before = len(self.rows)
            try:
                getattr(self, op)()
            except Exception as e:  # noqa: BLE001 - a crash is a failed row, not a crashed validation
                self.error(op, None, "", "runs without an error", e)
            if self.bar is not None:
                self.bar.update(1)
                failed = sum(not r["passed"] for r in self.rows[before:])
                self.bar.set_postfix_str(f"{self.backend}: {op}" + (f" ({failed} failed)" if failed else ""))
        return self.rows


def _backends(device: str) -> list[str]:
    return ["triton"] if device == "cuda" else ["cpu", "triton"]


def _check_dtypes(dtypes) -> list[str]:
    dtypes = list(DTYPES) if not dtypes else [str(d).replace("torch.", "") for d in dtypes]
    bad = [d for d in dtypes if d not in DTYPES]
    if bad:
        raise ValueError(f"dtype {bad[0]!r} is not one the kernels take; the dtypes are {', '.join(DTYPES)}")
    return dtypes


def _check_args(device: str, ops, backends) -> tuple[list[str], list[str]]:
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda': no CUDA device is available here (torch.cuda.is_available() is False); use "
                         "device 'cpu'")
    ops = list(OPS) if not ops else list(ops)
    unknown = [o for o in ops if o not in OPS]
    if unknown:
        raise ValueError(f"unknown op {unknown[0]!r}; the ops are {', '.join(OPS)}")
    allowed = _backends(device)
    backends = list(allowed) if not backends else list(backends)
    bad = [b for b in backends if b not in allowed]
    if bad:
        raise ValueError(f"backend {bad[0]!r} does not run on device {device!r}; there: {', '.join(allowed)}")
    return ops, backends


def _triton_in_subprocess(ops, quick: bool, dtypes) -> list[dict]:
    """The interpreted Triton rows from a fresh process (this one imported triton compiled, so its kernels cannot
    switch to the interpreter)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "rows.json")
        cmd = [sys.executable, "-m", "bihm_triton.validation", "--device", "cpu", "--backends", "triton",
               "--ops", ",".join(ops), "--dtypes", ",".join(dtypes), "--json", out, "--no-progress"] + \
              (["--quick"] if quick else [])
        env = dict(os.environ, TRITON_INTERPRET="1")
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if not os.path.exists(out):
            raise RuntimeError(f"the interpreted Triton checks did not run: {proc.stderr.strip()[-500:]}")
        with open(out) as f:
            return json.load(f)


def validate(device: str = "cpu", *, quick: bool = False, ops=None, backends=None, dtypes=None,
             progress: bool | None = None) -> list[dict]:
    """Check this install's kernels against the reference on ``device``; returns one dict per check.

    Args:
        device: ``"cuda"`` (the compiled Triton kernels) or ``"cpu"`` (the CPU kernels, and the Triton kernels
            under Triton's interpreter on small shapes: in this process when triton is not imported yet, which
            sets ``TRITON_INTERPRET=1``; else in a subprocess).
        quick: fewer shapes and sample sizes (under a minute on a 2-core CPU).
        ops: names from :data:`OPS` (default all).
        backends: on ``cpu`` a subset of ``["cpu", "triton"]``; on ``cuda`` ``["triton"]``.
        dtypes: weight dtypes of the layer checks, from :data:`DTYPES` (default all).
        progress: a progress bar (default: on a terminal).

    Returns:
        A list of rows: ``op``, ``backend``, ``shape``, ``dtype``, ``check``, ``value``, ``tolerance``,
        ``passed`` (``value <= tolerance``), ``device`` (and ``error`` when a check raised).

    Raises:
        ValueError: an unknown device, op, backend or dtype, or ``"cuda"`` without a CUDA device (before any
            work).
    """
    from tqdm.auto import tqdm

    from .progress import bar_disable

    ops, backends = _check_args(device, ops, backends)
    dtypes = _check_dtypes(dtypes)
    rows: list[dict] = []
    if device == "cpu" and "triton" in backends and "triton" not in sys.modules and not torch.cuda.is_available():
        # before triton is imported its kernels can run interpreted in this process (with a GPU present the
        # process keeps compiled Triton for later use: the interpreted checks then run in a subprocess)
        os.environ["TRITON_INTERPRET"] = "1"
    in_process = device == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"
    with tqdm(total=len(ops) * len(backends), desc="validate", unit="op", disable=bar_disable(progress),
              leave=False) as bar:
        for backend in backends:
            if backend == "cpu":
                from .kernels import cpu

                if not cpu.available():
                    rows.append({"op": "all", "backend": "cpu", "shape": "", "dtype": "", "check": "the CPU kernels "
                                 "are built", "value": math.inf, "tolerance": 0.0, "passed": False, "device": device,
                                 "error": cpu.unavailable_reason()})
                    bar.update(len(ops))
                    continue
            if backend == "triton" and not in_process:
                rows += _triton_in_subprocess(ops, quick, dtypes)
                bar.update(len(ops))
                continue
            rows += _Checker(backend, torch.device(device), quick, bar, dtypes).run(ops)
    return rows


def format_table(rows: list[dict]) -> str:
    """The rows as a plain-text table (failures marked)."""
    head = ("op", "backend", "shape", "dtype", "check", "value", "tolerance", "pass")
    body = [(r["op"], r["backend"], r["shape"], r["dtype"], r["check"], f"{r['value']:.3g}", f"{r['tolerance']:.3g}",
             "ok" if r["passed"] else "FAIL" + (f" ({r['error']})" if r.get("error") else "")) for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, body)])


def verdict(rows: list[dict]) -> str:
    failed = [r for r in rows if not r["passed"]]
    devices = sorted({r["device"] for r in rows})
    backends = sorted({r["backend"] for r in rows})
    if not failed:
        return f"validate: all {len(rows)} checks passed ({', '.join(backends)} on {', '.join(devices)})"
    ops = sorted({f"{r['op']} ({r['backend']})" for r in failed})
    return f"validate: {len(failed)} of {len(rows)} checks FAILED: {', '.join(ops)}"


def add_arguments(p) -> None:
    p.add_argument("--device", default=None, help="cuda (the compiled Triton kernels) or cpu (the CPU kernels and the "
                   "interpreted Triton kernels); default: cuda when available, else cpu")
    p.add_argument("--quick", action="store_true", help="fewer shapes and samples (under a minute on a CPU)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the rows to FILE (a JSON list)")
    p.add_argument("--ops", default=None, help=f"comma-separated ops to check (default all: {','.join(OPS)})")
    p.add_argument("--backends", default=None, help="comma-separated: cpu,triton on the CPU; triton on cuda")
    p.add_argument("--dtypes", default=None, help=f"comma-separated weight dtypes of the layer checks (default all: "
                   f"{','.join(DTYPES)}; the model checks run float32)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default 1)")


def run(args, prog: str = "bihm-triton validate") -> int:
    """The command: table, verdict; exit 0 when every check passed, 1 when any failed, 2 on bad arguments."""
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    ops = [o.strip() for o in args.ops.split(",") if o.strip()] if args.ops else None
    backends = [b.strip() for b in args.backends.split(",") if b.strip()] if args.backends else None
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()] if args.dtypes else None
    try:
        _check_args(device, ops, backends)
        _check_dtypes(dtypes)
        if args.json:
            folder = os.path.dirname(os.path.abspath(args.json))
            if not os.path.isdir(folder):
                raise ValueError(f"--json {args.json}: no folder {folder}")
    except ValueError as e:
        name = {"device": "--device", "unknown op": "--ops", "backend": "--backends", "dtype": "--dtypes"}
        flag = next((f for k, f in name.items() if str(e).startswith(k)), "")
        print(f"{prog}: error: {flag + ': ' if flag and not str(e).startswith('--') else ''}{e}", file=sys.stderr)
        return 2
    rows = validate(device, quick=args.quick, ops=ops, backends=backends, dtypes=dtypes,
                    progress=False if args.no_progress else None)
    print(format_table(rows))
    print(verdict(rows))
    if args.json:
        from .files import write_json_atomic

        write_json_atomic(rows, args.json)
    return 0 if all(r["passed"] for r in rows) else 1


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m bihm_triton.validation", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    return run(args, "python -m bihm_triton.validation")


if __name__ == "__main__":
    sys.exit(main())
