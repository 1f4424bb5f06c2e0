"""Checks of the benchmark tooling itself (no timing): the reference primitives the providers share,
the roofline's work model against SPEC §7's numbers, the ceiling kernels (under the interpreter on
a CPU), and the report/roofline command lines on a synthetic result file.

These tests do not use the ``benchmark`` fixture, so ``--benchmark-only`` skips them; they run in
the CI mode (``--benchmark-disable``) and in a plain ``pytest bench/``.
"""

from __future__ import annotations

import json

import pytest
import torch

import benchlib as bl
import report
import roofline

MNIST = bl.MNIST_SIZES


def test_ref_sample_is_the_reference_layer():
    """The guard's sample primitive is ``ref.sbn_sample`` minus its argument checks."""
    g = torch.Generator().manual_seed(0)
    h = (torch.rand(37, 9, generator=g) < 0.5).to(torch.uint8)
    w, b = torch.randn(5, 9, generator=g), torch.randn(5, generator=g)
    seed = torch.tensor(99)
    x, lp = bl.ref_sample(h, w, b, seed, 12, torch.uint8)
    x_ref, lp_ref = bl.ref.sbn_sample(h, w, b, seed=seed, offset=12, out_dtype=torch.uint8)
    assert torch.equal(x, x_ref)
    torch.testing.assert_close(lp, lp_ref)
    torch.testing.assert_close(bl.ref_score(h, x, w, b), bl.ref.sbn_log_prob(h, x, w, b))


def test_dyadic_parameters_are_exact_in_tf32():
    sd = bl.dyadic_state_dict(MNIST)
    for name, p in sd.items():
        assert torch.equal(p * 256, torch.round(p * 256)), name
        assert p.abs().max() < 4, name


def test_work_model_matches_spec_section_7():
    # the paper's MNIST network: 331,050 multiply-adds and 1,654 sampled units per ancestral sample
    w = roofline.work_for("ancestral", dict(sizes=MNIST, n=1))
    assert w.flops == 2 * 331_050
    assert w.sampled == 1_654
    lay = roofline.work_for("layer", {"R": 10, "N": 7, "M": 3, "op": "sample", "pass": "fwd"})
    assert lay.flops == 2 * 10 * 7 * 3 and lay.sampled == 30 and lay.scored == 0
    assert lay.bytes == 10 * (7 + 3) + 4 * 10 + 4 * (3 * 7 + 3)
    bwd = roofline.work_for("layer", {"R": 10, "N": 7, "M": 3, "op": "score", "pass": "fwd_bwd"})
    assert bwd.flops == 4 * 10 * 7 * 3 and bwd.scored == 60
    # SPEC §7: "a few times 10^8 ancestral samples per second" on an H200
    c = roofline.nominal_ceilings()
    big = roofline.work_for("ancestral", dict(sizes=MNIST, n=2**17))
    rate = 2**17 / roofline.floor(big, c).seconds
    assert 1e8 < rate < 2e9
    # every case kind has a work model
    assert roofline.work_for("train_step", dict(sizes=MNIST, batch=100, k=10)).flops > 0
    assert roofline.work_for("gibbs_sweep", dict(sizes=[20, 9, 5, 3], chains=8, k=10)).sampled > 0
    ll = roofline.work_for("loglik", dict(sizes=MNIST, batch=2, k=3))
    assert ll.flops == 2 * 2 * 2 * 3 * 331_050 and ll.sampled == 6 * (1_654 - 784)


def test_ceiling_kernels_run():
    """The Triton ceiling kernels (interpreter on a CPU; quick sizes on a GPU) and the other probes."""
    pytest.importorskip("triton")
    c = roofline.measure_ceilings(bl.DEVICE, quick=True)
    for v in (c.hbm_bytes_per_s, c.sampled_per_s, c.scored_per_s, c.uniforms_per_s, *c.matmul_flop_per_s.values()):
        assert v > 0
    assert set(c.matmul_flop_per_s) == {"ieee", "tf32", "bf16"}
    assert roofline.ceilings_from_dict(json.loads(json.dumps(roofline.asdict(c)))).name == c.name


def _fake_result(provider, t, device="NVIDIA H200"):
    params = {"R": 65536, "N": 784, "M": 300, "op": "sample", "pass": "fwd"}
    return {"name": f"test_layer[{provider}]", "fullname": f"bench/test_bench_layer.py::test_layer[{provider}]",
            "stats": {"median": t},
            "extra_info": {"provider": provider, "case": "layer", "name": "layer.sample.fwd",
                           "shape": "R=65536,N=784,M=300", "case_id": "layer.sample.fwd[R=65536,N=784,M=300]",
                           "params": params, "items": 65536, "unit": "rows", "median_s": t, "items_per_s": 65536 / t,
                           "device": device, "matmul_precision": "high", "tier": "full"}}


def test_report_and_roofline_command_lines(tmp_path, capsys):
    path = tmp_path / "results.json"
    benches = [_fake_result("torch", 4e-3), _fake_result("torch_compile", 2e-3), _fake_result("torch_compile_ro", 1e-3),
               _fake_result("triton", 1.25e-4)]
    path.write_text(json.dumps({"machine_info": {}, "benchmarks": benches}))
    jsonl = tmp_path / "results.jsonl"
    jsonl.write_text(json.dumps(benches[3]["extra_info"] | {"median_s": 1e-4, "items_per_s": 65536 / 1e-4}) + "\n")

    assert report.main([str(path)]) == 0
    out = capsys.readouterr().out
    row = [l for l in out.splitlines() if l.startswith("layer.sample.fwd")]
    assert len(row) == 1
    assert "32.00x" in row[0] and "8.00x" in row[0]  # triton/torch, triton/(best compiled mode)
    assert "% of" in row[0] and "nominal" in out

    # the JSONL entry (later on the command line) replaces the JSON one
    ceil = tmp_path / "ceilings.json"
    assert roofline.main(["--json", str(path), "--json", str(jsonl), "--save-ceilings", str(ceil)]) == 0
    out = capsys.readouterr().out
    assert "100 µs" in out and "flops" in out
    assert report.main([str(path), str(jsonl), "--ceilings", str(ceil), "--markdown"]) == 0
    out = capsys.readouterr().out
    assert out.count("| layer.sample.fwd |") == 1 and "10.00x" in out

    # CPU results get no fraction of a GPU floor; the cpu provider (ours on the CPU) gets its ratios
    cpu = tmp_path / "cpu.json"
    cpu.write_text(json.dumps({"benchmarks": [_fake_result("torch", 1.0, device="cpu: x (2 cores)"),
                                              _fake_result("torch_compile", 0.5, device="cpu: x (2 cores)"),
                                              _fake_result("cpu", 0.25, device="cpu: x (2 cores)")]}))
    assert report.main([str(cpu)]) == 0
    out = capsys.readouterr().out
    assert "% of" not in out and "cpu/torch" in out and "cpu/compile" in out and "triton/torch" not in out
    row = [l for l in out.splitlines() if l.startswith("layer.sample.fwd")][0]
    assert "4.00x" in row and "2.00x" in row
