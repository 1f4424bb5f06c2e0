"""The evaluation recipe: test-set numbers of a model, the overview figure, and every seed derived from a
run's ``--seed`` (one table, :data:`SEED_OFFSETS`; their values are part of the recorded results, so
docs/REPRODUCTION.md and the shipped models reproduce with them). Used by the command line (``eval``,
``demo``, ``inpaint``) and by ``bench/reproduce.py``."""

from __future__ import annotations

import math

import torch

__all__ = ["SEED_OFFSETS", "derived_seed", "evaluate", "print_evaluation", "random_rows", "overview_figure",
           "make_mask"]

#: What each derived seed is for, and its offset from the user's seed (``derived_seed(seed, what)``). The
#: trainer's per-step and validation seeds are :func:`bihm_triton.train._step_seed`'s; reproduce.py's ESS
#: grid uses ``ess_grid`` + the index of K.
SEED_OFFSETS = {"log_z2": 1, "log_likelihood": 2, "ess": 3, "figure_p": 10, "figure_gibbs": 11,
                "figure_inpaint": 12, "ess_grid": 100}


def derived_seed(seed: int, what: str, index: int = 0) -> int:
    """The seed of ``what`` (a key of :data:`SEED_OFFSETS`) for a run whose seed is ``seed``: ``seed`` +
    its offset (+ ``index`` for a grid of draws)."""
    return seed + SEED_OFFSETS[what] + index


def _say(msg: str) -> None:
    print(msg, flush=True)


def _masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Observed pixels as they are, unobserved ones grey (0.5), for figures."""
    return torch.where(mask, x, torch.full_like(x, 0.5))


def make_mask(x: torch.Tensor, kind: str, generator=None, shape: tuple | None = None,
              order: str = "C") -> torch.Tensor:
    """(n, d) bool mask, True = observed: ``bottom`` hides the lower half of the image rows, ``top``,
    ``left``, ``right`` likewise, ``random`` hides each pixel with probability ½.

    Args:
        shape: (h, w) of an image (default: square if d is a square); order: "F" for column-major pixels.

    Raises:
        ValueError: an unknown kind, or top/bottom on data without image rows (h = 1).
    """
    from .plotting import image_shape

    n, d = x.shape
    h, w = shape or image_shape(d)
    pixel = torch.arange(d)
    rows, cols = (pixel // w, pixel % w) if order == "C" else (pixel % h, pixel // h)
    if kind == "random":
        return torch.rand(n, d, generator=generator) < 0.5
    keep = {"bottom": rows < h // 2, "top": rows >= h // 2, "left": cols >= w // 2, "right": cols < w // 2}
    if kind not in keep:
        raise ValueError(f"mask must be one of {sorted(keep) + ['random']}, got {kind!r}")
    if h == 1 and kind in ("top", "bottom"):
        raise ValueError(f"--mask {kind}: this data has no image rows (each point is 1 x {w}); use left, right "
                         f"or random")
    return keep[kind].expand(n, d).clone()


def evaluate(model, x: torch.Tensor, *, k: int, z_samples: int, n_inner: int, seed: int,
             progress: bool | None = None, ess: bool = True, verbose: bool = True) -> dict:
    """Test-set numbers (nats): mean log p̃*(x) and log p(x) ± se over the points, log Ẑ² ± se, log p*(x) =
    log p̃*(x) − log Ẑ² ± se (SPEC §2), and with ``ess`` the effective sample sizes of up to 200 points at
    K ≤ 1000. Prints one line per stage with ``verbose`` (they can take minutes). The seeds are
    :func:`derived_seed`'s of ``seed``; the CLI's ``eval`` and ``bench/reproduce.py`` both evaluate with this.

    In an initialized ``torch.distributed`` group (torchrun) the samples of p and the test points are
    split across the ranks (:mod:`bihm_triton.distributed`) and every rank returns the same numbers:
    the single-process ones up to summation order."""
    from . import distributed

    n = x.shape[0]
    if n < 1:
        raise ValueError("no data points to evaluate")
    say = _say if verbose else (lambda msg: None)
    say(f"estimating log Z^2 from {z_samples} samples of p ({n_inner} q-samples each) ...")
    z = distributed.estimate_log_z2(model, z_samples, n_inner=n_inner, seed=derived_seed(seed, "log_z2"),
                                    progress=progress)
    say(f"estimating log-likelihoods of {n} points with K = {k} importance samples each ...")
    ll = distributed.log_likelihood(model, x, k, log_z2=z.value, seed=derived_seed(seed, "log_likelihood"),
                                    progress=progress)
    lpt, lp = ll.log_p_tilde_star.double(), ll.log_p.double()
    se = (lambda t: float(t.std() / math.sqrt(n)) if n > 1 else 0.0)  # noqa: E731
    out = {"n": n, "test_points": n, "k": k, "z_samples": z_samples, "n_inner": n_inner,
           "log_p_tilde_star": float(lpt.mean()), "log_p_tilde_star_se": se(lpt),
           "log_p": float(lp.mean()), "log_p_se": se(lp), "log_z2": z.value, "log_z2_se": z.se,
           "log_p_star": float(lpt.mean()) - z.value, "log_p_star_se": math.hypot(se(lpt), z.se)}
    if ess:
        say("effective sample sizes ...")
        e = distributed.effective_sample_size(model, x[: min(200, n)], min(k, 1000), seed=derived_seed(seed, "ess"),
                                              progress=progress)
        out.update(ess_p_star=float(e.p_star.mean()), ess_p=float(e.p.mean()), ess_k=min(k, 1000))
    return out


def print_evaluation(r: dict) -> None:
    print(f"test log p~*(x) = {r['log_p_tilde_star']:.2f} +- {r['log_p_tilde_star_se']:.2f} nats "
          f"(the bound, K = {r['k']}, mean over {r['n']} points)")
    print(f"test log p(x)   = {r['log_p']:.2f} nats (top-down model alone, importance sampled)")
    print(f"log Z^2         = {r['log_z2']:.4f} +- {r['log_z2_se']:.4f} ({r['z_samples']} samples)")
    print(f"test log p*(x)  = {r['log_p_star']:.2f} +- {r['log_p_star_se']:.2f} nats")
    print(f"effective sample size of {r['ess_k']} samples: p* weights {r['ess_p_star']:.1f}, "
          f"p weights {r['ess_p']:.1f}")


def random_rows(x: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, str]:
    """A seeded random subset of ``n`` rows of x (all of them when there are no more), and a phrase for a
    figure's title. Data files are often grouped by class (binarized MNIST's test file starts with its
    zeros), so the first n rows would show one class."""
    total = x.shape[0]
    if n >= total:
        return x, f"all {total} points"
    idx = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n]
    return x[idx.to(x.device)], f"{n} of {total} points, drawn at random (seed {seed})"


def overview_figure(model, data_x: torch.Tensor, path: str, *, steps: int, seed: int, progress=None,
                    title: str | None = None, n: int = 20, shape=None, order: str = "C", what: str = "data") -> str:
    """One PNG: ``n`` data points drawn at random (seeded), samples from p, exact Gibbs samples from p*,
    and inpaintings of the data's lower half (top half observed; the left half for data without image
    rows). The title says which data points are shown."""
    from .plotting import figure_panels

    data_x, chosen = random_rows(data_x, n, seed)
    title = f"{title + chr(10) if title else ''}{what}: {chosen}"
    _say(f"drawing the figure ({steps} Gibbs sweeps) ...")
    p_samples = model.sample_p(n, seed=derived_seed(seed, "figure_p"))
    gibbs = model.gibbs_sample(n, steps, 10, seed=derived_seed(seed, "figure_gibbs"), progress=progress).x
    kind = "bottom" if (shape or (2, 0))[0] > 1 else "right"
    mask = make_mask(data_x.cpu(), kind, shape=shape, order=order).to(data_x.device)
    inpainted = model.inpaint(data_x, mask, steps, 10, seed=derived_seed(seed, "figure_inpaint"), progress=progress).x
    half = "top" if kind == "bottom" else "left"
    return figure_panels([
        (what, data_x), ("samples from p (ancestral)", p_samples),
        (f"samples from p* (exact Gibbs, {steps} sweeps, K = 10)", gibbs),
        (f"inpainting: observed {half} half (grey: hidden)", _masked(data_x, mask)),
        (f"inpainting: completed by Gibbs with the {half} half clamped", inpainted),
    ], path, cols=10, title=title, shape=shape, order=order)
