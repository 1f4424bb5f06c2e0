"""The command-line interface end to end, at tiny settings."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

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


# ------------------------------------------------------------------------------ issue 10: rough edges


def _write_idx(path, images):
    """An IDX image file (magic 2051) of uint8 images (n, rows, cols)."""
    import numpy as np

    images = np.asarray(images, dtype=np.uint8)
    with open(path, "wb") as f:
        f.write(np.array([2051, *images.shape], dtype=">u4").tobytes())
        f.write(images.tobytes())


def _mnist_like_folder(tmp_path, shape, seed):
    """An MNIST-named IDX folder of random images (60 train, 10 t10k) of the given (rows, cols)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    folder = tmp_path / "mnist"
    folder.mkdir()
    _write_idx(folder / "train-images-idx3-ubyte", rng.integers(0, 256, (60, *shape)))
    _write_idx(folder / "t10k-images-idx3-ubyte", rng.integers(0, 256, (10, *shape)))
    return folder


def _train(run, *extra):
    return main(["train", "--data", "digits", "--sizes", "8", "--epochs", "1", "--valid-k", "3",
                 "--out", str(run), "--no-progress", *extra])


def test_a_new_run_never_overwrites_an_old_one(tmp_path, capsys):
    run = tmp_path / "runA"
    assert _train(run) == 0
    before = {f: (run / f).read_bytes() for f in ("config.json", "last.safetensors", "log.jsonl")}
    assert main(["train", "--data", "digits", "--sizes", "4", "--epochs", "1", "--out", str(run),
                 "--no-progress"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert {f: (run / f).read_bytes() for f in before} == before
    assert _train(run, "--overwrite", "--seed", "3") == 0
    lines = (run / "log.jsonl").read_text().splitlines()
    assert len(lines) == 1  # the old run's log does not mix with the new one
    assert main(["train", "--out", str(run / "config.json"), "--no-progress"]) == 2  # a file, not a folder


def test_resume_keeps_the_runs_settings_and_refuses_conflicts(tmp_path, capsys):
    import json

    run = tmp_path / "run"
    assert _train(run, "--epochs", "2", "--lr", "0.002") == 0
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["max_epochs"] == 2
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--no-progress"]) == 0  # no --epochs: the run's limit
    assert json.loads((run / "config.json").read_text())["train"]["max_epochs"] == 2
    assert main(["train", "--out", str(run), "--resume", "--lr", "0.5", "--k", "3", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--lr 0.5 (the run has 0.002)" in err and "--k 3 (the run has 10)" in err
    # other data of the same width: refused (the run stores a fingerprint of its data)
    other = tmp_path / "mnist"
    other.mkdir()
    _write_idx(other / "imgs", [[[255 * ((i + j) % 2)] * 8] * 8 for i in range(30) for j in range(1)])
    assert main(["train", "--data", f"idx:{other / 'imgs'}", "--out", str(run), "--resume", "--epochs", "3",
                 "--no-progress"]) == 2
    assert "was trained on --data digits" in capsys.readouterr().err
    # the library checks the data themselves (a fingerprint stored with the run)
    from bihm_triton.cli import load_split
    from bihm_triton.train import Trainer

    other_x = 1.0 - load_split("digits", "train")
    with pytest.raises(ValueError, match="differ from the run's"):
        Trainer.resume(run, other_x, load_split("digits", "valid"))


def test_resume_after_a_kill_between_log_and_checkpoint_leaves_no_duplicate_epochs(tmp_path):
    import json

    run = tmp_path / "run"
    assert _train(run, "--epochs", "1") == 0
    with open(run / "log.jsonl", "a") as f:  # epoch 2 logged, then killed before its checkpoint
        f.write(json.dumps({"epoch": 2}) + "\n")
    assert main(["train", "--out", str(run), "--resume", "--epochs", "3", "--no-progress"]) == 0
    epochs = [json.loads(l)["epoch"] for l in (run / "log.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


def test_degenerate_data_and_counts_are_errors(tmp_path, capsys):
    import numpy as np

    _write_idx(tmp_path / "three", np.zeros((3, 28, 28)))
    assert main(["train", "--data", f"idx:{tmp_path / 'three'}", "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    assert "too few images" in capsys.readouterr().err
    _write_idx(tmp_path / "none", np.zeros((0, 28, 28)))
    assert main(["train", "--data", f"idx:{tmp_path / 'none'}", "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "holds no images" in err and str(tmp_path / "none") in err
    for n in ("0", "-5"):
        with pytest.raises(SystemExit) as exc:
            main(["inpaint", "--checkpoint", str(tmp_path), "--n", n])
        assert exc.value.code == 2
    for seed in ("-1", "1e23"):
        for cmd in (["train"], ["sample", "--checkpoint", "x"]):
            with pytest.raises(SystemExit) as exc:
                main([*cmd, "--seed", seed])
            assert exc.value.code == 2
    assert "seed" in capsys.readouterr().err


def test_a_corrupt_checkpoint_is_refused(tmp_path, capsys):
    from bihm_triton.model import BiHM

    path = tmp_path / "m.safetensors"
    BiHM([10, 4]).save(path)
    raw = bytearray(path.read_bytes())
    raw[-20:-12] = b"\xff" * 8  # flip bytes inside the last tensor
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="corrupt"):
        BiHM.load(path)
    assert main(["sample", "--checkpoint", str(path), "--method", "p", "--out", str(tmp_path / "s.png")]) == 2
    assert "corrupt" in capsys.readouterr().err


def test_destinations_are_checked_first_and_reported_exactly(tmp_path, capsys, monkeypatch):
    from bihm_triton.model import BiHM

    BiHM([64, 4]).save(tmp_path / "best.safetensors")
    monkeypatch.setattr(BiHM, "estimate_log_z2", lambda *a, **k: pytest.fail("worked before checking --json"))
    (tmp_path / "adir").mkdir()
    assert main(["eval", "--checkpoint", str(tmp_path), "--json", str(tmp_path / "adir"), "--no-progress"]) == 2
    assert "is a folder" in capsys.readouterr().err
    monkeypatch.undo()
    assert main(["sample", "--checkpoint", str(tmp_path), "--method", "p", "--n", "3",
                 "--out", str(tmp_path / "somefig")]) == 0
    assert f"wrote {tmp_path / 'somefig.png'}" in capsys.readouterr().out
    assert (tmp_path / "somefig.png").exists()


def test_divergence_and_interrupts_are_one_line(tmp_path, capsys, monkeypatch):
    from bihm_triton.train import Trainer

    def diverge(self, *a, **k):
        raise FloatingPointError("the loss became non-finite at epoch 1, step 3; the last checkpoint was left untouched")

    monkeypatch.setattr(Trainer, "fit", diverge)
    assert _train(tmp_path / "a") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("bihm-triton train: error: the loss became non-finite")

    def interrupt(self, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "fit", interrupt)
    assert _train(tmp_path / "b") == 130
    assert "interrupted" in capsys.readouterr().err


def test_images_that_are_not_square_and_the_standard_mnist_split(tmp_path, capsys):
    from bihm_triton.cli import load_split, make_mask, open_data

    folder = _mnist_like_folder(tmp_path, (28, 20), seed=0)
    data = open_data(f"idx:{folder}")
    assert data.shape == (28, 20)
    # train + t10k files: the training file's last sixth (10000 of 60000 for MNIST) is validation
    assert [load_split(data.source, s).shape[0] for s in ("train", "valid", "test")] == [50, 10, 10]
    mask = make_mask(load_split(data.source, "test"), "bottom", shape=data.shape)
    assert mask.view(-1, 28, 20)[:, :14].all() and not mask.view(-1, 28, 20)[:, 14:].any()
    with pytest.raises(ValueError, match="no image rows"):
        make_mask(torch.zeros(2, 112), "bottom", shape=(1, 112))
    run = tmp_path / "run"
    assert main(["train", "--data", f"idx:{folder}", "--sizes", "8", "--epochs", "1", "--valid-k", "2",
                 "--out", str(run), "--no-progress"]) == 0
    assert main(["inpaint", "--checkpoint", str(run), "--data", f"idx:{folder}", "--n", "3", "--steps", "1",
                 "--out", str(tmp_path / "in.png")]) == 0


def test_checkpoints_have_the_usual_permissions_and_help_is_plain(tmp_path):
    import os

    run = tmp_path / "run"
    assert _train(run) == 0
    umask = os.umask(0)
    os.umask(umask)
    for f in ("last.safetensors", "best.safetensors", "config.json", "log.jsonl"):
        assert os.stat(run / f).st_mode & 0o777 == 0o666 & ~umask, f
    r = subprocess.run([sys.executable, "-m", "bihm_triton", "--help"], capture_output=True, text=True)
    assert "``" not in r.stdout and ":func:" not in r.stdout
    r = subprocess.run([sys.executable, "-m", "bihm_triton", "train", "--help"], capture_output=True, text=True)
    text = " ".join(r.stdout.split())
    assert "reweighted wake-sleep" in text and "(default 10)" in text


def test_eval_says_what_it_is_doing_without_progress_bars(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--k", "5", "--z-samples", "20", "--n-inner", "1",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "estimating log Z^2" in out and "estimating log-likelihoods" in out


def test_a_run_remembers_its_data(tmp_path, capsys):
    folder = _mnist_like_folder(tmp_path, (8, 8), seed=1)
    run = tmp_path / "run"
    assert main(["train", "--data", f"idx:{folder}", "--sizes", "4", "--epochs", "1", "--valid-k", "2",
                 "--out", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    # no --data: the run's own (a digits default would have the same width here and train on the wrong data)
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2", "--no-progress"]) == 0
    assert f"--data idx:{folder}" in capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(run), "--k", "3", "--z-samples", "10", "--n-inner", "1",
                 "--no-progress"]) == 0
    assert "mean over 10 points" in capsys.readouterr().out  # the t10k file, not the digits test split
    assert main(["train", "--out", str(run), "--resume", "--no-progress"]) == 0  # already at its limit
    assert "already ended at epoch 2" in capsys.readouterr().out
    assert main(["demo", "--out", str(run), "--epochs", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "--resume" not in err  # demo cannot resume: do not suggest it
    assert main(["train", "--data", "dna", "--data-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "r2"),
                 "--no-progress"]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", str(run), "--method", "p", "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_train_takes_the_authors_model_options(tmp_path, capsys):
    """--deterministic-layers, --l1reg and --l2reg reach the model and the trainer, are kept by the run and
    refused when --resume would change them; negative penalties are usage errors."""
    import json

    run = tmp_path / "run"
    assert main(["train", "--data", "digits", "--sizes", "8,4", "--epochs", "1", "--batch-size", "300",
                 "--valid-k", "2", "--deterministic-layers", "1", "--l2reg", "0.01", "--out", str(run),
                 "--no-progress"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["deterministic_layers"] == 1 and config["train"]["l2reg"] == 0.01
    from bihm_triton.model import BiHM

    assert BiHM.load(run).deterministic_layers == 1
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--l2reg", "0.5", "--epochs", "2"]) == 2
    assert "--l2reg 0.5 (the run has 0.01)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["train", "--data", "digits", "--l1reg", "-1", "--out", str(tmp_path / "x")])
    assert e.value.code == 2
