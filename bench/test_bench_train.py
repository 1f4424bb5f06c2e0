"""One training step: forward and backward of the BiHM loss (SPEC §3) with K = 10 importance samples.

``loss, stats = model.loss(x, k=10, seed=...)``, ``loss.backward()`` (gradients of every p and q
parameter; no optimizer step). The batch is MNIST's test images when ``../shared/data/mnist`` is
present (``BIHM_MNIST_DIR``), else random binary data (recorded as ``data``). ``reference``: the
reference BiHM; ``compile``: the same with its two layer primitives compiled (the loss formula and
its statistics, which read the device, stay eager); ``triton``: :class:`bihm_triton.model.BiHM`
on the Triton ops. Importance samples per second = batch·K / time.
"""

from __future__ import annotations

import pytest

import benchlib as bl

NET = "mnist"
SIZES = bl.tier()["nets"][NET]
BATCHES = bl.tier()["train"]
K = bl.TRAIN_K


def _make_call(model):
    params = dict(model.named_parameters())

    def call(s):
        for p in params.values():
            p.grad = None
        loss, _ = model.loss(s.x, k=K, seed=s.seed)
        loss.backward()
        return loss.detach(), {name: p.grad for name, p in params.items()}

    return call


def _inputs(batch: int):
    def make():
        sets, source = [], None
        for i in range(bl.n_input_sets()):
            x, source = bl.data_batch(SIZES[0], batch, i)
            sets.append(bl.inputs_namespace(x=x, seed=bl.seed_tensor(i)))
        return sets, source

    return bl.cached_inputs(("train", tuple(SIZES), batch), make)


@pytest.mark.parametrize("provider", bl.PROVIDERS)
@pytest.mark.parametrize("batch", BATCHES, ids=[f"B{b}" for b in BATCHES])
def test_train_step(benchmark, provider, batch):
    bl.skip_unless_measurable(provider)
    sets, source = _inputs(batch)
    model = bl.make_model(provider, SIZES)
    call = _make_call(model)

    def check(out, s):
        loss, grads = out
        want_loss, want_grads = _make_call(bl.make_model("reference", SIZES))(s)
        guard = {"loss_rel_err": bl.assert_log_probs(loss.reshape(1), want_loss.reshape(1), None,
                                                     f"{provider} loss", rtol=1e-3)}
        guard["grad_rel_err"] = bl.assert_grads(grads, want_grads, f"{provider} gradients", rtol=5e-2)
        return guard

    bl.run_benchmark(
        benchmark, provider=provider, case="train_step", name=f"train_step.{NET}", shape=f"B={batch},K={K}",
        params=dict(sizes=list(SIZES), batch=batch, k=K), items=batch * K, unit="importance samples",
        sets=sets, call=call, check=check, extra=dict(data=source),
    )
