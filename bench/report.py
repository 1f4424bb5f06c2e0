"""The compact benchmark table: samples per second of each provider, the speed-ups, the fraction of the floor.

Reads pytest-benchmark JSON files (``--benchmark-json``) and/or the suites' JSONL logs
(``BIHM_BENCH_JSONL``) and prints one row per case::

    case | shape | torch | torch_compile | torch_compile_ro | triton | cpu (samples/s) | ours/torch |
    ours/compile | floor

"ours" is each of this library's providers that has results (``triton`` on a GPU, ``cpu`` on a
CPU): ``triton/torch``, ``triton/compile``, ``cpu/torch``, ``cpu/compile``. ``…/compile`` is against
the faster of the two compiled modes (the stronger baseline a user would pick).
"samples" is what each case counts (rows of a layer, ancestral samples, importance samples of a
training step, Gibbs chains swept); "floor" is the triton provider's fraction of the roofline
floor (:mod:`roofline`; GPU results only), with the ceilings from ``--ceilings`` (saved by
``roofline.py --measure --save-ceilings``) or else nominal H200 figures (marked "nominal").

Usage::

    python bench/report.py bench/results/*.json [--ceilings ceilings.json] [--markdown]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import roofline  # noqa: E402

PROVIDERS = roofline.PROVIDERS


def _rate(rows, provider):
    p = rows["providers"].get(provider)
    if not p or not p.get("median_s"):
        return None
    return p.get("items_per_s")


def _ratio(a, b):
    return f"{a / b:.2f}x" if a and b else "—"


OURS = ("triton", "cpu")


def table(rows: list[dict], *, nominal: bool) -> list[list[str]]:
    shown = [p for p in PROVIDERS if any(_rate(r, p) for r in rows)] or list(PROVIDERS)
    ours = [p for p in OURS if p in shown]
    out = [["case", "shape", "unit", *[f"{p}/s" for p in shown], *[f"{o}/{b}" for o in ours for b in ("torch", "compile")],
            "floor (triton)" + (" nominal" if nominal else "")]]
    for r in rows:
        rates = {p: _rate(r, p) for p in PROVIDERS}
        compiled = max((rates[p] for p in ("torch_compile", "torch_compile_ro") if rates[p]), default=None)
        tri = r["providers"].get("triton") or {}
        frac = tri.get("fraction_of_floor")
        fl = r["floor"]
        out.append([
            r["name"], r["shape"], r.get("unit") or "",
            *[roofline.si(rates[p]) for p in shown],
            *[x for o in ours for x in (_ratio(rates[o], rates["torch"]), _ratio(rates[o], compiled))],
            f"{frac:.1%} of {roofline.seconds(fl['seconds'])} ({fl['binding']})" if frac is not None else "—",
        ])
    return out


def render(lines: list[list[str]], markdown: bool = False) -> str:
    if markdown:
        md = ["| " + " | ".join(lines[0]) + " |", "|" + "|".join("---" for _ in lines[0]) + "|"]
        md += ["| " + " | ".join(l) + " |" for l in lines[1:]]
        return "\n".join(md)
    widths = [max(len(l[i]) for l in lines) for i in range(len(lines[0]))]
    text = []
    for i, l in enumerate(lines):
        text.append(" | ".join(c.ljust(w) for c, w in zip(l, widths)).rstrip())
        if i == 0:
            text.append("-+-".join("-" * w for w in widths))
    return "\n".join(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", help="pytest-benchmark JSON and/or JSONL files")
    ap.add_argument("--ceilings", help="ceilings JSON from roofline.py --save-ceilings (default: nominal H200)")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = ap.parse_args(argv)
    paths = [p for p in args.results if os.path.exists(p)]
    missing = [p for p in args.results if not os.path.exists(p)]
    for p in missing:
        print(f"(no such file: {p})", file=sys.stderr)
    entries = roofline.load_results(paths)
    if not entries:
        print("no benchmark results found in " + ", ".join(args.results))
        return 1
    ceilings = roofline.get_ceilings(path=args.ceilings)
    rows = roofline.analyse(entries, ceilings)
    devices = sorted({e.get("device", "?") for e in entries})
    tiers = sorted({e.get("tier", "?") for e in entries})
    precisions = sorted({e.get("matmul_precision", "?") for e in entries})
    print(f"device: {', '.join(devices)} | tier: {', '.join(tiers)} | matmul precision: {', '.join(precisions)} | "
          f"{len(entries)} results")
    if any(roofline.is_gpu_result(e) for e in entries):
        print(roofline.describe_ceilings(ceilings))
    print(render(table(rows, nominal=not ceilings.measured), args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
