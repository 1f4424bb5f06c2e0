"""Command-line interface ``bihm-triton`` (also ``python -m bihm_triton``).

Commands: ``demo`` (train on the bundled 8×8 digits, evaluate, draw a figure), ``train``, ``eval``,
``sample`` and ``inpaint``. Data sources (``--data``): ``digits`` (scikit-learn's bundled digits,
no network), ``idx:<path>`` (MNIST IDX images at a path; the last 20 % is the test set and the 10 %
before it the validation set), or a name from :func:`bihm_triton.data.list_datasets`
(downloaded into a cache). Layer sizes (``--sizes``): ``200,100,50`` or the authors'
``<f>x-<n>l-<last>``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

SPLITS = ("train", "valid", "test")
DATA_HELP = ("digits (bundled 8x8 digits, default) | idx:<folder or file of MNIST IDX images> | "
             "a downloadable set: binarized_mnist, caltech101_silhouettes, adult, ...")


# ----------------------------------------------------------------------------------- helpers


def load_split(source: str, split: str) -> torch.Tensor:
    """(n, d) float32 binary data of one split of a ``--data`` source."""
    from . import data

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if source == "digits":
        return data.load_digits(split)
    if not source.startswith("idx:") and source not in data.list_datasets():
        raise ValueError(f"--data {source!r}: expected 'digits', 'idx:<path to MNIST IDX files>' or one of "
                         f"{data.list_datasets()}")
    if source.startswith("idx:"):
        x = data.load_mnist_idx(source[4:], split="test" if os.path.isdir(source[4:]) else None)
        n = x.shape[0]
        test0, valid0 = n - n // 5, n - n // 5 - n // 10
        return {"train": x[:valid0], "valid": x[valid0:test0], "test": x[test0:]}[split]
    return data.load_dataset(source, split)


def _device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: no CUDA device is available")
    return dev


def _load_model(checkpoint: str, device, backend: str):
    from .model import BiHM

    return BiHM.load(checkpoint, device=device, backend=backend)


def _masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Observed pixels as they are, unobserved ones grey (0.5), for figures."""
    return torch.where(mask, x, torch.full_like(x, 0.5))


def make_mask(x: torch.Tensor, kind: str, generator=None) -> torch.Tensor:
    """(n, d) bool mask, True = observed: ``bottom`` hides the lower half of square images, ``top``,
    ``left``, ``right`` likewise, ``random`` hides each pixel with probability ½."""
    from .plotting import image_shape

    n, d = x.shape
    h, w = image_shape(d)
    rows = torch.arange(d) // w
    cols = torch.arange(d) % w
    if kind == "random":
        return torch.rand(n, d, generator=generator) < 0.5
    keep = {"bottom": rows < h // 2, "top": rows >= h // 2, "left": cols >= w // 2, "right": cols < w // 2}
    if kind not in keep:
        raise ValueError(f"mask must be one of {sorted(keep) + ['random']}, got {kind!r}")
    return keep[kind].expand(n, d).clone()


def evaluate(model, x: torch.Tensor, *, k: int, z_samples: int, n_inner: int, seed: int,
             progress: bool | None = None) -> dict:
    """Test-set numbers (nats): mean log p̃*(x), log p(x), log Ẑ² ± se, log p*(x) ± se, ESS."""
    z = model.estimate_log_z2(z_samples, n_inner=n_inner, seed=seed + 1, progress=progress)
    ll = model.log_likelihood(x, k, log_z2=z.value, seed=seed + 2, progress=progress)
    ess = model.effective_sample_size(x[: min(200, x.shape[0])], min(k, 1000), seed=seed + 3, progress=progress)
    n = x.shape[0]
    lpt = ll.log_p_tilde_star.double()
    se_lpt = float(lpt.std() / math.sqrt(n)) if n > 1 else 0.0
    return {
        "n": n, "k": k, "z_samples": z_samples,
        "log_p_tilde_star": float(lpt.mean()), "log_p_tilde_star_se": se_lpt,
        "log_p": float(ll.log_p.mean()),
        "log_z2": z.value, "log_z2_se": z.se,
        "log_p_star": float(ll.log_p_star.mean()), "log_p_star_se": math.hypot(se_lpt, z.se),
        "ess_p_star": float(ess.p_star.mean()), "ess_p": float(ess.p.mean()), "ess_k": min(k, 1000),
    }


def print_evaluation(r: dict) -> None:
    print(f"test log p~*(x) = {r['log_p_tilde_star']:.2f} +- {r['log_p_tilde_star_se']:.2f} nats "
          f"(the bound, K = {r['k']}, mean over {r['n']} points)")
    print(f"test log p(x)   = {r['log_p']:.2f} nats (top-down model alone, importance sampled)")
    print(f"log Z^2         = {r['log_z2']:.4f} +- {r['log_z2_se']:.4f} ({r['z_samples']} samples)")
    print(f"test log p*(x)  = {r['log_p_star']:.2f} +- {r['log_p_star_se']:.2f} nats")
    print(f"effective sample size of {r['ess_k']} samples: p* weights {r['ess_p_star']:.1f}, "
          f"p weights {r['ess_p']:.1f}")


def overview_figure(model, data_x: torch.Tensor, path: str, *, steps: int, seed: int, progress=None,
                    title: str | None = None, n: int = 20) -> str:
    """One PNG: test data, samples from p, exact Gibbs samples from p*, and inpaintings of the data's
    lower half (top half observed)."""
    from .plotting import figure_panels

    data_x = data_x[:n]
    p_samples = model.sample_p(n, seed=seed + 10)
    gibbs = model.gibbs_sample(n, steps, 10, seed=seed + 11, progress=progress).x
    mask = make_mask(data_x.cpu(), "bottom").to(data_x.device)
    inpainted = model.inpaint(data_x, mask, steps, 10, seed=seed + 12, progress=progress).x
    return figure_panels([
        ("test data", data_x), ("samples from p (ancestral)", p_samples),
        (f"samples from p* (exact Gibbs, {steps} sweeps, K = 10)", gibbs),
        ("inpainting: observed top half (grey: hidden)", _masked(data_x, mask)),
        ("inpainting: completed by Gibbs with the top half clamped", inpainted),
    ], path, cols=10, title=title)


# ---------------------------------------------------------------------------------- commands


def _train(args) -> int:
    from .model import BiHM, parse_sizes
    from .train import TrainConfig, Trainer

    torch.manual_seed(args.seed)
    device = _device(args.device)
    train_x, valid_x = load_split(args.data, "train"), load_split(args.data, "valid")
    train_x, valid_x = train_x.to(device), valid_x.to(device)
    if getattr(args, "resume", False):
        trainer = Trainer.resume(args.out, train_x, valid_x, device=device, backend=args.backend,
                                 max_epochs=args.epochs)
        print(f"resuming {args.out} at epoch {trainer.epoch}")
    else:
        sizes = parse_sizes(args.sizes, train_x.shape[1])
        model = BiHM(sizes, weight_norm=args.weight_norm, backend=args.backend, device=device)
        cfg = TrainConfig(k=args.k, batch_size=args.batch_size, lr=args.lr, objective=args.objective,
                          max_epochs=args.epochs, patience=args.patience, valid_k=args.valid_k, seed=args.seed)
        trainer = Trainer(model, train_x, valid_x, cfg, out_dir=args.out)
        print(f"training BiHM {sizes} ({args.objective}) on {args.data}: {train_x.shape[0]} train / "
              f"{valid_x.shape[0]} valid points, K = {args.k}, batch {args.batch_size}, Adam lr {args.lr}, "
              f"device {device}")
    t0 = time.perf_counter()
    trainer.fit(progress=not args.no_progress)
    print(f"trained {trainer.epoch} epochs in {time.perf_counter() - t0:.0f}s; best valid bound {trainer.best:.3f}; "
          f"checkpoints in {args.out}")
    return 0


def _progress(args):
    return False if args.no_progress else None


def _eval(args) -> int:
    device = _device(args.device)
    model = _load_model(args.checkpoint, device, args.backend)
    x = model._check_x(load_split(args.data, args.split).to(device))  # fail on the wrong data before any work
    r = evaluate(model, x, k=args.k, z_samples=args.z_samples, n_inner=args.n_inner, seed=args.seed,
                 progress=_progress(args))
    print_evaluation(r)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    if args.figure:
        source = f"idx:{os.path.basename(os.path.normpath(args.data[4:]))}" if args.data.startswith("idx:") else args.data
        overview_figure(model, x, args.figure, steps=args.gibbs_steps, seed=args.seed, progress=_progress(args),
                        title=f"BiHM {model.sizes} on {source} ({args.split}): log p*(x) = {r['log_p_star']:.2f} nats")
        print(f"wrote {args.figure}")
    return 0


def _sample(args) -> int:
    from .plotting import figure_panels

    device = _device(args.device)
    model = _load_model(args.checkpoint, device, args.backend)
    if args.method == "p":
        x = model.sample_p(args.n, seed=args.seed)
    elif args.method == "gibbs":
        x = model.gibbs_sample(args.n, args.steps, args.k, seed=args.seed, progress=_progress(args),
                               paper_compatible=args.paper_compatible).x
    else:
        x = model.sir_sample(args.n, args.oversample, seed=args.seed).x
    figure_panels([(f"samples ({args.method})", x)], args.out, cols=min(10, args.n))
    print(f"wrote {args.out}")
    return 0


def _inpaint(args) -> int:
    from .plotting import figure_panels

    device = _device(args.device)
    model = _load_model(args.checkpoint, device, args.backend)
    x = load_split(args.data, args.split)[: args.n]
    mask = make_mask(x, args.mask, torch.Generator().manual_seed(args.seed))
    r = model.inpaint(x.to(device), mask.to(device), args.steps, args.k, seed=args.seed, progress=_progress(args))
    figure_panels([("data", x), ("observed (grey: hidden)", _masked(x, mask)), ("inpainted", r.x.cpu())],
                  args.out, cols=min(10, args.n))
    print(f"wrote {args.out}")
    return 0


def _demo(args) -> int:
    """Train on the bundled digits, print the test numbers, write one PNG."""
    args.data = "digits"
    _train(args)
    device = _device(args.device)
    model = _load_model(args.out, device, args.backend)
    test_x = load_split("digits", "test").to(device)
    print("evaluating on the test set ...")
    progress = _progress(args)
    r = evaluate(model, test_x, k=args.eval_k, z_samples=args.z_samples, n_inner=args.n_inner, seed=args.seed,
                 progress=progress)
    print_evaluation(r)
    with open(os.path.join(args.out, "test.json"), "w") as f:
        json.dump(r, f, indent=2)
    png = os.path.join(args.out, "demo.png")
    overview_figure(model, test_x, png, steps=args.gibbs_steps, seed=args.seed, progress=progress,
                    title=f"BiHM {model.sizes} on 8x8 digits: test log p*(x) = {r['log_p_star']:.2f} nats")
    print(f"wrote {png}")
    return 0


# ------------------------------------------------------------------------------------ parser


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    p.add_argument("--backend", default="auto", choices=("auto", "triton", "reference"),
                   help="auto: Triton on CUDA tensors, the reference on CPU")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")


def _train_options(p: argparse.ArgumentParser, *, sizes: str, epochs: int, out: str, lr: float) -> None:
    p.add_argument("--sizes", default=sizes,
                   help=f"LATENT widths, bottom to top; the data width d_0 comes from the data: '200,100,50' or "
                        f"the authors' '<f>x-<n>l-<last>' (default {sizes})")
    p.add_argument("--weight-norm", action="store_true", help="weight-normalized layers")
    p.add_argument("--objective", default="bihm", choices=("bihm", "rws"))
    p.add_argument("--k", type=int, default=10, help="importance samples per data point (default 10)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=lr, help=f"Adam learning rate (default {lr}; the authors' is 1e-3)")
    p.add_argument("--epochs", type=int, default=epochs, help=f"maximum epochs (default {epochs})")
    p.add_argument("--patience", type=int, default=10, help="early stopping patience in epochs (default 10)")
    p.add_argument("--valid-k", type=int, default=100, help="importance samples per validation point")
    p.add_argument("--out", default=out, help=f"run directory (default {out})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bihm-triton", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="train on the bundled 8x8 digits, evaluate, write demo.png")
    _train_options(p, sizes="48,32,24,16", epochs=150, out="bihm-demo", lr=3e-3)
    p.add_argument("--eval-k", type=int, default=1000, help="importance samples per test point")
    p.add_argument("--z-samples", type=int, default=100_000, help="samples for log Z^2")
    p.add_argument("--n-inner", type=int, default=10, help="inner q-samples per Z^2 term")
    p.add_argument("--gibbs-steps", type=int, default=100, help="Gibbs sweeps for the figure")
    _common(p)
    p.set_defaults(func=_demo)

    p = sub.add_parser("train", help="train a BiHM (authors' defaults: K = 10, batch 100, Adam lr 1e-3)")
    p.add_argument("--data", default="digits", help=DATA_HELP)
    _train_options(p, sizes="200,100,50", epochs=1000, out="bihm-run", lr=1e-3)
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    _common(p)
    p.set_defaults(func=_train)

    p = sub.add_parser("eval", help="likelihood estimates on a data split")
    p.add_argument("--checkpoint", required=True, help="run directory (its best.safetensors) or a .safetensors file")
    p.add_argument("--data", default="digits", help=DATA_HELP)
    p.add_argument("--split", default="test", choices=SPLITS, help="data split (default test)")
    p.add_argument("--k", type=int, default=1000, help="importance samples per data point (default 1000)")
    p.add_argument("--z-samples", type=int, default=100_000, help="samples of p for log Z^2 (default 1e5)")
    p.add_argument("--n-inner", type=int, default=10, help="q-samples per log Z^2 term (default 10)")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    p.add_argument("--figure", default=None, help="also write a PNG: data, samples from p and p*, inpaintings")
    p.add_argument("--gibbs-steps", type=int, default=100, help="Gibbs sweeps for the figure")
    _common(p)
    p.set_defaults(func=_eval)

    p = sub.add_parser("sample", help="draw samples and save them as a PNG")
    p.add_argument("--checkpoint", required=True, help="run directory or .safetensors file")
    p.add_argument("--method", default="gibbs", choices=("p", "gibbs", "sir"),
                   help="p: ancestral samples of p; gibbs: exact Gibbs of p* (default); sir: importance resampling")
    p.add_argument("--n", type=int, default=50, help="number of samples (default 50)")
    p.add_argument("--steps", type=int, default=100, help="Gibbs sweeps (default 100)")
    p.add_argument("--k", type=int, default=10, help="Gibbs candidates per update (default 10)")
    p.add_argument("--paper-compatible", action="store_true", help="the authors' (biased) Gibbs sampler")
    p.add_argument("--oversample", type=int, default=100, help="SIR proposals per sample")
    p.add_argument("--out", default="samples.png")
    _common(p)
    p.set_defaults(func=_sample)

    p = sub.add_parser("inpaint", help="complete partly hidden images and save a PNG")
    p.add_argument("--checkpoint", required=True, help="run directory or .safetensors file")
    p.add_argument("--data", default="digits", help=DATA_HELP)
    p.add_argument("--split", default="test", choices=SPLITS, help="data split (default test)")
    p.add_argument("--n", type=int, default=10, help="images to inpaint (default 10)")
    p.add_argument("--mask", default="bottom", help="which part is hidden: bottom | top | left | right | random")
    p.add_argument("--steps", type=int, default=100, help="Gibbs sweeps (default 100)")
    p.add_argument("--k", type=int, default=10, help="Gibbs candidates per update (default 10)")
    p.add_argument("--out", default="inpaint.png")
    _common(p)
    p.set_defaults(func=_inpaint)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as e:
        if os.environ.get("BIHM_TRITON_DEBUG"):
            raise
        print(f"bihm-triton {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
