"""Compile the fused kernels for a GPU architecture on a machine without a GPU, and report what the
compiler made of them: registers and spills (``ptxas -v``), shared memory, and which matrix
instructions the dots became (``wgmma`` on Hopper, ``mma.sync`` otherwise).

Triton's wheel ships the whole NVIDIA toolchain it needs (LLVM, ``ptxas``), so a CPU-only machine
can compile for ``sm_90a`` and catch compile errors and register spills before a GPU session.
It cannot say how fast anything runs.

Usage::

    python bench/compile_check.py [--arch 90] [--net mnist|small|all|tiny] [--block-r 64] [--warps 4]
                                  [--stages 2] [--terms 2] [--dump DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)

NETS = {
    "mnist": [784, 300, 200, 100, 75, 50, 35, 30, 25, 20, 15, 10, 10],
    "small": [784, 200, 100, 50],
}
#: a stand-in for the tests (every kernel kind, quickly): not part of ``--net all``
TINY = {"tiny": [24, 8, 4, 2]}


def _ptxas(arch) -> str:
    """The ptxas Triton itself uses for ``arch``: since Triton 3.9 the bundled ``bin/ptxas`` (CUDA 12.9)
    cannot read the PTX it emits (.version 9.x) and sm_90+ goes to ``ptxas-blackwell`` (CUDA 13)."""
    import triton

    try:
        from triton.backends.nvidia import compiler as nv

        try:
            return nv.get_ptxas(int(str(arch).rstrip("a"))).path
        except TypeError:  # older Triton: get_ptxas() takes no architecture
            return nv.get_ptxas().path
    except (ImportError, AttributeError):
        return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


def _ptxas_stats(ptx: str, arch: str) -> str:
    ptxas = _ptxas(arch)
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        out = subprocess.run([ptxas, f"-arch=sm_{arch}", "-v", src, "-o", os.path.join(d, "k.cubin")],
                             capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{os.path.basename(ptxas)} failed: " + " ".join(
            l.strip() for l in (out.stdout + out.stderr).splitlines() if l.strip())[:500])
    return " ".join(l.strip() for l in (out.stdout + out.stderr).splitlines()
                    if "Used" in l or "spill" in l or "error" in l.lower())


def aligned_pointers(fn, signature: dict) -> dict:
    """The specialization a launch gives 16-byte-aligned pointer arguments (``tt.divisibility = 16``);
    without it the compiler cannot vectorize loads and the check would report a different kernel."""
    names = [p.name for p in fn.params]
    return {(names.index(k),): [["tt.divisibility", 16]] for k, v in signature.items() if v.startswith("*")}


def compile_chain(sizes, *, arch: int, block_r: int, warps: int, stages: int, terms: int, store_hidden: bool,
                  want_lp: bool, dump: str | None = None, maxnreg: int | None = None, **plan_kw) -> str:
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from bihm_triton.kernels.chain import chain_kernel, make_plan

    widths = sizes[::-1]
    plan = make_plan([0, *widths[:-1]], widths, **plan_kw)
    fn = chain_kernel(plan, store_hidden)
    sig = {"w_ptr": "*bf16", "b_ptr": "*fp32", "in_ptr": "*fp32", "final_ptr": "*fp32",
           "hid_ptr": "*fp32" if store_hidden else "*u8", "lp_ptr": "*fp32", "seed_ptr": "*i64",
           "seed": "i64", "offset": "i64", "group_start": "i64", "R": "i32", "row0": "i64",
           "hid_rows": "i64", "hid_row0": "i64", "in_repeat": "i32"}
    const = {"SEED_FROM_PTR": True, "TERMS": terms, "OP": tl.bfloat16, "WANT_LP": want_lp, "BLOCK_R": block_r}
    sig.update({k: "constexpr" for k in const})
    k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=const, attrs=aligned_pointers(fn, sig)),
                       target=GPUTarget("cuda", arch, 32), options={"num_warps": warps, "num_stages": stages,
                                                                       **({"maxnreg": maxnreg} if maxnreg else {})})
    ptx, ttgir = k.asm["ptx"], k.asm["ttgir"]
    if dump:
        os.makedirs(dump, exist_ok=True)
        tag = f"chain_{'-'.join(map(str, sizes))}_r{block_r}_w{warps}_s{stages}_t{terms}_h{int(store_hidden)}"
        for ext, text in (("ptx", ptx), ("ttgir", ttgir)):
            with open(os.path.join(dump, f"{tag}.{ext}"), "w") as f:
                f.write(text)
    mma = "wgmma" if "wgmma" in ptx else ("mma.sync" if "mma.sync" in ptx else "no mma")
    n_mma = len(re.findall(r"\b(wgmma\.mma_async|mma\.sync)", ptx))
    return (f"shared {k.metadata.shared} B, {mma} ({n_mma} instructions), "
            f"{_ptxas_stats(ptx, str(arch) + ('a' if arch == 90 else ''))}")


def compile_passes(sizes, *, arch: int, block_r: int, warps: int, stages: int, terms: int, **plan_kw) -> dict:
    """Compile the fused log-weight forward and the two backward kernels of ``sizes``; a line per kernel."""
    import triton.language as tl

    from bihm_triton.kernels.codegen import load_generated
    from bihm_triton.kernels.passes import (grad_logits_source, log_weights_source, make_pass_plan,
                                            weight_grads_source)

    plan = make_pass_plan(sizes, reg_max=plan_kw.get("reg_max", 64))
    common = {"w_ptr": "*bf16", "b_ptr": "*fp32", "in_ptr": "*fp32", "st_ptr": "*u8", "seed_ptr": "*i64",
              "seed": "i64", "offset": "i64", "group_start": "i64", "R": "i32", "row0": "i64",
              "st_rows": "i64", "in_repeat": "i32", "in_row0": "i64"}
    const = {"SEED_FROM_PTR": True, "TERMS": terms, "OP": tl.bfloat16, "WANT_LP": True, "BLOCK_R": block_r}
    wsrc, _ = weight_grads_source(plan)
    kernels = {
        "log_weights": (load_generated(log_weights_source(plan), "logw").fused_log_weights,
                        {**common, "lq_ptr": "*fp32", "lp_ptr": "*fp32"}, const),
        "grad_logits": (load_generated(grad_logits_source(plan), "glogits").fused_grad_logits,
                        {**common, "gq_ptr": "*fp32", "gp_ptr": "*fp32", "ga_ptr": "*fp32"}, const),
        "weight_grads": (load_generated(wsrc, "wgrads").fused_weight_grads,
                         {"ga_ptr": "*fp32", "in_ptr": "*fp32", "st_ptr": "*u8", "grad_ptr": "*fp32", "st_rows": "i64",
                          "R": "i32", "row0": "i64", "in_repeat": "i32", "in_row0": "i64"}, {"PRECISION": "tf32"}),
    }
    out = {}
    for name, (fn, sig, cst) in kernels.items():
        order = [p.name for p in fn.params]
        sig = {k: sig.get(k, "constexpr") for k in order}
        cst = {k: v for k, v in cst.items() if k in order}
        out[name] = _compile(fn, sig, cst, arch, {"num_warps": warps, "num_stages": stages})[2]
    return out


def _compile(fn, sig: dict, const: dict, arch: int, options: dict):
    """Compile ``fn`` for sm_<arch> as a launch would (aligned pointers); returns (kernel, ptx, a line:
    shared memory, mma kind, ptxas registers and spills)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = {**sig, **{k: "constexpr" for k in const}}
    k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=const, attrs=aligned_pointers(fn, sig)),
                       target=GPUTarget("cuda", arch, 32), options=options)
    ptx = k.asm["ptx"]
    mma = "wgmma" if "wgmma" in ptx else ("mma.sync" if "mma.sync" in ptx else "no mma")
    return k, ptx, f"shared {k.metadata.shared} B, {mma}, {_ptxas_stats(ptx, str(arch) + ('a' if arch == 90 else ''))}"


def _gibbs_plans(sizes, l: int):
    """The pass plan of ``sizes`` and the layer plans of the Gibbs update of h_l (as the Triton engine's gibbs_hidden)."""
    from bihm_triton.kernels.passes import make_pass_plan

    plan, L = make_pass_plan(sizes, reg_max=64), len(sizes) - 1
    top = l == L
    return plan, {"q": plan.q[l - 1], "p": plan.p[L] if top else plan.p[l], "down": plan.p[l - 1],
                  "up": None if top else plan.q[l]}


def compile_gibbs(sizes, l: int, *, k: int = 10, arch: int = 90, warps: int = 4, terms: int = 2) -> str:
    """Compile the fused Gibbs update of hidden layer l of ``sizes`` with the launcher's constexprs."""
    import triton.language as tl

    from bihm_triton.kernels.gibbs import _gibbs_hidden_kernel, gibbs_hidden_meta

    plan, plans = _gibbs_plans(sizes, l)
    top = l == len(sizes) - 1
    meta = gibbs_hidden_meta(plans, (sizes[l - 1], sizes[l], 0 if top else sizes[l + 1]), top, k, plan.plane)
    sig = {"w_ptr": "*bf16", "b_ptr": "*fp32", "lo_ptr": "*fp32", "hi_ptr": "*fp32", "cur_ptr": "*fp32",
           "new_ptr": "*fp32", "scratch_ptr": "*u8", "seed_ptr": "*i64", "seed": "i64", "off_p": "i64",
           "off_q": "i64", "off_c": "i64", "off_s": "i64", "R": "i32"}
    const = dict(meta, SEED_FROM_PTR=True, TERMS=terms, OP=tl.bfloat16)
    return _compile(_gibbs_hidden_kernel, sig, const, arch, {"num_warps": warps})[2]  # as launched: default stages


def compile_gibbs_x(sizes, *, k: int = 10, arch: int = 90, warps: int = 4, terms: int = 2,
                    block_r: int = 64) -> dict:
    """Compile the two kernels of the fused Gibbs update of x with the launcher's constexprs."""
    import triton.language as tl

    from bihm_triton.kernels.gibbs import _gibbs_x_candidates_kernel, _gibbs_x_choose_kernel, gibbs_x_meta

    plan, _ = _gibbs_plans(sizes, 1)
    cand_meta, choose_meta = gibbs_x_meta({"p": plan.p[0], "q": plan.q[0]}, (sizes[0], sizes[1]), k, plan.plane,
                                          block_r)
    kernels = {
        "candidates": (_gibbs_x_candidates_kernel,
                       {"w_ptr": "*bf16", "b_ptr": "*fp32", "h1_ptr": "*fp32", "cur_ptr": "*fp32", "mask_ptr": "*u8",
                        "obs_ptr": "*fp32", "cand_ptr": "*u8", "half_ptr": "*fp32", "seed_ptr": "*i64", "seed": "i64",
                        "off_p": "i64", "R": "i32", "RK": "i32", "K": "i32"},
                       dict(cand_meta, HAS_MASK=False, EXACT=True, SEED_FROM_PTR=True, TERMS=terms, OP=tl.bfloat16)),
        "choose": (_gibbs_x_choose_kernel,
                   {"cand_ptr": "*u8", "half_ptr": "*fp32", "lp_ptr": "*fp32", "lq_ptr": "*fp32",
                    "cur_s_ptr": "*fp32", "new_ptr": "*fp32", "new_s_ptr": "*fp32", "seed_ptr": "*i64",
                    "seed": "i64", "off_s": "i64", "R": "i32", "K": "i32", "n_inner": "i32", "log_n_inner": "fp32"},
                   dict(choose_meta, EXACT=True, SEED_FROM_PTR=True)),
    }
    return {name: _compile(fn, sig, const, arch, {"num_warps": warps})[2]  # as launched
            for name, (fn, sig, const) in kernels.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--net", default="all", choices=[*NETS, *TINY, "all"])
    ap.add_argument("--block-r", type=int, default=64)
    ap.add_argument("--warps", type=int, default=4)
    ap.add_argument("--stages", type=int, default=2)
    ap.add_argument("--terms", type=int, default=2)
    ap.add_argument("--dump", help="write the PTX and TTGIR here")
    args = ap.parse_args(argv)
    import triton

    print(f"triton {triton.__version__}, sm_{args.arch}")
    nets = NETS if args.net == "all" else {args.net: {**NETS, **TINY}[args.net]}
    status = 0
    for name, sizes in nets.items():
        try:
            for kname, info in compile_passes(sizes, arch=args.arch, block_r=args.block_r, warps=args.warps,
                                              stages=args.stages, terms=args.terms).items():
                print(f"{name} passes.{kname}: {info}")
        except Exception as e:  # noqa: BLE001
            status = 1
            print(f"{name} passes: FAILED {type(e).__name__}: {str(e)[:2000]}")
        for store_hidden, want_lp in ((False, False), (False, True), (True, True)):
            tag = f"{name} block_r={args.block_r} warps={args.warps} stages={args.stages} terms={args.terms} " \
                  f"hidden={store_hidden} log_p={want_lp}"
            try:
                info = compile_chain(sizes, arch=args.arch, block_r=args.block_r, warps=args.warps,
                                     stages=args.stages, terms=args.terms, store_hidden=store_hidden,
                                     want_lp=want_lp, dump=args.dump)
                print(f"{tag}: {info}")
            except Exception as e:  # noqa: BLE001 - report every failure, keep going
                status = 1
                print(f"{tag}: FAILED {type(e).__name__}: {str(e)[:2000]}")
        for l in (1, len(sizes) - 1):
            try:
                info = compile_gibbs(sizes, l, arch=args.arch, warps=args.warps, terms=args.terms)
                print(f"{name} gibbs hidden l={l} k=10: {info}")
            except Exception as e:  # noqa: BLE001
                status = 1
                print(f"{name} gibbs hidden l={l}: FAILED {type(e).__name__}: {str(e)[:2000]}")
        try:
            for kname, info in compile_gibbs_x(sizes, arch=args.arch, warps=args.warps, terms=args.terms).items():
                print(f"{name} gibbs x.{kname} k=10: {info}")
        except Exception as e:  # noqa: BLE001
            status = 1
            print(f"{name} gibbs x: FAILED {type(e).__name__}: {str(e)[:2000]}")
    return status


if __name__ == "__main__":
    sys.exit(main())

