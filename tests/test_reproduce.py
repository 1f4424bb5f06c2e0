"""Smoke runs of the paper's experiments (bench/reproduce.py) on the shared data: every experiment
runs end to end at toy budgets and writes the JSON, figure and report its documentation promises.
The numbers of such runs mean nothing; docs/REPRODUCTION.md holds the real ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = helpers.SHARED_DATA
needs_data = pytest.mark.skipif(not os.path.isdir(SHARED), reason=f"no shared data folder at {SHARED}")
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


@pytest.mark.slow
@needs_data
def test_every_experiment_writes_its_json_figure_and_report(tmp_path):
    _run(tmp_path, "ess", *TOY, "--sizes", "12,6", "--k-grid", "1", "10", "30")
    _run(tmp_path, "depth", *TOY, "--depths", "2")
    _run(tmp_path, "uci", *TOY, "--sets", "dna")
    _run(tmp_path, "uci", *TOY, "--sets", "nips", "--uci-grid", "6")  # another process: its set joins the file
    _run(tmp_path, "headline", *TOY)
    out = tmp_path / "out"
    for name in ("ess", "depth", "uci", "headline"):
        result = json.loads((out / f"{name}.json").read_text())
        made = [e for e in result["sets"].values()] if name == "uci" else [result]  # uci: each set says how
        for r in made:
            assert r["command"].startswith("python bench/reproduce.py " + name) and r["threads"] == 1 and "commit" in r
        if name != "uci":  # binarized MNIST: a random subset of the test file, never its first points
            assert result["test_subset"].startswith("12 of the 10,000 test points, drawn uniformly"), name
    assert (out / "ess.png").stat().st_size > 0 and (out / "depth.png").stat().st_size > 0
    ess = json.loads((out / "ess.json").read_text())
    assert [r["k"] for r in ess["models"]["bihm"]["rows"]] == [1, 10, 30] and ess["test_points"] == 12
    for r in ess["models"]["bihm"]["rows"] + ess["models"]["rws"]["rows"]:
        assert 1.0 <= r["ess"] <= r["k"]  # ESS lies in [1, K]
    report = _run(tmp_path, "report")
    for title in ("Sample efficiency", "Depth", "UCI", "headline"):
        assert title in report
    assert "Command: `python bench/reproduce.py headline" in report
    assert "12 of the 10,000 test points, drawn uniformly" in report
    uci = json.loads((out / "uci.json").read_text())
    assert sorted(uci["sets"]) == ["dna", "nips"]
    assert "dna: `python bench/reproduce.py uci" in report and "nips: `python bench/reproduce.py uci" in report
    # --resume --minutes 0 evaluates the runs as they are: no epoch is added
    depth = json.loads((out / "depth.json").read_text())["nets"]["2"]
    _run(tmp_path, "depth", *TOY, "--depths", "2", "--resume")
    again = json.loads((out / "depth.json").read_text())["nets"]["2"]
    assert again["epochs"] == depth["epochs"] == 1 and again["epochs_this_session"] == 0
    assert again["log_p_star"] == depth["log_p_star"]  # same checkpoint, same seeds, same points


def _reproduce_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("reproduce", os.path.join(ROOT, "bench", "reproduce.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_test_subset_is_seeded_uniform_and_not_a_prefix():
    import torch
    from scipy import stats

    test_subset = _reproduce_module().test_subset
    x = torch.arange(1000.0)[:, None]
    assert test_subset(x, None, 0)[1] == "all" and test_subset(x, 5000, 0)[0].shape[0] == 1000
    a, how = test_subset(x, 200, 3)
    assert torch.equal(a, test_subset(x, 200, 3)[0]) and "seed 3" in how  # reproducible
    idx = a[:, 0]
    assert idx.unique().numel() == 200 and torch.all(idx[1:] > idx[:-1])  # without replacement, file order
    assert not torch.equal(idx, torch.arange(200.0))
    assert not torch.equal(a, test_subset(x, 200, 4)[0])  # the seed chooses the subset
    # uniform over the file: Kolmogorov-Smirnov against U(0, 1000) at a fixed seed
    assert stats.kstest((idx.numpy() + 0.5) / 1000, "uniform").pvalue > 1e-3


def test_training_budget_counts_earlier_sessions_and_runs_are_never_overwritten(tmp_path):
    from types import SimpleNamespace

    import torch

    train = _reproduce_module().train
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(64, 9, generator=g) < 0.3).float()
    args = SimpleNamespace(runs=str(tmp_path), device="cpu", seed=0, lr=1e-3, valid_k=2, minutes=0.0,
                           overwrite=False)
    trainer, facts = train("tiny", [9, 4, 3], x, x[:16], args)
    assert facts["epochs"] == 1 and facts["epochs_this_session"] == 1  # a new run trains at least one epoch
    spent = sum(r["seconds"] for r in trainer.history) / 60
    # a budget the earlier session already used up: resuming trains nothing
    _, facts = train("tiny", [9, 4, 3], x, x[:16], SimpleNamespace(**{**vars(args), "minutes": spent * 0.9}),
                     resume=True)
    assert facts["epochs"] == 1 and facts["epochs_this_session"] == 0
    assert facts["train_minutes_total"] == round(spent, 1)
    # budget left: resuming trains on
    _, facts = train("tiny", [9, 4, 3], x, x[:16], SimpleNamespace(**{**vars(args), "minutes": spent + 1e-4}),
                     resume=True)
    assert facts["epochs"] >= 2 and facts["epochs_this_session"] >= 1
    with pytest.raises(FileExistsError, match="--resume"):  # neither --resume nor --overwrite
        train("tiny", [9, 4, 3], x, x[:16], args)
    _, facts = train("tiny", [9, 4, 3], x, x[:16], SimpleNamespace(**{**vars(args), "overwrite": True}))
    assert facts["epochs"] == 1


def test_uci_sets_from_several_processes_merge_without_losing_any(tmp_path):
    """One uci.json, several processes (one per core): a save adds this process's finished sets to what is on
    disk, and never drops a set another process wrote, even one this process will run later."""
    merge_sets = _reproduce_module().merge_sets
    path = str(tmp_path / "uci.json")
    top = {"experiment": "uci", "device": "cpu", "torch": "x"}
    merge_sets(path, {"mushrooms": {"by": "B"}}, top)  # process B (--sets mushrooms) finishes first
    out = merge_sets(path, {"dna": {"by": "A"}}, top)  # process A (--sets dna mushrooms) finishes dna
    assert out["sets"] == {"mushrooms": {"by": "B"}, "dna": {"by": "A"}}
    out = merge_sets(path, {"dna": {"by": "A"}, "mushrooms": {"by": "A"}}, top)  # A finishes mushrooms itself
    assert json.loads(open(path).read())["sets"] == {"mushrooms": {"by": "A"}, "dna": {"by": "A"}} == out["sets"]
    assert sorted(os.listdir(tmp_path)) == ["uci.json", "uci.json.lock"]  # no temporary file left


def test_a_packed_run_resumes_bit_for_bit_on_a_machine_without_its_folder(tmp_path):
    """pack writes one state file per run; --resume on a clean clone (no run folder) unpacks it and goes on exactly
    as the run that never stopped; the results name the run and its state file, not a machine path."""
    from types import SimpleNamespace

    import torch

    mod = _reproduce_module()
    x = (torch.rand(64, 9, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    base = dict(device="cpu", seed=0, lr=1e-3, valid_k=2, minutes=1e9, overwrite=False, patience=10)
    straight, _ = mod.train("r", [9, 4, 3], x, x[:16], SimpleNamespace(runs=str(tmp_path / "a"), epochs=3,
                                                                        state=str(tmp_path / "sa"), **base))
    first = SimpleNamespace(runs=str(tmp_path / "b"), epochs=1, state=str(tmp_path / "sb"), only=None, **base)
    mod.train("r", [9, 4, 3], x, x[:16], first)
    assert mod.pack_all(first) == [str(tmp_path / "sb" / "r.safetensors")]
    other_machine = SimpleNamespace(**{**vars(first), "runs": str(tmp_path / "c"), "epochs": 3})
    again, facts = mod.train("r", [9, 4, 3], x, x[:16], other_machine, resume=True)
    assert facts["epochs_this_session"] == 2 and facts["run"] == "r"
    assert facts["state"] == str(tmp_path / "sb" / "r.safetensors")
    for (n, p), q in zip(straight.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(p, q), n
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert straight.step == again.step and strip(straight.history) == strip(again.history)
    best = mod.best_model(other_machine, "/some/machine/path/r", torch.device("cpu"))  # older results: a path
    assert torch.equal(best.p_layers[0].weight, mod.best_model(SimpleNamespace(runs=str(tmp_path / "a")), "r",
                                                               torch.device("cpu")).p_layers[0].weight)


@needs_data
def test_warm_start_continues_the_shipped_model(tmp_path):
    import bihm_triton as bt

    shipped = bt.list_pretrained()["bmnist-12l"]["epochs"]
    out = _run(tmp_path, "headline", *TOY, "--warm-start", "pretrained:bmnist-12l", "--epochs", str(shipped + 1),
               "--minutes", "1e9", "--train-points", "100", "--state", str(tmp_path / "state"))
    assert f"warm start from pretrained:bmnist-12l: epoch {shipped}" in out
    head = json.load(open(tmp_path / "out" / "headline.json"))
    assert head["epochs"] == shipped + 1 and head["epochs_this_session"] == 1 and head["run"] == "headline"
    assert head["warm_start"]["from"] == "pretrained:bmnist-12l" and "reset" in head["warm_start"]["adam_moments"]
    _run(tmp_path, "pack", "--state", str(tmp_path / "state"))
    assert os.listdir(tmp_path / "state") == ["headline.safetensors"]


def test_no_result_file_holds_a_machine_path():
    """The committed results name runs and files relative to the repository: a clean clone resumes them."""
    import glob
    import re

    for path in glob.glob(os.path.join(ROOT, "docs", "reproduction", "*.json")):
        text = open(path).read()
        assert not re.search(r'"(/(work|root|home|tmp|mnt)/[^"]*)"|--(runs|out) /', text), path
