"""The models shipped with the package: loadable by name from Python and the CLI, carrying their measured
numbers, and reproducing the check recorded in their metadata (the same estimate at the same seed)."""

from __future__ import annotations

import math
import os

import pytest
import torch

import bihm_triton as bt
from bihm_triton.cli import main
from bihm_triton.reference.philox import STREAM_VERSION
import helpers

SHARED = helpers.SHARED_DATA
SHIPPED = bt.list_pretrained()
needs_model = pytest.mark.skipif("bmnist-12l" not in SHIPPED, reason="no pretrained model shipped in this checkout")


@needs_model
def test_the_shipped_model_loads_by_name_with_its_numbers():
    info = SHIPPED["bmnist-12l"]
    model = bt.pretrained("bmnist-12l")
    assert model.sizes == info["sizes"] == [784, 300, 200, 100, 75, 50, 35, 30, 25, 20, 15, 10, 10]
    assert info["stream_version"] == STREAM_VERSION and info["data"] == "binarized_mnist"
    test = info["test"]
    assert test["log_p_star"] < 0 and test["log_p_star_se"] > 0 and test["k"] >= 1000
    assert "reproduce.py headline" in info["command"]
    x = model.sample_p(3, seed=1)
    assert x.shape == (3, 784)


@needs_model
@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, "binarized_mnist")), reason="no shared binarized MNIST")
def test_the_shipped_model_reproduces_its_recorded_check():
    """16 test points' log p̃*(x) at K = 100, seed 7, as recorded when the model was exported: the same draws,
    so equal up to the last bits of the float32 arithmetic (another BLAS may block the matmuls differently)."""
    from bihm_triton.data import load_dataset

    check = SHIPPED["bmnist-12l"]["check"]
    x = load_dataset("binarized_mnist", "test", data_dir=SHARED)[torch.tensor(check["test_indices"])]
    got = bt.pretrained("bmnist-12l").log_likelihood(x, check["k"], seed=check["seed"]).log_p_tilde_star.double()
    want = torch.tensor(check["log_p_tilde_star"], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-2)


@needs_model
@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, "binarized_mnist")), reason="no shared binarized MNIST")
def test_the_shipped_model_reproduces_its_recorded_test_number():
    """The recorded test log p̃*(x) (all 10,000 test images, K = 1000) recomputed on 300 of them drawn uniformly
    (another seed than the recorded run's): the same estimator at the same K, so the two means differ by the
    subset's sampling error alone; they agree within three standard errors of the difference."""
    from bihm_triton.data import load_dataset

    recorded = SHIPPED["bmnist-12l"]["test"]
    x = load_dataset("binarized_mnist", "test", data_dir=SHARED)
    idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(11))[:300]
    lpt = bt.pretrained("bmnist-12l").log_likelihood(x[idx], recorded["k"], seed=11).log_p_tilde_star.double()
    se = float(lpt.std() / math.sqrt(len(lpt)))
    assert abs(float(lpt.mean()) - recorded["log_p_tilde_star"]) < 3 * math.hypot(se, recorded["log_p_tilde_star_se"])


@needs_model
def test_the_cli_takes_a_shipped_model_as_checkpoint(tmp_path, capsys):
    out = tmp_path / "samples.png"
    assert main(["sample", "--checkpoint", "pretrained:bmnist-12l", "--method", "p", "--n", "4",
                 "--out", str(out), "--no-progress"]) == 0
    assert out.exists()


def test_an_unknown_name_lists_the_shipped_ones(tmp_path, capsys):
    with pytest.raises(KeyError, match="no pretrained model named 'nope'"):
        bt.pretrained("nope")
    assert main(["sample", "--checkpoint", "pretrained:nope", "--n", "2", "--out", str(tmp_path / "s.png")]) == 2
    assert "no pretrained model named 'nope'" in capsys.readouterr().err
