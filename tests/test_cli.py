"""The command-line interface end to end, at tiny settings."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bihm_triton.cli import main


def test_train_eval_sample_inpaint(tmp_path, capsys):
    run = str(tmp_path / "run")
    assert main(["train", "--data", "digits", "--sizes", "16,8", "--epochs", "2", "--valid-k", "5",
                 "--out", run, "--no-progress"]) == 0
    assert main(["train", "--data", "digits", "--epochs", "3", "--out", run, "--resume", "--no-progress",
                 "--sizes", "16,8", "--valid-k", "5"]) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "epoch    3" in out
    assert main(["eval", "--checkpoint", run, "--k", "20", "--z-samples", "200", "--n-inner", "2",
                 "--json", str(tmp_path / "r.json"), "--figure", str(tmp_path / "fig.png"), "--gibbs-steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "test log p*(x)" in out and "log Z^2" in out
    assert (tmp_path / "fig.png").read_bytes()[:4] == b"\x89PNG"
    for method in ("p", "gibbs", "sir"):
        png = tmp_path / f"{method}.png"
        assert main(["sample", "--checkpoint", run, "--method", method, "--n", "6", "--steps", "2",
                     "--oversample", "4", "--out", str(png)]) == 0
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    png = tmp_path / "inpaint.png"
    assert main(["inpaint", "--checkpoint", run, "--n", "4", "--steps", "2", "--mask", "left",
                 "--out", str(png)]) == 0
    assert png.exists()


def test_demo_at_tiny_settings(tmp_path, capsys):
    out_dir = tmp_path / "demo"
    assert main(["demo", "--out", str(out_dir), "--epochs", "1", "--sizes", "8", "--eval-k", "10",
                 "--z-samples", "100", "--n-inner", "2", "--gibbs-steps", "2", "--valid-k", "5",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    for needle in ("test log p~*(x)", "log Z^2", "test log p*(x)", "demo.png"):
        assert needle in out
    assert (out_dir / "demo.png").exists() and (out_dir / "test.json").exists()


@pytest.mark.parametrize("argv,message", [
    (["train", "--sizes", "784,0,10", "--epochs", "1"], "latent width 2 is 0"),
    (["train", "--data", "nope"], "expected 'digits', 'idx:"),
    (["eval", "--checkpoint", "/nonexistent"], "no checkpoint"),
])
def test_errors_are_one_clear_line(argv, message, tmp_path, capsys):
    import re

    assert main(argv + ["--no-progress"]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err, re.IGNORECASE), err


def test_eval_rejects_wrong_data_before_any_work(tmp_path, capsys, monkeypatch):
    from bihm_triton.model import BiHM

    BiHM([10, 4]).save(tmp_path / "best.safetensors")
    monkeypatch.setattr(BiHM, "estimate_log_z2", lambda *a, **k: pytest.fail("estimated Z before checking data"))
    assert main(["eval", "--checkpoint", str(tmp_path), "--no-progress"]) == 2
    assert "x must have shape (B, d_0) = (B, 10)" in capsys.readouterr().err


def test_module_entry_point():
    r = subprocess.run([sys.executable, "-m", "bihm_triton", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "demo" in r.stdout
