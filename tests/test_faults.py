"""Four faults a new user met (issue 29), each tried as the user tried it: invalid Gibbs starting states,
an epoch whose last update diverged, a corrupt cached CPU library, a learning rate that overflows Adam;
and two smaller ones: a ``$CC`` that does not exist, half-precision model parameters."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from bihm_triton.data import load_digits
from bihm_triton.model import BiHM
from bihm_triton.samplers import gibbs_sample
from bihm_triton.train import MAX_LR, TrainConfig, Trainer
from helpers import DEVICE

BACKENDS = ["reference", "cpu", "triton"]


def _states(model, n=5):
    return [torch.zeros(n, d) for d in model.sizes]


# ---------------------------------------------------------------------- 1. Gibbs starting states


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [0.5, 2.0, float("nan"), -1.0])
@pytest.mark.parametrize("layer", [0, 2])
@pytest.mark.parametrize("steps", [0, 1])
def test_gibbs_refuses_states_that_are_not_binary(backend, bad, layer, steps):
    model = BiHM([6, 4, 3], backend=backend, device=DEVICE if backend == "triton" else "cpu")
    init = _states(model)
    init[layer][2, 1] = bad
    name = "x" if layer == 0 else f"h_{layer}"
    shape = (5, model.sizes[layer])
    with pytest.raises(ValueError, match=re.escape(f"init[{layer}] ({name}, shape {shape}) must be binary (0 or 1); "
                                                   f"init[{layer}][2, 1] = ")):
        gibbs_sample(model, 5, steps, k=3, init=init, seed=0)


def test_gibbs_takes_binary_states_of_any_dtype():
    model = BiHM([6, 4, 3])
    init = [torch.ones(5, 6, dtype=torch.bool), torch.zeros(5, 4, dtype=torch.uint8), torch.ones(5, 3)]
    out = gibbs_sample(model, 5, 0, k=3, init=init, seed=0)
    assert torch.equal(out.x, torch.ones(5, 6))
    with pytest.raises(TypeError, match=r"init\[1\] must be a torch.Tensor"):
        gibbs_sample(model, 5, 0, k=3, init=[init[0], [[0.0] * 4] * 5, init[2]], seed=0)


# ---------------------------------------------------------------------- 2. divergence and the learning rate


@pytest.fixture(scope="module")
def digits():
    return load_digits("train")[:200], load_digits("valid")[:50]


def _trainer(digits, out, **cfg):
    torch.manual_seed(0)
    return Trainer(BiHM([64, 8]), *digits, TrainConfig(valid_k=5, **{"max_epochs": 5, **cfg}), out_dir=out)


@pytest.mark.parametrize("lr", [float("inf"), float("nan"), 0.0, -1e-3, 1e38, MAX_LR * 1.01, True, "0.1"])
def test_train_config_refuses_a_learning_rate_adam_cannot_take(lr):
    with pytest.raises(ValueError, match=r"lr must be a number in \(0, 3.4e\+37\]"):
        TrainConfig(lr=lr)


def test_the_largest_learning_rate_steps_without_overflow(digits):
    t = Trainer(BiHM([64, 8]), *digits, TrainConfig(lr=MAX_LR, batch_size=200))
    t.train_step(digits[0])  # Adam's first step is 10 · lr: 3.4e38 still fits in float32


def _poison_last_step(trainer, monkeypatch):
    """After the epoch's last update, a weight is NaN: that step's loss was computed before it, finite."""
    steps = -(-trainer.train_x.shape[0] // trainer.config.batch_size)
    real = trainer.optimizer.step

    def step(*a, **k):
        out = real(*a, **k)
        if (trainer.step + 1) % steps == 0 and trainer.epoch >= 1:
            with torch.no_grad():
                trainer.model.p_layers[0].weight[0, 0] = float("nan")
        return out

    monkeypatch.setattr(trainer.optimizer, "step", step)


def test_an_update_that_diverges_on_an_epochs_last_step_is_caught(digits, tmp_path, monkeypatch):
    t = _trainer(digits, tmp_path, batch_size=50)
    t.fit(1, progress=False, verbose=False)
    good = {f: (tmp_path / f).read_bytes() for f in ("last.safetensors", "best.safetensors", "log.jsonl")}
    _poison_last_step(t, monkeypatch)
    with pytest.raises(FloatingPointError, match=r"p_layers.0.weight \(NaN\) non-finite at the end of epoch 2.*"
                                                 r"last checkpoint was left untouched"):
        t.fit(progress=False, verbose=False)
    assert {f: (tmp_path / f).read_bytes() for f in good} == good
    resumed = Trainer.resume(tmp_path, *digits)  # the last good checkpoint resumes
    assert resumed.epoch == 1
    resumed.fit(1, progress=False, verbose=False)
    assert resumed.epoch == 2 and torch.isfinite(resumed.model.p_layers[0].weight).all()


def test_a_checkpoint_of_non_finite_parameters_is_never_written(digits, tmp_path):
    t = _trainer(digits, tmp_path)
    with torch.no_grad():
        t.model.q_layers[0].weight[1, 2] = float("inf")
    with pytest.raises(FloatingPointError, match=r"q_layers.0.weight \(inf\) non-finite at the checkpoint"):
        t.save_checkpoint(tmp_path / "last.safetensors")
    assert not (tmp_path / "last.safetensors").exists()


def test_cli_divergence_exits_1_and_the_run_resumes(tmp_path, capsys, monkeypatch):
    from bihm_triton.cli import main

    run = tmp_path / "run"
    argv = ["train", "--data", "digits", "--sizes", "8", "--valid-k", "3", "--out", str(run), "--no-progress"]
    assert main([*argv, "--epochs", "1"]) == 0
    good = (run / "last.safetensors").read_bytes()
    real_init = Trainer.__init__

    def init(self, *a, **k):
        real_init(self, *a, **k)
        _poison_last_step(self, monkeypatch)

    monkeypatch.setattr(Trainer, "__init__", init)
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--epochs", "3", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "training diverged" in err
    assert (run / "last.safetensors").read_bytes() == good
    monkeypatch.undo()
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2", "--no-progress"]) == 0


@pytest.mark.parametrize("lr", ["1e38", "inf", "nan", "0", "-1"])
def test_cli_refuses_the_learning_rate_before_writing_anything(lr, tmp_path, capsys):
    from bihm_triton.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", "--data", "digits", "--lr", lr, "--out", str(tmp_path / "run"), "--no-progress"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("bihm-triton train: error: argument --lr:")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------- 3. the cached CPU library


@pytest.fixture
def fresh_cpu_cache(tmp_path, monkeypatch):
    """The CPU kernels built into an empty cache; afterwards the process's own library is restored."""
    import bihm_triton.kernels.cpu as cpu

    saved = dict(cpu._state)
    monkeypatch.setenv("BIHM_TRITON_CACHE_DIR", str(tmp_path))
    cpu._state.clear()
    yield cpu, tmp_path / "cpu"
    cpu._state.clear()
    cpu._state.update(saved)


def _built(cpu):
    cpu._state.clear()
    return cpu.available()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "no_digest"])
def test_a_corrupt_cached_library_is_rebuilt(fresh_cpu_cache, damage, capsys):
    cpu, folder = fresh_cpu_cache
    # built by another process: this one must not have the file mapped (overwriting a loaded library in place
    # kills the process that loaded it, as a full disk would kill the process that was writing it)
    out = subprocess.run([sys.executable, "-c", "import bihm_triton.kernels.cpu as c; print(c.available() and "
                          "c.library_path())"], capture_output=True, text=True, check=True)
    path = out.stdout.strip().splitlines()[-1]
    assert os.path.dirname(path) == str(folder)
    good = open(path, "rb").read()
    if damage == "no_digest":
        os.remove(path + ".sha256")
    else:
        with open(path, "wb") as f:
            f.write({"truncate": good[: len(good) // 3], "garbage": b"\x7fELF" + b"\0" * 64, "empty": b""}[damage])
    capsys.readouterr()
    assert _built(cpu), cpu.unavailable_reason()
    assert cpu.library_path() == path
    assert open(path, "rb").read() == good  # rebuilt (the same bits), atomically: no temporary file left
    assert not [f for f in os.listdir(folder) if f.endswith(".tmp")]
    assert "unavailable" not in capsys.readouterr().err
    ref = BiHM([6, 4], backend="reference")
    fast = BiHM([6, 4], backend="cpu")
    fast.load_state_dict(ref.state_dict())
    assert torch.equal(fast.sample_p(7, seed=3)[0], ref.sample_p(7, seed=3)[0])  # and the rebuilt library works


def test_a_library_that_never_loads_names_the_file_and_gives_no_compiler_advice(fresh_cpu_cache, monkeypatch,
                                                                                  capsys):
    import ctypes

    cpu, folder = fresh_cpu_cache
    calls = []

    def cdll(path, *a, **k):
        calls.append(path)
        raise OSError("invalid ELF header")

    monkeypatch.setattr(ctypes, "CDLL", cdll)
    assert not _built(cpu)
    assert len(calls) == 2  # loaded, rebuilt once, loaded again
    reason = cpu.unavailable_reason()
    assert "invalid ELF header" in reason and str(folder) in reason and "delete that file" in reason
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if "built the CPU kernels in" not in l]  # a slow build is announced
    assert len(lines) == 1 and "Install a C compiler" not in err


def test_a_cc_that_does_not_exist_is_named_once(fresh_cpu_cache, monkeypatch, capsys):
    cpu, _ = fresh_cpu_cache
    monkeypatch.setenv("CC", "no-such-compiler-xyz")
    assert _built(cpu)
    err = capsys.readouterr().err
    assert err.count("$CC='no-such-compiler-xyz' was not found") == 1


# ---------------------------------------------------------------------- half-precision models


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int32])
def test_a_model_holds_float32_or_float64_parameters(dtype):
    with pytest.raises(TypeError, match=r"dtype must be torch.float32 or torch.float64"):
        BiHM([6, 4], dtype=dtype)
