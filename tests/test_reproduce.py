"""Smoke runs of the paper's experiments (bench/reproduce.py) on the shared data: every experiment
runs end to end at toy budgets and writes the JSON, figure and report its documentation promises.
The numbers of such runs mean nothing; docs/REPRODUCTION.md holds the real ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.normpath(os.path.join(ROOT, "..", "shared", "data"))
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not os.path.isdir(SHARED), reason=f"no shared data folder at {SHARED}")]
TOY = ["--minutes", "0", "--train-points", "300", "--test-points", "12", "--k", "5", "--z-samples", "200",
       "--n-inner", "2", "--valid-k", "3", "--threads", "1", "--device", "cpu"]


def _run(tmp_path, *args):
    env = dict(os.environ, BIHM_DATA_DIR=SHARED)
    env.pop("TRITON_INTERPRET", None)  # the CPU runs the reference path; no kernels involved
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "reproduce.py"), *args, "--out",
                          str(tmp_path / "out"), "--runs", str(tmp_path / "runs")],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return out.stdout


def test_every_experiment_writes_its_json_figure_and_report(tmp_path):
    _run(tmp_path, "ess", *TOY, "--sizes", "12,6", "--k-grid", "1", "10", "30")
    _run(tmp_path, "depth", *TOY, "--depths", "2")
    _run(tmp_path, "uci", *TOY, "--sets", "dna")
    _run(tmp_path, "headline", *TOY)
    out = tmp_path / "out"
    for name in ("ess", "depth", "uci", "headline"):
        result = json.loads((out / f"{name}.json").read_text())
        assert result["command"].startswith("python bench/reproduce.py " + name)
    assert (out / "ess.png").stat().st_size > 0 and (out / "depth.png").stat().st_size > 0
    ess = json.loads((out / "ess.json").read_text())
    assert [r["k"] for r in ess["models"]["bihm"]["rows"]] == [1, 10, 30] and ess["test_points"] == 12
    for r in ess["models"]["bihm"]["rows"] + ess["models"]["rws"]["rows"]:
        assert 1.0 <= r["ess"] <= r["k"]  # ESS lies in [1, K]
    report = _run(tmp_path, "report")
    for title in ("Sample efficiency", "Depth", "UCI", "headline"):
        assert title in report
    assert "Command: `python bench/reproduce.py headline" in report
