"""A plain, non-editable install carries everything the package needs: the CPU backend's C source
(package data) and every subpackage, so the CPU kernels build and run from an installed copy."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_a_built_wheel_installs_and_runs_the_cpu_backend(tmp_path):
    wheels = tmp_path / "wheels"
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                          str(wheels), ROOT], capture_output=True, text=True, timeout=600)
    if out.returncode != 0 and "No module named" in out.stderr:
        pytest.skip(f"no build backend in this environment: {out.stderr.strip().splitlines()[-1]}")
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = wheels.glob("bihm_triton-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("bihm_triton/kernels/cpu/bihm_cpu.c", "bihm_triton/kernels/cpu/__init__.py",
              "bihm_triton/kernels/chain.py", "bihm_triton/reference/philox.py", "bihm_triton/model.py"):
        assert f in names, f"{f} is missing from the wheel"
    shipped = sorted(os.path.basename(f)[: -len(".safetensors")] for f in
                     glob.glob(os.path.join(ROOT, "bihm_triton", "pretrained", "*.safetensors")))
    assert "bmnist-12l" in shipped, "the checkout ships no pretrained model (bihm_triton/pretrained/)"
    for name in shipped:  # the pretrained models are package data
        assert f"bihm_triton/pretrained/{name}.safetensors" in names, f"the pretrained model {name} is not in the wheel"
    site = tmp_path / "site"
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    code = (
        "import torch, bihm_triton, bihm_triton.kernels.cpu as cpu\n"
        "from bihm_triton import ops, reference as ref\n"
        f"assert bihm_triton.__file__.startswith({str(site)!r}), bihm_triton.__file__\n"
        "assert cpu.available(), cpu.unavailable_reason()\n"
        "assert torch.equal(cpu.uniform(7, 2**41 + 5, 9, 13), ref.philox_uniform(7, 2**41 + 5, 9, 13))\n"
        f"assert sorted(bihm_triton.list_pretrained()) == {shipped!r}, bihm_triton.list_pretrained()\n"
        f"for name in {shipped!r}: bihm_triton.pretrained(name).sample_p(2, seed=0)\n"
        "print(ops.resolve_backend('auto', torch.device('cpu'), torch.float32))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(site), BIHM_TRITON_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("TRITON_INTERPRET", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(tmp_path), env=env,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "cpu"
    assert any((tmp_path / "cache" / "cpu").glob("bihm_cpu_*.so")), "the build was not cached in BIHM_TRITON_CACHE_DIR"
