"""Every command in the ```bash blocks of README.md and bench/README.md runs, at tiny sizes, so a documented
command cannot rot (issue 16, item 9: the CPU timing command of bench/README.md crashed in pytest's header
while CI ran the suites with ``-q`` only).

Each documented command is taken from the READMEs and run as written plus overrides that make it small
(later options win in argparse; ``-k`` selects one case of a suite; output files go to a temporary
folder). :data:`HOW` says for every command how; a command added to a README without an entry here
fails :func:`test_every_documented_command_is_covered`. Not run: installs, this suite itself, the
hour-long reproduction runs (docs/REPRODUCTION.md), and on a machine without a GPU the GPU-only parts
(which then must refuse clearly).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
import torch

from bihm_triton.cli import main
import helpers

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), ".."))
SHARED = helpers.SHARED_DATA
ON_GPU = os.environ.get("TRITON_INTERPRET", "0") in ("", "0")


def documented_commands(name: str) -> list[str]:
    """The commands of a Markdown file's ```bash blocks: comments stripped, ``a && b`` split, in order."""
    with open(os.path.join(ROOT, name)) as f:
        text = f.read()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        block = re.sub(r"\\\n\s*", " ", block)  # a line ending in a backslash goes on
        for line in block.splitlines():
            line = re.sub(r"(^|\s+)#.*$", "", line).strip()
            for cmd in (" ".join(c.split()) for c in line.split("&&")):
                if cmd and cmd not in out:
                    out.append(cmd)
    return out


README = documented_commands("README.md")
BENCH_README = documented_commands("bench/README.md")

# what each command is: "install" and "self" are not run; the rest are run by the tests below
HOW = {
    "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu": "install",
    "pip install -e .": "install",
    'pip install -e ".[test]"': "install",
    "pytest -q": "self",
    "bihm-triton demo": "cli",
    "bihm-triton validate --quick": "validate",
    "bihm-triton validate --device cuda --json rows.json": "validate",
    "bihm-triton train --data idx:/path/to/mnist --sizes 200,100,50 --out run": "cli",
    "bihm-triton train --data binarized_mnist --data-dir /path/to/shared/data --sizes 0.5x-6l-10 --out run2": "cli",
    "bihm-triton train --out run --resume": "cli",
    "bihm-triton train --out run --resume --epochs 500": "cli",
    "bihm-triton eval --checkpoint run --data idx:/path/to/mnist --k 1000 --figure mnist.png": "cli",
    "bihm-triton sample --checkpoint run --method gibbs --n 50 --out samples.png": "cli",
    "bihm-triton inpaint --checkpoint run --data idx:/path/to/mnist --mask bottom --out inpaint.png": "cli",
    "pytest bench/ --benchmark-disable -q": "bench",
    "pytest bench/ --benchmark-only --benchmark-json=bench/results/run.json": "bench",
    "BIHM_BENCH_THREADS=1 BIHM_BENCH_JSONL=bench/results/cpu-1t.jsonl pytest bench/ --benchmark-only -q": "bench",
    "BIHM_BENCH_THREADS=2 BIHM_BENCH_JSONL=bench/results/cpu-2t.jsonl pytest bench/ --benchmark-only -q": "bench",
    "python bench/report.py bench/results/cpu-1t.jsonl --markdown": "bench",
    "python bench/cpu_candidates.py": "bench",
    # more than one process: the GPU and multi-node commands need their hardware; the CPU example runs
    "torchrun --standalone --nproc-per-node 8 -m bihm_triton train --data binarized_mnist --data-dir /data "
    "--sizes 0.5x-12l-10 --out run": "hardware",
    "torchrun --standalone --nproc-per-node 8 -m bihm_triton eval --checkpoint run --k 10000 --z-samples 1000000":
        "hardware",
    "torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 --master-addr node0 --master-port 29500 -m bihm_triton "
    "train --data binarized_mnist --data-dir /data --out /shared/run": "hardware",
    "torchrun --nnodes 2 --node-rank 1 --nproc-per-node 8 --master-addr node0 --master-port 29500 -m bihm_triton "
    "train --data binarized_mnist --data-dir /data --out /shared/run": "hardware",
    "torchrun --standalone --nproc-per-node 2 -m bihm_triton train --device cpu --data digits --sizes 48,32,24,16 "
    "--lr 3e-3 --epochs 5 --out run-2cpu": "torchrun",
    "torchrun --standalone --nproc-per-node 2 -m bihm_triton eval --device cpu --checkpoint run-2cpu --k 200 "
    "--z-samples 20000": "torchrun",
    "torchrun --standalone --nproc-per-node 2 -m bihm_triton train --out run-2cpu --resume --epochs 8": "torchrun",
    "python -m bihm_triton train --out run-2cpu --resume --epochs 10": "torchrun",
    "pytest bench/ --benchmark-only --benchmark-json=bench/results/gpu.json": "bench",
    "bash bench/gpu.sh": "gpu.sh",
    "python bench/chain_sweep.py --json bench/results/sweep.json": "bench",
    "python bench/roofline.py --measure --json bench/results/gpu.json --save-ceilings bench/results/ceilings.json":
        "bench",
    "python bench/report.py bench/results/gpu.json --ceilings bench/results/ceilings.json": "bench",
    "python bench/compile_check.py": "bench",
    "python bench/compile_check.py --net all": "bench",
}


def test_every_documented_command_is_covered():
    missing = [c for c in README + BENCH_README if c not in HOW]
    assert not missing, f"README commands that no test runs (add them to HOW and run them): {missing}"
    stale = [c for c in HOW if c not in README + BENCH_README]
    assert not stale, f"HOW lists commands the READMEs no longer give: {stale}"


# ---------------------------------------------------------------------------------------- the CLI

TINY_CLI = {  # appended: argparse takes the last value of an option
    "demo": ["--epochs", "1", "--sizes", "8", "--eval-k", "3", "--z-samples", "10", "--n-inner", "1",
             "--gibbs-steps", "1", "--valid-k", "2"],
    "train": ["--epochs", "1", "--valid-k", "2"],
    "eval": ["--k", "3", "--z-samples", "10", "--n-inner", "1", "--gibbs-steps", "1"],
    "sample": ["--n", "3", "--steps", "1"],
    "inpaint": ["--n", "3", "--steps", "1"],
}


def _tiny_argv(cmd: str, mnist: str, shared: str) -> list[str]:
    argv = shlex.split(cmd.replace("/path/to/mnist", mnist).replace("/path/to/shared/data", shared))[1:]
    extra = list(TINY_CLI[argv[0]])
    if argv[0] == "train" and "--resume" in argv and "--epochs" in argv:
        extra = ["--epochs", "2"]  # "a new limit": one more epoch
    elif argv[0] == "train" and "--resume" in argv:
        extra = []
    return argv + extra + ["--no-progress"]


def test_the_readme_cli_commands(tmp_path, monkeypatch, capsys):
    """README's command-line section and its main job (``bihm-triton demo``), in order, in one folder."""
    import numpy as np

    from bihm_triton import data
    from test_cli import _write_idx

    rng = np.random.default_rng(0)
    mnist = tmp_path / "mnist"
    mnist.mkdir()
    _write_idx(mnist / "train-images-idx3-ubyte", rng.integers(0, 256, (60, 28, 28)))
    _write_idx(mnist / "t10k-images-idx3-ubyte", rng.integers(0, 256, (10, 28, 28)))
    real_load = data.load_dataset
    monkeypatch.setattr(data.sources, "load_dataset", lambda *a, **k: real_load(*a, **k)[:120])  # binarized MNIST: 120 rows
    monkeypatch.chdir(tmp_path)
    cli = [c for c in README if HOW[c] == "cli"]
    assert cli[0] == "bihm-triton demo"
    exe = shutil.which("bihm-triton") or os.path.join(os.path.dirname(sys.executable), "bihm-triton")
    if os.path.exists(exe):  # the installed entry point itself, once
        r = subprocess.run([exe, *_tiny_argv(cli[0], "", "")], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        assert os.path.exists("bihm-demo/demo.png")
    for cmd in cli[1:]:
        if "/path/to/shared/data" in cmd and not os.path.isdir(os.path.join(SHARED, "binarized_mnist")):
            continue  # needs the shared data (checked against the published checksums)
        argv = _tiny_argv(cmd, str(mnist), SHARED)
        assert main(argv) == 0, (cmd, capsys.readouterr().err)
    for f in ("run/best.safetensors", "mnist.png", "samples.png", "inpaint.png"):
        assert os.path.exists(f), f
    assert '"epoch": 2' in open("run/log.jsonl").read()  # --resume --epochs: one more epoch


def test_the_readme_validate_commands(tmp_path):
    """``bihm-triton validate --quick`` as a user runs it (the installed command, a fresh process: the interpreted
    Triton checks set up their interpreter themselves), and ``--device cuda``: on a GPU it validates, without
    one it refuses in one line with exit code 2."""
    exe = shutil.which("bihm-triton") or os.path.join(os.path.dirname(sys.executable), "bihm-triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    for cmd in (c for c in README if HOW[c] == "validate"):
        argv = [exe, *shlex.split(cmd)[1:], "--no-progress"]
        r = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        if "--device cuda" in cmd and not torch.cuda.is_available():
            assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no CUDA device" in r.stderr, r.stderr
            continue
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
        assert r.stdout.strip().splitlines()[-1].startswith("validate: all")
        assert "triton" in r.stdout and " cpu " in r.stdout  # both backends of a CPU machine


# ------------------------------------------------------------------------------------ the benchmarks

ONE_CASE = ["-k", "layer and torch and not compile", "-p", "no:cacheprovider"]


def _run(argv, tmp_path, **env):
    e = dict(os.environ, BIHM_BENCH_PROVIDERS="torch", **env)
    r = subprocess.run(argv, cwd=ROOT, env=e, capture_output=True, text=True, timeout=900)
    return r.returncode, r.stdout + r.stderr


def _redirect(cmd: str, tmp_path) -> list[str]:
    """The command with its result files in tmp_path and ``python``/``pytest`` from this interpreter (leading
    ``VAR=value`` words are left out: see :func:`_env_of`)."""
    argv = shlex.split(cmd.replace("bench/results/", f"{tmp_path}/"))
    while argv and re.match(r"^[A-Z_]+=", argv[0]):
        argv = argv[1:]
    if argv[0] == "pytest":
        return [sys.executable, "-m", "pytest", *argv[1:]]
    if argv[0] == "python":
        return [sys.executable, *argv[1:]]
    return argv


def test_the_readme_bench_commands(tmp_path):
    """The suites once (CI mode) and timed (header included: it crashed without -q), then the JSON through
    roofline.py and report.py; the GPU-only tools refuse clearly on a CPU."""
    timing = [c for c in README + BENCH_README if c.startswith("pytest bench/ --benchmark-only --benchmark-json=")]
    assert len(timing) == 2 and len({c.rsplit("/", 1)[0] for c in timing}) == 1  # the same but for the file name
    for cmd in ("pytest bench/ --benchmark-disable -q",
                "pytest bench/ --benchmark-only --benchmark-json=bench/results/gpu.json"):
        assert cmd in BENCH_README
        timed = "--benchmark-only" in cmd
        argv = _redirect(cmd, tmp_path) + ONE_CASE
        if timed:
            argv += ["--benchmark-min-rounds=1", "--benchmark-max-time=0.0001", "--benchmark-warmup=off"]
        rc, out = _run(argv, tmp_path, BIHM_BENCH_SIZE="tiny")
        assert rc == 0 and "INTERNALERROR" not in out, out[-3000:]
        if timed and "-q" not in cmd:
            assert "bihm bench: tier=tiny" in out and "compile_dynamic=False" in out  # the header
    results = tmp_path / "gpu.json"
    assert results.exists()
    roofline = next(c for c in BENCH_README if c.startswith("python bench/roofline.py"))
    argv = _redirect(roofline, tmp_path)
    if not torch.cuda.is_available():
        argv.remove("--measure")  # measures the GPU's ceilings: on a CPU, the nominal ones
    rc, out = _run(argv, tmp_path)
    assert rc == 0 and (tmp_path / "ceilings.json").exists(), out[-3000:]
    report = next(c for c in BENCH_README if c.startswith("python bench/report.py bench/results/gpu.json"))
    rc, out = _run(_redirect(report, tmp_path), tmp_path)
    assert rc == 0 and "layer.sample.fwd" in out, out[-3000:]
    sweep = next(c for c in BENCH_README if c.startswith("python bench/chain_sweep.py"))
    argv = _redirect(sweep, tmp_path)
    if torch.cuda.is_available() and ON_GPU:
        rc, out = _run(argv + ["--net", "small", "--n", "4096", "--configs", "", "--budget", "1"], tmp_path)
        assert rc == 0 and (tmp_path / "sweep.json").exists(), out[-3000:]
    else:
        rc, out = _run(argv, tmp_path)
        assert rc == 2 and "needs a CUDA GPU" in out, out[-3000:]


def _env_of(cmd: str, tmp_path) -> dict:
    """The ``VAR=value`` words in front of a command (result paths moved to tmp_path)."""
    env = {}
    for word in shlex.split(cmd.replace("bench/results/", f"{tmp_path}/")):
        m = re.match(r"^([A-Z_]+)=(.*)$", word)
        if not m:
            break
        env[m.group(1)] = m.group(2)
    return env


def test_the_readme_cpu_timing_and_candidates_commands(tmp_path):
    """bench/README's CPU timing commands (the cpu provider, 1 and 2 threads, one case each), the report of
    their JSONL, and the candidates comparison of the CPU backend at a tiny shape."""
    timing = [c for c in BENCH_README if c.startswith("BIHM_BENCH_THREADS=")]
    assert len(timing) == 2
    for cmd in timing:
        argv = _redirect(cmd, tmp_path) + ["-k", "layer and cpu and R1000", "-p", "no:cacheprovider",
                                           "--benchmark-min-rounds=1", "--benchmark-max-time=0.0001",
                                           "--benchmark-warmup=off"]
        env = dict(_env_of(cmd, tmp_path), BIHM_BENCH_PROVIDERS="cpu", BIHM_BENCH_SIZE="tiny")
        r = subprocess.run(argv, cwd=ROOT, env=dict(os.environ, **env), capture_output=True, text=True, timeout=900)
        assert r.returncode in (0, 5) and "INTERNALERROR" not in r.stdout + r.stderr, (r.stdout + r.stderr)[-3000:]
    jsonl = tmp_path / "cpu-1t.jsonl"
    # the tiny tier has no R=1000 layer: time one case of it instead, to have a result to report
    r = subprocess.run([sys.executable, "-m", "pytest", "bench/", "--benchmark-only", "-q", "-k", "layer and cpu",
                        "-p", "no:cacheprovider", "--benchmark-min-rounds=1", "--benchmark-max-time=0.0001",
                        "--benchmark-warmup=off"], cwd=ROOT, capture_output=True, text=True, timeout=900,
                       env=dict(os.environ, BIHM_BENCH_PROVIDERS="cpu", BIHM_BENCH_SIZE="tiny",
                                BIHM_BENCH_THREADS="1", BIHM_BENCH_JSONL=str(jsonl)))
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    report = next(c for c in BENCH_README if c.startswith("python bench/report.py bench/results/cpu-1t"))
    rc, out = _run(_redirect(report, tmp_path), tmp_path)
    assert rc == 0 and "| layer.sample.fwd |" in out and "cpu/s" in out, out[-3000:]
    rc, out = _run(_redirect("python bench/cpu_candidates.py", tmp_path) + ["--shapes", "8x16", "--candidates",
                                                                           "c,torch"], tmp_path)
    assert rc == 0 and '"same_samples_as_reference": true' in out, out[-3000:]


def test_the_readme_torchrun_cpu_example(tmp_path):
    """README's 2-process CPU example as written, at tiny sizes (fewer epochs and samples): train, eval, resume on
    2 processes and on 1."""
    cmds = [c for c in README if HOW.get(c) == "torchrun"]
    assert len(cmds) == 4
    tiny = {"train": ["--epochs", "1", "--valid-k", "2", "--batch-size", "200", "--no-progress"],
            "eval": ["--k", "3", "--z-samples", "40", "--n-inner", "1", "--no-progress"]}
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET", None)
    for i, cmd in enumerate(cmds):
        argv = shlex.split(cmd)
        if argv[0] == "torchrun":
            argv = [sys.executable, "-m", "torch.distributed.run", *argv[1:]]
        else:
            argv = [sys.executable, *argv[1:]]
        sub = "eval" if " eval " in cmd else "train"
        extra = tiny[sub] if "--resume" not in cmd else ["--epochs", str(i), "--no-progress"]
        r = subprocess.run(argv + extra, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, (cmd, (r.stdout + r.stderr)[-3000:])
    log = (tmp_path / "run-2cpu" / "log.jsonl").read_text().splitlines()
    assert len(log) == 3  # 1 epoch, then --resume to 2 on two processes, then to 3 on one


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton (Linux)")
def test_the_readme_compile_check(tmp_path):
    """``python bench/compile_check.py`` (no GPU needed) on a tiny stand-in network: every kernel kind
    compiles for sm_90 and goes through ptxas (with Triton 3.9 the bundled ptxas could not read the PTX)."""
    for cmd in ("python bench/compile_check.py", "python bench/compile_check.py --net all"):
        assert cmd in README + BENCH_README
    rc, out = _run(_redirect("python bench/compile_check.py --net all", tmp_path) + ["--net", "tiny"], tmp_path)
    assert rc == 0 and "FAILED" not in out, out[-3000:]
    assert out.count("registers") == 10 and "wgmma" in out, out[-3000:]


def test_the_gpu_script_command_is_checked():
    """``bash bench/gpu.sh`` runs (dry, on a CPU) in tests/test_gpu_script.py."""
    assert "bash bench/gpu.sh" in README and "bash bench/gpu.sh" in BENCH_README
    assert os.path.exists(os.path.join(os.path.dirname(__file__), "test_gpu_script.py"))
