"""bench/gpu.sh leaves exactly three files in $OUT (issue 16, item 13): the device runner brings back at
most 8 files, 16 MiB each, at most two folders deep, and the script used to write about 20. Checked here
with its dry run on the CPU (each step's command printed instead of run), also when a signal stops it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import pytest

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), ".."))
SCRIPT = os.path.join(ROOT, "bench", "gpu.sh")
THE_SET = ["gpu.log", "results.tar.gz", "table.md"]
STEP_LOGS = ["gpu_tests.log", "chain_sweep.log", "bench_ancestral.log", "bench_train_loglik_gibbs.log",
             "bench_layer.log", "roofline_measure.log"]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("tar") is None or shutil.which("timeout")
                                is None, reason="needs bash, tar and timeout")


def _env(tmp_path, **extra):
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    out.mkdir()
    tmp.mkdir()
    env = dict(os.environ, OUT=str(out), TMPDIR=str(tmp), BIHM_GPU_DRY_RUN="1", PYTHON=sys.executable, **extra)
    return env, out, tmp


def _members(path):
    with tarfile.open(path) as tar:
        return sorted(os.path.normpath(m.name) for m in tar.getmembers() if m.isfile())


def test_a_dry_run_leaves_the_table_the_log_and_one_archive(tmp_path):
    env, out, tmp = _env(tmp_path)
    r = subprocess.run(["bash", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert sorted(os.listdir(out)) == THE_SET
    members = _members(out / "results.tar.gz")
    assert set(members) >= {"versions.txt", "roofline.txt", *STEP_LOGS}, members
    assert all("/" not in m for m in members)
    log = (out / "gpu.log").read_text()
    assert "dry run: " in log and "START bench_layer" in log and "holds table.md, gpu.log, results.tar.gz" in log
    assert (out / "table.md").read_text().startswith("no benchmark results")
    assert os.listdir(tmp) == []  # the working folder is gone


def test_a_run_stopped_by_a_signal_still_leaves_the_set(tmp_path):
    """A time limit (SIGTERM) in the middle of a step: the trap archives what was done."""
    env, out, tmp = _env(tmp_path, BIHM_GPU_DRY_STEP_S="3", BIHM_GPU_SKIP_TESTS="1")
    p = subprocess.Popen(["bash", SCRIPT], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while "START bench_ancestral" not in ((out / "gpu.log").read_text() if (out / "gpu.log").exists() else ""):
            assert time.time() < deadline and p.poll() is None, "the dry run did not reach bench_ancestral"
            time.sleep(0.05)
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=60) == 143
    finally:
        if p.poll() is None:
            p.kill()
    assert sorted(os.listdir(out)) == THE_SET
    members = _members(out / "results.tar.gz")
    assert {"versions.txt", "chain_sweep.log"} <= set(members) and "bench_layer.log" not in members
    assert "stopped by a signal" in (out / "gpu.log").read_text()
    assert os.listdir(tmp) == []
