"""``bihm-triton validate`` / :func:`bihm_triton.validate`: every row passes on a sound install, and a kernel broken
on purpose (a shifted offset, a perturbed log-prob, a wrong gradient) fails exactly its rows, with exit code 1."""

from __future__ import annotations

import json

import pytest
import torch

import bihm_triton as bt
from bihm_triton import ops, validation
from bihm_triton.cli import main

FIELDS = {"op", "check", "passed", "value", "tolerance", "shape", "dtype", "device", "backend"}


def _failed(rows):
    return {(r["op"], r["check"]) for r in rows if not r["passed"]}


def test_every_check_passes_on_the_cpu_kernels():
    rows = bt.validate("cpu", quick=True, backends=["cpu"], progress=False)
    assert {r["op"] for r in rows} == set(validation.OPS)
    assert all(FIELDS <= set(r) for r in rows)
    assert not _failed(rows), [r for r in rows if not r["passed"]]
    # the estimators are compared with exact enumeration, the layers with the float64 reference
    assert any("exact se" in r["check"] for r in rows) and any("float64" in r["check"] for r in rows)


def test_the_interpreted_triton_kernels_pass_the_same_checks():
    rows = bt.validate("cpu", quick=True, backends=["triton"], ops=["sbn_sample", "sbn_log_prob", "sample_p",
                                                                   "gibbs_sample", "batch_invariance"], progress=False)
    assert rows and not _failed(rows)
    assert {r["backend"] for r in rows} == {"triton"}


def test_a_shifted_offset_fails_exactly_the_sample_rows(monkeypatch):
    real = ops._cpu_sample
    monkeypatch.setattr(ops, "_cpu_sample", lambda h, w, b, g, seed, offset, dt: real(h, w, b, g, seed, offset + 4, dt))
    rows = bt.validate("cpu", backends=["cpu"], ops=["sbn_sample", "sbn_log_prob"], progress=False)
    failed = _failed(rows)
    want = {(r["op"], r["check"]) for r in rows if r["op"] == "sbn_sample" and r["check"].startswith("samples")}
    assert want and failed == want  # its log-probs still score its own samples correctly


def test_a_perturbed_log_prob_fails_exactly_its_row(monkeypatch):
    real = ops._cpu_log_prob
    monkeypatch.setattr(ops, "_cpu_log_prob", lambda *a: real(*a) + 1e-3)
    rows = bt.validate("cpu", backends=["cpu"], ops=["sbn_log_prob", "sbn_sample"], progress=False)
    assert _failed(rows) == {("sbn_log_prob", "log_prob vs float64")}  # a constant leaves the gradients right


def test_a_wrong_gradient_fails_exactly_the_gradient_rows(monkeypatch):
    eager = ops._cpu_log_prob_pass.eager  # the eager path of the CPU score op
    real = eager.backward
    monkeypatch.setattr(eager, "backward",
                        staticmethod(lambda ctx, *g: tuple(t * 1.01 if t is not None else None for t in real(ctx, *g))))
    rows = bt.validate("cpu", backends=["cpu"], ops=["sbn_log_prob"], quick=True, progress=False)
    assert _failed(rows) == {("sbn_log_prob", "grad weight vs float64"), ("sbn_log_prob", "grad bias vs float64")}


def test_the_command_prints_a_table_and_a_verdict_and_writes_json(tmp_path, capsys, monkeypatch):
    out = tmp_path / "rows.json"
    assert main(["validate", "--quick", "--backends", "cpu", "--ops", "sbn_sample,weight_norm", "--json", str(out),
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "op" in text.splitlines()[0] and "tolerance" in text.splitlines()[0]
    assert text.strip().splitlines()[-1].startswith("validate: all")
    rows = json.loads(out.read_text())
    assert rows and all(FIELDS <= set(r) for r in rows)
    real = ops._cpu_log_prob
    monkeypatch.setattr(ops, "_cpu_log_prob", lambda *a: real(*a) * 1.001)
    assert main(["validate", "--quick", "--backends", "cpu", "--ops", "sbn_log_prob", "--no-progress"]) == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "FAILED" in last and "sbn_log_prob (cpu)" in last


@pytest.mark.parametrize("argv, flag", [
    (["--ops", "sbn_sample,nonsense"], "--ops: unknown op 'nonsense'"),
    (["--device", "tpu"], "--device: device must be one of cpu, cuda"),
    (["--backends", "gpu"], "--backends: backend 'gpu' does not run on device 'cpu'"),
    (["--dtypes", "float64"], "--dtypes: dtype 'float64' is not one the kernels take"),
    (["--json", "/nonexistent-folder/rows.json"], "--json /nonexistent-folder/rows.json: no folder"),
])
def test_bad_arguments_are_one_line_and_exit_2_before_any_work(argv, flag, capsys, monkeypatch):
    monkeypatch.setattr(validation, "validate", lambda *a, **k: pytest.fail("ran checks on bad arguments"))
    assert main(["validate", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"bihm-triton validate: error: {flag}" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_cuda_without_a_gpu_is_refused(capsys):
    assert main(["validate", "--device", "cuda"]) == 2
    assert "no CUDA device is available" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no CUDA device"):
        bt.validate("cuda")
