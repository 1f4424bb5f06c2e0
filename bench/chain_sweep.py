"""Time the fused whole-network sampler (``BiHM.sample_p``) under several tiling configurations.

For each configuration (``BIHM_CHAIN_CONFIG`` syntax, see :func:`bihm_triton.kernels.chain.launch_config`)
it builds the model, compiles, checks the samples against the default configuration's, and measures

* ``x+logp`` and ``x``: CUDA-event median of ``sample_p(n)`` at n = 2¹⁷ (samples per second);
* ``host``: wall time per call of ``sample_p(1024)`` over back-to-back calls (the per-call cost
  when the GPU is not the bottleneck: the issue's ≤ 50 µs target);
* ``graph``: one ``sample_p(1024)`` with a CUDA seed tensor captured in a CUDA graph and replayed
  (per replay), which also proves the call is capturable.

It stops starting new configurations when ``--budget`` seconds are spent, and writes a JSON file.
GPU only. Usage::

    python bench/chain_sweep.py [--net mnist|small] [--n 131072] [--budget 90] [--json out.json]
                                [--configs "block_r=64,warps=4" "block_r=128,warps=8" ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

DEFAULT_CONFIGS = [
    "",  # the library's default
    "maxnreg=168",
    "warps=8",
    "block_r=128,warps=8",
    "block_r=32",
    "stages=3",
    "reg_max=32",
    "reg_max=128,warps=8",
]


def measure(config: str, sizes, n: int, reference=None) -> dict:
    import torch
    from triton.testing import do_bench

    import benchlib as bl
    from bihm_triton.model import BiHM

    os.environ["BIHM_CHAIN_CONFIG"] = config
    model = BiHM(sizes, backend="triton", device="cuda", chunk_rows=1 << 22)
    model.load_state_dict(bl.dyadic_state_dict(sizes))
    seed = torch.tensor(12345, device="cuda")
    t0 = time.perf_counter()
    x, lp = model.sample_p(n, seed=seed, return_log_p=True)
    model.sample_p(n, seed=seed)
    torch.cuda.synchronize()
    out = {"config": config or "(default)", "compile_s": round(time.perf_counter() - t0, 2),
           "chain": dict(model.engine.p_chain().config)}
    if reference is not None:
        out["x_mismatch"] = float((x != reference[0]).float().mean())
        out["log_p_max_abs_diff"] = float((lp - reference[1]).abs().max())
    t = do_bench(lambda: model.sample_p(n, seed=seed, return_log_p=True), warmup=25, rep=300, return_mode="median")
    out["x+logp_per_s"] = n / (t / 1e3)
    t = do_bench(lambda: model.sample_p(n, seed=seed), warmup=25, rep=300, return_mode="median")
    out["x_per_s"] = n / (t / 1e3)
    for _ in range(20):
        model.sample_p(1024, seed=seed)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(200):
        model.sample_p(1024, seed=seed)
    torch.cuda.synchronize()
    out["host_us_per_call_n1024"] = (time.perf_counter() - t0) / 200 * 1e6
    try:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            xg = model.sample_p(1024, seed=seed)
        g.replay()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(200):
            g.replay()
        torch.cuda.synchronize()
        out["graph_us_per_replay_n1024"] = (time.perf_counter() - t0) / 200 * 1e6
        out["graph_equals_eager"] = bool(torch.equal(xg, model.sample_p(1024, seed=seed)))
    except Exception as e:  # noqa: BLE001 - report, keep sweeping
        out["graph_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    return out, (x, lp)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--net", default="mnist", choices=["mnist", "small"])
    ap.add_argument("--n", type=int, default=1 << 17)
    ap.add_argument("--budget", type=float, default=90.0, help="seconds; no new configuration starts after this")
    ap.add_argument("--configs", nargs="*", default=DEFAULT_CONFIGS)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    import torch

    import benchlib as bl

    if not torch.cuda.is_available():
        print("chain_sweep.py needs a CUDA GPU")
        return 2
    torch.set_float32_matmul_precision("high")
    sizes = bl.MNIST_SIZES if args.net == "mnist" else bl.SMALL_SIZES
    t_start = time.perf_counter()
    results, reference = [], None
    for cfg in args.configs:
        if time.perf_counter() - t_start > args.budget:
            print(f"(budget spent: {cfg!r} and later not run)")
            break
        try:
            r, out = measure(cfg, sizes, args.n, reference)
            reference = reference or out
        except Exception as e:  # noqa: BLE001
            r = {"config": cfg or "(default)", "error": f"{type(e).__name__}: {str(e)[:300]}"}
        results.append(r)
        print(json.dumps(r), flush=True)
    print(f"\nnet {args.net} {sizes}, n = {args.n}, matmul precision high (2 bf16 terms)")
    print(f"{'config':28s} {'x+logp/s':>10s} {'x/s':>10s} {'host µs':>8s} {'graph µs':>9s} {'compile s':>9s}")
    for r in results:
        if "error" in r:
            print(f"{r['config']:28s} ERROR {r['error']}")
            continue
        print(f"{r['config']:28s} {r['x+logp_per_s']:10.3g} {r['x_per_s']:10.3g} "
              f"{r['host_us_per_call_n1024']:8.1f} {r.get('graph_us_per_replay_n1024', float('nan')):9.1f} "
              f"{r['compile_s']:9.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"net": args.net, "sizes": sizes, "n": args.n, "torch": torch.__version__,
                       "device": torch.cuda.get_device_name(), "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
