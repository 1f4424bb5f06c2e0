"""Issue 16: silent wrong results, lost work, and output that sends users in circles; each item's right
value as a test (on both backends, the reference and the Triton kernels, where the item applies).

The README and bench/README commands are run in ``test_readme_commands.py``; ``bench/gpu.sh``'s
output set in ``test_gpu_script.py``.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import bihm_triton.reference as ref
from bihm_triton import ops
from bihm_triton.cli import main
from bihm_triton.model import BiHM

from helpers import binary, random_model

BACKENDS = ["reference", "triton"]


# ------------------------------------------------------------------ item 1: float64 on the Triton backend


def _f64_layer(R=5, N=7, M=3, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    h = torch.rand(R, N, generator=g, dtype=torch.float64)
    w = torch.randn(M, N, generator=g, dtype=torch.float64)
    b = torch.randn(M, generator=g, dtype=torch.float64)
    x = binary(R, M, generator=g, dtype=torch.float64)
    wg = torch.rand(M, generator=g, dtype=torch.float64) + 0.5
    return [t.to(device) for t in (h, w, b, x, wg)]


_F64_OPS = {
    "sbn_sample": lambda h, w, b, x, wg, be: ops.sbn_sample(h, w, b, seed=3, backend=be)[1],
    "sbn_log_prob": lambda h, w, b, x, wg, be: ops.sbn_log_prob(h, x, w, b, backend=be),
    "sbn_sample_wn": lambda h, w, b, x, wg, be: ops.sbn_sample_wn(h, w, wg, b, seed=3, backend=be)[1],
    "sbn_log_prob_wn": lambda h, w, b, x, wg, be: ops.sbn_log_prob_wn(h, x, w, wg, b, backend=be),
    "weight_norm": lambda h, w, b, x, wg, be: ops.weight_norm(w, wg, 0, backend=be),
    "weight_norm_dim1": lambda h, w, b, x, wg, be: ops.weight_norm(w.t(), wg, 1, backend=be),
}


@pytest.mark.parametrize("op", sorted(_F64_OPS))
def test_float64_is_refused_by_the_triton_backend(op, device):
    """The kernels compute in float32: a float64 result from them would pass for float64 precision."""
    with pytest.raises(TypeError, match=r"float64.*backend='reference'"):
        _F64_OPS[op](*_f64_layer(device=device), "triton")


@pytest.fixture
def auto_picks_triton(monkeypatch):
    """``backend="auto"`` resolving to Triton for any tensors, as it does for CUDA tensors on a GPU."""
    real = ops.resolve_backend
    monkeypatch.setattr(ops, "resolve_backend", lambda b, d, dt=None: "triton" if b == "auto" else real(b, d, dt))


@pytest.mark.parametrize("op", sorted(_F64_OPS))
def test_float64_under_auto_is_computed_in_float64(op, device, auto_picks_triton):
    """Where "auto" means Triton (CUDA), float64 goes to the reference: equal to it exactly, and gradcheck
    passes (it failed on the kernels' float32 arithmetic, 3e-7 off)."""
    h, w, b, x, wg = _f64_layer(device=device)
    got = _F64_OPS[op](h, w, b, x, wg, "auto")
    want = _F64_OPS[op](h.cpu(), w.cpu(), b.cpu(), x.cpu(), wg.cpu(), "reference")
    assert got.dtype == torch.float64 and torch.equal(got.cpu(), want)
    w, wg = w.clone().requires_grad_(), wg.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda w_, g_: _F64_OPS[op](h, w_, b, x, g_, "auto"), (w, wg))


def test_a_float64_model_keeps_float64_where_auto_picks_triton(device, auto_picks_triton):
    r = random_model([6, 4, 3], seed=2, scale=1.0)  # float64 reference model
    m = BiHM([6, 4, 3], dtype=torch.float64, device=device)
    m.load_state_dict(r.state_dict())
    x = binary(5, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got, want = m.log_likelihood(x.to(device), 8, seed=4), r.log_likelihood(x, 8, seed=4)
    torch.testing.assert_close(got.log_p_tilde_star.cpu(), want.log_p_tilde_star, rtol=1e-12, atol=1e-12)
    loss, _ = m.loss(x.to(device), 4, seed=1)
    loss_r, _ = r.loss(x, 4, seed=1)
    torch.testing.assert_close(loss.cpu(), loss_r, rtol=1e-12, atol=1e-12)
    with pytest.raises(TypeError, match=r"float64.*backend='reference'"):
        BiHM([6, 4], dtype=torch.float64, backend="triton", device=device)


# ---------------------------------------------------------------------------- item 3: an empty batch


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("objective", ["bihm", "rws"])
def test_the_loss_of_an_empty_batch_is_refused(backend, objective, device):
    m = BiHM([6, 4, 3], backend=backend, device=device)
    x = binary(5, 6, generator=torch.Generator().manual_seed(0), device=device)
    with pytest.raises(ValueError, match=r"at least one row \(B >= 1\), got shape \(0, 6\)"):
        m.loss(x[:0], 3, objective, seed=1)
    with pytest.raises(ValueError, match="n must be an int >= 1"):  # the same rule as sampling
        m.sample_p(0)
    # the internal path (an empty shard of a distributed step) contributes zero, with a gradient
    loss, stats = m._loss(x[:0], 3, objective, seed=1)
    assert loss.item() == 0.0 and all(v.shape == (0,) for v in stats.values())
    loss.backward()
    assert all(p.grad is None or not p.grad.any() for p in m.parameters())


# ---------------------------------------------------------------------------- items 4, 5, 11: the CLI


def test_sizes_with_an_empty_entry_are_refused(tmp_path, capsys):
    assert main(["train", "--sizes", "200,,50", "--epochs", "1", "--valid-k", "2", "--out", str(tmp_path / "r"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "entry 2 of 3 is empty" in err and err.count("\n") == 1
    assert not (tmp_path / "r" / "config.json").exists()


def test_a_full_size_list_gets_a_note(tmp_path, capsys):
    """digits are 64 wide: '--sizes 64,16' trains [64, 64, 16] (legal), and says so in one line."""
    assert main(["train", "--data", "digits", "--sizes", "64,16", "--epochs", "1", "--valid-k", "2",
                 "--out", str(tmp_path / "r"), "--no-progress"]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if "note:" in line]
    assert len(notes) == 1
    assert "latent widths only" in notes[0] and "[64, 64, 16]" in notes[0] and "--sizes 16" in notes[0]
    assert BiHM.load(tmp_path / "r").sizes == [64, 64, 16]
    assert main(["train", "--data", "digits", "--sizes", "16,8", "--epochs", "1", "--valid-k", "2",
                 "--out", str(tmp_path / "r2"), "--no-progress"]) == 0
    assert "note:" not in capsys.readouterr().out


def test_demo_help_does_not_offer_resume(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "resume" not in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "with --resume: a new limit" in " ".join(capsys.readouterr().out.split())


# ------------------------------------------------------------------------- item 2: NaN is never −inf

NAN_PLACES = ["p_layers.1.weight", "q_layers.0.weight", "p_top.logits", "q_layers.1.bias"]


def _nan_model(backend, name, device, **kw):
    m = BiHM([6, 4, 3], backend=backend, device=device, chunk_rows=8, **kw)
    with torch.no_grad():
        dict(m.named_parameters())[name].view(-1)[1] = math.nan
    return m


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NAN_PLACES)
def test_a_nan_parameter_gives_nan_estimates_not_minus_inf(backend, name, device):
    """As torch.logsumexp: NaN in, NaN out (it read as log p̃*(x) = −inf, "impossible data", for every point)."""
    m = _nan_model(backend, name, device)
    x = binary(5, 6, generator=torch.Generator().manual_seed(0), device=device)
    ll = m.log_likelihood(x, 8, seed=1, log_z2=0.0)
    ess = m.effective_sample_size(x, 8, seed=1)
    for t in (ll.log_p_tilde_star, ll.log_p, ll.log_p_star, ess.p, ess.p_star, m.bhattacharyya_distance(x, 8, seed=1)):
        assert torch.isnan(t).all(), t
    assert math.isnan(m.estimate_log_z2(16, seed=1).value)
    for objective in ("bihm", "rws"):  # rws read a NaN weight as a zero one: a finite loss that trained q only
        loss, stats = m.loss(x, 4, objective, seed=1)
        assert math.isnan(loss.item()), objective
        assert all(torch.isnan(v).all() for v in stats.values())
    r = ref.BiHM([6, 4, 3])  # the reference model agrees
    r.load_state_dict({k: v.cpu() for k, v in m.state_dict().items()})
    assert torch.isnan(r.log_likelihood(x.cpu(), 8, seed=1).log_p_tilde_star).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_weights_still_read_minus_inf(backend, device):
    """SPEC §2: a point whose weights are all zero (an impossible x) has −inf, never NaN."""
    m = BiHM([3, 2], backend=backend, device=device, chunk_rows=4)
    with torch.no_grad():
        m.p_layers[0].bias.fill_(-math.inf)  # p(x_j = 1 | h) = 0
    ll = m.log_likelihood(torch.tensor([[1.0, 0.0, 1.0]], device=device), 8, seed=5)
    assert ll.log_p_tilde_star.item() == -math.inf and ll.log_p.item() == -math.inf


@pytest.mark.parametrize("backend", BACKENDS)
def test_samplers_refuse_nan_parameters_and_sample_p_warns(backend, device):
    m = _nan_model(backend, "p_layers.0.weight", device)
    x = binary(3, 6, generator=torch.Generator().manual_seed(0), device=device)
    with pytest.warns(RuntimeWarning, match=r"p_layers\.0\.weight \(NaN\).*log p\(x, h\) is NaN"):
        _, log_p = m.sample_p(8, seed=1, return_log_p=True)
    assert torch.isnan(log_p).all()
    for call in (lambda: m.gibbs_sample(4, 2, 2, seed=1), lambda: m.sir_sample(4, 3, seed=1),
                 lambda: m.inpaint(x, torch.ones_like(x, dtype=torch.bool), 2, 2, seed=1)):
        with pytest.raises(ValueError, match=r"p_layers\.0\.weight \(NaN\).*importance weight would be NaN"):
            call()
    with warnings.catch_warnings():  # finite parameters: no warning, and the samplers run
        warnings.simplefilter("error")
        with torch.no_grad():
            m.p_layers[0].weight.zero_()
        m.sample_p(8, seed=1, return_log_p=True)
        m.gibbs_sample(4, 1, 2, seed=1)
    r = ref.BiHM([6, 4, 3])  # the reference model warns too
    with torch.no_grad():
        r.p_top.logits[0] = math.nan
    with pytest.warns(RuntimeWarning, match=r"p_top\.logits \(NaN\)"):
        r.sample_p(4, seed=1)


@pytest.fixture(scope="module")
def digits():
    from bihm_triton.data import load_digits

    return load_digits("train")[:200], load_digits("valid")[:40]


def _trainer(out, digits, *, backend="reference", max_epochs=2, **kw):
    """Two epochs of 4 batches each (the Triton backend, in the interpreter: a quarter of the data)."""
    from bihm_triton.train import TrainConfig, Trainer

    torch.manual_seed(0)
    small = backend == "triton"
    cfg = TrainConfig(max_epochs=max_epochs, batch_size=12 if small else 50, valid_k=2 if small else 4, lr=3e-3,
                      k=4 if small else 10, **kw)
    x, v = digits
    return Trainer(BiHM([64, 8, 4], backend=backend), x[:48] if small else x, v[:8] if small else v, cfg,
                   out_dir=out)


def test_the_trainer_names_the_parameter_that_went_non_finite(digits, tmp_path, monkeypatch):
    t = _trainer(None, digits)
    with torch.no_grad():
        t.model.p_layers[1].weight[0, 0] = math.nan  # before any step
    with pytest.raises(FloatingPointError, match=r"step 0: parameter p_layers\.1\.weight went non-finite first "
                                                 r"\(already at the start of step 0\)"):
        t.fit(progress=False, verbose=False)
    # in the middle of training: q_layers.0.bias becomes NaN in the update of step 2; the loss of step 3 is
    # NaN, and by the next check every parameter is: the message names the first one
    t = _trainer(None, digits)
    real_step = t.optimizer.step

    def step(*a, **k):
        out = real_step(*a, **k)
        if t.step == 2:
            with torch.no_grad():
                t.model.q_layers[0].bias[1] = math.nan
        return out

    monkeypatch.setattr(t.optimizer, "step", step)
    with pytest.raises(FloatingPointError) as e:
        t.fit(progress=False, verbose=False)
    assert "at epoch 1, step 3: parameter q_layers.0.bias went non-finite first (already at the start of step 3)" \
        in str(e.value)
    assert all(torch.isnan(p).any() for p in t.model.parameters())  # why the first one matters


# ----------------------------------------------------------------------------- item 7: Ctrl-C loses nothing


def _same_run(a, b):
    for (n, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(p, q), n
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert a.step == b.step and strip(a.history) == strip(b.history)


def _sigint_at(monkeypatch, trainer_or_steps, step: int):
    """A real Ctrl-C (SIGINT to this process) in the middle of training step ``step``."""
    import os
    import signal

    real = BiHM.loss
    calls = {"n": 0}

    def loss(self, *a, **k):
        if calls["n"] == step:
            os.kill(os.getpid(), signal.SIGINT)
        calls["n"] += 1
        return real(self, *a, **k)

    monkeypatch.setattr(BiHM, "loss", loss)


@pytest.mark.parametrize("backend,step", [("reference", 1), ("reference", 5), ("triton", 5)])
def test_ctrl_c_saves_the_step_in_progress_and_resume_is_exact(digits, tmp_path, monkeypatch, backend, step):
    """Ctrl-C in step 1 (the first epoch: the folder held only config.json) or step 5 (epoch 2, batch 2 of
    4): the step finishes, last.safetensors holds the run there, and the resumed run is the straight one."""
    from bihm_triton.train import Trainer, TrainingInterrupted

    straight = _trainer(tmp_path / "a", digits, backend=backend)
    straight.fit(progress=False, verbose=False)
    t = _trainer(tmp_path / "b", digits, backend=backend)
    _sigint_at(monkeypatch, t, step)
    with pytest.raises(TrainingInterrupted) as e:
        t.fit(progress=False, verbose=False)
    monkeypatch.undo()
    done = step + 1
    assert e.value.saved and t.step == done
    assert f"epoch {done // 4 + 1}, batch {done % 4} of 4 (step {done})" in str(e.value)
    resumed = Trainer.resume(tmp_path / "b", t.train_x, t.valid_x, backend=backend)
    assert resumed.step == done and resumed.position["batches"] == done % 4
    resumed.fit(progress=False, verbose=False)
    _same_run(straight, resumed)


def test_ctrl_c_outside_a_step_and_a_torn_step(digits, tmp_path, monkeypatch):
    from bihm_triton.train import Trainer, TrainingInterrupted

    straight = _trainer(tmp_path / "a", digits)
    straight.fit(progress=False, verbose=False)
    # during epoch 2's validation: its four steps are kept, the validation is redone on resume
    t = _trainer(tmp_path / "b", digits)
    real = Trainer.validate

    def validate(self, *a, **k):
        if self.epoch == 1:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(Trainer, "validate", validate)
    with pytest.raises(TrainingInterrupted, match=r"epoch 2, batch 4 of 4 \(step 8\)"):
        t.fit(progress=False, verbose=False)
    monkeypatch.undo()
    resumed = Trainer.resume(tmp_path / "b", *digits, backend="reference")
    resumed.fit(progress=False, verbose=False)
    _same_run(straight, resumed)
    # a Ctrl-C that tears a step (the second one, or none deferred): nothing is saved over the last checkpoint
    t = _trainer(tmp_path / "c", digits)
    t.fit(1, progress=False, verbose=False)
    good = (tmp_path / "c" / "last.safetensors").read_bytes()

    def torn(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(t.optimizer, "step", torn)
    with pytest.raises(TrainingInterrupted, match="left as it was") as e:
        t.fit(progress=False, verbose=False)
    assert not e.value.saved and (tmp_path / "c" / "last.safetensors").read_bytes() == good


def _cli_train(run, *extra):
    return main(["train", "--data", "digits", "--sizes", "8,4", "--epochs", "2", "--batch-size", "300",
                 "--valid-k", "3", "--out", str(run), "--no-progress", *extra])


def _params(run):
    return BiHM.load(run / "last.safetensors").state_dict()


def test_cli_ctrl_c_in_the_first_epoch_then_resume(tmp_path, capsys, monkeypatch):
    assert _cli_train(tmp_path / "a") == 0
    _sigint_at(monkeypatch, None, 1)  # 4 batches of 300 per epoch: stopped after batch 2 of epoch 1
    assert _cli_train(tmp_path / "b") == 130
    monkeypatch.undo()
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("Ctrl-C: finishing the current step, then saving a checkpoint")
    err = lines[-1]
    assert len(lines) == 2 and "interrupted; saved the run at epoch 1, batch 2 of 4 (step 2)" in err
    assert f"continue it with: bihm-triton train --out {tmp_path / 'b'} --resume" in err
    assert main(["train", "--out", str(tmp_path / "b"), "--resume", "--no-progress"]) == 0
    assert "at epoch 1, batch 3" in capsys.readouterr().out
    a, b = _params(tmp_path / "a"), _params(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_resume_starts_a_run_that_has_no_checkpoint_yet(tmp_path, capsys):
    """Killed before its first checkpoint, the folder holds only config.json: --resume starts it (it said
    there was no run, and a plain rerun that the folder held one)."""
    assert _cli_train(tmp_path / "a") == 0
    assert _cli_train(tmp_path / "b") == 0
    for f in ("last.safetensors", "best.safetensors", "log.jsonl"):
        (tmp_path / "b" / f).unlink()
    capsys.readouterr()
    assert main(["train", "--out", str(tmp_path / "b"), "--resume", "--no-progress"]) == 0
    assert "from its config.json" in capsys.readouterr().out
    a, b = _params(tmp_path / "a"), _params(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert main(["train", "--out", str(tmp_path / "nothing"), "--resume", "--no-progress"]) == 2
    assert "no run to continue" in capsys.readouterr().err


# ------------------------------------------------------------------------ item 10: no bars in log files


def test_no_progress_bars_in_a_log_file(tmp_path, capsys, monkeypatch):
    """Without --no-progress and with output to a file: no carriage-return bars, one line per epoch and the
    heartbeat lines (every HEARTBEAT_S seconds; here every step)."""
    import bihm_triton.cli as cli

    monkeypatch.setattr(cli, "HEARTBEAT_S", 1e-9)
    assert main(["train", "--data", "digits", "--sizes", "8", "--epochs", "2", "--batch-size", "300",
                 "--valid-k", "3", "--out", str(tmp_path / "r")]) == 0
    assert main(["eval", "--checkpoint", str(tmp_path / "r"), "--k", "3", "--z-samples", "20", "--n-inner", "1",
                 "--figure", str(tmp_path / "f.png"), "--gibbs-steps", "25"]) == 0
    out, err = capsys.readouterr()
    assert "\r" not in err and "\r" not in out, err[:300]
    assert out.count("epoch    1") == 1 and out.count("epoch    2") == 1
    assert "  epoch 1: 300 of 1197 points, train bound" in out


# ------------------------------------------------------------------------ item 6: figures show every class


def test_figures_show_a_seeded_random_subset(tmp_path, monkeypatch):
    """A test file grouped by class (as binarized MNIST's): eval --figure and inpaint took its first rows,
    every one a "0". They now show a seeded random subset and say so in the title."""
    import numpy as np

    import bihm_triton.plotting as plotting
    from test_cli import _write_idx

    folder = tmp_path / "mnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    _write_idx(folder / "train-images-idx3-ubyte", rng.integers(0, 256, (60, 4, 4)))
    # t10k: 30 images sorted by "class": 15 blank, then 15 full (the first 10 rows are all one class)
    _write_idx(folder / "t10k-images-idx3-ubyte", np.repeat([0, 255], 15)[:, None, None] * np.ones((30, 4, 4)))
    assert main(["train", "--data", f"idx:{folder}", "--sizes", "4", "--epochs", "1", "--valid-k", "2",
                 "--out", str(tmp_path / "r"), "--no-progress"]) == 0
    shown = []
    monkeypatch.setattr(plotting, "figure_panels", lambda panels, path, **kw: shown.append((panels, kw)) or path)
    assert main(["eval", "--checkpoint", str(tmp_path / "r"), "--k", "2", "--z-samples", "4", "--n-inner", "1",
                 "--figure", str(tmp_path / "f.png"), "--gibbs-steps", "1", "--seed", "3", "--no-progress"]) == 0
    assert main(["inpaint", "--checkpoint", str(tmp_path / "r"), "--n", "10", "--steps", "1", "--seed", "3",
                 "--out", str(tmp_path / "i.png"), "--no-progress"]) == 0
    (fig_panels, fig_kw), (in_panels, in_kw) = shown
    test_x = (torch.arange(30) >= 15).float()[:, None].expand(30, 16)
    for data, n in ((fig_panels[0][1], 20), (in_panels[0][1], 10)):
        idx = torch.randperm(30, generator=torch.Generator().manual_seed(3))[:n]
        assert torch.equal(data.cpu(), test_x[idx])
        assert 0 < int(data[:, 0].sum()) < n  # both classes
    assert "test data: 20 of 30 points, drawn at random (seed 3)" in fig_kw["title"]
    assert "test data of --data idx:" in in_kw["title"] and "10 of 30 points, drawn at random (seed 3)" in in_kw["title"]


# ------------------------------------------------------------------ item 8: a wrong --data-dir is named


def test_a_data_dir_without_the_set_says_so_and_never_downloads(tmp_path, capsys, monkeypatch):
    from bihm_triton import data

    monkeypatch.setattr(data.fetch, "_download", lambda *a, **k: pytest.fail("downloaded although a folder was given"))
    wrong = tmp_path / "data"
    (wrong / "mnist").mkdir(parents=True)
    (wrong / "README.md").write_text("x")
    with pytest.raises(FileNotFoundError) as e:
        data.load_dataset("binarized_mnist", "valid", data_dir=str(wrong), cache_dir=str(tmp_path / "cache"))
    msg = str(e.value)
    assert f"the data folder {wrong} (data_dir / --data-dir) has no valid split" in msg
    assert "binarized_mnist/binarized_mnist_valid.amat.gz" in msg and "holds: README.md, mnist/" in msg
    (wrong / "binarized_mnist").mkdir()
    (wrong / "binarized_mnist" / "other.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"its binarized_mnist/ holds: other\.txt"):
        data.load_dataset("binarized_mnist", "valid", data_dir=str(wrong), cache_dir=str(tmp_path / "cache"))
    assert main(["train", "--data", "binarized_mnist", "--data-dir", str(wrong), "--out", str(tmp_path / "r"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no train split" in err and "Give the folder that holds binarized_mnist/" in err


# ------------------------------------------------------------- item 12: what is written outside the checkout


def test_the_readme_says_where_caches_go_and_the_code_agrees(tmp_path, monkeypatch):
    import os

    from bihm_triton import data
    from bihm_triton.kernels import codegen

    root = os.path.join(os.path.dirname(__file__), "..")
    text = " ".join(open(os.path.join(root, "README.md")).read().split())
    for needle in ("`~/.cache/bihm_triton/kernels/`", "`BIHM_TRITON_CACHE_DIR`", "`~/.triton/cache`",
                   "`TRITON_CACHE_DIR`", "`~/.cache/bihm_triton/<set>/`", "`BIHM_TRITON_DATA`",
                   "`/tmp/torchinductor_<user>`", "`TORCHINDUCTOR_CACHE_DIR`"):
        assert needle in text, needle
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("BIHM_TRITON_CACHE_DIR", raising=False)
    monkeypatch.delenv("BIHM_TRITON_DATA", raising=False)
    assert codegen._cache_dir() == str(tmp_path / "home" / ".cache" / "bihm_triton" / "kernels")
    assert data.default_cache_dir() == str(tmp_path / "home" / ".cache" / "bihm_triton")
    monkeypatch.setenv("BIHM_TRITON_CACHE_DIR", str(tmp_path / "k"))
    assert codegen._cache_dir() == str(tmp_path / "k")


def test_reproduce_resume_starts_a_run_that_has_no_checkpoint_yet(tmp_path):
    """bench/reproduce.py --resume on a run folder holding only config.json said "already holds a run:
    continue it with --resume"; it now starts the run from its config (the same run as a fresh one)."""
    from types import SimpleNamespace

    from test_reproduce import _reproduce_module

    train = _reproduce_module().train
    x = (torch.rand(64, 9, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    args = SimpleNamespace(runs=str(tmp_path), device="cpu", seed=0, lr=1e-3, valid_k=2, minutes=0.0, overwrite=False)
    straight, _ = train("a", [9, 4, 3], x, x[:16], args)
    train("b", [9, 4, 3], x, x[:16], args)
    for f in ("last.safetensors", "best.safetensors", "log.jsonl"):
        (tmp_path / "b" / f).unlink()
    again, facts = train("b", [9, 4, 3], x, x[:16], args, resume=True)
    assert facts["epochs"] == 1
    _same_run(straight, again)
