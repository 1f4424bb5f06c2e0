"""The BiHM as an ``nn.Module`` on the fused ops: chunked estimators, samplers, checkpoints (SPEC §1–4, §6).

:class:`BiHM` inherits every formula from :class:`bihm_triton.reference.BiHM` (the specification)
and replaces only the two stochastic primitives with :mod:`bihm_triton.ops`, so its results equal
the reference's for the same ``(seed, offset)``. On top it adds what large runs need: estimators
that stream K up to 10⁵ per data point and N up to 10⁶ samples for Z through fixed-size row chunks
(the chunking reproduces the unchunked random stream exactly), progress bars, the samplers of
:mod:`bihm_triton.samplers`, and safetensors checkpoints.
"""

from __future__ import annotations

import json
import math
import os
import re

import torch
from tqdm.auto import tqdm

from . import engines, ops, samplers
from . import reference as ref
from .progress import bar_disable
from .reference._checks import check_positive_int
from .reference.bihm import WeightNormStochasticLayer, layer_input, warn_nonfinite_samples
from .reference.estimators import MeanWithSE, log_mean_exp_with_se

__all__ = ["BiHM", "parse_sizes"]

_GEOMETRIC = re.compile(r"^\s*([0-9]*\.?[0-9]+)x-([0-9]+)l-([0-9]+)\s*$")


def parse_sizes(spec: str, d0: int) -> list[int]:
    """Layer widths ``[d_0, d_1, …, d_L]`` from ``"200,100,50"`` or the authors' ``"<f>x-<n>l-<last>"``.

    ``"<f>x-<n>l-<last>"`` follows the authors' code (``create_layers`` in their ``helmholtz``
    package) exactly: ``first = int(f·d_0)``, ``base = exp(log(first / last) / (n − 1))`` and the
    widths ``int(last · base^i)`` for i = n−1 … 0 (truncated, in float64 as numpy computes them), so
    ``parse_sizes("0.5x-4l-10", 784) == [784, 392, 115, 33, 10]``.

    Raises:
        ValueError: an unparseable spec, an empty entry (``"200,,50"``, ``"200,50,"``), or a width < 1
            (e.g. ``"784,0,10"``).
    """
    if not isinstance(spec, str):
        raise TypeError(f"sizes spec must be a string like '200,100,50', got {type(spec).__name__}")
    m = _GEOMETRIC.match(spec)
    if m:
        import numpy as np

        f, n, last = float(m.group(1)), int(m.group(2)), int(m.group(3))
        if n < 1:
            raise ValueError(f"sizes spec {spec!r}: the number of layers must be >= 1")
        first = int(d0 * f)
        if first < 1 or last < 1:
            raise ValueError(f"sizes spec {spec!r}: the first ({first} = int({f} * {d0})) and last ({last}) widths "
                             f"must be >= 1")
        if n == 1:
            latent = [last]
        else:
            base = np.exp(np.log(first / float(last)) / (n - 1))
            latent = [int(float(last) * base ** i) for i in reversed(range(n))]
    else:
        entries = spec.replace(" ", "").split(",")
        if entries == [""]:
            raise ValueError(f"sizes spec {spec!r} lists no latent layer")
        for i, t in enumerate(entries):
            if t == "":  # '200,,50' or a trailing comma: never drop an entry silently
                raise ValueError(f"sizes spec {spec!r}: entry {i + 1} of {len(entries)} is empty; give every latent "
                                 f"width, e.g. '200,100,50'")
        try:
            latent = [int(t) for t in entries]
        except ValueError:
            raise ValueError(f"sizes spec {spec!r} is neither 'd1,d2,...' nor '<f>x-<n>l-<last>'") from None
    for i, d in enumerate(latent):
        if d < 1:
            raise ValueError(f"sizes spec {spec!r}: latent width {i + 1} is {d}; widths must be >= 1")
    return ref.check_sizes([d0, *latent])


class _SegmentLSE:
    """Running per-data-point logsumexp over row chunks (rows of one data point may span chunks).

    Exact for −inf values: a data point whose values are all −inf (every weight zero) has the
    logsumexp −inf, never NaN. A NaN value makes its data point's logsumexp NaN (as ``torch.logsumexp``):
    NaN parameters never read as "probability zero".
    """

    def __init__(self, B: int, device):
        self.max = torch.full((B,), -math.inf, dtype=torch.float64, device=device)
        self.sum = torch.zeros(B, dtype=torch.float64, device=device)
        self.nan = torch.zeros(B, dtype=torch.bool, device=device)

    def update(self, b_lo: int, n: int, seg: torch.Tensor, v: torch.Tensor) -> None:
        """Add values v (rows,) whose data points are ``b_lo + seg`` (seg: 0 … n−1, contiguous; n given by
        the caller, so nothing is read back from the device)."""
        v = v.double()
        cm = torch.full((n,), -math.inf, dtype=v.dtype, device=v.device).scatter_reduce(0, seg, v, "amax")
        shift = torch.where(torch.isfinite(cm), cm, 0.0)  # exp(-inf - 0) = 0 where a chunk has no weight
        cs = torch.zeros(n, dtype=v.dtype, device=v.device).index_add_(0, seg, torch.exp(v - shift[seg]))
        m, s = self.max[b_lo:b_lo + n], self.sum[b_lo:b_lo + n]
        new = torch.maximum(m, cm)
        ref_ = torch.where(torch.isfinite(new), new, 0.0)
        self.sum[b_lo:b_lo + n] = s * torch.exp(m - ref_) * torch.isfinite(m) + cs * torch.exp(shift - ref_) * torch.isfinite(cm)
        self.max[b_lo:b_lo + n] = new
        self.nan[b_lo:b_lo + n] |= torch.isnan(cm)  # scatter_reduce's amax propagates NaN

    def value(self) -> torch.Tensor:
        lse = torch.where(self.sum > 0, self.max + torch.log(self.sum), -math.inf)
        return torch.where(self.nan, math.nan, lse)


class BiHM(ref.BiHM):
    """Bidirectional Helmholtz Machine on the fast paths: Triton kernels on CUDA, the CPU kernels on the CPU.

    Args:
        sizes: ``[d_0, d_1, …, d_L]`` (data width, then latent widths bottom to top).
        weight_norm: parameters ``weight_v``/``weight_g`` per layer (Salimans & Kingma 2016).
        deterministic_layers: tanh hidden layers inside every conditional (the authors' option; see
            :class:`bihm_triton.reference.MLPStochasticLayer`). The fused Triton kernels do not take them:
            such a model runs layer by layer on the ops (one line says so on a GPU).
        backend: ``"auto"`` (Triton on CUDA; the CPU kernels for float32 on the CPU; the reference for
            float64), ``"triton"``, ``"cpu"`` or ``"reference"``. What runs is :attr:`engine`.
        device, dtype: of the parameters (float32 default). The Triton and CPU kernels compute in float32,
            so a float64 model runs the reference math in float64 under ``backend="auto"`` (on CUDA too),
            and ``backend="triton"`` / ``"cpu"`` refuse float64.
        chunk_rows: rows per chunk in the streaming estimators (memory ∝ chunk_rows × widest layer).

    Parameter layout, initialization and every formula: :class:`bihm_triton.reference.BiHM`.

    Raises:
        ValueError / TypeError: bad sizes (``[]``, ``[784, 0, 10]``), backend or chunk_rows;
            TypeError: ``dtype=torch.float64`` with ``backend="triton"`` or ``"cpu"``.
    """

    def __init__(self, sizes, *, weight_norm: bool = False, deterministic_layers: int = 0, backend: str = "auto",
                 device=None, dtype=torch.float32, chunk_rows: int = 1 << 16):
        """A BiHM of layer widths ``sizes`` = [d_0, d_1, ..., d_L]; the arguments and errors are in the class
        docstring."""
        if backend not in ops.BACKENDS:
            raise ValueError(f"backend must be one of {ops.BACKENDS}, got {backend!r}")
        if backend in ("triton", "cpu") and dtype == torch.float64:
            raise TypeError(f"backend={backend!r} computes in float32, but dtype is torch.float64; use "
                            "dtype=torch.float32, or backend='reference' (or 'auto', which runs a float64 model on "
                            "the reference, on CUDA too) for float64")
        super().__init__(sizes, weight_norm=weight_norm, deterministic_layers=deterministic_layers, device=device,
                         dtype=dtype)
        check_positive_int(chunk_rows, "chunk_rows", 4)
        self.backend = backend
        self.chunk_rows = chunk_rows - chunk_rows % 4

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, backend={self.backend!r}"

    # ------------------------------------------------------------- primitives
    def layer_sample(self, layer, h, seed, offset):
        h = layer_input(layer, h)
        if isinstance(layer, WeightNormStochasticLayer):
            return ops.sbn_sample_wn(h, layer.weight_v, layer.weight_g, layer.bias, seed=seed, offset=offset,
                                     out_dtype=self.dtype, backend=self.backend)
        return ops.sbn_sample(h, layer.weight, layer.bias, seed=seed, offset=offset, out_dtype=self.dtype,
                              backend=self.backend)

    def layer_log_prob(self, layer, h, x):
        h = layer_input(layer, h)
        if isinstance(layer, WeightNormStochasticLayer):
            return ops.sbn_log_prob_wn(h, x, layer.weight_v, layer.weight_g, layer.bias, backend=self.backend,
                                       validate=False)
        return ops.sbn_log_prob(h, x, layer.weight, layer.bias, backend=self.backend, validate=False)

    # --------------------------------------------------------------- chunking
    def _chunks(self, rows: int, chunk: int, progress: bool | None, desc: str):
        starts = range(0, rows, chunk)
        # default: a bar for long loops; on a terminal only (tqdm's disable=None), never in log files
        return tqdm(starts, desc=desc, disable=bar_disable(progress, len(starts) > 8), leave=False)

    @torch.no_grad()
    def _importance_lse(self, x: torch.Tensor, k: int, seed, offset: int, progress, row_start: int = 0) -> dict:
        """Per-data-point ``logsumexp_k(m · log ω_k)`` for m = ½, 1, 2, streamed over row chunks; x's first
        data point is number ``row_start`` of the call (its samples are q-pass rows ``row_start·K …``)."""
        x = self._check_x(x)
        check_positive_int(k, "k")
        seed = self._seed(seed, offset, row_start)
        B = x.shape[0]
        R = B * k
        acc = {m: _SegmentLSE(B, x.device) for m in (0.5, 1.0, 2.0)}
        for r0 in self._chunks(R, self.chunk_rows, progress, "importance samples"):
            r1 = min(R, r0 + self.chunk_rows)
            b = torch.arange(r0, r1, device=x.device) // k
            b_lo = r0 // k
            log_p, log_q = self._chunk_log_weights(x, k, r1 - r0, seed, offset, row_start=row_start * k + r0,
                                                   x_row0=row_start)
            log_w = log_p - log_q
            for m, a in acc.items():
                a.update(b_lo, (r1 - 1) // k - b_lo + 1, b - b_lo, m * log_w)
        return {m: a.value() for m, a in acc.items()}

    # ------------------------------------------------------------- estimators
    def log_likelihood(self, x: torch.Tensor, k: int, *, log_z2: float | None = None, seed=None, offset: int = 0,
                       row_start: int = 0, progress: bool | None = None) -> ref.LogLikelihood:
        """Per-data-point log p̃*(x), log p(x) and (with ``log_z2``) log p*(x) from K importance samples (nats).

        Same values as :meth:`bihm_triton.reference.BiHM.log_likelihood` for the same (seed, offset),
        in memory bounded by ``chunk_rows`` for any K (SPEC §2).

        Args:
            x: (B, d_0) binary data. k: importance samples per data point (the authors used up to 10⁵).
            log_z2: log Ẑ² from :meth:`estimate_log_z2`. progress: progress bar (default: long runs, on a terminal).
            row_start: global index of x's first data point (a point's estimates depend on its index, the
                seed and the offset, not on the batch or the chunking; shards of a large evaluation pass it).

        Returns:
            :class:`~bihm_triton.reference.LogLikelihood` of (B,) tensors.
        """
        lse = self._importance_lse(x, k, seed, offset, progress, row_start)
        log_k = math.log(k)
        lpt = (2.0 * (lse[0.5] - log_k)).to(self.dtype)
        return ref.LogLikelihood(lpt, (lse[1.0] - log_k).to(self.dtype), None if log_z2 is None else lpt - log_z2)

    def effective_sample_size(self, x: torch.Tensor, k: int, *, seed=None, offset: int = 0, row_start: int = 0,
                              progress: bool | None = None) -> ref.EffectiveSampleSize:
        """Effective sample sizes (B,) of the p-weights (∝ ω) and the p*-weights (∝ sqrt ω), streamed (SPEC §2)."""
        lse = self._importance_lse(x, k, seed, offset, progress, row_start)

        def ess(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # (Σw)²/Σw² in [1, K]; 0 if every w = 0
            return torch.where(torch.isneginf(a), 0.0, torch.exp(2 * a - b).clamp(1.0, k)).to(self.dtype)

        return ref.EffectiveSampleSize(ess(lse[1.0], lse[2.0]), ess(lse[0.5], lse[1.0]))

    def bhattacharyya_distance(self, x: torch.Tensor, k: int, *, seed=None, offset: int = 0, row_start: int = 0,
                               progress: bool | None = None) -> torch.Tensor:
        """Estimate of D_B(x) = ½(log p(x) − log p̃*(x)) (B,), nats (SPEC §1)."""
        ll = self.log_likelihood(x, k, seed=seed, offset=offset, row_start=row_start, progress=progress)
        return 0.5 * (ll.log_p - ll.log_p_tilde_star)

    @torch.no_grad()
    def estimate_log_z2(self, n_samples: int, *, n_inner: int = 1, seed=None, offset: int = 0, row_start: int = 0,
                        progress: bool | None = None) -> MeanWithSE:
        """log Ẑ² ± standard error from ``n_samples`` draws of p (SPEC §2; the authors used 10⁶), streamed.

        Same value as :meth:`bihm_triton.reference.BiHM.estimate_log_z2` for the same (seed, offset).
        ``row_start``: global index of the first sample (a shard of a larger estimate).

        Returns:
            :class:`~bihm_triton.reference.MeanWithSE` of Python floats (nats).
        """
        check_positive_int(n_samples, "n_samples", 2)
        check_positive_int(n_inner, "n_inner")
        seed = self._seed(seed, offset, row_start)
        chunk = max(4, (self.chunk_rows // n_inner) // 4 * 4)
        terms = []
        for r0 in self._chunks(n_samples, chunk, progress, "log Z^2"):
            n = min(chunk, n_samples - r0)
            terms.append(self._log_z2_terms(n, n_inner, seed, offset, row_start=row_start + r0))
        return log_mean_exp_with_se(torch.cat(terms))

    # ----------------------------------------------------------------- engine
    @property
    def engine(self) -> engines.LayerEngine:
        """The fast paths this model runs on (:mod:`bihm_triton.engines`): chosen once per backend, device and
        dtype: the fused Triton kernels, the CPU kernels, or the reference layer by layer."""
        key = (self.backend, self.device, self.dtype)
        cached = self.__dict__.get("_engine")
        if cached is None or cached[0] != key:
            cached = self.__dict__["_engine"] = (key, engines.engine_for(self))
        return cached[1]

    def stream_uniform(self, seed, offset: int, rows: int, cols: int) -> torch.Tensor:
        """The (rows, cols) uniforms of a draw of the SPEC §5 stream (the samplers' resampling and coin
        draws), from the engine's kernels; equal bit for bit on every engine."""
        return self.engine.uniform(seed, offset, rows, cols)

    def _parameters_fixed(self):
        """Context: the parameters do not change inside (a sampler's own loop; see the engine)."""
        return self.engine.parameters_fixed()

    def refresh_fused_cache(self) -> None:
        """Mark the packed weights of the fused kernels stale: the next call repacks them from the
        parameters (needed after changes the version counters do not see: ``.data`` edits, CUDA-graph
        replays of an optimizer step)."""
        self.engine.refresh()
        for name in ("_p_nonfinite", "_sampler_nonfinite"):  # the parameter checks of sample_p and the samplers
            self.__dict__.pop(name, None)

    def _aligned_chunk_log_weights(self, x, k, rows, seed, offset, *, row_start, x_row0):
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            # differentiable chunks: the per-layer autograd path
            return super()._aligned_chunk_log_weights(x, k, rows, seed, offset, row_start=row_start, x_row0=x_row0)
        return self.engine.chunk_log_weights(x, k, rows, seed, offset, row_start, x_row0)

    def _log_weights_and_states(self, x, k, seed, offset, row_start=0):
        """log p(x, h) and log q(h | x) (B, K) of K samples per data point, differentiable in every
        parameter, from the engine (the states are None where the engine does not keep them)."""
        return self.engine.log_weights(x, k, seed, offset, row_start)

    # ---------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample_p(self, n: int, *, seed=None, offset: int = 0, row_start: int = 0, return_hidden: bool = False,
                 return_log_p: bool = False, out_dtype: torch.dtype | None = None):
        """Ancestral samples of p (SPEC §4), in chunks of ``chunk_rows``.

        On the Triton backend every chunk is one launch of the fused whole-network sampler
        (:mod:`bihm_triton.kernels.chain`), which draws from the same stream as the per-layer path:
        the samples agree except where a last-bit difference of a logit flips a draw (and
        weight-normalized layers use the explicit ``g·v/‖v‖`` there). It does not synchronize with
        the host: with a CUDA seed tensor the call can be captured in a CUDA graph.

        Args:
            n: number of samples. seed, offset: the random stream (the p pass of the reference).
            row_start: global index of the first sample: the call returns samples ``row_start …
                row_start + n − 1`` of the stream, so ``sample_p(n)[a:b] == sample_p(b − a, row_start=a)``.
            return_hidden: also return the hidden states and log p(x, h) as a
                :class:`~bihm_triton.reference.PSample`.
            return_log_p: return ``(x, log_p)`` (without the hidden states). When neither is asked
                for, the fused sampler skips the log-likelihood work.
            out_dtype: dtype of the states (default the model's; ``torch.uint8`` writes 1 byte per unit).

        Returns:
            x (n, d_0); or ``(x, log_p (n,) float32)``; or a :class:`~bihm_triton.reference.PSample`
            (x, hidden [h_1 … h_L] each (n, d_l), log_p (n,) float32).

        Warns:
            RuntimeWarning: p's parameters hold NaN (or infinite weights): units with NaN logits are
                sampled as 0 and log p is NaN (checked once per change of the parameters).
        """
        check_positive_int(n, "n")
        seed = self._seed(seed, offset, row_start)
        for d in self.sizes:
            ref.check_draw_fits(row_start + n, d, "sample_p")
        out_dtype = out_dtype or self.dtype
        want_lp = return_hidden or return_log_p
        x, hidden, log_p = self.engine.sample_p(n, seed, offset, row_start, return_hidden, want_lp, out_dtype)
        # p's parameters are checked for NaN once per change (a device read), then the result is reused
        key = engines._params_key([self.p_top, *self.p_layers._modules.values()])
        checked = self.__dict__.get("_p_nonfinite")
        if checked is None or checked[0] != key:
            checked = self.__dict__["_p_nonfinite"] = (key, self._nonfinite_p())
        warn_nonfinite_samples(checked[1], "sample_p")
        if return_hidden:
            return ref.PSample(x, hidden, log_p)
        if return_log_p:
            return x, log_p
        return x

    def gibbs_sample(self, n: int, steps: int, k: int = 10, **kwargs) -> samplers.GibbsResult:
        """Block Gibbs samples of p*(x, h): exact by default (see :func:`bihm_triton.samplers.gibbs_sample`)."""
        return samplers.gibbs_sample(self, n, steps, k, **kwargs)

    def sir_sample(self, n: int, oversample: int = 100, n_inner: int = 1, **kwargs) -> samplers.SIRResult:
        """Sampling–importance–resampling from p* (see :func:`bihm_triton.samplers.sir_sample`)."""
        return samplers.sir_sample(self, n, oversample, n_inner, **kwargs)

    def inpaint(self, x: torch.Tensor, mask: torch.Tensor, steps: int, k: int = 10, **kwargs) -> samplers.GibbsResult:
        """Fill in unobserved pixels by Gibbs sampling with the observed ones clamped (see
        :func:`bihm_triton.samplers.inpaint`). mask: (B, d_0) bool, True = observed."""
        return samplers.inpaint(self, x, mask, steps, k, **kwargs)

    # ------------------------------------------------------------ checkpoints
    def config(self) -> dict:
        """Architecture as a JSON-able dict: what :meth:`from_config` needs."""
        return {"sizes": list(self.sizes), "weight_norm": self.weight_norm,
                "deterministic_layers": self.deterministic_layers,
                "dtype": str(self.dtype).replace("torch.", "")}

    @classmethod
    def from_config(cls, config: dict, **kwargs) -> "BiHM":
        """A freshly initialized model of the architecture in ``config`` (see :meth:`config`); kwargs go to ``__init__``."""
        return cls(config["sizes"], weight_norm=config["weight_norm"], dtype=getattr(torch, config["dtype"]),
                   deterministic_layers=int(config.get("deterministic_layers", 0)),
                   **kwargs)

    def check_compatible(self, state_dict: dict, config: dict | None = None) -> None:
        """Raise ValueError unless ``state_dict`` (and ``config``) fit this architecture, naming the first mismatch."""
        if config is not None and (list(config["sizes"]) != self.sizes
                                   or bool(config["weight_norm"]) != self.weight_norm
                                   or int(config.get("deterministic_layers", 0)) != self.deterministic_layers):
            raise ValueError(f"checkpoint is for sizes={config['sizes']}, weight_norm={config['weight_norm']}, "
                             f"deterministic_layers={config.get('deterministic_layers', 0)}; this model has "
                             f"sizes={self.sizes}, weight_norm={self.weight_norm}, "
                             f"deterministic_layers={self.deterministic_layers}")
        own = self.state_dict()
        for name, t in own.items():
            if name not in state_dict:
                raise ValueError(f"checkpoint lacks parameter {name!r} {tuple(t.shape)}")
            if tuple(state_dict[name].shape) != tuple(t.shape):
                raise ValueError(f"checkpoint parameter {name!r} has shape {tuple(state_dict[name].shape)}, "
                                 f"model expects {tuple(t.shape)}")
        extra = sorted(set(state_dict) - set(own))
        if extra:
            raise ValueError(f"checkpoint has parameters this model lacks: {extra[:5]}")

    def save(self, path: str | os.PathLike) -> None:
        """Write the weights to ``path`` (safetensors, the config in its metadata), atomically."""
        from .checkpoint import save_safetensors_atomic

        save_safetensors_atomic({k: v.detach() for k, v in self.state_dict().items()}, path,
                                metadata={"config": json.dumps(self.config()),
                                          "stream_version": str(ref.STREAM_VERSION)})

    @classmethod
    def load(cls, path: str | os.PathLike, *, device=None, **kwargs) -> "BiHM":
        """A model rebuilt from a file written by :meth:`save`, a trainer checkpoint, or a run
        directory (its ``best.safetensors``); kwargs (backend, chunk_rows) go to ``__init__``.

        Raises:
            FileNotFoundError: nothing at ``path``. ValueError: not a BiHM checkpoint, or corrupt.
        """
        from .checkpoint import read_safetensors

        if os.path.isdir(path):
            path = os.path.join(path, "best.safetensors")
        tensors, metadata = read_safetensors(path)
        if "config" not in metadata:
            raise ValueError(f"{path} has no BiHM config in its metadata; was it written by BiHM.save?")
        model = cls.from_config(json.loads(metadata["config"]), device=device, **kwargs)
        weights = {k: v for k, v in tensors.items() if not k.startswith("trainer.")}
        model.check_compatible(weights)
        model.load_state_dict(weights)
        return model
