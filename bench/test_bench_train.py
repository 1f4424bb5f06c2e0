"""One training step: the BiHM loss (SPEC §3) with K = 10 importance samples, its backward, and an Adam step.

The batch is MNIST's test images when ``../shared/data/mnist`` is present (``BIHM_MNIST_DIR``),
else random binary data (recorded as ``data``). ``torch``: :func:`baselines.bihm_loss` (q pass
with ``F.linear``/``torch.rand_like``, log p(x, h), ``softmax`` of ½ log ω, the surrogate),
``loss.backward()``, ``torch.optim.Adam.step()``; ``torch_compile*`` compiles the loss (its
backward runs in the compiled graph; ``reduce-overhead`` replays both as CUDA graphs);
``triton``: :class:`bihm_triton.Trainer`'s step on :class:`bihm_triton.model.BiHM`.
Importance samples per second = batch·K / time.
"""

from __future__ import annotations

import pytest
import torch

import baselines
import benchlib as bl

NETS = bl.tier()["nets"]
BATCHES = bl.tier()["train"]
K = bl.TRAIN_K
LR = 1e-3


def _make_call(provider: str, sizes, batch: int):
    if provider in (*bl.OURS, "reference"):
        from bihm_triton.train import TrainConfig, Trainer

        model = bl.make_model(provider if provider in bl.OURS else "reference", sizes)
        if provider == "reference":  # the oracle: same math and stream on the reference primitives
            from bihm_triton.model import BiHM

            model = BiHM(sizes, backend="reference", device=bl.DEVICE, chunk_rows=1 << 16)
            model.load_state_dict(bl.dyadic_state_dict(sizes))
        trainer = Trainer(model, torch.zeros(batch, sizes[0], device=bl.DEVICE), None,
                          TrainConfig(k=K, batch_size=batch, lr=LR))

        def call(s):
            stats = trainer.train_step(s.x, seed=s.seed)
            return stats["bound"], {n: p.grad for n, p in model.named_parameters()}

        return call
    net = bl.make_net(sizes, requires_grad=True)
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    loss_fn = bl.native(baselines.bihm_loss, provider)

    def call(s):
        bl.mark_step(provider)
        opt.zero_grad(set_to_none=True)
        loss, bound = loss_fn(net.prior, net.p, net.q, s.x, K)
        loss.backward()
        opt.step()
        return bound.detach(), None

    return call


def _inputs(sizes, batch: int):
    def make():
        sets, source = [], None
        for i in range(bl.n_input_sets()):
            x, source = bl.data_batch(sizes[0], batch, i)
            sets.append(bl.inputs_namespace(x=x, seed=bl.seed_tensor(i)))
        return sets, source

    return bl.cached_inputs(("train", tuple(sizes), batch), make)


@pytest.mark.parametrize("provider", bl.PROVIDERS)
@pytest.mark.parametrize("batch", BATCHES, ids=[f"B{b}" for b in BATCHES])
@pytest.mark.parametrize("net", list(NETS))
def test_train_step(benchmark, provider, net, batch):
    bl.skip_unless_measurable(provider)
    sizes = NETS[net]
    sets, source = _inputs(sizes, batch)
    call = _make_call(provider, sizes, batch)

    def check(out, s):
        bound, params = out  # params: the gradients of the step
        want_bound, want_params = _make_call("reference", sizes, batch)(s)  # one step from the same parameters
        if provider not in bl.OURS:
            return {"bound_p": bl.assert_same_mean_paired(bound, want_bound, f"{provider} bound")}
        guard = {"bound_rel_err": bl.assert_log_probs(bound, want_bound, None, f"{provider} bound", rtol=1e-3)}
        guard["grad_rel_err"] = bl.assert_grads(params, want_params, f"{provider} gradients", rtol=5e-2)
        return guard

    bl.run_benchmark(
        benchmark, provider=provider, case="train_step", name=f"train_step.{net}", shape=f"B={batch},K={K}",
        params=dict(sizes=list(sizes), batch=batch, k=K, optimizer="adam"), items=batch * K,
        unit="importance samples", sets=sets, call=call, check=check, extra=dict(data=source),
    )
