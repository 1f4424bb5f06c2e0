"""Command-line interface ``bihm-triton`` (also ``python -m bihm_triton``)."""

from __future__ import annotations

import argparse
import sys

import torch


def _demo(args) -> int:
    from . import reference as ref

    torch.manual_seed(args.seed)
    model = ref.BiHM([16, 8, 4])
    x = model.sample_p(8)
    ll = model.log_likelihood(x, 1000)
    z = model.estimate_log_z2(20000)
    print(f"random BiHM {model.sizes}: 8 samples from p, K = 1000 importance samples each")
    print(f"  mean log p~*(x) = {float(ll.log_p_tilde_star.mean()):.3f} nats (the bound)")
    print(f"  mean log p(x)   = {float(ll.log_p.mean()):.3f} nats (top-down model)")
    print(f"  log Z^2         = {z.value:.4f} +- {z.se:.4f}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bihm-triton", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="a small reference run: sample from a random BiHM, estimate likelihoods")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
