"""Data-parallel training and sharded evaluation on 2 gloo processes (CPU, one thread each) against
one process (issue 17; :mod:`bihm_triton.distributed`).

The processes are started once per module (starting them is the slow part: a few seconds of
imports each) and run every scenario of ``dist_workers``; the tests check the results. Models are
float64 on the reference backend, so "equal up to summation order" can be held to tight bounds:

* parameters after training: within ``PARAM_TOL_LR`` learning rates of the 1-process run (Adam's
  update is ``lr · m̂ / (sqrt(v̂) + eps)``: a gradient that differs in its last bits moves a
  parameter by a tiny fraction of lr; summing the shards' gradients in another order is all that
  differs); Adam's moments within ``MOMENT_RTOL`` of their largest value (averaging the ranks'
  gradients instead of summing them would halve the first moment: Adam's scale invariance would
  hide it in the parameters alone);
* per-point estimates and log Ẑ²: relative 1e-12.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import dist_workers as dw
from bihm_triton import distributed
from bihm_triton.data import load_digits
from bihm_triton.train import Trainer

PARAM_TOL_LR = 1e-6  #: parameters of a 2-rank vs a 1-rank run, in units of the learning rate
MOMENT_RTOL = 1e-9  #: Adam's moments, relative to each tensor's largest entry
WORLD = 2


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    every = torch.cat([load_digits(s) for s in ("train", "valid", "test")])
    return {"train": load_digits("train")[:101], "valid": load_digits("valid")[:31],
            "test": load_digits("test")[:37],
            "idx": dw.write_idx(str(tmp_path_factory.mktemp("idx") / "digits-idx3-ubyte"), every)}


@pytest.fixture(scope="module")
def spawned(data, tmp_path_factory):
    """The 1-process reference runs, then every 2-process scenario (one spawn: starting the processes
    is most of the time)."""
    tmp = str(tmp_path_factory.mktemp("dist"))
    x, v = data["train"], data["valid"]
    one = Trainer(dw.train_model(), x, v, dw.train_config())
    one.fit(progress=False, verbose=False)
    c = Trainer(dw.train_model(), x, v, dw.train_config(), out_dir=os.path.join(tmp, "C"))
    c.fit(1, progress=False, verbose=False)  # resumed on 2 ranks by the workers
    ranks = dw.spawn(dw.all_scenarios, WORLD, data, tmp, out_dir=os.path.join(tmp, "results"))
    return {"one": dw.snapshot(one), "ranks": [r["train"] for r in ranks], "evals": [r["eval"] for r in ranks],
            "cli": [r["cli"] for r in ranks], "tmp": tmp, "idx": data["idx"]}


@pytest.fixture(scope="module")
def runs(spawned):
    return spawned


@pytest.fixture(scope="module")
def evals(spawned):
    return spawned["evals"]


def _assert_same_run(a: dict, b: dict, lr: float, exact: bool) -> None:
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"])
    for name, pa in a["params"].items():
        pb = b["params"][name]
        if exact:
            assert torch.equal(pa, pb), name
        else:
            assert (pa - pb).abs().max().item() <= PARAM_TOL_LR * lr, (name, (pa - pb).abs().max().item() / lr)
    assert a["adam"].keys() == b["adam"].keys()
    for i, sa in a["adam"].items():
        for k, va in sa.items():
            vb = b["adam"][i][k]
            if exact or k == "step":
                assert torch.equal(va, vb), (i, k)
            else:
                assert (va - vb).abs().max().item() <= MOMENT_RTOL * va.abs().max().item(), (i, k)
    for ra, rb in zip(a["history"], b["history"], strict=True):
        for k in ("train_bound", "train_ess", "valid_bound"):
            assert ra[k] == rb[k] if exact else ra[k] == pytest.approx(rb[k], rel=1e-12, abs=1e-12), k


def test_two_ranks_train_like_one(runs):
    """Same global batches and seed on 2 ranks (uneven shards, an empty one in the last batch of each
    epoch, rank 1 starting from other weights): the 1-process run up to summation order; the two
    ranks hold the same bits."""
    lr = dw.train_config().lr
    r0, r1 = runs["ranks"]
    _assert_same_run(r0["A"], r1["A"], lr, exact=True)
    _assert_same_run(runs["one"], r0["A"], lr, exact=False)
    assert r0["A"]["step"] == 2 * 6  # 6 batches per epoch: 5 full, one of a single point


def test_rank_zero_alone_writes_the_run(runs):
    folder = os.path.join(runs["tmp"], "A")
    assert sorted(os.listdir(folder)) == ["best.safetensors", "config.json", "last.safetensors", "log.jsonl"]
    with open(os.path.join(folder, "log.jsonl")) as f:
        assert len(f.read().splitlines()) == 2  # one line per epoch (two writers would double them)
    ours = Trainer.resume(folder, *(load_digits(s)[:n] for s, n in (("train", 101), ("valid", 31))))
    assert all(torch.equal(p, runs["ranks"][0]["A"]["params"][k]) for k, p in ours.model.state_dict().items())


def test_stopped_two_rank_run_resumes_exactly_on_two_ranks(runs):
    lr = dw.train_config().lr
    for r in runs["ranks"]:
        _assert_same_run(runs["ranks"][0]["A"], r["B"], lr, exact=True)


def test_two_rank_checkpoint_resumes_on_one_rank(runs, data):
    t = Trainer.resume(os.path.join(runs["tmp"], "B_for_one"), data["train"], data["valid"])
    assert t.epoch == 1
    t.fit(progress=False, verbose=False)
    _assert_same_run(runs["ranks"][0]["A"], dw.snapshot(t), dw.train_config().lr, exact=False)


def test_one_rank_checkpoint_resumes_on_two_ranks(runs):
    lr = dw.train_config().lr
    r0, r1 = runs["ranks"]
    _assert_same_run(r0["C"], r1["C"], lr, exact=True)
    _assert_same_run(runs["one"], r0["C"], lr, exact=False)


def test_graph_step_keyed_on_the_shard_and_fallback_agreed(runs):
    """With a stand-in graph (the CPU has no CUDA graphs): each rank captures its shard of a full batch
    (rows, first row) and replays it for the full batches only; the result is the eager run's bit for
    bit. A capture that fails on rank 1 alone turns the graph off on both ranks."""
    lr = dw.train_config().lr
    for rank, r in enumerate(runs["ranks"]):
        g = r["graph"]
        assert g["captured"] == ((10, 0), (10, 10))[rank]
        assert g["replays"] == 2 * 5 and g["cuda_graph"]
        _assert_same_run(r["A"], g, lr, exact=True)
        f = r["graph_fails"]
        assert f["replays"] == 0 and not f["cuda_graph"]
        _assert_same_run(r["A"], f, lr, exact=True)


def test_one_seed_for_every_rank(runs):
    from bihm_triton.reference.philox import draw_seed

    torch.manual_seed(100)  # rank 0's generator state
    assert [r["drawn_seed"] for r in runs["ranks"]] == [draw_seed()] * WORLD
    for r in runs["ranks"]:
        assert "seed differs between the ranks" in r["errors"]["seed"]


def test_refusals_reach_every_rank(runs):
    for r in runs["ranks"]:
        e = r["errors"]
        assert "already holds a run" in e["claim"]
        assert "differ between the ranks" in e["settings"] and "'lr': 0.001" in e["settings"]
        assert "differ between the ranks" in e["data"] and "rank 1" in e["data"]


def test_sharded_evaluation_equals_one_process(evals):
    """log_likelihood / effective_sample_size / estimate_log_z2 over 2 ranks: every rank holds the
    1-process result (seed=None drawn on rank 0 as one process draws it)."""
    model = dw.eval_model()
    x = load_digits("test")[:37]
    torch.manual_seed(5)
    ll = model.log_likelihood(x, 7, log_z2=-0.25, seed=None)
    aligned = model.log_likelihood(x, 8, seed=11, row_start=3)
    ess = model.effective_sample_size(x, 7, seed=12)
    z = model.estimate_log_z2(101, n_inner=3, seed=13)
    z_small = model.estimate_log_z2(3, seed=14, row_start=5)
    r0, r1 = evals
    for name in ("ll", "ll_aligned", "ess"):
        for a, b in zip(r0[name], r1[name]):
            assert (a is None and b is None) or torch.equal(a, b), name  # the same bits on every rank
    for got, want in zip(r0["ll"], ll):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for got, want in zip(r0["ll_aligned"][:2], aligned[:2]):
        assert torch.equal(got, want)  # whole points per row chunk in both: bit for bit
    for got, want in zip(r0["ess"], ess):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for name, want in (("z", z), ("z_small", z_small)):
        assert r0[name] == r1[name], name
        assert r0[name].value == pytest.approx(want.value, rel=1e-12, abs=1e-12), name
        assert r0[name].se == pytest.approx(want.se, rel=1e-9), name


def test_sharded_evaluation_refuses_calls_that_differ(evals):
    for r in evals:
        assert "seed differs between the ranks" in r["seed_error"]
        assert "differ between the ranks" in r["shape_error"]


def test_shard_range_covers_every_row_once():
    for n in (0, 1, 5, 100, 101):
        for w in (1, 2, 3, 7):
            parts = [distributed.shard_range(n, r, w) for r in range(w)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a1 == b0 for (_, b0), (a1, _) in zip(parts, parts[1:]))
            sizes = [b - a for a, b in parts]
            assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError, match="rank must lie in"):
        distributed.shard_range(10, 2, 2)


def test_single_process_commands_are_refused_under_torchrun(monkeypatch, capsys, tmp_path):
    from bihm_triton.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["sample", "--checkpoint", str(tmp_path), "--no-progress"]) == 2
    assert "'sample' runs in one process: start it without torchrun" in capsys.readouterr().err


def test_single_process_is_the_model(data):
    """Without a process group the sharded estimators are the model's own calls (same bits)."""
    model = dw.eval_model()
    x = data["test"][:9]
    assert distributed.Comm().world_size == 1 and distributed.Comm().is_main
    a = distributed.log_likelihood(model, x, 5, seed=2)
    b = model.log_likelihood(x, 5, seed=2)
    assert all(torch.equal(u, v) for u, v in zip(a[:2], b[:2]))
    assert distributed.estimate_log_z2(model, 20, seed=3) == model.estimate_log_z2(20, seed=3)


def _torchrun(*args: str) -> list[str]:
    """``torchrun --standalone --nproc-per-node 2 -m bihm_triton …`` (a free port, this Python)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(WORLD),
            "-m", "bihm_triton", *args]


def _lines(path) -> int:
    try:
        with open(path) as f:
            return len(f.read().splitlines())
    except FileNotFoundError:
        return 0


def test_torchrun_killed_run_resumes_exactly(spawned, tmp_path):
    """``torchrun … train`` killed (SIGTERM to torchrun, which stops its workers) after its first epoch's
    checkpoint, then ``torchrun … train --resume``: the same weights and Adam state, bit for bit, and
    the same log, as the uninterrupted 2-rank run (made in the spawned processes); printed once."""
    from safetensors.torch import load_file

    assert spawned["cli"] == [(0, 2), (0, 2)]
    reference = os.path.join(spawned["tmp"], "cli_U")
    killed = tmp_path / "K"
    run = subprocess.Popen(_torchrun(*dw.cli_train_args(spawned["idx"]), "--out", str(killed)), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while not (killed / "last.safetensors").exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)  # the first epoch's checkpoint (written after its log line)
    run.send_signal(signal.SIGTERM)
    log = run.communicate(timeout=120)[0].decode()
    done = _lines(killed / "log.jsonl")
    assert 1 <= done < 3, log  # killed after a checkpoint, before the end
    resumed = subprocess.run(_torchrun("train", "--out", str(killed), "--resume", "--no-progress"),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert resumed.stdout.count(f"resuming {killed}") == 1 and resumed.stdout.count("epoch    3") == 1
    a, b = load_file(str(killed / "last.safetensors")), load_file(os.path.join(reference, "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ours = [{k: v for k, v in json.loads(s).items() if k != "seconds"} for s in open(killed / "log.jsonl")]
    theirs = [{k: v for k, v in json.loads(s).items() if k != "seconds"} for s in open(f"{reference}/log.jsonl")]
    assert ours == theirs


def test_torchrun_eval_prints_once_and_equals_one_process(spawned, tmp_path):
    from bihm_triton.cli import main

    reference = os.path.join(spawned["tmp"], "cli_U")
    args = ["eval", "--checkpoint", reference, "--k", "20", "--z-samples", "500", "--n-inner", "2", "--no-progress"]
    ev = subprocess.run(_torchrun(*args, "--json", str(tmp_path / "two.json")), capture_output=True, text=True,
                        timeout=300)
    assert ev.returncode == 0, ev.stdout + ev.stderr
    assert ev.stdout.count("test log p*(x)") == 1 and ev.stdout.count("wrote") == 1, ev.stdout
    assert main([*args, "--json", str(tmp_path / "one.json")]) == 0
    two, one = (json.load(open(tmp_path / f"{n}.json")) for n in ("two", "one"))
    assert two.keys() == one.keys()
    for k in one:
        assert two[k] == pytest.approx(one[k], rel=1e-6, abs=1e-9), k


def test_seed_none_is_drawn_once_and_recorded(data, tmp_path):
    from bihm_triton.reference.philox import draw_seed

    model = dw.train_model()
    torch.manual_seed(7)
    t = Trainer(model, data["train"], data["valid"], dw.train_config(seed=None), out_dir=tmp_path)
    torch.manual_seed(7)
    assert t.config.seed == draw_seed()
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["train"]["seed"] == t.config.seed
    with pytest.raises(ValueError, match=r"seed must lie in \[0, 2\*\*63\)"):
        dw.train_config(seed=-1)
