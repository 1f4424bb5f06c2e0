"""The Bidirectional Helmholtz Machine in plain PyTorch: the specification in code (SPEC §1–4, §6).

Layout (SPEC §6) for ``sizes = [d_0, d_1, …, d_L]`` (``h_0 = x``):

* ``p_layers[l]``, l = 0…L−1, generates ``h_l`` from ``h_{l+1}``: ``weight`` (d_l, d_{l+1}),
  ``bias`` (d_l,);
* ``p_top.logits`` (d_L,): the prior ``p(h_L) = Bern(σ(logits))``;
* ``q_layers[l]``, l = 0…L−1, infers ``h_{l+1}`` from ``h_l``: ``weight`` (d_{l+1}, d_l),
  ``bias`` (d_{l+1},);
* with ``weight_norm=True`` every layer holds ``weight_v`` and ``weight_g`` and ``weight`` is the
  derived ``g · v / ‖v‖``;
* with ``deterministic_layers=n`` (the authors' ``--deterministic-layers``) every conditional
  ``p(h_l | h_{l+1})`` and ``q(h_{l+1} | h_l)`` computes its logits with an MLP: ``hidden`` holds n
  tanh layers of width ``(d_in + d_out) // 2`` (``weight``, ``bias`` each), and ``weight`` (d_out,
  mid), ``bias`` (d_out,) are the logistic output layer (:class:`MLPStochasticLayer`).

States are lists ``[h_0, h_1, …, h_L]`` of (R, d_l) tensors with values in {0, 1}. When K samples
are drawn per data point, row ``r = b·K + k`` holds sample k of data point b.

**The random stream of a pass** (SPEC §5, stream version 2). Every stochastic layer is one draw
of the Philox stream (:mod:`~bihm_triton.reference.philox`). A pass with ``(seed, offset)`` numbers
its draws in the order they happen:

* the q pass (bottom-up): ``h_1, h_2, …, h_L`` are draws 0 … L−1;
* the p pass (ancestral): the prior ``h_L``, then ``h_{L−1}, …, h_0 = x`` are draws 0 … L;

and draw i of row r reads the counters ``offset + i·2**40 + (r // 4)·d_i + j``
(:func:`~bihm_triton.reference.philox.draw_offset`): a row's random numbers depend on its index r,
never on the number of rows. Methods take ``row_start``, the global index of their first row (a
sample, or a data point whose K importance samples are rows ``b·K + k``), so a call for rows
``[a, b)`` computes exactly those rows of a larger call: ``sample_p(n)[:m] == sample_p(m)``, and a
data point's estimates do not depend on the batch it is evaluated in. Passes that follow one
another in a method take consecutive draw numbers (e.g. ``estimate_log_z2``: the p pass is draws
0 … L, the q pass draws L+1 … 2L).

Methods that draw take ``seed=None`` (one fresh seed from torch's default generator per call),
``offset=0`` and ``row_start=0``.

Source: Bornschein, Shabanian, Fischer, Bengio, "Bidirectional Helmholtz Machines", ICML 2016.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import torch
from torch import nn

from . import estimators as est
from ._checks import check_binary, check_positive_int, check_tensor, nonfinite_parameters
from .layers import sbn_log_prob, sbn_log_prob_wn, sbn_sample, sbn_sample_wn
from .philox import DRAW_STRIDE, aligned_start, check_draw_fits, check_offset, draw_offset, resolve_seed

__all__ = [
    "StochasticLayer",
    "WeightNormStochasticLayer",
    "MLPStochasticLayer",
    "PriorLayer",
    "BiHM",
    "PSample",
    "QSample",
    "LogLikelihood",
    "EffectiveSampleSize",
    "check_sizes",
]


def check_sizes(sizes) -> list[int]:
    """Validate layer widths ``[d_0, …, d_L]``: at least two positive ints. Returns them as a list.

    Raises:
        ValueError: empty or single-element list, or a width < 1 (the message names its index).
        TypeError: not a sequence of ints.
    """
    if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__len__"):
        raise TypeError(f"sizes must be a sequence of ints [d_0, d_1, ..., d_L], got {sizes!r}")
    sizes = list(sizes)
    if len(sizes) < 2:
        raise ValueError(f"sizes must list the data width and at least one latent width, got {sizes}")
    for i, d in enumerate(sizes):
        if isinstance(d, bool) or not isinstance(d, int):
            raise TypeError(f"sizes[{i}] must be an int, got {d!r}")
        if d < 1:
            raise ValueError(f"sizes[{i}] must be >= 1, got {d} (sizes = {sizes})")
    return sizes


def pad_rows(t: torch.Tensor, s: int) -> torch.Tensor:
    """t with ``s`` zero rows in front (the rows that align a computation to a Philox row group)."""
    return torch.cat([t.new_zeros((s, *t.shape[1:])), t]) if s else t


def warn_nonfinite_samples(bad: list, what: str) -> None:
    """A RuntimeWarning when p's parameters ``bad`` (names) are non-finite: the samples are not p's."""
    if bad:
        warnings.warn(f"{what}: the model's parameters hold non-finite values ({', '.join(bad)}): units whose "
                      f"logits are NaN are sampled as 0 and log p(x, h) is NaN", RuntimeWarning, stacklevel=4)


def authors_init_(weight: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The authors' initialization ``U(−1, 1) · sqrt(6 / (d_in + d_out)) / d_in`` (SPEC §3), in place."""
    d_out, d_in = weight.shape
    scale = math.sqrt(6.0 / (d_in + d_out)) / d_in
    with torch.no_grad():
        weight.uniform_(-1.0, 1.0, generator=generator).mul_(scale)
    return weight


class StochasticLayer(nn.Module):
    """A conditional Bernoulli layer ``x ~ Bern(σ(h · Wᵀ + b))`` with ``weight`` (d_out, d_in), ``bias`` (d_out,)."""

    def __init__(self, d_in: int, d_out: int, *, device=None, dtype=torch.float32):
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        self.weight = nn.Parameter(torch.empty(d_out, d_in, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(d_out, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Authors' defaults (SPEC §3): uniform weights, every bias −1."""
        authors_init_(self.weight, generator)
        with torch.no_grad():
            self.bias.fill_(-1.0)

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_out={self.d_out}"


class WeightNormStochasticLayer(nn.Module):
    """A :class:`StochasticLayer` with weight normalization over rows: parameters ``weight_v``
    (d_out, d_in), ``weight_g`` (d_out,), ``bias``; ``weight`` is the derived ``g · v / ‖v‖``."""

    def __init__(self, d_in: int, d_out: int, *, device=None, dtype=torch.float32):
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        self.weight_v = nn.Parameter(torch.empty(d_out, d_in, device=device, dtype=dtype))
        self.weight_g = nn.Parameter(torch.empty(d_out, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(d_out, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """``v`` gets the authors' init and ``g = ‖v‖``, so the initial weight equals theirs."""
        authors_init_(self.weight_v, generator)
        with torch.no_grad():
            self.weight_g.copy_(self.weight_v.norm(dim=1))
            self.bias.fill_(-1.0)

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_g.unsqueeze(1) * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_out={self.d_out}, weight_norm=True"


class DeterministicLayer(nn.Module):
    """``tanh(h · Wᵀ + b)``: a hidden layer of an :class:`MLPStochasticLayer` (``weight`` (d_out, d_in),
    ``bias`` (d_out,)), initialized as the authors' (their initializer for every weight, biases −1)."""

    def __init__(self, d_in: int, d_out: int, *, device=None, dtype=torch.float32):
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        self.weight = nn.Parameter(torch.empty(d_out, d_in, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(d_out, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        authors_init_(self.weight, generator)
        with torch.no_grad():
            self.bias.fill_(-1.0)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(torch.nn.functional.linear(h.to(self.weight.dtype), self.weight, self.bias))

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_out={self.d_out}, tanh"


class MLPStochasticLayer(StochasticLayer):
    """A conditional Bernoulli layer whose logits come from an MLP (the authors' ``--deterministic-layers n``,
    ``create_layers`` in their ``helmholtz`` package): ``n`` tanh layers of width ``(d_in + d_out) // 2``
    (:attr:`hidden`), then the logistic output layer ``x ~ Bern(σ(z · Wᵀ + b))`` with ``weight``
    (d_out, mid) and ``bias`` (d_out,). Every weight gets the authors' initialization, every bias −1.

    :meth:`features` maps the layer's binary input h (R, d_in) to the output layer's real input z (R, mid).
    """

    def __init__(self, d_in: int, d_out: int, n_hidden: int, *, device=None, dtype=torch.float32):
        mid = (d_in + d_out) // 2
        if mid < 1:
            raise ValueError(f"deterministic layers need (d_in + d_out) // 2 >= 1, got d_in={d_in}, d_out={d_out}")
        super().__init__(mid, d_out, device=device, dtype=dtype)
        self.d_in = d_in
        widths = [d_in] + [mid] * n_hidden
        self.hidden = nn.ModuleList(DeterministicLayer(a, b, device=device, dtype=dtype)
                                    for a, b in zip(widths, widths[1:]))

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        super().reset_parameters(generator)
        for m in getattr(self, "hidden", ()):
            m.reset_parameters(generator)

    def features(self, h: torch.Tensor) -> torch.Tensor:
        """The MLP's hidden activations (R, mid) for inputs h (R, d_in); differentiable in its parameters."""
        for m in self.hidden:
            h = m(h)
        return h

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_out={self.d_out}, deterministic_layers={len(self.hidden)}"


def layer_input(layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """What the logistic output of ``layer`` reads: h itself, or an MLP layer's hidden activations."""
    return layer.features(h) if isinstance(layer, MLPStochasticLayer) else h


class PriorLayer(nn.Module):
    """The top prior ``p(h_L) = Bern(σ(logits))``, ``logits`` (d,), initialized to −1 (SPEC §3).

    It behaves as a stochastic layer with no input: ``weight`` is an empty (d, 0) tensor and
    ``bias`` is ``logits``.
    """

    def __init__(self, d: int, *, device=None, dtype=torch.float32):
        super().__init__()
        self.d_in, self.d_out = 0, d
        self.logits = nn.Parameter(torch.full((d,), -1.0, device=device, dtype=dtype))

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        with torch.no_grad():
            self.logits.fill_(-1.0)

    @property
    def weight(self) -> torch.Tensor:
        return self.logits.new_zeros(self.d_out, 0)

    @property
    def bias(self) -> torch.Tensor:
        return self.logits

    def extra_repr(self) -> str:
        return f"d={self.d_out}"


class PSample(NamedTuple):
    """Ancestral sample of p: ``x`` (n, d_0), ``hidden`` [h_1 … h_L] each (n, d_l), ``log_p`` (n,) = log p(x, h)."""

    x: torch.Tensor
    hidden: list
    log_p: torch.Tensor


class QSample(NamedTuple):
    """Bottom-up samples: ``hidden`` [h_1 … h_L] each (B·K, d_l) (row b·K + k), ``log_q`` (B, K) = log q(h | x)."""

    hidden: list
    log_q: torch.Tensor


class LogLikelihood(NamedTuple):
    """Per-data-point estimates (B,) in nats: the bound log p̃*(x), the IS estimate of log p(x), and
    log p*(x) = log p̃*(x) − log Ẑ² (None unless ``log_z2`` was given)."""

    log_p_tilde_star: torch.Tensor
    log_p: torch.Tensor
    log_p_star: torch.Tensor | None


class EffectiveSampleSize(NamedTuple):
    """Per-data-point effective sample sizes (B,) of the p-weights (∝ ω) and the p*-weights (∝ sqrt ω)."""

    p: torch.Tensor
    p_star: torch.Tensor


class BiHM(nn.Module):
    """Bidirectional Helmholtz Machine, reference implementation (SPEC §1–4, §6).

    Args:
        sizes: ``[d_0, d_1, …, d_L]``, the data width then the latent widths, bottom to top.
        weight_norm: hold every weight as ``weight_v``, ``weight_g`` (Salimans & Kingma 2016).
        deterministic_layers: tanh hidden layers inside every conditional (the authors'
            ``--deterministic-layers``; :class:`MLPStochasticLayer`); 0 (default) is the paper's model.
        device, dtype: of the parameters (float32 or float64).

    Raises:
        ValueError / TypeError: bad ``sizes`` (e.g. ``[]``, ``[784]``, ``[784, 0, 10]``), a negative
            ``deterministic_layers``, or deterministic layers with weight normalization (not supported).

    The stochastic primitives are :meth:`layer_sample` and :meth:`layer_log_prob`; everything
    else is written on top of them, so a subclass that replaces the two with faster kernels keeps
    all the math here.
    """

    def __init__(self, sizes, *, weight_norm: bool = False, deterministic_layers: int = 0, device=None,
                 dtype=torch.float32):
        super().__init__()
        self.sizes = check_sizes(sizes)
        self.weight_norm = bool(weight_norm)
        if isinstance(deterministic_layers, bool) or not isinstance(deterministic_layers, int) or deterministic_layers < 0:
            raise ValueError(f"deterministic_layers must be an int >= 0, got {deterministic_layers!r}")
        if deterministic_layers and weight_norm:
            raise ValueError("deterministic_layers with weight_norm=True is not supported; use one or the other")
        self.deterministic_layers = deterministic_layers
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"dtype must be torch.float32 or torch.float64 (the parameters' dtype; half-precision "
                            f"weights go to the ops, e.g. ops.sbn_sample, not to a model), got {dtype}")
        L = len(self.sizes) - 1
        kw = dict(device=device, dtype=dtype)
        if deterministic_layers:
            def Layer(d_in, d_out, **k):  # noqa: N802
                return MLPStochasticLayer(d_in, d_out, deterministic_layers, **k)
        else:
            Layer = WeightNormStochasticLayer if weight_norm else StochasticLayer
        self.p_layers = nn.ModuleList(Layer(self.sizes[l + 1], self.sizes[l], **kw) for l in range(L))
        self.p_top = PriorLayer(self.sizes[-1], **kw)
        self.q_layers = nn.ModuleList(Layer(self.sizes[l], self.sizes[l + 1], **kw) for l in range(L))

    # ------------------------------------------------------------------ basics
    @property
    def n_layers(self) -> int:
        """L, the number of latent layers."""
        return len(self.sizes) - 1

    @property
    def device(self) -> torch.device:
        return self.p_top.logits.device

    @property
    def dtype(self) -> torch.dtype:
        return self.p_top.logits.dtype

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Re-initialize every layer with the authors' defaults (SPEC §3)."""
        for m in (*self.p_layers, self.p_top, *self.q_layers):
            m.reset_parameters(generator)

    def extra_repr(self) -> str:
        extra = f", deterministic_layers={self.deterministic_layers}" if self.deterministic_layers else ""
        return f"sizes={self.sizes}, weight_norm={self.weight_norm}{extra}"

    def weight_penalty(self, l1: float = 0.0, l2: float = 0.0) -> torch.Tensor:
        """``l1 · Σ|W| + l2 · Σ W²`` over every weight matrix of p and q (hidden MLP layers included; the
        effective weight under weight normalization; not the biases or the prior's logits): the authors'
        ``--l1reg`` / ``--l2reg``, added once per training step to the loss summed over the batch. A scalar
        tensor, differentiable."""
        out = self.p_top.logits.new_zeros(())
        if not (l1 or l2):
            return out
        for layer in (*self.p_layers, *self.q_layers):
            for w in [layer.weight, *(m.weight for m in getattr(layer, "hidden", ()))]:
                if l1:
                    out = out + l1 * w.abs().sum()
                if l2:
                    out = out + l2 * w.pow(2).sum()
        return out

    # ------------------------------------------------------------- primitives
    def layer_sample(self, layer: nn.Module, h: torch.Tensor, seed, offset: int):
        """Sample ``layer`` given inputs h (R, d_in): returns (x (R, d_out), log_prob (R,))."""
        h = layer_input(layer, h)
        if isinstance(layer, WeightNormStochasticLayer):
            return sbn_sample_wn(h, layer.weight_v, layer.weight_g, layer.bias, seed=seed, offset=offset,
                                 out_dtype=self.dtype)
        return sbn_sample(h, layer.weight, layer.bias, seed=seed, offset=offset, out_dtype=self.dtype)

    def layer_log_prob(self, layer: nn.Module, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-row log-likelihood (R,) of targets x (R, d_out) under ``layer`` given h (R, d_in)."""
        h = layer_input(layer, h)
        if isinstance(layer, WeightNormStochasticLayer):
            return sbn_log_prob_wn(h, x, layer.weight_v, layer.weight_g, layer.bias)
        return sbn_log_prob(h, x, layer.weight, layer.bias)

    def empty_input(self, rows: int) -> torch.Tensor:
        """A (rows, 0) input: the prior is a stochastic layer with no input (logits = its bias)."""
        return torch.zeros(rows, 0, device=self.device, dtype=self.dtype)

    # ------------------------------------------------------------------ passes
    def q_pass(self, x: torch.Tensor, seed, offset: int, *, row_start: int = 0):
        """Bottom-up sampling of h ~ q(h | x) for rows x (R, d_0): draws 0 … L−1 of a pass at ``offset``.

        ``row_start``: the global index of x's first row in the pass (module docstring); any value
        (rows before it that share its Philox row group are computed and dropped). Returns (states
        [x, h_1, …, h_L], log q(h | x) (R,)).
        """
        a0, s = aligned_start(row_start)
        R = x.shape[0]
        x_al = pad_rows(x, s)
        states, log_q = [x_al], 0.0
        for l, layer in enumerate(self.q_layers):
            d = self.sizes[l + 1]
            check_draw_fits(row_start + R, d, "the q pass")
            h, lq = self.layer_sample(layer, states[-1], seed, draw_offset(offset, l, a0, d))
            states.append(h)
            log_q = log_q + lq
        if s:
            return [x, *(h[s:] for h in states[1:])], log_q[s:]
        return states, log_q

    def p_pass(self, n: int, seed, offset: int, *, row_start: int = 0):
        """Ancestral sampling of (x, h) ~ p for n rows: draws 0 (the prior) … L (x) of a pass at ``offset``.

        ``row_start``: the global index of the first row (module docstring). Returns (states
        [x, h_1, …, h_L], log p(x, h) (n,)).
        """
        a0, s = aligned_start(row_start)
        widths = self.sizes[::-1]  # prior h_L, then h_{L-1} ... h_0
        for d in widths:
            check_draw_fits(row_start + n, d, "the p pass")
        h, log_p = self.layer_sample(self.p_top, self.empty_input(n + s), seed, draw_offset(offset, 0, a0, widths[0]))
        states = [h]
        for i, l in enumerate(reversed(range(self.n_layers)), start=1):
            h, lp = self.layer_sample(self.p_layers[l], states[0], seed, draw_offset(offset, i, a0, widths[i]))
            states.insert(0, h)
            log_p = log_p + lp
        if s:
            return [h[s:] for h in states], log_p[s:]
        return states, log_p

    def log_p_joint(self, states) -> torch.Tensor:
        """``log p(x, h) = log p(h_L) + Σ_l log p(h_l | h_{l+1})`` (R,) for states [h_0 … h_L] (SPEC §1)."""
        self._check_states(states)
        R = states[0].shape[0]
        out = self.layer_log_prob(self.p_top, self.empty_input(R), states[-1])
        for l, layer in enumerate(self.p_layers):
            out = out + self.layer_log_prob(layer, states[l + 1], states[l])
        return out

    def log_q_cond(self, states) -> torch.Tensor:
        """``log q(h | x) = Σ_l log q(h_{l+1} | h_l)`` (R,) for states [h_0 = x, h_1 … h_L] (SPEC §1)."""
        self._check_states(states)
        out = 0.0
        for l, layer in enumerate(self.q_layers):
            out = out + self.layer_log_prob(layer, states[l], states[l + 1])
        return out

    def _check_states(self, states, validate: bool = False, name: str = "states") -> None:
        """``states`` lists [h_0 = x, h_1 … h_L], each (R, d_l); with ``validate`` every value is also 0 or 1
        (NaN and 0.5 are not states: SPEC §1's units are binary).

        Raises:
            ValueError: a wrong count or shape, or (``validate``) a non-binary value, naming the layer and
                its shape.
        """
        if len(states) != len(self.sizes):
            raise ValueError(f"{name} must list {len(self.sizes)} tensors [h_0 ... h_L], got {len(states)}")
        R = states[0].shape[0]
        for l, (s, d) in enumerate(zip(states, self.sizes)):
            if s.dim() != 2 or s.shape != (R, d):
                raise ValueError(f"{name}[{l}] must have shape (R, d_{l}) = ({R}, {d}), got {tuple(s.shape)}")
            if validate:
                layer = "x" if l == 0 else f"h_{l}"
                check_binary(s, f"{name}[{l}]", f" ({layer}, shape {tuple(s.shape)})")

    # ------------------------------------------------------------ validation
    def _check_x(self, x: torch.Tensor, name: str = "x", validate: bool = True) -> torch.Tensor:
        check_tensor(x, name, 2, symbols="(B, d_0)")
        if x.shape[1] != self.sizes[0]:
            raise ValueError(f"{name} must have shape (B, d_0) = (B, {self.sizes[0]}), got {tuple(x.shape)}")
        if validate:
            check_binary(x, name)
        return x.to(device=self.device, dtype=self.dtype).contiguous()

    @staticmethod
    def _seed(seed, offset, row_start: int = 0):
        seed = resolve_seed(seed)
        check_offset(offset)
        aligned_start(row_start)  # validates it
        return seed

    # ---------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample_p(self, n: int, *, seed=None, offset: int = 0, row_start: int = 0, return_hidden: bool = False):
        """Ancestral samples of the top-down model p (SPEC §4).

        Args:
            n: number of samples.
            seed, offset: the random stream (module docstring).
            row_start: global index of the first sample: the call returns samples
                ``row_start … row_start + n − 1`` of the stream (``sample_p(n)[a:b]`` equals
                ``sample_p(b − a, row_start=a)``).
            return_hidden: also return the hidden states and log p(x, h).

        Returns:
            x (n, d_0) in the model's dtype, or a :class:`PSample` (x, hidden, log_p) when
            ``return_hidden``.

        Warns:
            RuntimeWarning: p's parameters hold NaN (or infinite weights): units with NaN logits are
                sampled as 0 and log p is NaN.
        """
        check_positive_int(n, "n")
        seed = self._seed(seed, offset, row_start)
        warn_nonfinite_samples(self._nonfinite_p(), "sample_p")
        states, log_p = self.p_pass(n, seed, offset, row_start=row_start)
        if return_hidden:
            return PSample(states[0], states[1:], log_p)
        return states[0]

    def _nonfinite_p(self) -> list[str]:
        """The parameters of p that make log p(x, h) NaN (:func:`~._checks.nonfinite_parameters`)."""
        return nonfinite_parameters((n, p) for n, p in self.named_parameters() if n.startswith("p_"))

    @torch.no_grad()
    def sample_q(self, x: torch.Tensor, k: int = 1, *, seed=None, offset: int = 0, row_start: int = 0) -> QSample:
        """K bottom-up samples ``h ~ q(h | x)`` per data point (SPEC §4).

        Args:
            x: (B, d_0) binary data.
            k: samples per data point (K >= 1).
            row_start: global index of x's first data point (its samples are rows ``(row_start + b)·K + k``
                of the stream).

        Returns:
            :class:`QSample`: hidden [h_1 … h_L] each (B·K, d_l), row b·K + k; log_q (B, K).
        """
        x = self._check_x(x)
        check_positive_int(k, "k")
        seed = self._seed(seed, offset, row_start)
        states, log_q = self.q_pass(x.repeat_interleave(k, dim=0), seed, offset, row_start=row_start * k)
        return QSample(states[1:], log_q.view(-1, k))

    # ------------------------------------------------------------- estimators
    def _log_weights_and_states(self, x: torch.Tensor, k: int, seed, offset: int, row_start: int = 0):
        """``log p(x, h)``, ``log q(h | x)`` (B, K) and the states of K q-samples per data point; data point b
        is number ``row_start + b`` of the call (its samples are rows ``(row_start + b)·K + k`` of the q pass)."""
        states, log_q = self.q_pass(x.repeat_interleave(k, dim=0), seed, offset, row_start=row_start * k)
        log_p = self.log_p_joint(states)
        return log_p.view(-1, k), log_q.view(-1, k), states

    def _chunk_log_weights(self, x: torch.Tensor, k: int, rows: int, seed, offset: int, *, row_start: int,
                           x_row0: int = 0):
        """``(log p(x, h), log q(h | x))`` (rows,) for rows ``row_start … row_start + rows`` of a q pass in which
        row r reads data point ``x[r // k − x_row0]`` (SPEC §2's log ω terms). Any ``row_start``: rows before it
        in its Philox row group are computed on zero data and dropped."""
        p0, p1 = row_start // k - x_row0, (row_start + rows - 1) // k - x_row0
        x, x_row0 = x[p0:p1 + 1], x_row0 + p0  # the chunk's own data points (a view)
        a0, s = aligned_start(row_start)
        if s:
            pts = -(-s // k)  # data points in front of x that the leading rows read
            lp, lq = self._aligned_chunk_log_weights(pad_rows(x, pts), k, rows + s, seed, offset, row_start=a0,
                                                     x_row0=x_row0 - pts)
            return lp[s:], lq[s:]
        return self._aligned_chunk_log_weights(x, k, rows, seed, offset, row_start=row_start, x_row0=x_row0)

    def _aligned_chunk_log_weights(self, x, k, rows, seed, offset, *, row_start, x_row0):
        """:meth:`_chunk_log_weights` for ``row_start`` a multiple of 4 (what the fast paths implement)."""
        b = torch.arange(row_start, row_start + rows, device=x.device) // k - x_row0
        states, log_q = self.q_pass(x[b], seed, offset, row_start=row_start)
        return self.log_p_joint(states), log_q

    @torch.no_grad()
    def log_weights(self, x: torch.Tensor, k: int, *, seed=None, offset: int = 0, row_start: int = 0) -> torch.Tensor:
        """Importance log-weights ``log ω_k = log p(x, h^(k)) − log q(h^(k) | x)`` (B, K), ``h^(k) ~ q`` (SPEC §2).

        ``row_start``: global index of x's first data point (a point's weights do not depend on the
        batch it is in; see the module docstring)."""
        x = self._check_x(x)
        check_positive_int(k, "k")
        seed = self._seed(seed, offset, row_start)
        log_p, log_q, _ = self._log_weights_and_states(x, k, seed, offset, row_start)
        return log_p - log_q

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor, k: int, *, log_z2: float | None = None, seed=None,
                       offset: int = 0, row_start: int = 0) -> LogLikelihood:
        """Per-data-point likelihood estimates from K importance samples (SPEC §2), in nats.

        Args:
            x: (B, d_0) binary data.
            k: importance samples per data point.
            log_z2: an estimate of log Z² (from :meth:`estimate_log_z2`); when given,
                ``log_p_star = log_p_tilde_star − log_z2``.
            row_start: global index of x's first data point (the estimates of a point depend on
                its index, the seed and the offset, not on the batch).

        Returns:
            :class:`LogLikelihood` of (B,) tensors: log p̃*(x) (the bound, paper eq. 6),
            the IS estimate of log p(x), and log p*(x) or None.
        """
        log_w = self.log_weights(x, k, seed=seed, offset=offset, row_start=row_start)
        lpt = est.log_p_tilde_star_estimate(log_w)
        return LogLikelihood(lpt, est.log_p_estimate(log_w), None if log_z2 is None else lpt - log_z2)

    @torch.no_grad()
    def estimate_log_z2(self, n_samples: int, *, n_inner: int = 1, seed=None, offset: int = 0,
                        row_start: int = 0) -> est.MeanWithSE:
        """Unbiased importance estimate of Z² = Σ_x p̃*(x), reported as log Ẑ² ± standard error (SPEC §2).

        Draws ``(x_n, h_n) ~ p`` and ``h'_ni ~ q(· | x_n)``, i = 1…n_inner; the n-th term is
        ``sqrt(q(h_n|x_n) / p(x_n, h_n)) · mean_i sqrt(ω'_ni)``. Stream: the p pass (draws 0 … L)
        over the samples ``row_start …``, then the q pass (draws L+1 … 2L) over their ``n_inner``
        inner rows each.

        Returns:
            :class:`~bihm_triton.reference.estimators.MeanWithSE` (log Ẑ², se), Python floats in nats.
        """
        check_positive_int(n_samples, "n_samples", 2)
        check_positive_int(n_inner, "n_inner")
        seed = self._seed(seed, offset, row_start)
        return est.log_mean_exp_with_se(self._log_z2_terms(n_samples, n_inner, seed, offset, row_start=row_start))

    def _log_z2_terms(self, n: int, n_inner: int, seed, offset: int, *, row_start: int = 0) -> torch.Tensor:
        """Log of the Ẑ² terms (n,) of samples ``row_start … row_start + n − 1``."""
        states, log_p = self.p_pass(n, seed, offset, row_start=row_start)
        log_q = self.log_q_cond(states)
        q_offset = offset + (self.n_layers + 1) * DRAW_STRIDE
        log_p2, log_q2 = self._chunk_log_weights(states[0], n_inner, n * n_inner, seed, q_offset,
                                                 row_start=row_start * n_inner, x_row0=row_start)
        log_w2 = (log_p2 - log_q2).view(n, n_inner)
        return 0.5 * (log_q - log_p) + est.log_mean_exp(0.5 * log_w2, dim=-1)

    @torch.no_grad()
    def effective_sample_size(self, x: torch.Tensor, k: int, *, seed=None, offset: int = 0,
                              row_start: int = 0) -> EffectiveSampleSize:
        """Effective sample sizes (B,) of the K importance weights: p-weights ∝ ω and p*-weights ∝ sqrt(ω) (SPEC §2)."""
        log_w = self.log_weights(x, k, seed=seed, offset=offset, row_start=row_start)
        return EffectiveSampleSize(est.effective_sample_size(log_w), est.effective_sample_size(0.5 * log_w))

    @torch.no_grad()
    def bhattacharyya_distance(self, x: torch.Tensor, k: int, *, seed=None, offset: int = 0,
                               row_start: int = 0) -> torch.Tensor:
        """Estimate of the Bhattacharyya distance D_B(x) between p(h|x) and q(h|x) (B,), nats (SPEC §1)."""
        return est.bhattacharyya_estimate(self.log_weights(x, k, seed=seed, offset=offset, row_start=row_start))

    # ------------------------------------------------------------------ losses
    def loss(self, x: torch.Tensor, k: int = 10, objective: str = "bihm", *, seed=None, offset: int = 0,
             row_start: int = 0, validate: bool = True):
        """Surrogate training loss summed over the batch, and per-data-point statistics (SPEC §3).

        ``objective="bihm"``: with ``w_k = softmax_k(½ log ω_k)`` (constants),
        ``L_p = −Σ_k w_k log p(x, h^(k))`` and ``L_q = −Σ_k (w_k − 1/K) log q(h^(k) | x)``; the
        expected gradient is ``−∇ log p̃*(x)`` as K grows.

        ``objective="rws"`` (reweighted wake-sleep): p-weights ``w̃_k = softmax_k(log ω_k)``;
        ``L_p = −Σ_k w̃_k log p(x, h^(k))``; q gets half the wake loss ``−Σ_k w̃_k log q(h^(k)|x)``
        and half the sleep loss ``−log q(h | x)`` on B samples ``(x, h) ~ p`` (drawn after the
        wake pass in the stream: draws L … 2L, rows ``row_start …``).

        A sample with zero weight (``p(x, h^(k)) = 0``, ``log ω_k = −inf``) contributes nothing, in
        value or gradient; a data point whose K weights are all zero contributes nothing to the
        loss and reports a bound of −inf.

        Args:
            x: (B, d_0) binary data; k: samples per data point; objective: "bihm" or "rws".
            row_start: global index of x's first data point in the step's batch (a shard of a
                data-parallel step passes its first index, so the shards' losses sum to the whole batch's).
            validate: check that x is binary (reads the data: a host synchronization; a trainer
                that validated its data once passes False, which keeps the step capturable in a
                CUDA graph).

        Returns:
            ``(loss, stats)``: a scalar tensor (sum over the batch) to call ``backward()`` on, and
            a dict of (B,) tensors, left on the device (nothing is read back): ``bound`` (the
            log p̃*(x) estimate, nats), ``log_p`` (the IS estimate of log p(x), nats), ``ess`` (the
            effective sample size of the weights the objective uses).

        Raises:
            ValueError: x has no rows (B = 0; as ``sample_p(0)`` refuses n = 0: an empty batch has no
                loss to train on), is not binary or has the wrong width; a bad objective or k.
        """
        if isinstance(x, torch.Tensor) and x.dim() == 2 and x.shape[0] == 0:
            raise ValueError(f"x must have at least one row (B >= 1), got shape {tuple(x.shape)}: an empty batch "
                             f"has no loss to train on")
        return self._loss(x, k, objective, seed=seed, offset=offset, row_start=row_start, validate=validate)

    def _loss(self, x: torch.Tensor, k: int = 10, objective: str = "bihm", *, seed=None, offset: int = 0,
              row_start: int = 0, validate: bool = True):
        """:meth:`loss` without the check for rows: an empty batch (an empty shard of a distributed step)
        has the loss 0 (a sum over no data points) and empty stats."""
        if objective not in ("bihm", "rws"):
            raise ValueError(f"objective must be 'bihm' or 'rws', got {objective!r}")
        x = self._check_x(x, validate=validate)
        check_positive_int(k, "k")
        seed = self._seed(seed, offset, row_start)
        log_p, log_q, _ = self._log_weights_and_states(x, k, seed, offset, row_start)
        B = x.shape[0]
        log_w = (log_p - log_q).detach()
        if objective == "bihm":
            w = est.normalized_weights(0.5 * log_w)
            loss = -est.weighted_sum(w, log_p) - ((w - 1.0 / k) * log_q).sum()
            ess = est.effective_sample_size(0.5 * log_w)
        else:
            w = est.normalized_weights(log_w)
            with torch.no_grad():
                sleep_states, _ = self.p_pass(B, seed, offset + self.n_layers * DRAW_STRIDE, row_start=row_start)
            loss = (-est.weighted_sum(w, log_p) - 0.5 * est.weighted_sum(w, log_q)
                    - 0.5 * self.log_q_cond(sleep_states).sum())
            ess = est.effective_sample_size(log_w)
        stats = {
            "bound": est.log_p_tilde_star_estimate(log_w),
            "log_p": est.log_p_estimate(log_w),
            "ess": ess,
        }
        return loss, stats
