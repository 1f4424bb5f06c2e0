"""The main job on real handwritten digits: MNIST's test set (../shared/data/mnist), thresholded at 0.5.

Train 784-200-100-50 on the first 8,000 images (7,000 train + 1,000 validation), test on the last
2,000; a few epochs on a CPU. Skipped when the data folder is absent.
"""

from __future__ import annotations

import os

import pytest
import torch

from bihm_triton.data import load_mnist_idx
from bihm_triton.model import BiHM
from bihm_triton.train import TrainConfig, Trainer
from helpers import MNIST_DIR

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.isdir(MNIST_DIR), reason=f"MNIST test set not found at {MNIST_DIR}"),
]


def test_training_on_real_mnist_improves_the_test_bound():
    x = load_mnist_idx(MNIST_DIR, split="test")
    train, valid, test = x[:7000], x[7000:8000], x[8000:]
    torch.manual_seed(0)
    model = BiHM([784, 200, 100, 50])
    before = model.log_likelihood(test, 20, seed=1).log_p_tilde_star.mean().item()
    trainer = Trainer(model, train, valid, TrainConfig(max_epochs=3, lr=3e-3, valid_k=10))
    trainer.fit(progress=False, verbose=False)
    after = model.log_likelihood(test, 20, seed=1).log_p_tilde_star.mean().item()
    print(f"MNIST test bound: {before:.1f} -> {after:.1f} nats after 3 epochs")
    assert after > before + 100  # about -360 nats at the init, about -155 after 3 epochs
    hist = [r["valid_bound"] for r in trainer.history]
    assert hist == sorted(hist)
