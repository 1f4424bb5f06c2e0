"""Trainer: learning on real data, exact resume, atomic checkpoints, failures that keep the last good one."""

from __future__ import annotations

import json
import os

import pytest
import torch

from bihm_triton import checkpoint
from bihm_triton.data import load_digits
from bihm_triton.model import BiHM
from bihm_triton.train import TrainConfig, Trainer


@pytest.fixture(scope="module")
def digits():
    return load_digits("train")[:400], load_digits("valid")[:100]


def _model(seed=0):
    torch.manual_seed(seed)
    return BiHM([64, 16, 8])


def test_training_improves_the_validation_bound(digits, tmp_path):
    x, v = digits
    t = Trainer(_model(), x, v, TrainConfig(max_epochs=6, lr=3e-3, valid_k=20), out_dir=tmp_path)
    hist = t.fit(progress=False, verbose=False)
    assert hist[-1]["valid_bound"] > hist[0]["valid_bound"] + 1.0
    assert set(os.listdir(tmp_path)) >= {"config.json", "last.safetensors", "best.safetensors", "log.jsonl"}
    lines = [json.loads(s) for s in open(tmp_path / "log.jsonl")]
    assert [r["epoch"] for r in lines] == list(range(1, 7))
    best = BiHM.load(tmp_path / "best.safetensors")
    assert best.sizes == [64, 16, 8]


@pytest.mark.parametrize("objective", ["bihm", "rws"])
def test_resume_continues_the_same_run(digits, tmp_path, objective):
    x, v = digits
    cfg = TrainConfig(max_epochs=3, lr=3e-3, valid_k=10, objective=objective, batch_size=64)
    straight = Trainer(_model(), x, v, cfg, out_dir=tmp_path / "a")
    straight.fit(progress=False, verbose=False)
    first = Trainer(_model(), x, v, cfg, out_dir=tmp_path / "b")
    first.fit(1, progress=False, verbose=False)
    resumed = Trainer.resume(tmp_path / "b", x, v)
    resumed.fit(progress=False, verbose=False)
    assert resumed.epoch == 3 and resumed.step == straight.step
    for (n, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), n
    assert [r["valid_bound"] for r in resumed.history] == [r["valid_bound"] for r in straight.history]


def test_interrupted_save_keeps_the_last_good_checkpoint(digits, tmp_path, monkeypatch):
    x, v = digits
    t = Trainer(_model(), x, v, TrainConfig(max_epochs=3, valid_k=10), out_dir=tmp_path)
    t.fit(1, progress=False, verbose=False)
    good = (tmp_path / "last.safetensors").read_bytes()

    def dying_save(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"partial")  # a crash in the middle of writing the temporary file
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_file", dying_save)
    with pytest.raises(KeyboardInterrupt):
        t.fit(1, progress=False, verbose=False)
    assert (tmp_path / "last.safetensors").read_bytes() == good
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    assert Trainer.resume(tmp_path, x, v).epoch == 1


def test_nan_loss_stops_without_touching_the_checkpoint(digits, tmp_path):
    x, v = digits
    t = Trainer(_model(), x, v, TrainConfig(max_epochs=3, valid_k=10), out_dir=tmp_path)
    t.fit(1, progress=False, verbose=False)
    good = (tmp_path / "last.safetensors").read_bytes()
    with torch.no_grad():
        t.model.p_top.logits.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="last checkpoint was left untouched"):
        t.fit(1, progress=False, verbose=False)
    assert (tmp_path / "last.safetensors").read_bytes() == good


def test_bad_data_and_settings(digits):
    x, v = digits
    with pytest.raises(ValueError, match=r"train_x must have shape \(B, d_0\) = \(B, 64\)"):
        Trainer(_model(), x[:, :10], v)
    with pytest.raises(ValueError, match="valid_x must be binary"):
        Trainer(_model(), x, v * 0.5 + 0.25)
    with pytest.raises(ValueError, match="objective"):
        TrainConfig(objective="vae")
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        TrainConfig(batch_size=0)
    with pytest.raises(FileNotFoundError):
        Trainer.resume("/nonexistent/run", x, v)


def test_train_step_is_the_loss_backward_and_adam(digits):
    """Trainer.train_step (the path a CUDA graph captures) equals the plain loss/backward/Adam loop (on the CPU
    torch's fused Adam, which the trainer uses there)."""
    x, v = digits
    cfg = TrainConfig(batch_size=32, lr=3e-3)
    t = Trainer(_model(), x, v, cfg)
    assert t.optimizer.defaults["fused"]
    plain = _model()
    opt = torch.optim.Adam(plain.parameters(), lr=cfg.lr, fused=True)
    for step in range(3):
        xb = x[32 * step:32 * (step + 1)]
        out = t.train_step(xb, seed=100 + step)
        opt.zero_grad()
        loss, stats = plain.loss(xb, cfg.k, seed=100 + step)
        loss.backward()
        opt.step()
        assert torch.equal(out["loss"], loss.detach()) and torch.equal(out["bound"], stats["bound"])
    for (n, a), b in zip(t.model.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(a, b), n
    assert t.step == 3


def test_weight_penalty_enters_each_step_once(digits):
    """TrainConfig(l1reg, l2reg): the step is Adam on loss + l1·Σ|W| + l2·ΣW² (the authors' --l1reg/--l2reg),
    a model with deterministic layers included; the settings are validated."""
    x, v = digits
    cfg = TrainConfig(batch_size=32, lr=3e-3, l1reg=0.01, l2reg=0.5)

    def model():
        torch.manual_seed(3)
        return BiHM([64, 16, 8], deterministic_layers=1)

    t = Trainer(model(), x, v, cfg)
    plain = model()
    opt = torch.optim.Adam(plain.parameters(), lr=cfg.lr)
    for step in range(2):
        xb = x[32 * step:32 * (step + 1)]
        out = t.train_step(xb, seed=7 + step)
        opt.zero_grad()
        loss, _ = plain.loss(xb, cfg.k, seed=7 + step)
        loss = loss + plain.weight_penalty(0.01, 0.5)
        loss.backward()
        opt.step()
        torch.testing.assert_close(out["loss"], loss.detach())
    for (n, a), b in zip(t.model.state_dict().items(), plain.state_dict().values()):
        torch.testing.assert_close(a, b, msg=n)
    for bad in (dict(l1reg=-1.0), dict(l2reg=float("nan")), dict(l1reg="0.1")):
        with pytest.raises(ValueError, match="reg must be a number >= 0"):
            TrainConfig(**bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_step_equals_eager(digits):
    """The captured step (loss, backward, Adam replayed as one CUDA graph) gives the eager step's results,
    and the capture's warm-up steps leave no trace."""
    x, v = (t.cuda() for t in digits)
    cfg = TrainConfig(batch_size=32, lr=3e-3)
    runs = []
    for graph in (True, False):
        torch.manual_seed(0)
        t = Trainer(BiHM([64, 16, 8], device="cuda"), x, v, cfg, cuda_graph=graph)
        bounds = [t.train_step(x[32 * i:32 * (i + 1)], seed=100 + i)["bound"].clone() for i in range(3)]
        runs.append((t, bounds))
    (tg, bg), (te, be) = runs
    assert tg._graph is not None and te._graph is None
    for a, b in zip(bg, be):
        torch.testing.assert_close(a, b)
    for (n, a), b in zip(tg.model.state_dict().items(), te.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=n)
